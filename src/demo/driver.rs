//! `DemoDriver`: an in-memory implementation of the compute-driver contract.
//!
//! It behaves like a real backend as seen from a gateway: creation is
//! asynchronous (Ready=False while "provisioning", Ready=True after a delay),
//! Stop/Start are idempotent, deletion is observed through the watch stream,
//! and every watcher gets a snapshot of current sandboxes followed by live
//! events. Nothing is actually run; it exists so the bridge can be exercised
//! end to end without a cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::broadcast::{self, error::RecvError};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::obs::escape::{for_log, LIMIT};

use crate::proto::compute::compute_driver_server::{ComputeDriver, ComputeDriverServer};
use crate::proto::compute::gateway_listener_requirement::Selector;
use crate::proto::compute::watch_sandboxes_event::Payload;
use crate::proto::compute::{
    CreateSandboxRequest, CreateSandboxResponse, DeleteSandboxRequest, DeleteSandboxResponse, DeleteWorkspaceRequest,
    DeleteWorkspaceResponse, DriverCondition, DriverPlatformEvent, DriverSandbox, DriverSandboxStatus,
    EnsureWorkspaceRequest, EnsureWorkspaceResponse, GatewayListenerRequirement, GatewayLoopbackInterfaceRequirement,
    GetCapabilitiesRequest, GetCapabilitiesResponse, GetGatewayListenerRequirementsRequest,
    GetGatewayListenerRequirementsResponse, GetSandboxRequest, GetSandboxResponse, ListSandboxesRequest,
    ListSandboxesResponse, StartSandboxRequest, StartSandboxResponse, StopSandboxRequest, StopSandboxResponse,
    ValidateSandboxCreateRequest, ValidateSandboxCreateResponse, WatchSandboxesDeletedEvent, WatchSandboxesEvent,
    WatchSandboxesPlatformEvent, WatchSandboxesRequest, WatchSandboxesSandboxEvent,
};

/// Large `ListSandboxes` answers must pass, and the gateway's own 4 MiB
/// limit is the one that should bite first, not ours.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// How many live events a watcher may fall behind before it is cut off and
/// has to re-open (and so re-snapshot) its stream.
const EVENT_BUFFER: usize = 1024;

/// Deletion completes shortly after the call returns, as on a real backend,
/// so the gateway sees `deleting=true` before the `deleted` event.
const DELETE_DELAY: Duration = Duration::from_millis(50);

const EVENT_SOURCE: &str = "demo-driver";
const EVENT_TYPE_NORMAL: &str = "Normal";
const READY_CONDITION: &str = "Ready";

/// Tunables of the demo driver.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Reported as `driver_name` by GetCapabilities.
    pub name: String,
    /// Reported as `driver_version` by GetCapabilities.
    pub version: String,
    /// Reported as `default_image` by GetCapabilities.
    pub default_image: String,
    /// How long a created sandbox stays "provisioning" before Ready=True.
    pub provision_delay: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            name: "demo".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            default_image: "openshell/sandbox:latest".to_owned(),
            provision_delay: Duration::from_millis(300),
        }
    }
}

/// The in-memory driver. Clones share the same sandboxes and watchers.
#[derive(Clone)]
pub struct DemoDriver {
    inner: Arc<Inner>,
}

struct Inner {
    opts: DemoOptions,
    state: Mutex<State>,
    /// Live events. Every send happens while `state` is locked, so a watcher
    /// that subscribes and snapshots under the same lock sees each change
    /// exactly once: either in its snapshot or as a live event.
    events: broadcast::Sender<WatchSandboxesEvent>,
    /// Calls received per method, for tests that must prove a call was not
    /// repeated.
    calls: Mutex<HashMap<&'static str, u64>>,
}

#[derive(Default)]
struct State {
    /// Keyed by sandbox id; the ordered map makes `ListSandboxes` sorted.
    sandboxes: BTreeMap<String, DriverSandbox>,
    workspaces: BTreeSet<String>,
    instances_created: u64,
}

/// The backend lifecycle of a sandbox, carried in its Ready condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Provisioning,
    Running,
    Stopped,
}

impl Phase {
    fn ready_status(self) -> &'static str {
        match self {
            Phase::Running => "True",
            Phase::Provisioning | Phase::Stopped => "False",
        }
    }

    fn condition_reason(self) -> &'static str {
        match self {
            Phase::Provisioning => "Provisioning",
            Phase::Running => "Running",
            Phase::Stopped => "Stopped",
        }
    }

    fn condition_message(self) -> &'static str {
        match self {
            Phase::Provisioning => "sandbox is being provisioned",
            Phase::Running => "sandbox is running",
            Phase::Stopped => "sandbox is stopped",
        }
    }

    /// Reason and message of the platform event announcing this phase.
    fn event(self) -> (&'static str, &'static str) {
        match self {
            Phase::Provisioning => ("Scheduled", "sandbox scheduled on the demo host"),
            Phase::Running => ("Started", "sandbox started"),
            Phase::Stopped => ("Stopped", "sandbox stopped"),
        }
    }

    fn from_reason(reason: &str) -> Option<Self> {
        [Phase::Provisioning, Phase::Running, Phase::Stopped]
            .into_iter()
            .find(|phase| phase.condition_reason() == reason)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchSandboxesEvent, Status>> + Send>>;

impl Default for DemoDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl DemoDriver {
    /// A driver with default options.
    pub fn new() -> Self {
        Self::with_options(DemoOptions::default())
    }

    /// A driver with the given options.
    pub fn with_options(opts: DemoOptions) -> Self {
        Self::build(opts, EVENT_BUFFER)
    }

    fn build(opts: DemoOptions, event_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(event_buffer);
        Self { inner: Arc::new(Inner { opts, state: Mutex::new(State::default()), events, calls: Mutex::default() }) }
    }

    /// Wraps the driver in a tonic service ready to be served.
    pub fn into_server(self) -> ComputeDriverServer<DemoDriver> {
        ComputeDriverServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Number of sandboxes currently known, including ones being deleted.
    pub fn sandbox_count(&self) -> usize {
        self.lock().sandboxes.len()
    }

    /// How many `method` calls reached this driver.
    pub fn calls(&self, method: &str) -> u64 {
        self.inner.calls.lock().expect("demo driver call counts poisoned").get(method).copied().unwrap_or(0)
    }

    /// How many watch streams are open right now.
    pub fn watchers(&self) -> usize {
        self.inner.events.receiver_count()
    }

    fn count_call(&self, method: &'static str) {
        *self.inner.calls.lock().expect("demo driver call counts poisoned").entry(method).or_insert(0) += 1;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().expect("demo driver state poisoned")
    }

    /// Broadcasts a live event. Must be called with the state locked.
    fn emit(&self, event: WatchSandboxesEvent) {
        // An error only means nobody is watching right now, which is fine:
        // a watcher that arrives later starts from a snapshot.
        let _ = self.inner.events.send(event);
    }

    /// Moves a sandbox to `phase` and tells watchers; does nothing (and
    /// returns false) when it is already there, which makes Stop and Start
    /// idempotent without duplicate events.
    fn enter_phase(&self, sandbox: &mut DriverSandbox, phase: Phase) -> bool {
        if current_phase(sandbox) == Some(phase) {
            return false;
        }
        set_ready_condition(sandbox, phase);
        self.emit(snapshot_event(sandbox));
        let (reason, message) = phase.event();
        self.emit(platform_event(sandbox, reason, message));
        true
    }

    /// Completes an asynchronous create, unless the sandbox was stopped,
    /// started, deleted or replaced in the meantime.
    fn finish_provisioning(&self, id: &str, instance_id: &str) {
        let mut state = self.lock();
        let Some(sandbox) = state.sandboxes.get_mut(id) else {
            return;
        };
        if instance_of(sandbox) != instance_id
            || is_deleting(sandbox)
            || current_phase(sandbox) != Some(Phase::Provisioning)
        {
            return;
        }
        self.enter_phase(sandbox, Phase::Running);
        debug!(sandbox_id = %for_log(id, LIMIT), "demo sandbox provisioned");
    }

    /// Completes an asynchronous delete.
    fn finish_delete(&self, id: &str, instance_id: &str) {
        let mut state = self.lock();
        let same_instance = state.sandboxes.get(id).is_some_and(|sandbox| instance_of(sandbox) == instance_id);
        if !same_instance {
            return;
        }
        state.sandboxes.remove(id);
        self.emit(deleted_event(id));
        debug!(sandbox_id = %for_log(id, LIMIT), "demo sandbox removed");
    }

    fn spawn_after(&self, delay: Duration, work: impl FnOnce(&DemoDriver) + Send + 'static) {
        let driver = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            work(&driver);
        });
    }

    /// Shared body of Stop and Start.
    fn change_phase(&self, id: &str, name: &str, phase: Phase) -> Result<(), Status> {
        let mut state = self.lock();
        let key = resolve(&state, id, name)?.ok_or_else(|| not_found(id, name))?;
        let Some(sandbox) = state.sandboxes.get_mut(&key) else {
            return Err(not_found(id, name));
        };
        if is_deleting(sandbox) {
            // Stopping something on its way out is already achieved;
            // starting it is not possible.
            return match phase {
                Phase::Stopped => Ok(()),
                _ => Err(Status::failed_precondition(format!("sandbox {key} is being deleted"))),
            };
        }
        self.enter_phase(sandbox, phase);
        Ok(())
    }
}

#[tonic::async_trait]
impl ComputeDriver for DemoDriver {
    async fn get_capabilities(
        &self,
        _request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        self.count_call("GetCapabilities");
        debug!(method = "GetCapabilities", "demo driver call");
        let opts = &self.inner.opts;
        Ok(Response::new(GetCapabilitiesResponse {
            driver_name: opts.name.clone(),
            driver_version: opts.version.clone(),
            default_image: opts.default_image.clone(),
            gateway_manages_lifecycle: true,
        }))
    }

    async fn get_gateway_listener_requirements(
        &self,
        _request: Request<GetGatewayListenerRequirementsRequest>,
    ) -> Result<Response<GetGatewayListenerRequirementsResponse>, Status> {
        self.count_call("GetGatewayListenerRequirements");
        debug!(method = "GetGatewayListenerRequirements", "demo driver call");
        Ok(Response::new(GetGatewayListenerRequirementsResponse {
            requirements: vec![GatewayListenerRequirement {
                reason: "demo driver runs sandboxes on this host".to_owned(),
                selector: Some(Selector::LoopbackInterface(GatewayLoopbackInterfaceRequirement {})),
            }],
        }))
    }

    async fn validate_sandbox_create(
        &self,
        request: Request<ValidateSandboxCreateRequest>,
    ) -> Result<Response<ValidateSandboxCreateResponse>, Status> {
        let sandbox = request.into_inner().sandbox;
        self.count_call("ValidateSandboxCreate");
        debug!(method = "ValidateSandboxCreate", sandbox_id = sandbox_id_of(sandbox.as_ref()), "demo driver call");
        validate_create(&self.lock(), &require_sandbox(sandbox)?)?;
        Ok(Response::new(ValidateSandboxCreateResponse {}))
    }

    async fn get_sandbox(&self, request: Request<GetSandboxRequest>) -> Result<Response<GetSandboxResponse>, Status> {
        let GetSandboxRequest { sandbox_id, sandbox_name } = request.into_inner();
        self.count_call("GetSandbox");
        debug!(method = "GetSandbox", sandbox_id = %for_log(&sandbox_id, LIMIT), sandbox_name = %for_log(&sandbox_name, LIMIT), "demo driver call");
        let state = self.lock();
        let sandbox = resolve(&state, &sandbox_id, &sandbox_name)?
            .and_then(|key| state.sandboxes.get(&key).cloned())
            .ok_or_else(|| not_found(&sandbox_id, &sandbox_name))?;
        Ok(Response::new(GetSandboxResponse { sandbox: Some(sandbox) }))
    }

    async fn list_sandboxes(
        &self,
        _request: Request<ListSandboxesRequest>,
    ) -> Result<Response<ListSandboxesResponse>, Status> {
        self.count_call("ListSandboxes");
        debug!(method = "ListSandboxes", "demo driver call");
        let sandboxes = self.lock().sandboxes.values().cloned().collect();
        Ok(Response::new(ListSandboxesResponse { sandboxes }))
    }

    async fn create_sandbox(
        &self,
        request: Request<CreateSandboxRequest>,
    ) -> Result<Response<CreateSandboxResponse>, Status> {
        let sandbox = request.into_inner().sandbox;
        self.count_call("CreateSandbox");
        debug!(method = "CreateSandbox", sandbox_id = sandbox_id_of(sandbox.as_ref()), "demo driver call");
        let (id, instance_id) = {
            let sandbox = require_sandbox(sandbox)?;
            let mut state = self.lock();
            validate_create(&state, &sandbox)?;
            state.instances_created += 1;
            let instance_id = format!("demo-{}", state.instances_created);
            let mut stored = admit(sandbox, &instance_id);
            self.enter_phase(&mut stored, Phase::Provisioning);
            let id = stored.id.clone();
            state.sandboxes.insert(id.clone(), stored);
            (id, instance_id)
        };
        self.spawn_after(self.inner.opts.provision_delay, move |driver| driver.finish_provisioning(&id, &instance_id));
        Ok(Response::new(CreateSandboxResponse {}))
    }

    async fn stop_sandbox(
        &self,
        request: Request<StopSandboxRequest>,
    ) -> Result<Response<StopSandboxResponse>, Status> {
        let StopSandboxRequest { sandbox_id, sandbox_name } = request.into_inner();
        self.count_call("StopSandbox");
        debug!(method = "StopSandbox", sandbox_id = %for_log(&sandbox_id, LIMIT), sandbox_name = %for_log(&sandbox_name, LIMIT), "demo driver call");
        self.change_phase(&sandbox_id, &sandbox_name, Phase::Stopped)?;
        Ok(Response::new(StopSandboxResponse {}))
    }

    async fn start_sandbox(
        &self,
        request: Request<StartSandboxRequest>,
    ) -> Result<Response<StartSandboxResponse>, Status> {
        let StartSandboxRequest { sandbox_id, sandbox_name } = request.into_inner();
        self.count_call("StartSandbox");
        debug!(method = "StartSandbox", sandbox_id = %for_log(&sandbox_id, LIMIT), sandbox_name = %for_log(&sandbox_name, LIMIT), "demo driver call");
        self.change_phase(&sandbox_id, &sandbox_name, Phase::Running)?;
        Ok(Response::new(StartSandboxResponse {}))
    }

    async fn delete_sandbox(
        &self,
        request: Request<DeleteSandboxRequest>,
    ) -> Result<Response<DeleteSandboxResponse>, Status> {
        let DeleteSandboxRequest { sandbox_id, sandbox_name } = request.into_inner();
        self.count_call("DeleteSandbox");
        debug!(method = "DeleteSandbox", sandbox_id = %for_log(&sandbox_id, LIMIT), sandbox_name = %for_log(&sandbox_name, LIMIT), "demo driver call");
        let (key, instance_id) = {
            let mut state = self.lock();
            let Some(key) = resolve(&state, &sandbox_id, &sandbox_name)? else {
                return Ok(Response::new(DeleteSandboxResponse { deleted: false }));
            };
            let Some(sandbox) = state.sandboxes.get_mut(&key) else {
                return Ok(Response::new(DeleteSandboxResponse { deleted: false }));
            };
            // A delete already under way was not caused by this request.
            if is_deleting(sandbox) {
                return Ok(Response::new(DeleteSandboxResponse { deleted: false }));
            }
            status_mut(sandbox).deleting = true;
            self.emit(snapshot_event(sandbox));
            (key, instance_of(sandbox).to_owned())
        };
        self.spawn_after(DELETE_DELAY, move |driver| driver.finish_delete(&key, &instance_id));
        Ok(Response::new(DeleteSandboxResponse { deleted: true }))
    }

    type WatchSandboxesStream = WatchStream;

    async fn watch_sandboxes(
        &self,
        _request: Request<WatchSandboxesRequest>,
    ) -> Result<Response<Self::WatchSandboxesStream>, Status> {
        self.count_call("WatchSandboxes");
        debug!(method = "WatchSandboxes", "demo driver call");
        let (backlog, live) = {
            let state = self.lock();
            let live = self.inner.events.subscribe();
            let backlog: Vec<_> = state.sandboxes.values().map(snapshot_event).collect();
            (backlog, live)
        };
        let stream = stream::iter(backlog.into_iter().map(Ok)).chain(live_events(live));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ensure_workspace(
        &self,
        request: Request<EnsureWorkspaceRequest>,
    ) -> Result<Response<EnsureWorkspaceResponse>, Status> {
        let workspace = request.into_inner().workspace;
        self.count_call("EnsureWorkspace");
        debug!(method = "EnsureWorkspace", workspace = %for_log(&workspace, LIMIT), "demo driver call");
        if workspace.is_empty() {
            return Err(Status::invalid_argument("workspace is required"));
        }
        self.lock().workspaces.insert(workspace);
        Ok(Response::new(EnsureWorkspaceResponse {}))
    }

    async fn delete_workspace(
        &self,
        request: Request<DeleteWorkspaceRequest>,
    ) -> Result<Response<DeleteWorkspaceResponse>, Status> {
        let workspace = request.into_inner().workspace;
        self.count_call("DeleteWorkspace");
        debug!(method = "DeleteWorkspace", workspace = %for_log(&workspace, LIMIT), "demo driver call");
        self.lock().workspaces.remove(&workspace);
        Ok(Response::new(DeleteWorkspaceResponse {}))
    }
}

/// Turns a broadcast receiver into the live half of a watch. A watcher
/// that fell behind has missed events it can never get back, so its stream
/// ends with an error; the gateway re-opens it and gets a fresh snapshot.
fn live_events(
    rx: broadcast::Receiver<WatchSandboxesEvent>,
) -> impl Stream<Item = Result<WatchSandboxesEvent, Status>> + Send {
    stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Ok(event) => Some((Ok(event), Some(rx))),
            Err(RecvError::Lagged(missed)) => Some((
                Err(Status::unavailable(format!(
                    "demo driver watch lagged and missed {missed} events; re-open the watch"
                ))),
                None,
            )),
            Err(RecvError::Closed) => None,
        }
    })
}

fn require_sandbox(sandbox: Option<DriverSandbox>) -> Result<DriverSandbox, Status> {
    sandbox.ok_or_else(|| Status::invalid_argument("sandbox is required"))
}

/// Checks a sandbox for Validate and Create: required fields, then clashes
/// with sandboxes already known.
fn validate_create(state: &State, sandbox: &DriverSandbox) -> Result<(), Status> {
    if sandbox.id.is_empty() {
        return Err(Status::invalid_argument("sandbox.id is required"));
    }
    let image = sandbox
        .spec
        .as_ref()
        .and_then(|spec| spec.template.as_ref())
        .map(|template| template.image.as_str())
        .unwrap_or_default();
    if image.is_empty() {
        return Err(Status::invalid_argument("sandbox.spec.template.image is required"));
    }
    // The same id is a clash even while the old one is being deleted: its
    // pending removal would otherwise race the new sandbox.
    if state.sandboxes.contains_key(&sandbox.id) {
        return Err(Status::already_exists(format!("sandbox {} already exists", sandbox.id)));
    }
    let name_taken = !sandbox.name.is_empty()
        && state.sandboxes.values().any(|other| other.name == sandbox.name && !is_deleting(other));
    if name_taken {
        return Err(Status::already_exists(format!("a sandbox named {} already exists", sandbox.name)));
    }
    Ok(())
}

/// Prepares an accepted sandbox for storage. The token is dropped: a demo
/// host has nothing to hand it to, and keeping it would echo a credential
/// back in every Get, List and watch snapshot.
fn admit(mut sandbox: DriverSandbox, instance_id: &str) -> DriverSandbox {
    if let Some(spec) = sandbox.spec.as_mut() {
        spec.sandbox_token.clear();
    }
    sandbox.status = Some(DriverSandboxStatus {
        sandbox_name: sandbox.name.clone(),
        instance_id: instance_id.to_owned(),
        ..Default::default()
    });
    sandbox
}

/// Finds the key of the sandbox a request addresses: by id when given,
/// otherwise by name (preferring one that is not being deleted).
fn resolve(state: &State, id: &str, name: &str) -> Result<Option<String>, Status> {
    if !id.is_empty() {
        return Ok(state.sandboxes.contains_key(id).then(|| id.to_owned()));
    }
    if name.is_empty() {
        return Err(Status::invalid_argument("sandbox_id or sandbox_name is required"));
    }
    Ok(state
        .sandboxes
        .values()
        .filter(|sandbox| sandbox.name == name)
        .min_by_key(|sandbox| is_deleting(sandbox))
        .map(|sandbox| sandbox.id.clone()))
}

fn not_found(id: &str, name: &str) -> Status {
    if id.is_empty() {
        Status::not_found(format!("sandbox named {name} not found"))
    } else {
        Status::not_found(format!("sandbox {id} not found"))
    }
}

/// The id to log for a create-style request; never the whole sandbox,
/// which carries the token.
fn sandbox_id_of(sandbox: Option<&DriverSandbox>) -> &str {
    sandbox.map(|sandbox| sandbox.id.as_str()).unwrap_or("")
}

fn status_mut(sandbox: &mut DriverSandbox) -> &mut DriverSandboxStatus {
    sandbox.status.get_or_insert_with(Default::default)
}

fn is_deleting(sandbox: &DriverSandbox) -> bool {
    sandbox.status.as_ref().is_some_and(|status| status.deleting)
}

fn instance_of(sandbox: &DriverSandbox) -> &str {
    sandbox.status.as_ref().map(|status| status.instance_id.as_str()).unwrap_or("")
}

fn ready_condition(sandbox: &DriverSandbox) -> Option<&DriverCondition> {
    sandbox.status.as_ref()?.conditions.iter().find(|condition| condition.r#type == READY_CONDITION)
}

fn current_phase(sandbox: &DriverSandbox) -> Option<Phase> {
    ready_condition(sandbox).and_then(|condition| Phase::from_reason(&condition.reason))
}

/// Writes the Ready condition for `phase`. As in Kubernetes, the transition
/// time moves only when the status itself flips, not on a new reason.
fn set_ready_condition(sandbox: &mut DriverSandbox, phase: Phase) {
    let status = status_mut(sandbox);
    let position = status.conditions.iter().position(|condition| condition.r#type == READY_CONDITION);
    let index = position.unwrap_or_else(|| {
        status.conditions.push(DriverCondition { r#type: READY_CONDITION.to_owned(), ..Default::default() });
        status.conditions.len() - 1
    });
    let condition = &mut status.conditions[index];
    if position.is_none() || condition.status != phase.ready_status() {
        condition.last_transition_time = rfc3339_now();
    }
    condition.status = phase.ready_status().to_owned();
    condition.reason = phase.condition_reason().to_owned();
    condition.message = phase.condition_message().to_owned();
}

fn snapshot_event(sandbox: &DriverSandbox) -> WatchSandboxesEvent {
    WatchSandboxesEvent {
        payload: Some(Payload::Sandbox(WatchSandboxesSandboxEvent { sandbox: Some(sandbox.clone()) })),
    }
}

fn deleted_event(id: &str) -> WatchSandboxesEvent {
    WatchSandboxesEvent { payload: Some(Payload::Deleted(WatchSandboxesDeletedEvent { sandbox_id: id.to_owned() })) }
}

fn platform_event(sandbox: &DriverSandbox, reason: &str, message: &str) -> WatchSandboxesEvent {
    let metadata = HashMap::from([("instance_id".to_owned(), instance_of(sandbox).to_owned())]);
    WatchSandboxesEvent {
        payload: Some(Payload::PlatformEvent(WatchSandboxesPlatformEvent {
            sandbox_id: sandbox.id.clone(),
            event: Some(DriverPlatformEvent {
                timestamp_ms: unix_millis_now(),
                source: EVENT_SOURCE.to_owned(),
                r#type: EVENT_TYPE_NORMAL.to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
                metadata,
            }),
        })),
    }
}

fn rfc3339_now() -> String {
    // Formatting fails only for years outside 0..=9999; an empty time is a
    // better answer than failing the call.
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

fn unix_millis_now() -> i64 {
    let millis = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(millis).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::compute::{DriverSandboxSpec, DriverSandboxTemplate};
    use tonic::Code;

    const WAIT: Duration = Duration::from_secs(2);
    const QUIET: Duration = Duration::from_millis(150);
    const TOKEN: &str = "eyJ.secret.token";

    fn driver() -> DemoDriver {
        DemoDriver::with_options(DemoOptions { provision_delay: Duration::from_millis(20), ..Default::default() })
    }

    fn sandbox(id: &str, name: &str, image: &str) -> DriverSandbox {
        DriverSandbox {
            id: id.to_owned(),
            name: name.to_owned(),
            spec: Some(DriverSandboxSpec {
                sandbox_token: TOKEN.to_owned(),
                template: Some(DriverSandboxTemplate { image: image.to_owned(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn create(driver: &DemoDriver, id: &str, name: &str) {
        driver
            .create_sandbox(Request::new(CreateSandboxRequest { sandbox: Some(sandbox(id, name, "img")) }))
            .await
            .expect("create");
    }

    async fn get(driver: &DemoDriver, id: &str) -> Result<DriverSandbox, Status> {
        let response = driver
            .get_sandbox(Request::new(GetSandboxRequest { sandbox_id: id.to_owned(), sandbox_name: String::new() }))
            .await?;
        Ok(response.into_inner().sandbox.expect("sandbox in response"))
    }

    async fn stop(driver: &DemoDriver, id: &str) -> Result<(), Status> {
        driver
            .stop_sandbox(Request::new(StopSandboxRequest { sandbox_id: id.to_owned(), sandbox_name: String::new() }))
            .await
            .map(|_| ())
    }

    async fn start(driver: &DemoDriver, id: &str) -> Result<(), Status> {
        driver
            .start_sandbox(Request::new(StartSandboxRequest { sandbox_id: id.to_owned(), sandbox_name: String::new() }))
            .await
            .map(|_| ())
    }

    async fn delete(driver: &DemoDriver, id: &str) -> bool {
        driver
            .delete_sandbox(Request::new(DeleteSandboxRequest {
                sandbox_id: id.to_owned(),
                sandbox_name: String::new(),
            }))
            .await
            .expect("delete")
            .into_inner()
            .deleted
    }

    async fn watch(driver: &DemoDriver) -> WatchStream {
        driver.watch_sandboxes(Request::new(WatchSandboxesRequest {})).await.expect("watch").into_inner()
    }

    async fn next(stream: &mut WatchStream) -> WatchSandboxesEvent {
        tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("event within timeout")
            .expect("stream still open")
            .expect("event, not error")
    }

    async fn assert_quiet(stream: &mut WatchStream) {
        let extra = tokio::time::timeout(QUIET, stream.next()).await;
        assert!(extra.is_err(), "unexpected event: {:?}", extra.ok());
    }

    fn ready(sandbox: &DriverSandbox) -> (String, String) {
        let condition = ready_condition(sandbox).expect("Ready condition");
        (condition.status.clone(), condition.reason.clone())
    }

    async fn wait_ready(driver: &DemoDriver, id: &str) -> DriverSandbox {
        tokio::time::timeout(WAIT, async {
            loop {
                let sandbox = get(driver, id).await.expect("get");
                if ready(&sandbox).0 == "True" {
                    return sandbox;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("ready within timeout")
    }

    /// The sandbox in a snapshot event, or a panic naming what came instead.
    fn snapshot_of(event: &WatchSandboxesEvent) -> &DriverSandbox {
        match &event.payload {
            Some(Payload::Sandbox(snapshot)) => snapshot.sandbox.as_ref().expect("sandbox"),
            other => panic!("expected snapshot, got {other:?}"),
        }
    }

    fn platform_of(event: &WatchSandboxesEvent) -> (&str, &DriverPlatformEvent) {
        match &event.payload {
            Some(Payload::PlatformEvent(platform)) => {
                (platform.sandbox_id.as_str(), platform.event.as_ref().expect("event"))
            }
            other => panic!("expected platform event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn capabilities_and_listener_requirements() {
        let driver = DemoDriver::new();
        let caps = driver.get_capabilities(Request::new(GetCapabilitiesRequest {})).await.expect("caps").into_inner();
        assert_eq!(caps.driver_name, "demo");
        assert_eq!(caps.driver_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(caps.default_image, "openshell/sandbox:latest");
        assert!(caps.gateway_manages_lifecycle);

        let reqs = driver
            .get_gateway_listener_requirements(Request::new(GetGatewayListenerRequirementsRequest {}))
            .await
            .expect("requirements")
            .into_inner()
            .requirements;
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].reason, "demo driver runs sandboxes on this host");
        assert!(matches!(reqs[0].selector, Some(Selector::LoopbackInterface(_))));
    }

    #[tokio::test]
    async fn validate_rejects_missing_fields() {
        let driver = driver();
        let mut no_template = sandbox("s1", "one", "img");
        if let Some(spec) = no_template.spec.as_mut() {
            spec.template = None;
        }
        let cases = [
            (None, "sandbox is required"),
            (Some(sandbox("", "one", "img")), "sandbox.id"),
            (Some(sandbox("s1", "one", "")), "sandbox.spec.template.image"),
            (Some(no_template), "sandbox.spec.template.image"),
        ];
        for (sandbox, field) in cases {
            let err = driver
                .validate_sandbox_create(Request::new(ValidateSandboxCreateRequest { sandbox: sandbox.clone() }))
                .await
                .expect_err("invalid");
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains(field), "{}", err.message());
            let err = driver.create_sandbox(Request::new(CreateSandboxRequest { sandbox })).await.expect_err("invalid");
            assert_eq!(err.code(), Code::InvalidArgument);
        }
        assert_eq!(driver.sandbox_count(), 0);
    }

    #[tokio::test]
    async fn validate_and_create_reject_duplicates() {
        let driver = driver();
        driver
            .validate_sandbox_create(Request::new(ValidateSandboxCreateRequest {
                sandbox: Some(sandbox("s1", "one", "img")),
            }))
            .await
            .expect("valid before create");
        create(&driver, "s1", "one").await;
        for candidate in [sandbox("s1", "other", "img"), sandbox("s2", "one", "img")] {
            let err = driver
                .validate_sandbox_create(Request::new(ValidateSandboxCreateRequest {
                    sandbox: Some(candidate.clone()),
                }))
                .await
                .expect_err("duplicate");
            assert_eq!(err.code(), Code::AlreadyExists);
            let err = driver
                .create_sandbox(Request::new(CreateSandboxRequest { sandbox: Some(candidate) }))
                .await
                .expect_err("duplicate");
            assert_eq!(err.code(), Code::AlreadyExists);
            assert!(!err.message().contains(TOKEN));
        }
        assert_eq!(driver.sandbox_count(), 1);
    }

    #[tokio::test]
    async fn create_provisions_then_becomes_ready() {
        let driver = driver();
        let mut watch = watch(&driver).await;
        create(&driver, "s1", "one").await;

        let provisioning = get(&driver, "s1").await.expect("get");
        let status = provisioning.status.clone().expect("status");
        assert_eq!(status.sandbox_name, "one");
        assert_eq!(status.instance_id, "demo-1");
        assert_eq!(ready(&provisioning), ("False".into(), "Provisioning".into()));
        let spec = provisioning.spec.as_ref().expect("spec");
        assert!(spec.sandbox_token.is_empty(), "token must not be echoed");

        let running = wait_ready(&driver, "s1").await;
        assert_eq!(ready(&running), ("True".into(), "Running".into()));
        let time = &ready_condition(&running).expect("Ready").last_transition_time;
        assert!(time.contains('T') && time.ends_with('Z'), "{time}");

        let first = next(&mut watch).await;
        assert_eq!(ready(snapshot_of(&first)).1, "Provisioning");
        let scheduled = next(&mut watch).await;
        let (id, event) = platform_of(&scheduled);
        assert_eq!(id, "s1");
        assert_eq!(
            (event.source.as_str(), event.r#type.as_str(), event.reason.as_str()),
            ("demo-driver", "Normal", "Scheduled")
        );
        assert!(event.timestamp_ms > 1_600_000_000_000);
        assert_eq!(ready(snapshot_of(&next(&mut watch).await)).1, "Running");
        assert_eq!(platform_of(&next(&mut watch).await).1.reason, "Started");
        assert_quiet(&mut watch).await;
    }

    #[tokio::test]
    async fn stop_and_start_are_idempotent_without_duplicate_events() {
        let driver = driver();
        create(&driver, "s1", "one").await;
        wait_ready(&driver, "s1").await;
        let mut watch = watch(&driver).await;
        next(&mut watch).await; // the snapshot of s1

        stop(&driver, "s1").await.expect("stop");
        assert_eq!(ready(snapshot_of(&next(&mut watch).await)).1, "Stopped");
        assert_eq!(platform_of(&next(&mut watch).await).1.reason, "Stopped");
        stop(&driver, "s1").await.expect("stop again");
        assert_quiet(&mut watch).await;
        let stopped = get(&driver, "s1").await.expect("get");
        assert_eq!(ready(&stopped), ("False".into(), "Stopped".into()));

        start(&driver, "s1").await.expect("start");
        assert_eq!(ready(snapshot_of(&next(&mut watch).await)).1, "Running");
        assert_eq!(platform_of(&next(&mut watch).await).1.reason, "Started");
        start(&driver, "s1").await.expect("start again");
        assert_quiet(&mut watch).await;
    }

    #[tokio::test]
    async fn stop_during_provisioning_stays_stopped() {
        let driver =
            DemoDriver::with_options(DemoOptions { provision_delay: Duration::from_millis(50), ..Default::default() });
        create(&driver, "s1", "one").await;
        stop(&driver, "s1").await.expect("stop");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let sandbox = get(&driver, "s1").await.expect("get");
        assert_eq!(ready(&sandbox), ("False".into(), "Stopped".into()));
    }

    #[tokio::test]
    async fn lookup_by_name_works() {
        let driver = driver();
        create(&driver, "s1", "one").await;
        driver
            .stop_sandbox(Request::new(StopSandboxRequest {
                sandbox_id: String::new(),
                sandbox_name: "one".to_owned(),
            }))
            .await
            .expect("stop by name");
        let sandbox = driver
            .get_sandbox(Request::new(GetSandboxRequest { sandbox_id: String::new(), sandbox_name: "one".to_owned() }))
            .await
            .expect("get by name")
            .into_inner()
            .sandbox
            .expect("sandbox");
        assert_eq!(sandbox.id, "s1");
        assert_eq!(ready(&sandbox).1, "Stopped");
    }

    #[tokio::test]
    async fn delete_twice_reports_true_then_false() {
        let driver = driver();
        create(&driver, "s1", "one").await;
        let mut watch = watch(&driver).await;
        next(&mut watch).await; // the snapshot of s1

        assert!(delete(&driver, "s1").await);
        let deleting = get(&driver, "s1").await.expect("still visible");
        assert!(deleting.status.expect("status").deleting);
        assert!(!delete(&driver, "s1").await, "already being deleted");

        // Provisioning may finish or not before the delete lands; skip
        // whatever it produced and look for the deletion itself.
        let mut saw_deleting = false;
        loop {
            match next(&mut watch).await.payload {
                Some(Payload::Sandbox(snapshot)) => {
                    let sandbox = snapshot.sandbox.expect("sandbox");
                    saw_deleting |= sandbox.status.expect("status").deleting;
                }
                Some(Payload::Deleted(deleted)) => {
                    assert_eq!(deleted.sandbox_id, "s1");
                    break;
                }
                Some(Payload::PlatformEvent(_)) => {}
                None => panic!("empty event"),
            }
        }
        assert!(saw_deleting, "deleting snapshot precedes deleted event");
        assert_eq!(driver.sandbox_count(), 0);
        assert!(!delete(&driver, "s1").await);
        assert!(!delete(&driver, "never-existed").await);
        assert_quiet(&mut watch).await;
    }

    #[tokio::test]
    async fn unknown_sandboxes_are_not_found() {
        let driver = driver();
        let err = get(&driver, "ghost").await.expect_err("missing");
        assert_eq!(err.code(), Code::NotFound);
        assert!(err.message().contains("ghost"), "{}", err.message());
        for err in
            [stop(&driver, "ghost").await.expect_err("missing"), start(&driver, "ghost").await.expect_err("missing")]
        {
            assert_eq!(err.code(), Code::NotFound);
            assert!(err.message().contains("ghost"));
        }
        let err = driver
            .get_sandbox(Request::new(GetSandboxRequest {
                sandbox_id: String::new(),
                sandbox_name: "nobody".to_owned(),
            }))
            .await
            .expect_err("missing");
        assert_eq!(err.code(), Code::NotFound);
        assert!(err.message().contains("nobody"));
    }

    #[tokio::test]
    async fn list_is_sorted_by_id() {
        let driver = driver();
        for (id, name) in [("c", "three"), ("a", "one"), ("b", "two")] {
            create(&driver, id, name).await;
        }
        let ids: Vec<_> = driver
            .list_sandboxes(Request::new(ListSandboxesRequest {}))
            .await
            .expect("list")
            .into_inner()
            .sandboxes
            .into_iter()
            .map(|sandbox| sandbox.id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn watch_sends_existing_snapshot_then_live_events() {
        let driver = driver();
        create(&driver, "b", "two").await;
        create(&driver, "a", "one").await;
        wait_ready(&driver, "a").await;
        wait_ready(&driver, "b").await;

        let mut watch = watch(&driver).await;
        assert_eq!(snapshot_of(&next(&mut watch).await).id, "a");
        assert_eq!(snapshot_of(&next(&mut watch).await).id, "b");
        create(&driver, "c", "three").await;
        let live = next(&mut watch).await;
        assert_eq!(snapshot_of(&live).id, "c");
        assert_eq!(ready(snapshot_of(&live)).1, "Provisioning");
    }

    #[tokio::test]
    async fn every_watcher_receives_live_events() {
        let driver = driver();
        let mut first = watch(&driver).await;
        let mut second = watch(&driver).await;
        create(&driver, "s1", "one").await;
        for stream in [&mut first, &mut second] {
            assert_eq!(snapshot_of(&next(stream).await).id, "s1");
            assert_eq!(platform_of(&next(stream).await).0, "s1");
        }
    }

    #[tokio::test]
    async fn lagging_watcher_is_ended_with_an_error() {
        let driver =
            DemoDriver::build(DemoOptions { provision_delay: Duration::from_secs(60), ..Default::default() }, 2);
        let mut watch = watch(&driver).await;
        for id in ["a", "b", "c"] {
            create(&driver, id, id).await;
        }
        let err = tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("item within timeout")
            .expect("stream item")
            .expect_err("lag error");
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("lagged"), "{}", err.message());
        let end = tokio::time::timeout(WAIT, watch.next()).await.expect("end");
        assert!(end.is_none(), "stream ends after the lag error");
    }

    #[tokio::test]
    async fn workspaces_are_idempotent() {
        let driver = driver();
        let ensure =
            |name: &str| driver.ensure_workspace(Request::new(EnsureWorkspaceRequest { workspace: name.to_owned() }));
        ensure("ws").await.expect("ensure");
        ensure("ws").await.expect("ensure again");
        assert_eq!(ensure("").await.expect_err("empty").code(), Code::InvalidArgument);
        assert!(driver.lock().workspaces.contains("ws"));

        for _ in 0..2 {
            driver
                .delete_workspace(Request::new(DeleteWorkspaceRequest { workspace: "ws".to_owned() }))
                .await
                .expect("delete workspace");
        }
        assert!(driver.lock().workspaces.is_empty());
    }
}
