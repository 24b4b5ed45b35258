//! Scenarios: the bridge works with gRPC stacks other than its own.
//!
//! Gateways and drivers written with Python's grpcio (gRPC's C core, not
//! hyper/tonic) and a driver written with grpc-go talk through shim and
//! relay over real sockets and real mTLS:
//!
//! - a grpcio gateway drives a grpcio driver (`tests/interop/gateway.py` on
//!   the shim's socket, `tests/interop/driver.py` behind the relay), with
//!   grpcio's default channel options (the %-encoded socket path as
//!   `:authority`), also when it connected while the relay was down;
//! - the same grpcio gateway drives the bridge's own demo driver;
//! - a tonic gateway drives the grpcio driver;
//! - each foreign driver (grpcio, grpc-go from `tests/interop/go/driver.go`)
//!   through every state of the next hop: a call made while it is down waits
//!   for it, and a driver lost under a watch ends the watch UNAVAILABLE and
//!   its successor is reached;
//! - idle watches: a watch held with nothing to say for
//!   `OPENSHELL_BRIDGE_IDLE_SECS` (default 130 s, longer than both stacks'
//!   ping strike-out) to a grpcio and to a grpc-go driver, and by a grpcio
//!   gateway, still delivers the next event; gRPC servers allow a client one
//!   ping per 5 minutes without data, so a bridge pinging a driver (or a
//!   gateway) gets GOAWAY ENHANCE_YOUR_CALM within 10-15 s.
//!
//! The session covers unary calls, an error with its message and trailing
//! metadata, custom (text and binary) metadata echoed back, a server stream
//! of snapshot and live events, and a cancellation that reaches the driver.
//!
//! Needs `python3` with grpcio and grpcio-tools
//! (`python3 -m pip install -r tests/interop/requirements.txt`) and, for
//! the grpc-go driver, Debian's `golang-go` and `golang-google-grpc-dev`
//! (built at test time in GOPATH mode, nothing downloaded). Without them the
//! scenarios are skipped with a note on stderr, unless
//! `OPENSHELL_BRIDGE_REQUIRE_INTEROP=1` (set in CI) makes that a failure.
//! The Python stubs are generated from `proto/` at test time into a
//! temporary directory; nothing generated is committed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::process::ProcessChain;
use common::*;
use openshell_driver_bridge::demo::driver::DemoDriver;
use openshell_driver_bridge::grpc::client::driver_client;
use openshell_driver_bridge::proto::compute::compute_driver_client::ComputeDriverClient;
use openshell_driver_bridge::proto::compute::watch_sandboxes_event::Payload;
use openshell_driver_bridge::proto::compute::*;
use openshell_driver_bridge::role::relay::{self, DriverTarget};
use openshell_driver_bridge::role::shim;
use openshell_driver_bridge::shutdown::Shutdown;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Code;

const PYTHON: &str = "python3";
const REQUIRE_ENV: &str = "OPENSHELL_BRIDGE_REQUIRE_INTEROP";
const INSTALL: &str = "python3 -m pip install -r tests/interop/requirements.txt";
const GO_INSTALL: &str = "apt-get install -y --no-install-recommends golang-go golang-google-grpc-dev";
/// Where Debian's golang-*-dev packages put their sources (GOPATH mode).
const DEBIAN_GOPATH: &str = "/usr/share/gocode";
/// How long the idle-watch scenarios hold a watch with nothing on it.
const IDLE_ENV: &str = "OPENSHELL_BRIDGE_IDLE_SECS";
const IDLE_DEFAULT_SECS: u64 = 130;

/// What the grpcio driver reports, and prints when a watch of it ends.
const PYTHON_DRIVER: &str = "python-grpcio";
/// What the grpc-go driver reports.
const GO_DRIVER: &str = "go-grpc";
const WATCH_CANCELLED: &str = "WatchSandboxes cancelled by the caller";

/// Starting Python and importing grpcio can take a while on a cold machine.
const PYTHON_START: Duration = Duration::from_secs(30);
/// The whole scripted gateway session (each call in it has its own deadline).
const SESSION: Duration = Duration::from_secs(60);
/// One call or one streamed message from the tonic gateway.
const CALL: Duration = Duration::from_secs(10);
/// grpcio's traces of the HTTP/2 pings it receives, on for every grpcio
/// gateway and driver (`pings_received`): a client logs them under
/// `http2_ping`, a server under `http_keepalive`.
const PING_TRACE: &str = "http2_ping,http_keepalive";
/// Building the grpc-go driver (a cold cache compiles grpc-go: ~10 s of CPU).
const GO_BUILD: Duration = Duration::from_secs(300);
/// Log words of a hop that hung up on the bridge or was hung up on.
const TROUBLE: &[&str] = &["ENHANCE_YOUR_CALM", "too_many_pings", "too many pings", "going away", "connection lost"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_gateway_drives_a_grpcio_driver_through_the_bridge() {
    let Some(stubs) = python_stubs().await else {
        return;
    };
    let chain = Chain::start_with(tempfile::tempdir().unwrap(), |_| {}, |_| {}).await;
    let mut driver = python_driver(&stubs, &chain.driver_socket).await;

    let mut gateway = python_gateway(&stubs, &chain.shim_socket, PYTHON_DRIVER, Authority::Localhost, &[]);
    gateway.assert_success(SESSION, &[&driver]).await;

    // The gateway cancelled its watch; see `cancellation_reported`.
    driver.cancellation_reported().await;
    assert_never_pinged(&gateway);
    assert_never_pinged(&driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_gateway_drives_the_demo_driver_through_the_bridge() {
    let Some(stubs) = python_stubs().await else {
        return;
    };
    let chain = Chain::start_with(tempfile::tempdir().unwrap(), |_| {}, |_| {}).await;
    openshell_driver_bridge::demo::serve(&chain.driver_socket, DemoDriver::new(), chain.shutdown.clone()).unwrap();

    let mut gateway = python_gateway(&stubs, &chain.shim_socket, "demo", Authority::Localhost, &[]);
    gateway.assert_success(SESSION, &[]).await;
    assert_never_pinged(&gateway);
}

/// grpcio with default channel options sends the %-encoded socket path as
/// the `:authority` of a `unix:` target (grpc/grpc#38142), which h2 servers
/// refuse (hyperium/h2#487); the shim takes any authority and rewrites it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_gateway_with_grpcio_default_unix_authority_reaches_the_driver() {
    let Some(stubs) = python_stubs().await else {
        return;
    };
    let chain = Chain::start_with(tempfile::tempdir().unwrap(), |_| {}, |_| {}).await;
    let mut driver = python_driver(&stubs, &chain.driver_socket).await;

    let mut gateway = python_gateway(&stubs, &chain.shim_socket, PYTHON_DRIVER, Authority::GrpcioDefault, &[]);
    gateway.assert_success(SESSION, &[&driver]).await;
    driver.expect_line("created interop-a", CALL, &[&gateway]).await;
    assert_never_pinged(&gateway);
    assert_never_pinged(&driver);
}

/// The same grpcio gateway (default channel options) connects while the
/// relay is down: its first call fails UNAVAILABLE after the shim's wait;
/// then the relay starts and the whole session succeeds on the same channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_gateway_with_default_options_that_connected_while_the_relay_was_down_works_on_the_same_channel() {
    grpcio_gateway_through_a_relay_outage(None).await;
}

/// The same with the shim behind an HTTP proxy (tinyproxy): while the
/// relay is down the proxy refuses the tunnel, and once it is up the next
/// tunnel carries the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_gateway_with_default_options_through_a_proxy_while_the_relay_was_down_works_on_the_same_channel() {
    let test = "grpcio_gateway_with_default_options_through_a_proxy_while_the_relay_was_down";
    let Some(proxy) = common::tinyproxy::Tinyproxy::start(test, "") else { return };
    grpcio_gateway_through_a_relay_outage(Some(&proxy)).await;
    assert!(proxy.log().contains("CONNECT 127.0.0.1:"), "the shim did not go through the proxy:\n{}", proxy.log());
}

/// A grpcio gateway (default channel options) holds a watch through a shim
/// behind an HTTP proxy (tinyproxy) to a grpcio driver; the proxy restarts,
/// cutting the tunnel: the watch ends UNAVAILABLE, and calls and a new
/// watch on the same grpcio channel go through a new tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_gateway_with_default_options_whose_proxied_hop_is_lost_under_a_watch_recovers_on_the_same_channel() {
    let test = "grpcio_gateway_with_default_options_whose_proxied_hop_is_lost_under_a_watch";
    let Some(mut proxy) = common::tinyproxy::Tinyproxy::start(test, "") else { return };
    let Some(stubs) = python_stubs().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let driver_socket = dir.path().join("driver/driver.sock");
    let shim_socket = dir.path().join("shim/compute-driver.sock");
    let shutdown = Shutdown::new();
    let _stop = StopOnDrop(shutdown.clone());
    let driver = python_driver(&stubs, &driver_socket).await;
    let relay =
        relay::start(relay_config(&pki, DriverTarget::Unix(driver_socket.clone())), shutdown.clone()).await.unwrap();
    let mut shim_cfg = shim_config(&pki, &shim_socket, relay.local_addr);
    shim_cfg.proxy = openshell_driver_bridge::connect::proxy::ProxySetting::from_flag(&proxy.url("")).unwrap();
    shim::start(shim_cfg, shutdown.clone()).unwrap();

    let mut gateway =
        python_gateway(&stubs, &shim_socket, PYTHON_DRIVER, Authority::GrpcioDefault, &["--scenario", "lost-hop"]);
    gateway.expect_line("watch open", SESSION, &[&driver]).await;
    assert_eq!(proxy.connects_to(relay.local_addr), 1, "{}", proxy.log());
    proxy.restart();
    gateway.say("the hop is cut");
    gateway.assert_success(SESSION, &[&driver]).await;
    let transcript = gateway.transcript();
    assert!(transcript.contains("PASS hop cut: ended UNAVAILABLE"), "{transcript}");
    let figures: Vec<_> = transcript.lines().filter_map(|line| line.strip_prefix("out| PASS ")).collect();
    report_line(&format!("proxied hop lost under a grpcio watch: {}", figures.join("; ")));
    assert!(proxy.connects_to(relay.local_addr) >= 1, "no new tunnel:\n{}", proxy.log());
    assert_never_pinged(&gateway);
    assert_never_pinged(&driver);
}

async fn grpcio_gateway_through_a_relay_outage(proxy: Option<&common::tinyproxy::Tinyproxy>) {
    let Some(stubs) = python_stubs().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let driver_socket = dir.path().join("driver/driver.sock");
    let shim_socket = dir.path().join("shim/compute-driver.sock");
    let shutdown = Shutdown::new();
    let _stop = StopOnDrop(shutdown.clone());
    let mut driver = python_driver(&stubs, &driver_socket).await;

    // The shim's upstream: a port nothing listens on yet.
    let relay_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut shim_cfg = shim_config(&pki, &shim_socket, relay_addr);
    shim_cfg.settings.dial.connect_wait = Duration::from_secs(2);
    if let Some(proxy) = proxy {
        shim_cfg.proxy = openshell_driver_bridge::connect::proxy::ProxySetting::from_flag(&proxy.url("")).unwrap();
    }
    shim::start(shim_cfg, shutdown.clone()).unwrap();

    let mut gateway =
        python_gateway(&stubs, &shim_socket, PYTHON_DRIVER, Authority::GrpcioDefault, &["--scenario", "outage"]);
    gateway.expect_line("waiting for the upstream", SESSION, &[&driver]).await;
    assert!(gateway.transcript().contains("PASS GetCapabilities while the upstream is down: UNAVAILABLE"));

    let mut relay_cfg = relay_config(&pki, DriverTarget::Unix(driver_socket.clone()));
    relay_cfg.listen = relay_addr;
    relay::start(relay_cfg, shutdown.clone()).await.unwrap();
    gateway.say("the relay is up");
    gateway.assert_success(SESSION, &[&driver]).await;
    // The calls after the outage reached the driver (the session checked
    // its answers; the driver reports what it created).
    driver.expect_line("created interop-a", CALL, &[&gateway]).await;
    driver.expect_line("created interop-b", CALL, &[&gateway]).await;
    assert_never_pinged(&gateway);
    assert_never_pinged(&driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_gateway_drives_a_grpcio_driver_through_the_bridge() {
    let Some(stubs) = python_stubs().await else {
        return;
    };
    let chain = Chain::start_with(tempfile::tempdir().unwrap(), |_| {}, |_| {}).await;
    let mut driver = python_driver(&stubs, &chain.driver_socket).await;
    let mut client = bounded(driver_client(&chain.shim_socket)).await.unwrap();

    let caps = bounded(client.get_capabilities(GetCapabilitiesRequest {})).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, PYTHON_DRIVER);
    assert!(!caps.driver_version.is_empty());

    for id in ["tonic-a", "tonic-b"] {
        bounded(client.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox(id)) })).await.unwrap();
    }
    let listed = bounded(client.list_sandboxes(ListSandboxesRequest {})).await.unwrap().into_inner().sandboxes;
    let ids: Vec<_> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["tonic-a", "tonic-b"]);
    let spec = listed[0].spec.as_ref().unwrap();
    assert_eq!(spec.environment["INTEROP"], "1");
    assert!(spec.sandbox_token.is_empty(), "the driver echoed the token");

    // An error from grpcio: code, message and trailing metadata intact.
    let missing = bounded(
        client.get_sandbox(GetSandboxRequest { sandbox_id: "tonic-ghost".into(), sandbox_name: String::new() }),
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert_eq!(missing.message(), "sandbox tonic-ghost not found by the python-grpcio driver");
    assert_eq!(missing.metadata().get("x-driver").unwrap(), PYTHON_DRIVER);
    assert_eq!(
        missing.metadata().get_bin("x-driver-detail-bin").unwrap().to_bytes().unwrap(),
        &b"\x00\x01\xfe\xff not found"[..]
    );

    // Custom metadata reaches grpcio and comes back as trailers.
    let blob: Vec<u8> = (0..=255).collect();
    let mut request = tonic::Request::new(GetCapabilitiesRequest {});
    request.metadata_mut().insert("x-interop", "from-tonic".parse().unwrap());
    request.metadata_mut().insert_bin("x-interop-bin", MetadataValue::from_bytes(&blob));
    let response = bounded(client.get_capabilities(request)).await.unwrap();
    assert_eq!(response.metadata().get("x-interop").unwrap(), "from-tonic");
    assert_eq!(response.metadata().get_bin("x-interop-bin").unwrap().to_bytes().unwrap(), &blob[..]);

    // The watch: a snapshot of both sandboxes, then three live events, each
    // its own message; dropping the stream cancels it at the driver.
    let mut watch = bounded(client.watch_sandboxes(WatchSandboxesRequest {})).await.unwrap().into_inner();
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(bounded(watch.message()).await.unwrap().unwrap().payload);
    }
    let snapshot: Vec<_> = events[..2]
        .iter()
        .map(|payload| match payload {
            Some(Payload::Sandbox(s)) => s.sandbox.as_ref().unwrap().id.as_str(),
            other => panic!("expected a snapshot, got {other:?}"),
        })
        .collect();
    assert_eq!(snapshot, ["tonic-a", "tonic-b"]);
    let live: Vec<_> = events[2..]
        .iter()
        .map(|payload| match payload {
            Some(Payload::PlatformEvent(p)) => {
                let event = p.event.as_ref().unwrap();
                assert_eq!(event.source, PYTHON_DRIVER);
                assert_eq!(event.metadata["driver"], PYTHON_DRIVER);
                event.reason.as_str()
            }
            other => panic!("expected a live platform event, got {other:?}"),
        })
        .collect();
    assert_eq!(live, ["Pulling", "Pulled", "Started"]);
    drop(watch);
    driver.cancellation_reported().await;

    for id in ["tonic-a", "tonic-b"] {
        let deleted =
            bounded(client.delete_sandbox(DeleteSandboxRequest { sandbox_id: id.into(), sandbox_name: String::new() }))
                .await
                .unwrap()
                .into_inner();
        assert!(deleted.deleted, "{id}");
    }
    let left = bounded(client.list_sandboxes(ListSandboxesRequest {})).await.unwrap().into_inner();
    assert!(left.sandboxes.is_empty());
    assert_never_pinged(&driver);
}

// ---------------------------------------------------------------------------
// Every state of the next hop, with foreign drivers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_while_the_grpcio_driver_is_down_waits_for_it() {
    a_call_made_while_the_driver_is_down_waits_for_it(Stack::Grpcio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_while_the_grpc_go_driver_is_down_waits_for_it() {
    a_call_made_while_the_driver_is_down_waits_for_it(Stack::GrpcGo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_driver_lost_under_a_watch_ends_it_unavailable_and_its_successor_is_reached() {
    a_driver_lost_under_a_watch_ends_it_unavailable_and_its_successor_is_reached(Stack::Grpcio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_go_driver_lost_under_a_watch_ends_it_unavailable_and_its_successor_is_reached() {
    a_driver_lost_under_a_watch_ends_it_unavailable_and_its_successor_is_reached(Stack::GrpcGo).await;
}

/// The gateway calls while no driver serves the relay's socket; the driver
/// starts a second later, within `--connect-wait`, and answers that call.
async fn a_call_made_while_the_driver_is_down_waits_for_it(stack: Stack) {
    let Some(foreign) = stack.prepare().await else {
        return;
    };
    let chain = Chain::start_with(
        tempfile::tempdir().unwrap(),
        |relay| relay.settings.dial.connect_wait = Duration::from_secs(20),
        |shim| shim.settings.dial.connect_wait = Duration::from_secs(20),
    )
    .await;
    let socket = chain.shim_socket.clone();
    let started = Instant::now();
    let call = tokio::spawn(async move {
        let mut gateway = driver_client(&socket).await.unwrap();
        gateway.get_capabilities(GetCapabilitiesRequest {}).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!call.is_finished(), "answered with no driver: {:?}", call.await);

    let driver = foreign.start(&chain.driver_socket, Duration::from_secs(120)).await;
    let answered = timeout(Duration::from_secs(20), call)
        .await
        .unwrap_or_else(|_| panic!("the waiting call never ended:\n{}", driver.transcript()))
        .unwrap();
    let caps = answered.unwrap_or_else(|s| panic!("the waiting call failed: {s:?}\n{}", driver.transcript()));
    assert_eq!(caps.into_inner().driver_name, foreign.name());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(20), "answered after {waited:?}");

    // And calls go on as with any driver.
    let mut gateway = bounded(driver_client(&chain.shim_socket)).await.unwrap();
    bounded(gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("after-wait")) })).await.unwrap();
    let listed = bounded(gateway.list_sandboxes(ListSandboxesRequest {})).await.unwrap().into_inner().sandboxes;
    assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["after-wait"]);
    foreign.assert_never_pinged(&driver);
}

/// The driver process dies (SIGKILL) under an open watch: the watch ends
/// UNAVAILABLE at once, naming the driver's socket; a new driver on the same
/// socket serves the next calls and the next watch.
async fn a_driver_lost_under_a_watch_ends_it_unavailable_and_its_successor_is_reached(stack: Stack) {
    let Some(foreign) = stack.prepare().await else {
        return;
    };
    let chain = Chain::start_with(tempfile::tempdir().unwrap(), |_| {}, |_| {}).await;
    let driver = foreign.start(&chain.driver_socket, Duration::from_secs(120)).await;
    let mut gateway = bounded(driver_client(&chain.shim_socket)).await.unwrap();
    bounded(gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("before")) })).await.unwrap();
    let mut events = watch(&mut gateway).await;
    next_sandbox_event(&mut events, "before", &[&driver]).await;

    foreign.assert_never_pinged(&driver);
    let transcript = driver.transcript();
    let started = Instant::now();
    drop(driver); // killed and reaped: its sockets close, nothing said
    let end = timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Some(Ok(Some(_))) => continue,
                Some(Ok(None)) => return Ok(()),
                Some(Err(status)) => return Err(status),
                None => unreachable!("the reader reports the end"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the watch outlived its driver by 5 s:\n{transcript}"));
    let status = end.expect_err("the watch ended cleanly although its driver died");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("driver.sock"), "the status does not name the driver: {}", status.message());
    assert!(started.elapsed() < Duration::from_secs(3), "ended after {:?}", started.elapsed());

    let successor = foreign.start(&chain.driver_socket, Duration::from_secs(120)).await;
    let caps = bounded(gateway.get_capabilities(GetCapabilitiesRequest {})).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, foreign.name());
    let mut events = watch(&mut gateway).await;
    bounded(gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("after")) })).await.unwrap();
    next_sandbox_event(&mut events, "after", &[&successor]).await;
    foreign.assert_never_pinged(&successor);
}

// ---------------------------------------------------------------------------
// Idle watches: no pings to a driver or a gateway.

/// Five watches held idle at once, each for the idle period (so the run
/// adds that once, not once per scenario, whatever the test thread count):
/// a tonic gateway's watch to a grpcio driver and to a grpc-go driver, and a
/// grpcio gateway's watch to a grpcio driver; then the last two again with
/// the shim behind an HTTP proxy (tinyproxy) that closes tunnels idle for
/// 8 s, reached over plain TCP by the first and over TLS (an `https://`
/// proxy) by the second. Each stack keeps its defaults.
/// Every hop must stay quiet: no GOAWAY, no lost connection, in the logs of
/// the real relay and shim processes or the drivers', and the event created
/// after the idle period arrives on the same watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watches_through_the_bridge_outlive_the_ping_policies_of_grpcio_and_grpc_go() {
    let idle = idle_period();
    // On one thread (the chain's driver hook is not Send); each scenario is
    // a task of its own, so a panic in one is reported with the others.
    let local = tokio::task::LocalSet::new();
    let failures = local
        .run_until(async {
            let scenarios = [
                (
                    "tonic gateway -> grpcio driver",
                    tokio::task::spawn_local(idle_watch_to_a_driver(Stack::Grpcio, idle, Egress::Direct)),
                ),
                (
                    "tonic gateway -> grpc-go driver",
                    tokio::task::spawn_local(idle_watch_to_a_driver(Stack::GrpcGo, idle, Egress::Direct)),
                ),
                (
                    "grpcio gateway -> grpcio driver",
                    tokio::task::spawn_local(idle_watch_of_a_grpcio_gateway(idle, Egress::Direct)),
                ),
                (
                    "tonic gateway -> shim -> tinyproxy -> relay -> grpc-go driver",
                    tokio::task::spawn_local(idle_watch_to_a_driver(Stack::GrpcGo, idle, Egress::Proxy)),
                ),
                (
                    "grpcio gateway -> shim -> TLS -> tinyproxy -> relay -> grpcio driver",
                    tokio::task::spawn_local(idle_watch_of_a_grpcio_gateway(idle, Egress::HttpsProxy)),
                ),
            ];
            let mut failures = Vec::new();
            for (name, scenario) in scenarios {
                match scenario.await {
                    Ok(Some(figures)) => report_line(&format!("idle watch, {name}: {figures}")),
                    Ok(None) => {} // skipped, said so
                    Err(e) => failures.push(format!("{name}: {}", panic_text(e))),
                }
            }
            failures
        })
        .await;
    assert!(failures.is_empty(), "{} of 5 idle-watch scenarios failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// The message of a scenario task's panic.
fn panic_text(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// A tonic gateway's watch through shim and relay (the real binaries, with
/// their default keepalive) to a foreign driver; the figures, or `None`
/// when skipped.
async fn idle_watch_to_a_driver(stack: Stack, idle: Duration, egress: Egress) -> Option<String> {
    let foreign = stack.prepare().await?;
    let proxy = egress.proxy().await?;
    let (chain, driver) = chain_with_foreign_driver(&foreign, idle + Duration::from_secs(180), proxy.as_ref()).await;
    let mut gateway = bounded(driver_client(&chain.shim_socket)).await.unwrap();
    bounded(gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("before-idle")) })).await.unwrap();
    let mut events = watch(&mut gateway).await;
    next_sandbox_event(&mut events, "before-idle", &[&driver]).await;
    // The driver's first events (grpcio's three live ones) settle first.
    let burst = settle(&mut events, Duration::from_secs(2), &driver).await;

    let started = Instant::now();
    if let Ok(seen) = timeout(idle, events.recv()).await {
        let what = match seen {
            Some(Ok(Some(event))) => format!("got an unexpected event {event:?}"),
            Some(Ok(None)) => "ended cleanly".to_owned(),
            Some(Err(status)) => format!("ended {:?}: {}", status.code(), status.message()),
            None => "lost its reader".to_owned(),
        };
        panic!(
            "after {:?} of {idle:?} idle, the watch {what}\n{}\n{}",
            started.elapsed(),
            driver.transcript(),
            chain.output()
        );
    }
    let idled = started.elapsed();
    let created = Instant::now();
    bounded(gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("after-idle")) })).await.unwrap();
    next_sandbox_event(&mut events, "after-idle", &[&driver]).await;
    let delivered = created.elapsed();
    assert_quiet(&chain, &[&driver]);
    foreign.assert_never_pinged(&driver);
    Some(format!(
        "{} first events, idle {:.1} s with nothing arriving or ending, then the after-idle event in {} ms; \
         no GOAWAY or lost connection logged{}{}",
        burst + 1,
        idled.as_secs_f64(),
        delivered.as_millis(),
        if matches!(foreign, Foreign::Grpcio(_)) { ", the driver received 0 pings" } else { "" },
        Egress::tunnel_held(proxy.as_ref(), &chain)
    ))
}

/// A grpcio gateway (default channel options) holding an idle watch through
/// shim and relay to a grpcio driver (gateway.py --scenario idle-watch).
async fn idle_watch_of_a_grpcio_gateway(idle: Duration, egress: Egress) -> Option<String> {
    let stubs = python_stubs().await?;
    let proxy = egress.proxy().await?;
    let foreign = Foreign::Grpcio(stubs.clone());
    let (chain, driver) = chain_with_foreign_driver(&foreign, idle + Duration::from_secs(180), proxy.as_ref()).await;
    let idle_secs = idle.as_secs().to_string();
    let mut gateway = python_gateway(
        &stubs,
        &chain.shim_socket,
        PYTHON_DRIVER,
        Authority::GrpcioDefault,
        &["--scenario", "idle-watch", "--idle-seconds", &idle_secs],
    );
    gateway.assert_success(idle + SESSION, &[&driver]).await;
    assert_quiet(&chain, &[&driver, &gateway]);
    assert_never_pinged(&gateway);
    assert_never_pinged(&driver);
    let transcript = gateway.transcript();
    let figures: Vec<_> = transcript.lines().filter_map(|line| line.strip_prefix("out| PASS ")).collect();
    Some(format!(
        "{}; gateway and driver received 0 pings{}",
        figures.join("; "),
        Egress::tunnel_held(proxy.as_ref(), &chain)
    ))
}

/// How the shim reaches the relay in an idle-watch scenario.
#[derive(Clone, Copy)]
enum Egress {
    Direct,
    /// Through tinyproxy (`--proxy http://`), which closes a tunnel idle
    /// for 8 s (less than the relay's own 10 s ping interval toward the
    /// shim): the shim's keepalive on the tunnelled hop must hold it open,
    /// while the gateway and the driver are still never pinged.
    Proxy,
    /// The same behind a TLS front (`--proxy https://` with `--proxy-ca`):
    /// the keepalive crosses TLS to the proxy, then the tunnel.
    HttpsProxy,
}

/// A proxy closing tunnels idle this long: far below the idle period.
const PROXY_IDLE_TIMEOUT_SECS: u32 = 8;

/// The proxy a scenario's shim goes through.
struct ProxyPath {
    proxy: common::tinyproxy::Tinyproxy,
    front: Option<common::tinyproxy::TlsFront>,
    _dir: tempfile::TempDir,
}

impl ProxyPath {
    fn shim_args(&self) -> Vec<String> {
        match &self.front {
            None => vec!["--proxy".into(), self.proxy.url("")],
            Some(front) => {
                vec!["--proxy".into(), front.url(""), "--proxy-ca".into(), front.ca_file.display().to_string()]
            }
        }
    }
}

impl Egress {
    /// The proxy to start: `Some(None)` for none, `None` when tinyproxy is
    /// missing (skipped, said so).
    async fn proxy(self) -> Option<Option<ProxyPath>> {
        if let Egress::Direct = self {
            return Some(None);
        }
        let proxy = common::tinyproxy::Tinyproxy::start_with_idle_timeout(
            "idle watches through an HTTP proxy",
            PROXY_IDLE_TIMEOUT_SECS,
            "",
        )?;
        let dir = tempfile::tempdir().unwrap();
        let front = match self {
            Egress::HttpsProxy => Some(common::tinyproxy::TlsFront::start(dir.path(), proxy.port).await),
            _ => None,
        };
        Some(Some(ProxyPath { proxy, front, _dir: dir }))
    }

    /// The figures' tail for a proxied scenario: the one tunnel held open.
    fn tunnel_held(path: Option<&ProxyPath>, chain: &ProcessChain) -> String {
        let Some(path) = path else { return String::new() };
        let relay = chain.relay_addr.parse().expect("the relay's address");
        let tunnels = path.proxy.connects_to(relay);
        assert_eq!(tunnels, 1, "the shim needed {tunnels} tunnels, not one held open:\n{}", path.proxy.log());
        let tls = match &path.front {
            Some(front) => {
                assert_eq!(front.handshakes(), 1, "TLS handshakes with the proxy's front");
                " inside one TLS connection to the proxy"
            }
            None => "",
        };
        format!(
            ", through one tinyproxy tunnel{tls} held open past the proxy's {PROXY_IDLE_TIMEOUT_SECS} s idle timeout"
        )
    }
}

/// The idle period: `OPENSHELL_BRIDGE_IDLE_SECS`, default 130 s.
fn idle_period() -> Duration {
    let secs = match std::env::var(IDLE_ENV) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{IDLE_ENV}={text:?} is not a number of seconds")),
        Err(_) => IDLE_DEFAULT_SECS,
    };
    Duration::from_secs(secs)
}

/// Asserts that no hop of the chain logged a GOAWAY or a lost connection,
/// and no driver or gateway process a ping complaint.
fn assert_quiet(chain: &ProcessChain, processes: &[&Process]) {
    let logs = [("relay", chain.relay.output()), ("shim", chain.shim.output())];
    for (name, log) in &logs {
        for word in TROUBLE {
            assert!(!log.contains(word), "the {name} logged {word:?}:\n{}", chain.output());
        }
    }
    for process in processes {
        let transcript = process.transcript();
        for word in ["too_many_pings", "too many pings", "ENHANCE_YOUR_CALM"] {
            assert!(!transcript.contains(word), "{} logged {word:?}:\n{transcript}", process.name);
        }
    }
}

/// How many PINGs (acks not counted) a grpcio process received, from the
/// lines of its `GRPC_TRACE` ("CLIENT[..]: received ping N",
/// "SERVER[..]: received ping N: ... ping_strikes=0").
fn pings_received(process: &Process) -> usize {
    let transcript = process.transcript();
    assert!(
        transcript.contains(&format!("gRPC Tracers: {}", PING_TRACE.replace(',', ", "))),
        "{} did not trace its pings (GRPC_TRACE={PING_TRACE}):\n{transcript}",
        process.name
    );
    transcript.lines().filter(|line| line.contains("]: received ping ") && !line.contains("received ping ack")).count()
}

/// Asserts that the bridge never pinged a grpcio process on a Unix socket.
fn assert_never_pinged(process: &Process) {
    let pings = pings_received(process);
    assert_eq!(pings, 0, "{} received {pings} pings from the bridge:\n{}", process.name, process.transcript());
}

/// Relay and shim as processes (the real binary, default keepalive) in
/// front of a foreign driver; the driver serves for at most `lifetime`.
async fn chain_with_foreign_driver(
    foreign: &Foreign,
    lifetime: Duration,
    proxy: Option<&ProxyPath>,
) -> (ProcessChain, Process) {
    let mut slot = None;
    let started = &mut slot;
    let args = proxy.map(ProxyPath::shim_args).unwrap_or_default();
    let shim_extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let chain = ProcessChain::start_with_driver(&[], &shim_extra, &[], move |socket| {
        Box::pin(async move {
            *started = Some(foreign.start(&socket, lifetime).await);
            None
        })
    })
    .await;
    (chain, slot.expect("the driver started"))
}

// ---------------------------------------------------------------------------
// Watching from the tonic gateway.

/// What a watch reader reports: an event, the end (`Ok(None)`), or the
/// status it ended with.
type Watched = Result<Option<WatchSandboxesEvent>, tonic::Status>;

/// Opens a watch and reads it on a task of its own, so that a scenario can
/// wait for the next event with a bound without losing one.
async fn watch(gateway: &mut ComputeDriverClient<Channel>) -> mpsc::UnboundedReceiver<Watched> {
    let mut stream = bounded(gateway.watch_sandboxes(WatchSandboxesRequest {})).await.unwrap().into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let next = stream.message().await;
            let end = !matches!(next, Ok(Some(_)));
            if tx.send(next).is_err() || end {
                return;
            }
        }
    });
    rx
}

/// Reads the watch until a sandbox event for `id`; panics on its end or
/// after `CALL`.
async fn next_sandbox_event(events: &mut mpsc::UnboundedReceiver<Watched>, id: &str, others: &[&Process]) {
    let found = timeout(CALL, async {
        loop {
            match events.recv().await {
                Some(Ok(Some(WatchSandboxesEvent { payload: Some(Payload::Sandbox(event)) })))
                    if event.sandbox.as_ref().is_some_and(|s| s.id == id) =>
                {
                    return Ok(());
                }
                Some(Ok(Some(_))) => continue,
                Some(Ok(None)) => return Err("the watch ended cleanly".to_owned()),
                Some(Err(status)) => return Err(format!("the watch ended {status:?}")),
                None => return Err("the watch reader is gone".to_owned()),
            }
        }
    })
    .await;
    let why = match found {
        Ok(Ok(())) => return,
        Ok(Err(why)) => why,
        Err(_) => format!("no event within {CALL:?}"),
    };
    let transcripts: Vec<_> = others.iter().map(|p| p.transcript()).collect();
    panic!("waiting for the sandbox event of {id}: {why}\n{}", transcripts.join("\n"));
}

/// Reads what arrives until nothing has for `quiet`; how many events did.
async fn settle(events: &mut mpsc::UnboundedReceiver<Watched>, quiet: Duration, driver: &Process) -> usize {
    let mut count = 0;
    while let Ok(seen) = timeout(quiet, events.recv()).await {
        match seen {
            Some(Ok(Some(_))) => count += 1,
            other => panic!("the watch ended right after opening: {other:?}\n{}", driver.transcript()),
        }
        assert!(count < 100, "the driver keeps sending events:\n{}", driver.transcript());
    }
    count
}

// ---------------------------------------------------------------------------
// Foreign drivers: grpcio and grpc-go.

/// A gRPC stack a driver is written with.
#[derive(Clone, Copy, Debug)]
enum Stack {
    /// `tests/interop/driver.py`: Python's grpcio (gRPC C core).
    Grpcio,
    /// `tests/interop/go/driver.go`: grpc-go, as Debian packages it.
    GrpcGo,
}

impl Stack {
    /// What starts such a driver, or `None` (after a note) when the stack
    /// is not installed.
    async fn prepare(self) -> Option<Foreign> {
        match self {
            Stack::Grpcio => python_stubs().await.map(Foreign::Grpcio),
            Stack::GrpcGo => go_driver().await.map(Foreign::GrpcGo),
        }
    }
}

/// What starts one kind of foreign driver.
enum Foreign {
    Grpcio(Arc<Stubs>),
    GrpcGo(Arc<GoDriver>),
}

impl Foreign {
    /// The `driver_name` it reports.
    fn name(&self) -> &'static str {
        match self {
            Foreign::Grpcio(_) => PYTHON_DRIVER,
            Foreign::GrpcGo(_) => GO_DRIVER,
        }
    }

    /// Asserts that the bridge never pinged the driver, where its stack
    /// says (grpcio traces received pings; grpc-go only its strikes, which
    /// `assert_quiet` looks for).
    fn assert_never_pinged(&self, driver: &Process) {
        if let Foreign::Grpcio(_) = self {
            assert_never_pinged(driver);
        }
    }

    /// Starts the driver on `socket` (serving for at most `lifetime`) and
    /// waits until it serves.
    async fn start(&self, socket: &Path, lifetime: Duration) -> Process {
        match self {
            Foreign::Grpcio(stubs) => python_driver_for(stubs, socket, lifetime).await,
            Foreign::GrpcGo(go) => {
                let mut command = Command::new(&go.binary);
                command
                    .arg("-socket")
                    .arg(socket)
                    .arg("-max-seconds")
                    .arg(lifetime.as_secs().to_string())
                    // grpc-go says "Got too many pings" only at verbosity 2.
                    .env("GRPC_GO_LOG_VERBOSITY_LEVEL", "2")
                    .env("GRPC_GO_LOG_SEVERITY_LEVEL", "error")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut driver = Process::spawn("driver-go", command);
                driver.expect_line("ready", PYTHON_START, &[]).await;
                driver
            }
        }
    }
}

/// The grpc-go driver, built once per test run into a temporary directory
/// and removed when the last scenario using it is done.
struct GoDriver {
    _dir: tempfile::TempDir,
    binary: PathBuf,
}

/// The built grpc-go driver, or `None` (after a note on stderr) when Go or
/// Debian's grpc-go sources are not installed; a failure instead when
/// `OPENSHELL_BRIDGE_REQUIRE_INTEROP=1`. A build that fails with both
/// present is always a failure.
async fn go_driver() -> Option<Arc<GoDriver>> {
    static SHARED: OnceLock<tokio::sync::Mutex<Weak<GoDriver>>> = OnceLock::new();
    let mut shared = SHARED.get_or_init(Default::default).lock().await;
    if let Some(driver) = shared.upgrade() {
        return Some(driver);
    }
    if let Err(reason) = go_available().await {
        return skipped("the grpc-go driver", &reason, GO_INSTALL);
    }

    let dir = tempfile::Builder::new().prefix("interop-go-").tempdir().unwrap();
    let binary = dir.path().join("driver-go");
    let source = script("go/driver.go");
    // The build cache lives with the other test files, so only the first
    // run compiles grpc-go.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-go-cache");
    let mut command = Command::new("go");
    command
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .current_dir(dir.path())
        .env("GOPATH", DEBIAN_GOPATH)
        .env("GO111MODULE", "off")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", &cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut build = Process::spawn("go build", command);
    let status = build.exit_status(GO_BUILD).await;
    assert!(status.success(), "building {} failed ({status}):\n{}", source.display(), build.transcript());
    let driver = Arc::new(GoDriver { _dir: dir, binary });
    *shared = Arc::downgrade(&driver);
    Some(driver)
}

/// Whether `go` runs and Debian's grpc-go sources are there, and why not.
async fn go_available() -> Result<(), String> {
    let mut command = Command::new("go");
    command.arg("version").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut probe = match command.spawn() {
        Ok(child) => Process::adopt("go version", child),
        Err(e) => return Err(format!("cannot run go: {e}")),
    };
    let status = probe.exit_status(PYTHON_START).await;
    if !status.success() {
        return Err(format!("`go version` failed ({status})"));
    }
    let grpc = Path::new(DEBIAN_GOPATH).join("src/google.golang.org/grpc/server.go");
    if !grpc.is_file() {
        return Err(format!("no grpc-go sources at {} (Debian's golang-google-grpc-dev)", grpc.display()));
    }
    Ok(())
}

/// Says loudly, on the process's own stderr (which the test harness does
/// not capture), that `what` is missing and the scenario skipped; panics
/// instead when `OPENSHELL_BRIDGE_REQUIRE_INTEROP=1`.
fn skipped<T>(what: &str, reason: &str, install: &str) -> Option<T> {
    let scenario = std::thread::current().name().unwrap_or("interop").to_owned();
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_ENV}=1 but {what} is not usable ({reason}); run `{install}`");
    }
    report_line(&format!(
        "SKIPPED interop scenario {scenario}: {what} is not usable ({reason}); run `{install}` to enable it \
         ({REQUIRE_ENV}=1 turns this skip into a failure)"
    ));
    None
}

/// One line on the test process's stderr, past the harness's capture.
fn report_line(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

// ---------------------------------------------------------------------------
// The Python side.

/// The harness's sandbox, with an environment and a token for the Python
/// side to carry.
fn sandbox(id: &str) -> DriverSandbox {
    let mut sandbox = common::sandbox(id);
    let spec = sandbox.spec.get_or_insert_with(Default::default);
    spec.environment = [("INTEROP".to_owned(), "1".to_owned())].into();
    spec.sandbox_token = "not-a-real-token".into();
    sandbox
}

/// A call or message of the tonic gateway, which must not take long.
async fn bounded<T>(call: impl std::future::Future<Output = T>) -> T {
    timeout(CALL, call).await.unwrap_or_else(|_| panic!("no answer through the bridge within {CALL:?}"))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop").join(name)
}

fn python(args: &[&std::ffi::OsStr]) -> Command {
    let mut command = Command::new(PYTHON);
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // Nothing written next to the scripts; lines as soon as printed.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts the grpcio driver on `socket` and waits until it serves.
async fn python_driver(stubs: &Stubs, socket: &Path) -> Process {
    python_driver_for(stubs, socket, Duration::from_secs(300)).await
}

/// Starts the grpcio driver on `socket`, serving for at most `lifetime`,
/// and waits until it serves.
async fn python_driver_for(stubs: &Stubs, socket: &Path, lifetime: Duration) -> Process {
    let driver_py = script("driver.py");
    let lifetime = lifetime.as_secs().to_string();
    let mut command = python(&[
        driver_py.as_os_str(),
        socket.as_os_str(),
        "--stubs".as_ref(),
        stubs.dir.path().as_os_str(),
        "--max-seconds".as_ref(),
        lifetime.as_ref(),
    ]);
    command.env("GRPC_TRACE", PING_TRACE);
    let mut driver = Process::spawn("driver.py", command);
    driver.expect_line("ready", PYTHON_START, &[]).await;
    driver
}

/// Stops in-process roles when a scenario ends, also by a panic.
struct StopOnDrop(Shutdown);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_now();
    }
}

/// The `:authority` the grpcio gateway sends.
enum Authority {
    /// "localhost", as grpc-go and Kubernetes send on Unix sockets.
    Localhost,
    /// grpcio's own default for a `unix:` target: the %-encoded socket path.
    GrpcioDefault,
}

/// Starts the grpcio gateway on `socket`: its scripted session, or the
/// scenario `extra` names (`--scenario ...`). Its stdin is a pipe
/// (`Process::say`).
fn python_gateway(
    stubs: &Stubs,
    socket: &Path,
    expected_driver: &str,
    authority: Authority,
    extra: &[&str],
) -> Process {
    let gateway_py = script("gateway.py");
    let authority = match authority {
        Authority::Localhost => "localhost",
        Authority::GrpcioDefault => "",
    };
    let mut args = vec![
        gateway_py.as_os_str(),
        socket.as_os_str(),
        "--driver".as_ref(),
        expected_driver.as_ref(),
        "--authority".as_ref(),
        authority.as_ref(),
        "--stubs".as_ref(),
        stubs.dir.path().as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let mut command = python(&args);
    command.stdin(Stdio::piped()).env("GRPC_TRACE", PING_TRACE);
    Process::spawn("gateway.py", command)
}

/// The Python stubs generated from `proto/`, shared by the scenarios that
/// run at the same time and removed when the last of them is done.
struct Stubs {
    dir: tempfile::TempDir,
}

/// The stubs, or `None` (after a note on stderr) when Python's grpcio is not
/// installed; a failure instead when `OPENSHELL_BRIDGE_REQUIRE_INTEROP=1`.
async fn python_stubs() -> Option<Arc<Stubs>> {
    static SHARED: OnceLock<tokio::sync::Mutex<Weak<Stubs>>> = OnceLock::new();
    let mut shared = SHARED.get_or_init(Default::default).lock().await;
    if let Some(stubs) = shared.upgrade() {
        return Some(stubs);
    }

    if let Err(reason) = python_grpc_available().await {
        return skipped("Python's grpcio", &reason, INSTALL);
    }

    let dir = tempfile::Builder::new().prefix("interop-stubs-").tempdir().unwrap();
    let stubs_py = script("stubs.py");
    let mut generate = Process::spawn("stubs.py", python(&[stubs_py.as_os_str(), dir.path().as_os_str()]));
    let status = generate.exit_status(PYTHON_START).await;
    assert!(status.success(), "generating the Python stubs from proto/ failed ({status}):\n{}", generate.transcript());
    let stubs = Arc::new(Stubs { dir });
    *shared = Arc::downgrade(&stubs);
    Some(stubs)
}

/// Whether `python3 -c "import grpc, grpc_tools"` works, and why not.
async fn python_grpc_available() -> Result<(), String> {
    let mut command = python(&["-c".as_ref(), "import grpc, grpc_tools".as_ref()]);
    let mut probe = match command.spawn() {
        Ok(child) => Process::adopt("python3 -c 'import grpc, grpc_tools'", child),
        Err(e) => return Err(format!("cannot run {PYTHON}: {e}")),
    };
    let status = probe.exit_status(PYTHON_START).await;
    if status.success() {
        Ok(())
    } else {
        let transcript = probe.transcript();
        let last =
            transcript.lines().last().and_then(|line| line.split_once("| ")).map_or("no output", |(_, text)| text);
        Err(format!("`import grpc, grpc_tools` failed: {last}"))
    }
}

// ---------------------------------------------------------------------------
// Child processes that never outlive a scenario.

/// A child process with its output collected. Dropping it kills and reaps
/// the process, so a failing or timed-out scenario leaves nothing behind.
struct Process {
    name: String,
    child: std::process::Child,
    stdout: mpsc::UnboundedReceiver<String>,
    transcript: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    fn spawn(name: &str, mut command: Command) -> Process {
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({program}): {e}"));
        Process::adopt(name, child)
    }

    fn adopt(name: &str, mut child: std::process::Child) -> Process {
        let transcript = Arc::new(Mutex::new(String::new()));
        let (lines, stdout) = mpsc::unbounded_channel();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, "out", transcript.clone(), Some(lines)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, "err", transcript.clone(), None));
        }
        Process { name: name.to_owned(), child, stdout, transcript, readers }
    }

    /// Everything the process printed so far, one line per line.
    fn transcript(&self) -> String {
        let text = self.transcript.lock().unwrap();
        format!("--- {} ---\n{}", self.name, text)
    }

    /// Writes `line` to the process's stdin (a pipe).
    fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap_or_else(|| panic!("{}: stdin is not a pipe", self.name));
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            panic!("cannot write to {}: {e}\n{}", self.name, self.transcript());
        }
    }

    /// Waits up to 10 s for the grpcio driver to report the watch's cancellation.
    /// Reported, not asserted: under CPU load grpcio's server sometimes never
    /// runs the handler's cancellation callback although the relay's
    /// RST_STREAM(CANCEL) for that stream reached it (h2 debug traces of a
    /// failing run show the reset sent on each hop). That a cancellation
    /// crosses the bridge is asserted against our own drivers in
    /// tests/resilience.rs (a_dropped_watch_is_cancelled_at_the_driver,
    /// a_cancelled_call_is_cancelled_at_the_driver).
    async fn cancellation_reported(&mut self) {
        let seen = timeout(Duration::from_secs(10), async {
            while let Some(line) = self.stdout.recv().await {
                if line == WATCH_CANCELLED {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !seen {
            eprintln!(
                "note: {} did not report the watch's cancellation within 10 s (see cancellation_reported)",
                self.name
            );
        }
    }

    /// Waits for the process to print exactly `wanted` on a line.
    async fn expect_line(&mut self, wanted: &str, limit: Duration, others: &[&Process]) {
        let found = timeout(limit, async {
            while let Some(line) = self.stdout.recv().await {
                if line == wanted {
                    return true;
                }
            }
            false // stdout closed: the process ended
        })
        .await;
        let why = match found {
            Ok(true) => return,
            Ok(false) => "it ended first".to_owned(),
            Err(_) => format!("not within {limit:?}"),
        };
        panic!("{} never printed {wanted:?} ({why}):\n{}", self.name, report(self, others));
    }

    /// Waits, bounded, for the process to exit and for its output to drain.
    async fn exit_status(&mut self, limit: Duration) -> ExitStatus {
        let polled = timeout(limit, async {
            loop {
                match self.child.try_wait() {
                    Ok(Some(status)) => return status,
                    Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => panic!("cannot wait for {}: {e}", self.name),
                }
            }
        })
        .await;
        let Ok(status) = polled else {
            panic!("{} did not finish within {limit:?}:\n{}", self.name, self.transcript());
        };
        // The pipes close with the process; give the readers a moment.
        let _ = timeout(Duration::from_secs(2), async {
            while !self.readers.iter().all(JoinHandle::is_finished) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        status
    }

    /// Waits for the process to exit and fails the scenario unless it
    /// exited 0, showing its output and that of `others`.
    async fn assert_success(&mut self, limit: Duration, others: &[&Process]) {
        let status = self.exit_status(limit).await;
        assert!(status.success(), "{} failed ({status}):\n{}", self.name, report(self, others));
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(main: &Process, others: &[&Process]) -> String {
    std::iter::once(main).chain(others.iter().copied()).map(Process::transcript).collect::<Vec<_>>().join("\n")
}

/// Copies a pipe into the transcript line by line, and forwards stdout
/// lines to the scenario.
fn collect(
    pipe: impl Read + Send + 'static,
    stream: &'static str,
    transcript: Arc<Mutex<String>>,
    lines: Option<mpsc::UnboundedSender<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            {
                let mut text = transcript.lock().unwrap();
                text.push_str(stream);
                text.push_str("| ");
                text.push_str(&line);
                text.push('\n');
            }
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    })
}
