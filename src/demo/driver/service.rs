//! The compute-driver contract served by the demo driver: each gRPC method,
//! counted and logged, on top of the state, lifecycle and watch parts.

use futures_util::stream::{self, StreamExt as _};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::obs::escape::{for_log, LIMIT};
use crate::proto::compute::compute_driver_server::ComputeDriver;
use crate::proto::compute::gateway_listener_requirement::Selector;
use crate::proto::compute::{
    CreateSandboxRequest, CreateSandboxResponse, DeleteSandboxRequest, DeleteSandboxResponse, DeleteWorkspaceRequest,
    DeleteWorkspaceResponse, EnsureWorkspaceRequest, EnsureWorkspaceResponse, GatewayListenerRequirement,
    GatewayLoopbackInterfaceRequirement, GetCapabilitiesRequest, GetCapabilitiesResponse,
    GetGatewayListenerRequirementsRequest, GetGatewayListenerRequirementsResponse, GetSandboxRequest,
    GetSandboxResponse, ListSandboxesRequest, ListSandboxesResponse, StartSandboxRequest, StartSandboxResponse,
    StopSandboxRequest, StopSandboxResponse, ValidateSandboxCreateRequest, ValidateSandboxCreateResponse,
    WatchSandboxesRequest,
};

use super::lifecycle::{Phase, DELETE_DELAY};
use super::state::{
    admit, instance_of, is_deleting, not_found, require_sandbox, resolve, sandbox_id_of, status_mut, validate_create,
};
use super::watch::{live_events, snapshot_event, WatchStream};
use super::DemoDriver;

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
