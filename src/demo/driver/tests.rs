//! The demo driver as a gateway sees it: every method through the gRPC
//! service, provisioning and deletion over time, and the watch stream.

use std::time::Duration;

use futures_util::StreamExt as _;
use tonic::{Code, Request, Status};

use crate::proto::compute::compute_driver_server::ComputeDriver as _;
use crate::proto::compute::gateway_listener_requirement::Selector;
use crate::proto::compute::watch_sandboxes_event::Payload;
use crate::proto::compute::{
    CreateSandboxRequest, DeleteSandboxRequest, DeleteWorkspaceRequest, DriverPlatformEvent, DriverSandbox,
    DriverSandboxSpec, DriverSandboxTemplate, EnsureWorkspaceRequest, GetCapabilitiesRequest,
    GetGatewayListenerRequirementsRequest, GetSandboxRequest, ListSandboxesRequest, StartSandboxRequest,
    StopSandboxRequest, ValidateSandboxCreateRequest, WatchSandboxesEvent, WatchSandboxesRequest,
};

use super::lifecycle::ready_condition;
use super::watch::WatchStream;
use super::{DemoDriver, DemoOptions};

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
        .delete_sandbox(Request::new(DeleteSandboxRequest { sandbox_id: id.to_owned(), sandbox_name: String::new() }))
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
            .validate_sandbox_create(Request::new(ValidateSandboxCreateRequest { sandbox: Some(candidate.clone()) }))
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
        .stop_sandbox(Request::new(StopSandboxRequest { sandbox_id: String::new(), sandbox_name: "one".to_owned() }))
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
    for err in [stop(&driver, "ghost").await.expect_err("missing"), start(&driver, "ghost").await.expect_err("missing")]
    {
        assert_eq!(err.code(), Code::NotFound);
        assert!(err.message().contains("ghost"));
    }
    let err = driver
        .get_sandbox(Request::new(GetSandboxRequest { sandbox_id: String::new(), sandbox_name: "nobody".to_owned() }))
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
    let driver = DemoDriver::build(DemoOptions { provision_delay: Duration::from_secs(60), ..Default::default() }, 2);
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
