//! Behaviour under trouble: links break, peers restart, certificates
//! rotate, signals arrive, and no call is lost, doubled or left hanging.
//! A fault proxy sits between shim and relay wherever the link must fail.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fault::{FaultProxy, Mode};
use common::*;
use openshell_driver_bridge::demo::driver::{DemoDriver, DemoOptions};
use openshell_driver_bridge::grpc::client::driver_client;
use openshell_driver_bridge::proto::compute::watch_sandboxes_event::Payload;
use openshell_driver_bridge::proto::compute::*;
use openshell_driver_bridge::role::relay::{self, DriverTarget, RunningRelay};
use openshell_driver_bridge::role::shim::{self, ShimConfig};
use openshell_driver_bridge::shutdown::Shutdown;
use tonic::Code;

/// driver <- relay <- fault proxy <- shim, each part separately stoppable.
struct Rig {
    /// Keeps the sockets and certificates alive for the rig's lifetime.
    _dir: tempfile::TempDir,
    pki: TestPki,
    driver_socket: PathBuf,
    shim_socket: PathBuf,
    relay_shutdown: Shutdown,
    relay: RunningRelay,
    proxy: FaultProxy,
    shim_shutdown: Shutdown,
}

impl Rig {
    async fn start(tweak_shim: impl FnOnce(&mut ShimConfig)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(&dir.path().join("pki"));
        let driver_socket = dir.path().join("driver/driver.sock");
        let shim_socket = dir.path().join("shim/s.sock");
        let relay_shutdown = Shutdown::new();
        let relay = relay::start(relay_config(&pki, DriverTarget::Unix(driver_socket.clone())), relay_shutdown.clone())
            .await
            .unwrap();
        let proxy = FaultProxy::start(relay.local_addr).await;
        let mut config = shim_config(&pki, &shim_socket, proxy.addr);
        config.server_name = Some("localhost".into());
        tweak_shim(&mut config);
        let shim_shutdown = Shutdown::new();
        shim::start(config, shim_shutdown.clone()).unwrap();
        Rig { _dir: dir, pki, driver_socket, shim_socket, relay_shutdown, relay, proxy, shim_shutdown }
    }

    fn demo_driver(&self) -> (DemoDriver, Shutdown) {
        let driver =
            DemoDriver::with_options(DemoOptions { provision_delay: Duration::from_millis(20), ..Default::default() });
        let shutdown = Shutdown::new();
        openshell_driver_bridge::demo::serve(&self.driver_socket, driver.clone(), shutdown.clone()).unwrap();
        (driver, shutdown)
    }

    /// Kills the relay (connections dropped at once) and starts a new one on
    /// the same port.
    async fn restart_relay(&mut self, down_for: Duration) {
        let addr = self.relay.local_addr;
        self.relay_shutdown.stop_now();
        let _ = (&mut self.relay.task).await;
        tokio::time::sleep(down_for).await;
        self.relay_shutdown = Shutdown::new();
        let mut config = relay_config(&self.pki, DriverTarget::Unix(self.driver_socket.clone()));
        config.listen = addr;
        self.relay = relay::start(config, self.relay_shutdown.clone()).await.unwrap();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.relay_shutdown.stop_now();
        self.shim_shutdown.stop_now();
    }
}

/// Reads the watch until `id` shows up, or the stream ends (its status).
async fn watch_until(watch: &mut tonic::Streaming<WatchSandboxesEvent>, id: &str) -> Result<(), tonic::Status> {
    loop {
        match watch.message().await? {
            Some(WatchSandboxesEvent { payload: Some(Payload::Sandbox(s)) }) => {
                if s.sandbox.map(|s| s.id).as_deref() == Some(id) {
                    return Ok(());
                }
            }
            Some(_) => {}
            None => return Err(tonic::Status::unknown("watch ended without a status")),
        }
    }
}

/// Reads the watch until it ends; the status it ended with.
async fn watch_end(watch: &mut tonic::Streaming<WatchSandboxesEvent>) -> tonic::Status {
    loop {
        match watch.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return tonic::Status::ok("ended cleanly"),
            Err(status) => return status,
        }
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_starting_while_the_relay_is_down_rides_out_the_outage() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let driver_socket = dir.path().join("driver/d.sock");
    let shutdown = Shutdown::new();
    openshell_driver_bridge::demo::serve(&driver_socket, DemoDriver::new(), shutdown.clone()).unwrap();
    let relay_addr = free_port();
    let socket = dir.path().join("shim/s.sock");
    let mut config = shim_config(&pki, &socket, relay_addr);
    config.settings.dial.connect_wait = Duration::from_secs(10);
    shim::start(config, shutdown.clone()).unwrap();

    // The relay comes up 3 s after the gateway's first call.
    let started = Instant::now();
    let mut relay_cfg = relay_config(&pki, DriverTarget::Unix(driver_socket.clone()));
    relay_cfg.listen = relay_addr;
    let relay_shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        relay::start(relay_cfg, relay_shutdown).await.unwrap();
    });
    let mut gateway = driver_client(&socket).await.unwrap();
    let caps = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, "demo");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(2900) && waited < Duration::from_secs(8), "answered after {waited:?}");
    shutdown.stop_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_down_longer_than_connect_wait_fails_unavailable_in_bound() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let relay_addr = free_port();
    let socket = dir.path().join("shim/s.sock");
    let mut config = shim_config(&pki, &socket, relay_addr);
    config.settings.dial.connect_wait = Duration::from_secs(2);
    let shutdown = Shutdown::new();
    shim::start(config, shutdown.clone()).unwrap();
    let mut gateway = driver_client(&socket).await.unwrap();
    let started = Instant::now();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains(&format!("upstream 127.0.0.1:{}", relay_addr.port())), "{}", status.message());
    assert!(status.message().contains("connection refused"), "{}", status.message());
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(4), "failed after {took:?}");
    shutdown.stop_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_during_a_watch_ends_it_unavailable_and_a_new_watch_gets_current_state() {
    let mut rig = Rig::start(|_| {}).await;
    let (_driver, _driver_shutdown) = rig.demo_driver();
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("before")) }).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    watch_until(&mut watch, "before").await.unwrap();

    let started = Instant::now();
    rig.restart_relay(Duration::from_millis(500)).await;
    let status = tokio::time::timeout(Duration::from_secs(5), watch_end(&mut watch)).await.unwrap();
    // Either the relay's own shutdown ends the stream ("relay is shutting
    // down") or the shim sees the link go ("upstream ...: stream broken").
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("relay") || status.message().contains("upstream"), "{}", status.message());
    assert!(started.elapsed() < Duration::from_secs(5));

    // The gateway re-opens its watch: it gets the current state, including
    // what changed while it was blind.
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("during")) }).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    watch_until(&mut watch, "before").await.unwrap();
    watch_until(&mut watch, "during").await.unwrap();

    // A relay that dies without a word (connections reset): the shim ends
    // the stream with UNAVAILABLE naming the upstream.
    rig.proxy.reset_all();
    let status = tokio::time::timeout(Duration::from_secs(5), watch_end(&mut watch)).await.unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("upstream") && status.message().contains("stream broken"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_link_is_detected_by_keepalive_during_a_watch_and_a_call() {
    let rig = Rig::start(|_| {}).await;
    let driver = RawDriver::serve(&rig.driver_socket, |call| {
        if call.path.ends_with("/Hold") {
            Answer { delay: Duration::from_secs(30), ..Answer::ok(Bytes::new()) }
        } else {
            Answer::ok(call.body.clone())
        }
    });
    // Keepalive in the tests: 1 s interval, 1 s timeout.
    let warm = raw_call(&rig.shim_socket, "/openshell.compute.v1.ComputeDriver/Echo", &[], grpc_frame(b"x")).await;
    assert_eq!(warm.grpc_status().as_deref(), Some("0"));

    let socket = rig.shim_socket.clone();
    let held = tokio::spawn(async move {
        let started = Instant::now();
        let response = raw_call(&socket, "/openshell.compute.v1.ComputeDriver/Hold", &[], grpc_frame(b"")).await;
        (response, started.elapsed())
    });
    assert!(eventually(Duration::from_secs(5), || driver.calls().len() == 2).await);
    rig.proxy.set(Mode::Blackhole);
    let (response, took) = tokio::time::timeout(Duration::from_secs(10), held).await.unwrap().unwrap();
    assert_eq!(response.grpc_status().as_deref(), Some("14"), "{response:?}");
    assert!(response.grpc_message().contains("upstream"), "{}", response.grpc_message());
    // The message says why: the link's keepalive gave up on the silent peer.
    assert!(response.grpc_message().contains("keepalive ping unanswered"), "{}", response.grpc_message());
    assert!(took < Duration::from_secs(5), "detected after {took:?}");
    rig.proxy.set(Mode::Pass);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_link_under_a_watch_ends_it_promptly() {
    let rig = Rig::start(|_| {}).await;
    let (_driver, _driver_shutdown) = rig.demo_driver();
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("w")) }).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    watch_until(&mut watch, "w").await.unwrap();
    rig.proxy.set(Mode::Blackhole);
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), watch_end(&mut watch)).await.unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("keepalive ping unanswered"), "{}", status.message());
    assert!(started.elapsed() < Duration::from_secs(5), "detected after {:?}", started.elapsed());

    // Once the path is back, a new watch works.
    rig.proxy.set(Mode::Pass);
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    watch_until(&mut watch, "w").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_upstream_serves_when_the_first_refuses() {
    let closed = free_port();
    let rig = Rig::start(|config| {
        let proxy_port = config.upstreams[0].port;
        config.upstreams = vec![
            openshell_driver_bridge::role::shim::Upstream { host: "127.0.0.1".into(), port: closed.port() },
            openshell_driver_bridge::role::shim::Upstream { host: "127.0.0.1".into(), port: proxy_port },
        ];
    })
    .await;
    let (driver, _driver_shutdown) = rig.demo_driver();
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    for i in 0..5 {
        gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox(&format!("f{i}"))) }).await.unwrap();
    }
    assert_eq!(driver.calls("CreateSandbox"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_cut_off_after_it_was_sent_is_never_repeated() {
    let rig = Rig::start(|_| {}).await;
    let driver = RawDriver::serve(&rig.driver_socket, |call| {
        if call.path.ends_with("/CreateSandbox") {
            Answer { delay: Duration::from_secs(2), ..Answer::ok(grpc_frame(b"")) }
        } else {
            Answer::ok(call.body.clone())
        }
    });
    let socket = rig.shim_socket.clone();
    let create = tokio::spawn(async move {
        let mut gateway = driver_client(&socket).await.unwrap();
        gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("once")) }).await
    });
    let creates = || driver.calls().iter().filter(|c| c.path.ends_with("/CreateSandbox")).count();
    assert!(eventually(Duration::from_secs(5), || creates() == 1).await);
    rig.proxy.reset_all();
    let status = tokio::time::timeout(Duration::from_secs(10), create).await.unwrap().unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The link comes back (new calls work); the Create was not sent again.
    let ok = raw_call(&rig.shim_socket, "/openshell.compute.v1.ComputeDriver/Ping", &[], grpc_frame(b"p")).await;
    assert_eq!(ok.grpc_status().as_deref(), Some("0"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(creates(), 1, "the driver saw the Create more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_during_a_driver_restart_wait_and_none_is_duplicated() {
    let rig = Rig::start(|_| {}).await;
    let (first, first_shutdown) = rig.demo_driver();
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("a")) }).await.unwrap();
    first_shutdown.stop_now();
    assert!(eventually(Duration::from_secs(5), || !rig.driver_socket.exists()).await);

    // Calls made while the driver is gone wait (connect-wait is 3 s in tests)...
    let socket = rig.shim_socket.clone();
    let pending = tokio::spawn(async move {
        let mut gateway = driver_client(&socket).await.unwrap();
        let started = Instant::now();
        let result = gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("b")) }).await;
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // ...and the restarted driver serves them, exactly once.
    let (second, _second_shutdown) = rig.demo_driver();
    let (result, took) = pending.await.unwrap();
    result.unwrap();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(second.calls("CreateSandbox"), 1);
    assert_eq!(first.calls("CreateSandbox"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_gap_longer_than_the_wait_fails_unavailable_naming_the_driver() {
    let rig = Rig::start(|_| {}).await;
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    let started = Instant::now();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("driver") && status.message().contains("driver.sock"), "{}", status.message());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2900) && took < Duration::from_secs(6), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_cancelled_at_the_driver() {
    let rig = Rig::start(|_| {}).await;
    let driver = RawDriver::serve(&rig.driver_socket, |_| Answer {
        delay: Duration::from_secs(10),
        ..Answer::ok(grpc_frame(b""))
    });
    let socket = rig.shim_socket.clone();
    let call = tokio::spawn(async move {
        raw_call(&socket, "/openshell.compute.v1.ComputeDriver/GetSandbox", &[], grpc_frame(b"")).await
    });
    assert!(eventually(Duration::from_secs(5), || driver.calls().len() == 1).await);
    call.abort();
    assert!(
        eventually(Duration::from_secs(3), || driver.cancelled.lock().unwrap().len() == 1).await,
        "the driver did not see the cancellation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_is_cancelled_at_the_driver() {
    let rig = Rig::start(|_| {}).await;
    let (driver, _driver_shutdown) = rig.demo_driver();
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    let watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    assert!(eventually(Duration::from_secs(5), || driver.watchers() == 1).await);
    drop(watch);
    assert!(eventually(Duration::from_secs(3), || driver.watchers() == 0).await, "the driver still streams");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_expiring_in_the_bridge_ends_the_call_on_time() {
    let rig = Rig::start(|_| {}).await;
    let driver = RawDriver::serve(&rig.driver_socket, |_| Answer {
        delay: Duration::from_secs(2),
        ..Answer::ok(grpc_frame(b""))
    });
    let started = Instant::now();
    // A raw client: it enforces no deadline itself, so what ends the call is the bridge.
    let response = raw_call(
        &rig.shim_socket,
        "/openshell.compute.v1.ComputeDriver/GetSandbox",
        &[("grpc-timeout", "200m")],
        grpc_frame(b""),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(response.grpc_status().as_deref(), Some("4"), "{response:?}");
    assert!(response.grpc_message().contains("deadline of 200 ms"), "{}", response.grpc_message());
    assert!(took >= Duration::from_millis(190) && took < Duration::from_millis(800), "{took:?}");
    assert_eq!(driver.calls()[0].headers["grpc-timeout"], "200m");
    assert!(eventually(Duration::from_secs(3), || driver.cancelled.lock().unwrap().len() == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_timeout_applies_to_unary_calls_but_not_to_watches() {
    let rig = Rig::start(|config| config.settings.forward.default_timeout = Some(Duration::from_millis(300))).await;
    let driver = RawDriver::serve(&rig.driver_socket, |_| Answer {
        delay: Duration::from_secs(1),
        ..Answer::ok(grpc_frame(b""))
    });
    let unary =
        raw_call(&rig.shim_socket, "/openshell.compute.v1.ComputeDriver/GetSandbox", &[], grpc_frame(b"")).await;
    assert_eq!(unary.grpc_status().as_deref(), Some("4"));
    let watch =
        raw_call(&rig.shim_socket, "/openshell.compute.v1.ComputeDriver/WatchSandboxes", &[], grpc_frame(b"")).await;
    assert_eq!(watch.grpc_status().as_deref(), Some("0"), "the watch was cut by the unary default");
    assert_eq!(driver.calls().len(), 2);
}

fn serial_of(pem_path: &std::path::Path) -> Vec<u8> {
    let pem = std::fs::read(pem_path).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    der.as_ref().to_vec()
}

use rustls::pki_types::pem::PemObject;

/// Which certificate the relay presents to a new connection right now.
async fn presented(addr: SocketAddr, pki: &TestPki) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der()).unwrap();
    let leaf = pki.ca.issue(&openshell_driver_bridge::pki::LeafSpec::client(GATEWAY_ID)).unwrap();
    let certs: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_a_running_watch_and_a_corrupt_one_is_refused() {
    let rig = Rig::start(|_| {}).await;
    let (_driver, _driver_shutdown) = rig.demo_driver();
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("r1")) }).await.unwrap();
    watch_until(&mut watch, "r1").await.unwrap();
    let original = presented(rig.relay.local_addr, &rig.pki).await;
    assert_eq!(original, serial_of(&rig.pki.server.0));

    // New server and client certificates written in place (key first, as
    // cert-manager and `certs init` do).
    let new_server =
        rig.pki.ca.issue(&openshell_driver_bridge::pki::LeafSpec::server(&["localhost", "127.0.0.1"])).unwrap();
    write_leaf(&rig.pki.dir, "server", &new_server);
    let new_client = rig.pki.ca.issue(&openshell_driver_bridge::pki::LeafSpec::client(GATEWAY_ID)).unwrap();
    write_leaf(&rig.pki.dir, "client", &new_client);
    let rotated = serial_of(&rig.pki.server.0);
    assert_ne!(rotated, original);
    let relay_addr = rig.relay.local_addr;
    let mut now_presented = Vec::new();
    for _ in 0..50 {
        now_presented = presented(relay_addr, &rig.pki).await;
        if now_presented == rotated {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(now_presented, rotated, "new connections still get the old certificate");

    // The watch opened before the rotation still delivers.
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("r2")) }).await.unwrap();
    watch_until(&mut watch, "r2").await.unwrap();

    // A corrupt certificate: refused, the rotated one stays in use.
    std::fs::write(&rig.pki.server.0, b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(presented(relay_addr, &rig.pki).await, rotated);
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("r3")) }).await.unwrap();
    watch_until(&mut watch, "r3").await.unwrap();
    // New links from the shim still work (with its rotated client certificate).
    rig.proxy.reset_all();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fresh = driver_client(&rig.shim_socket).await.unwrap();
    fresh.list_sandboxes(ListSandboxesRequest {}).await.unwrap();
}

use common::process::ProcessChain;

/// A chain of real shim and relay processes in front of an in-process raw
/// driver whose `/Slow` calls take `slow` and whose watches never end.
async fn processes_with_slow_driver(slow: Duration) -> (ProcessChain, RawDriver) {
    let raw = std::sync::Arc::new(std::sync::Mutex::new(None));
    let keep = raw.clone();
    let chain =
        ProcessChain::start_with_driver(&["--drain-timeout", "5s"], &["--drain-timeout", "5s"], &[], |socket| {
            Box::pin(async move {
                let driver = RawDriver::serve(&socket, move |call| {
                    let delay = if call.path.ends_with("/Slow") {
                        slow
                    } else if call.path.ends_with("/WatchSandboxes") {
                        Duration::from_secs(60)
                    } else {
                        Duration::ZERO
                    };
                    Answer { delay, ..Answer::ok(grpc_frame(b"done")) }
                });
                *keep.lock().unwrap() = Some(driver);
                None
            })
        })
        .await;
    let driver = raw.lock().unwrap().take().unwrap();
    (chain, driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_finish_ends_watches_and_removes_the_socket() {
    let (mut chain, driver) = processes_with_slow_driver(Duration::from_millis(1500)).await;
    let socket = chain.shim_socket.clone();
    let slow = tokio::spawn(async move {
        raw_call(&socket, "/openshell.compute.v1.ComputeDriver/Slow", &[], grpc_frame(b"")).await
    });
    let socket = chain.shim_socket.clone();
    let watch = tokio::spawn(async move {
        let started = Instant::now();
        let response =
            raw_call(&socket, "/openshell.compute.v1.ComputeDriver/WatchSandboxes", &[], grpc_frame(b"")).await;
        (response, started.elapsed())
    });
    assert!(eventually(Duration::from_secs(5), || driver.calls().len() == 2).await);
    let signalled = Instant::now();
    chain.shim.signal(rustix::process::Signal::TERM);

    let (watch_end, _) = tokio::time::timeout(Duration::from_secs(5), watch).await.unwrap().unwrap();
    assert_eq!(watch_end.grpc_status().as_deref(), Some("14"), "{watch_end:?}");
    assert!(watch_end.grpc_message().contains("shim is shutting down"), "{}", watch_end.grpc_message());
    assert!(signalled.elapsed() < Duration::from_secs(1), "the watch was not ended promptly");

    let slow = tokio::time::timeout(Duration::from_secs(5), slow).await.unwrap().unwrap();
    assert_eq!(slow.grpc_status().as_deref(), Some("0"), "the call in flight did not complete");
    assert_eq!(grpc_messages(slow.body), vec![Bytes::from_static(b"done")]);

    assert_eq!(chain.shim.wait_exit(Duration::from_secs(5)).await, Some(0));
    assert!(!chain.shim_socket.exists(), "the socket file was left behind");
    chain.shim.expect_log(&["signal received: draining"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once() {
    let (mut chain, driver) = processes_with_slow_driver(Duration::from_secs(30)).await;
    let socket = chain.shim_socket.clone();
    let slow = tokio::spawn(async move {
        raw_call(&socket, "/openshell.compute.v1.ComputeDriver/Slow", &[], grpc_frame(b"")).await
    });
    assert!(eventually(Duration::from_secs(5), || driver.calls().len() == 1).await);
    chain.relay.signal(rustix::process::Signal::TERM);
    chain.relay.expect_log(&["signal received: draining"]).await;
    let started = Instant::now();
    chain.relay.signal(rustix::process::Signal::TERM);
    assert_eq!(chain.relay.wait_exit(Duration::from_secs(3)).await, Some(0));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    chain.relay.expect_log(&["second signal: stopping now"]).await;
    // The gateway's call ends with a status, not a hang.
    let response = tokio::time::timeout(Duration::from_secs(5), slow).await.unwrap().unwrap();
    assert_eq!(response.grpc_status().as_deref(), Some("14"), "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_refusing_our_certificate_is_not_redialled_in_a_loop() {
    // With TLS 1.3 the relay's refusal of a client certificate arrives after
    // the client considers the handshake done: the connection "succeeds",
    // then dies. The shim must back off instead of redialling at once.
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(
        dir,
        |_| {},
        |shim| {
            shim.settings.dial.connect_wait = Duration::from_secs(2);
        },
    )
    .await;
    let other = openshell_driver_bridge::pki::Ca::new("another CA").unwrap();
    let foreign = other.issue(&openshell_driver_bridge::pki::LeafSpec::client(GATEWAY_ID)).unwrap();
    // Swap the shim's client certificate for a foreign one and let it reload.
    write_leaf(&chain.pki.dir, "client", &foreign);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        calls += 1;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let attempts = chain.relay.forwarder.metrics().handshake_failures();
    // Backoff from 100 ms doubling: a handful of attempts in 2 s, not one per call or more.
    assert!((1..=12).contains(&attempts), "{attempts} connection attempts for {calls} calls in 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_appears_after_callers_gave_up_is_reached_by_the_next_call_at_once() {
    // The relay's backoff toward the driver grows while the first caller
    // waits (4 s, then 8 s); the next caller, arriving after it gave up, must
    // not inherit that pause.
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(
        dir,
        |relay| {
            relay.settings.dial.backoff_initial = Duration::from_secs(4);
            relay.settings.dial.backoff_max = Duration::from_secs(60);
            relay.settings.dial.connect_wait = Duration::from_millis(4500);
        },
        |shim| shim.settings.dial.connect_wait = Duration::from_secs(10),
    )
    .await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("after waiting 4500 ms"), "{}", status.message());

    openshell_driver_bridge::demo::serve(&chain.driver_socket, DemoDriver::new(), chain.shutdown.clone()).unwrap();
    let started = Instant::now();
    gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "the new caller waited out an old backoff: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_dies_under_a_watch_ends_it_unavailable_naming_the_driver_and_its_successor_is_reached() {
    let rig = Rig::start(|_| {}).await;
    // The driver runs on a runtime of its own, so it can die as a process
    // does: every socket it holds closed at once, nothing said.
    let doomed = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    {
        let _inside = doomed.enter();
        openshell_driver_bridge::demo::serve(&rig.driver_socket, DemoDriver::new(), Shutdown::new()).unwrap();
    }
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("before")) }).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    watch_until(&mut watch, "before").await.unwrap();

    let started = Instant::now();
    doomed.shutdown_background();
    let status = tokio::time::timeout(Duration::from_secs(5), watch_end(&mut watch)).await.unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("driver.sock") && status.message().contains("connection lost"),
        "{}",
        status.message()
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // A new driver on the same socket serves the next calls.
    let _ = std::fs::remove_file(&rig.driver_socket);
    let (successor, _successor_shutdown) = rig.demo_driver();
    gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("after")) }).await.unwrap();
    watch_until(&mut watch, "after").await.unwrap();
    assert_eq!(successor.calls("CreateSandbox"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_made_while_the_driver_was_down_is_retired_once_it_is_back() {
    // The relay serves a client that connects during a driver outage on the
    // path whose calls wait for the driver; once the driver is back it ends
    // that connection gracefully so the shim's next one goes direct.
    let rig = Rig::start(|_| {}).await;
    let socket = rig.shim_socket.clone();
    let waiting = tokio::spawn(async move {
        let mut gateway = driver_client(&socket).await.unwrap();
        gateway.get_capabilities(GetCapabilitiesRequest {}).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (driver, _driver_shutdown) = rig.demo_driver();
    waiting.await.unwrap().unwrap();
    assert_eq!(rig.proxy.connections(), 1);

    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    let mut calls = 0;
    let started = Instant::now();
    while rig.proxy.connections() < 2 && started.elapsed() < Duration::from_secs(5) {
        gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rig.proxy.connections(), 2, "the waiting connection was not retired ({calls} calls in 5 s)");
    for _ in 0..20 {
        gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
    assert_eq!(rig.proxy.connections(), 2, "the new connection was retired too");
    assert_eq!(driver.calls("GetCapabilities"), calls + 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_silent_under_a_watch_is_cut_off_and_its_watch_cancelled_at_the_driver() {
    // A shim host that vanishes (power cut, blackholed route) leaves its TCP
    // connection open on the relay; the relay's pings find it silent, and
    // the driver must not keep serving its watch forever.
    use h2::frame::{Data, Headers, Pseudo, Settings};
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(
        dir,
        |relay| {
            relay.settings.server.keepalive_interval = Some(Duration::from_millis(300));
            relay.settings.server.keepalive_timeout = Duration::from_millis(300);
        },
        |_| {},
    )
    .await;
    let driver = DemoDriver::new();
    openshell_driver_bridge::demo::serve(&chain.driver_socket, driver.clone(), chain.shutdown.clone()).unwrap();

    // An HTTP/2 client spoken frame by frame over mutual TLS: it opens a
    // watch, then never reads or answers again.
    let mut io = relay_tls(chain.relay.local_addr, &chain.pki).await;
    tokio::io::AsyncWriteExt::write_all(&mut io, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let mut codec: h2::Codec<_, Bytes> = h2::Codec::new(io);
    let id = h2::frame::StreamId::from(1);
    let uri: http::Uri = "https://localhost/openshell.compute.v1.ComputeDriver/WatchSandboxes".parse().unwrap();
    let mut fields = http::HeaderMap::new();
    fields.insert("content-type", "application/grpc".parse().unwrap());
    fields.insert("te", "trailers".parse().unwrap());
    let mut data = Data::new(id, grpc_frame(b""));
    data.set_end_stream(true);
    let frames: Vec<h2::frame::Frame> = vec![
        Settings::default().into(),
        Headers::new(id, Pseudo::request(http::Method::POST, uri, None), fields).into(),
        data.into(),
    ];
    for frame in frames {
        std::future::poll_fn(|cx| codec.poll_ready(cx)).await.unwrap();
        codec.buffer(frame).unwrap();
    }
    std::future::poll_fn(|cx| codec.flush(cx)).await.unwrap();

    assert!(eventually(Duration::from_secs(3), || driver.watchers() == 1).await, "the watch never reached the driver");
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || driver.watchers() == 0).await,
        "the silent client's watch is still open at the driver"
    );
    // Ping every 300 ms, unanswered for 300 ms: gone well within 2 s.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    drop(codec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_connection_outlives_a_relay_restart_and_its_calls_wait_for_the_relay() {
    // The gateway keeps one connection for its lifetime. When the relay
    // goes away under it, the calls on the link end UNAVAILABLE, but the
    // connection stays, and a call made during the outage waits for the
    // relay (bounded) instead of failing, as the gateway's first
    // GetCapabilities must.
    let mut rig = Rig::start(|_| {}).await;
    let (driver, _driver_shutdown) = rig.demo_driver();
    let mut gateway = raw_connection(&rig.shim_socket).await;
    let path = "/openshell.compute.v1.ComputeDriver/GetCapabilities";
    let before = raw_request(&mut gateway, path, &[], grpc_frame(b"")).await;
    assert_eq!(before.grpc_status().as_deref(), Some("0"), "{}", before.grpc_message());
    assert_eq!(rig.proxy.connections(), 1);

    let addr = rig.relay.local_addr;
    rig.relay_shutdown.stop_now();
    let _ = (&mut rig.relay.task).await;
    let mut config = relay_config(&rig.pki, DriverTarget::Unix(rig.driver_socket.clone()));
    config.listen = addr;
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let shutdown = Shutdown::new();
        let relay = relay::start(config, shutdown.clone()).await.unwrap();
        (relay, shutdown)
    });
    // The shim notices the relay is gone (a call already on its way when the
    // link broke would end UNAVAILABLE: it may have reached the relay).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let during = raw_request(&mut gateway, path, &[], grpc_frame(b"")).await;
    let took = started.elapsed();
    let (relay, shutdown) = restart.await.unwrap();
    rig.relay = relay;
    rig.relay_shutdown = shutdown;
    assert_eq!(during.grpc_status().as_deref(), Some("0"), "{}", during.grpc_message());
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    assert!(rig.proxy.connections() >= 2, "the shim did not dial the relay again");
    assert_eq!(driver.calls("GetCapabilities"), 2);
}
