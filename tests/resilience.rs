//! Behaviour under trouble: links break, peers restart, certificates
//! rotate, signals arrive, and no call is lost, doubled or left hanging.
//! A fault proxy sits between shim and relay wherever the link must fail.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fault::{FaultProxy, Mode};
use common::*;
use openshell_driver_bridge::demo::driver::{DemoDriver, DemoOptions};
use openshell_driver_bridge::grpc::client::driver_client;
use openshell_driver_bridge::pki::{Ca, LeafSpec};
use openshell_driver_bridge::proto::compute::watch_sandboxes_event::Payload;
use openshell_driver_bridge::proto::compute::*;
use openshell_driver_bridge::role::relay::{self, DriverTarget, RelayConfig, RunningRelay};
use openshell_driver_bridge::role::shim::{self, RunningShim, ShimConfig};
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
    shim: RunningShim,
}

impl Rig {
    async fn start(tweak_shim: impl FnOnce(&mut ShimConfig)) -> Rig {
        Self::start_with(|_, _| {}, tweak_shim).await
    }

    /// Like `start`, with the relay's configuration tweaked too (it gets the
    /// rig's directory).
    async fn start_with(
        tweak_relay: impl FnOnce(&std::path::Path, &mut RelayConfig),
        tweak_shim: impl FnOnce(&mut ShimConfig),
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(&dir.path().join("pki"));
        let driver_socket = dir.path().join("driver/driver.sock");
        let shim_socket = dir.path().join("shim/s.sock");
        let relay_shutdown = Shutdown::new();
        let mut relay_cfg = relay_config(&pki, DriverTarget::Unix(driver_socket.clone()));
        tweak_relay(dir.path(), &mut relay_cfg);
        let relay = relay::start(relay_cfg, relay_shutdown.clone()).await.unwrap();
        let proxy = FaultProxy::start(relay.local_addr).await;
        let mut config = shim_config(&pki, &shim_socket, proxy.addr);
        config.server_name = Some("localhost".into());
        tweak_shim(&mut config);
        let shim_shutdown = Shutdown::new();
        let shim = shim::start(config, shim_shutdown.clone()).unwrap();
        Rig { _dir: dir, pki, driver_socket, shim_socket, relay_shutdown, relay, proxy, shim_shutdown, shim }
    }

    /// Waits until the shim has no connection to the relay open.
    async fn shim_sees_the_relay_gone(&self) {
        let dialer = self.shim.forwarder.dialer().clone();
        wait_for("the shim to see its connections to the relay end", || dialer.status().open == 0).await;
    }

    /// Waits until `n` calls are open at the shim (waiting or sent).
    async fn open_at_shim(&self, n: i64) {
        let metrics = self.shim.forwarder.metrics().clone();
        wait_for(&format!("{n} call(s) open at the shim"), || metrics.in_flight() == n).await;
    }

    /// Waits until `n` calls are open at the relay (waiting or sent).
    async fn open_at_relay(&self, n: i64) {
        let metrics = self.relay.forwarder.metrics().clone();
        wait_for(&format!("{n} call(s) open at the relay"), || metrics.in_flight() == n).await;
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
    config.settings.dial.connect_wait = Duration::from_secs(20);
    let shim = shim::start(config, shutdown.clone()).unwrap();

    // The gateway's first call is made while nothing listens at the relay's
    // address; the relay starts only once the call is waiting in the shim.
    let call = tokio::spawn(async move {
        let mut gateway = driver_client(&socket).await.unwrap();
        gateway.get_capabilities(GetCapabilitiesRequest {}).await
    });
    let metrics = shim.forwarder.metrics().clone();
    wait_for("the first call to wait in the shim", || metrics.in_flight() == 1).await;
    assert_eq!(shim.forwarder.dialer().status().connects, 0, "connected before the relay was up");
    let mut relay_cfg = relay_config(&pki, DriverTarget::Unix(driver_socket.clone()));
    relay_cfg.listen = relay_addr;
    relay::start(relay_cfg, shutdown.clone()).await.unwrap();
    let caps = call.await.unwrap().unwrap().into_inner();
    assert_eq!(caps.driver_name, "demo");
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
    // It waits the whole --connect-wait (the promise), then fails; the upper
    // bound only says it does not hang (room for a loaded machine).
    assert!(status.message().contains("after waiting 2000 ms"), "{}", status.message());
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(20), "failed after {took:?}");
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

    rig.restart_relay(Duration::from_millis(500)).await;
    let status = tokio::time::timeout(Duration::from_secs(20), watch_end(&mut watch)).await.unwrap();
    // Either the relay's own shutdown ends the stream ("relay is shutting
    // down") or the shim sees the link go ("upstream ...: stream broken").
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("relay") || status.message().contains("upstream"), "{}", status.message());

    // The gateway re-opens its watch: it gets the current state, including
    // what changed while it was blind.
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("during")) }).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    watch_until(&mut watch, "before").await.unwrap();
    watch_until(&mut watch, "during").await.unwrap();

    // A relay that dies without a word (connections reset): the shim ends
    // the stream with UNAVAILABLE naming the upstream.
    rig.proxy.reset_all();
    let status = tokio::time::timeout(Duration::from_secs(20), watch_end(&mut watch)).await.unwrap();
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
    let (response, took) = tokio::time::timeout(Duration::from_secs(30), held).await.unwrap().unwrap();
    assert_eq!(response.grpc_status().as_deref(), Some("14"), "{response:?}");
    assert!(response.grpc_message().contains("upstream"), "{}", response.grpc_message());
    // The message says why: the link's keepalive gave up on the silent peer.
    assert!(response.grpc_message().contains("keepalive ping unanswered"), "{}", response.grpc_message());
    // The promise: found within interval + timeout (2 s here), long before
    // the driver's 30 s; the bound leaves room for a loaded machine.
    assert!(took < Duration::from_secs(15), "detected after {took:?}");
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
    // A blackholed watch would never end without the pings.
    let status = tokio::time::timeout(Duration::from_secs(20), watch_end(&mut watch)).await.unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("keepalive ping unanswered"), "{}", status.message());

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
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    let mut creator = gateway.clone();
    let create =
        tokio::spawn(
            async move { creator.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("once")) }).await },
        );
    let creates = || driver.calls().iter().filter(|c| c.path.ends_with("/CreateSandbox")).count();
    assert!(eventually(Duration::from_secs(20), || creates() == 1).await);
    rig.proxy.reset_all();
    let status = tokio::time::timeout(Duration::from_secs(20), create).await.unwrap().unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The link comes back: a later call on the same gateway connection
    // works. A Create sent again would have gone out before it (calls leave
    // in order), so the driver's record is final once that call is answered.
    gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
    let paths: Vec<String> = driver.calls().iter().map(|c| c.path.clone()).collect();
    assert_eq!(creates(), 1, "the driver saw the Create more than once: {paths:?}");
    assert!(paths.last().unwrap().ends_with("/GetCapabilities"), "{paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_during_a_driver_restart_wait_and_none_is_duplicated() {
    let rig = Rig::start(|_| {}).await;
    let (first, first_shutdown) = rig.demo_driver();
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("a")) }).await.unwrap();
    first_shutdown.stop_now();
    assert!(eventually(Duration::from_secs(20), || !rig.driver_socket.exists()).await);

    // A call made while the driver is gone waits at the relay (connect-wait
    // is 3 s in tests)...
    let socket = rig.shim_socket.clone();
    let pending = tokio::spawn(async move {
        let mut gateway = driver_client(&socket).await.unwrap();
        gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("b")) }).await
    });
    rig.open_at_relay(1).await;
    // ...and the restarted driver serves it, exactly once.
    let (second, _second_shutdown) = rig.demo_driver();
    pending.await.unwrap().unwrap();
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
    // It waited the relay's whole --connect-wait (3 s in tests: the
    // promise); the upper bound only says it did not hang.
    assert!(status.message().contains("after waiting 3000 ms"), "{}", status.message());
    assert!(took >= Duration::from_millis(2900) && took < Duration::from_secs(20), "{took:?}");
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
        delay: Duration::from_secs(60),
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
    // Not before the deadline; long before the driver's 60 s answer (room
    // for a fresh TLS dial on a loaded machine).
    assert!(took >= Duration::from_millis(190) && took < Duration::from_secs(20), "{took:?}");
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
async fn certificates_rotate_under_a_running_watch_and_new_links_present_the_new_client_certificate() {
    // The relay trusts clients of a CA file of its own. The shim's client
    // certificate rotates to one of a new CA, and the relay's client CA with
    // it: from then on the relay accepts no other, so a new link works only
    // if the shim really loaded its new certificate.
    let clients_ca = std::sync::Arc::new(std::sync::Mutex::new(PathBuf::new()));
    let keep = clients_ca.clone();
    let rig = Rig::start_with(
        move |dir, relay| {
            let path = dir.join("pki/clients-ca.pem");
            std::fs::copy(dir.join("pki/ca.pem"), &path).unwrap();
            relay.tls.ca = path.clone();
            *keep.lock().unwrap() = path;
        },
        |_| {},
    )
    .await;
    let clients_ca = clients_ca.lock().unwrap().clone();
    let (_driver, _driver_shutdown) = rig.demo_driver();
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("r1")) }).await.unwrap();
    watch_until(&mut watch, "r1").await.unwrap();
    let original = presented(rig.relay.local_addr, &rig.pki).await;
    assert_eq!(original, serial_of(&rig.pki.server.0));

    // A new server certificate written in place.
    let new_server = rig.pki.ca.issue(&LeafSpec::server(&["localhost", "127.0.0.1"])).unwrap();
    write_leaf(&rig.pki.dir, "server", &new_server);
    let rotated = serial_of(&rig.pki.server.0);
    assert_ne!(rotated, original);
    let relay_addr = rig.relay.local_addr;
    let mut now_presented = Vec::new();
    for _ in 0..200 {
        now_presented = presented(relay_addr, &rig.pki).await;
        if now_presented == rotated {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(now_presented, rotated, "new connections still get the old certificate");

    // The shim's client certificate moves to a new CA; once the shim has
    // loaded it, the relay's client CA becomes that CA alone.
    let next_ca = Ca::new("next client CA").unwrap();
    let shim_before = rig.shim.tls.load_full();
    write_leaf(&rig.pki.dir, "client", &next_ca.issue(&LeafSpec::client(GATEWAY_ID)).unwrap());
    let shim_tls = rig.shim.tls.clone();
    wait_for("the shim to reload its certificate", || !Arc::ptr_eq(&shim_tls.load_full(), &shim_before)).await;
    let relay_before = rig.relay.tls.load_full();
    openshell_driver_bridge::pki::write_pem(&clients_ca, &next_ca.cert_pem(), false).unwrap();
    let relay_tls = rig.relay.tls.clone();
    wait_for("the relay to reload its client CA", || !Arc::ptr_eq(&relay_tls.load_full(), &relay_before)).await;

    // The watch opened before the rotation still delivers.
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("r2")) }).await.unwrap();
    watch_until(&mut watch, "r2").await.unwrap();
    // A new link from the shim: only the new client certificate gets in.
    rig.proxy.reset_all();
    let mut fresh = driver_client(&rig.shim_socket).await.unwrap();
    let listed = fresh.list_sandboxes(ListSandboxesRequest {}).await;
    assert!(listed.is_ok(), "a new link failed after the rotation: {listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_relays_certificate_and_a_broken_one_is_refused_keeping_the_previous() {
    // Checked for change once an hour: only SIGHUP can reload in this test.
    let chain = ProcessChain::start(&["--reload-interval", "1h"], &[], &[]).await;
    let addr: SocketAddr = chain.relay_addr.parse().unwrap();
    let original = presented(addr, &chain.pki).await;
    assert_eq!(original, serial_of(&chain.pki.server.0));

    std::fs::write(&chain.pki.server.0, b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n").unwrap();
    let mark = chain.relay.mark();
    chain.relay.signal(rustix::process::Signal::HUP);
    let line = chain.relay.expect_log_after(mark, &["new TLS material refused; keeping the previous"]).await;
    assert!(line.contains("SIGHUP"), "{line}");
    // Still serving new connections, with the previous certificate: a new
    // gateway connection (a new link, a new handshake) works.
    assert_eq!(presented(addr, &chain.pki).await, original);
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();

    // A good certificate and SIGHUP: loaded at once.
    write_leaf(&chain.pki.dir, "server", &chain.pki.ca.issue(&LeafSpec::server(&["localhost", "127.0.0.1"])).unwrap());
    let mark = chain.relay.mark();
    chain.relay.signal(rustix::process::Signal::HUP);
    let line = chain.relay.expect_log_after(mark, &["TLS material reloaded"]).await;
    assert!(line.contains("SIGHUP"), "{line}");
    assert_eq!(presented(addr, &chain.pki).await, serial_of(&chain.pki.server.0));
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_rotates_as_documented_add_the_new_issue_from_it_remove_the_old() {
    let (chain, _driver) = Chain::with_demo_driver().await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("c1")) }).await.unwrap();
    watch_until(&mut watch, "c1").await.unwrap();
    let (relay_tls, shim_tls) = (chain.relay.tls.clone(), chain.shim.tls.clone());
    // Writes `change` and waits until both sides have loaded it (each file
    // is written whole, by rename: a new configuration is the new material).
    let rotate = |change: &dyn Fn()| {
        let (relay_before, shim_before) = (relay_tls.load_full(), shim_tls.load_full());
        change();
        let (relay_tls, shim_tls) = (relay_tls.clone(), shim_tls.clone());
        async move {
            wait_for("the relay to reload", || !Arc::ptr_eq(&relay_tls.load_full(), &relay_before)).await;
            wait_for("the shim to reload", || !Arc::ptr_eq(&shim_tls.load_full(), &shim_before)).await;
        }
    };
    let old_ca = chain.pki.ca.cert_pem();
    let new_ca = Ca::new("bridge test CA, next").unwrap();
    let ca_file = chain.pki.ca_file.clone();

    // 1. Both sides' bundles: the old CA and the new.
    rotate(&|| {
        openshell_driver_bridge::pki::write_pem(&ca_file, &format!("{old_ca}{}", new_ca.cert_pem()), false).unwrap()
    })
    .await;
    // 2. Leaves issued from the new CA.
    let dir = chain.pki.dir.clone();
    rotate(&|| {
        write_leaf(&dir, "server", &new_ca.issue(&LeafSpec::server(&["localhost", "127.0.0.1"])).unwrap());
        write_leaf(&dir, "client", &new_ca.issue(&LeafSpec::client(GATEWAY_ID)).unwrap());
    })
    .await;
    let mut during = driver_client(&chain.shim_socket).await.unwrap();
    during.list_sandboxes(ListSandboxesRequest {}).await.unwrap();
    // 3. The old CA removed.
    rotate(&|| openshell_driver_bridge::pki::write_pem(&ca_file, &new_ca.cert_pem(), false).unwrap()).await;

    // New connections (a new link each) work with the new CA alone...
    let mut after = driver_client(&chain.shim_socket).await.unwrap();
    after.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("c2")) }).await.unwrap();
    // ...the watch opened under the old CA never noticed...
    watch_until(&mut watch, "c2").await.unwrap();
    // ...and a certificate of the old CA no longer gets in.
    let old_client = chain.pki.ca.issue(&LeafSpec::client(GATEWAY_ID)).unwrap();
    let refused = tls_as(chain.relay.local_addr, &new_ca, &old_client).await;
    assert!(refused.is_err(), "the relay still admits a certificate of the removed CA");
    // The relay counts the refusal on its side of the handshake, which may
    // finish after the client has seen it.
    let metrics = chain.relay.forwarder.metrics().clone();
    wait_for("the relay to count the refused handshake", || metrics.handshake_failures() >= 1).await;
}

/// An HTTP/2 request over TLS to the relay, presenting `leaf`, trusting
/// `ca` for the relay's certificate: Ok when the relay answered.
async fn tls_as(addr: SocketAddr, ca: &Ca, leaf: &openshell_driver_bridge::pki::Leaf) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let certs: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, http_body_util::Full<Bytes>>(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| format!("http/2: {e}"))?;
    tokio::spawn(conn);
    let request = http::Request::post("https://localhost/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(grpc_frame(b"")))
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request)).await;
    match answered {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("request: {e}")),
        Err(_) => Err("no answer within 20 s".into()),
    }
}

use common::process::ProcessChain;

/// A chain of real shim and relay processes in front of an in-process raw
/// driver whose `/Slow` calls take `slow` and whose watches never end.
async fn processes_with_slow_driver(slow: Duration, drain: &str) -> (ProcessChain, RawDriver) {
    let raw = std::sync::Arc::new(std::sync::Mutex::new(None));
    let keep = raw.clone();
    let chain =
        ProcessChain::start_with_driver(&["--drain-timeout", drain], &["--drain-timeout", drain], &[], |socket| {
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
    let (mut chain, driver) = processes_with_slow_driver(Duration::from_secs(4), "30s").await;
    let socket = chain.shim_socket.clone();
    let slow = tokio::spawn(async move {
        raw_call(&socket, "/openshell.compute.v1.ComputeDriver/Slow", &[], grpc_frame(b"")).await
    });
    let socket = chain.shim_socket.clone();
    let watch = tokio::spawn(async move {
        raw_call(&socket, "/openshell.compute.v1.ComputeDriver/WatchSandboxes", &[], grpc_frame(b"")).await
    });
    assert!(eventually(Duration::from_secs(20), || driver.calls().len() == 2).await);
    chain.shim.signal(rustix::process::Signal::TERM);

    let watch_end = tokio::time::timeout(Duration::from_secs(20), watch).await.unwrap().unwrap();
    assert_eq!(watch_end.grpc_status().as_deref(), Some("14"), "{watch_end:?}");
    assert!(watch_end.grpc_message().contains("shim is shutting down"), "{}", watch_end.grpc_message());
    // Ended at once, not at the end of the drain: the other call is still in flight.
    assert!(!slow.is_finished(), "the watch ended only after the call in flight");

    let slow = tokio::time::timeout(Duration::from_secs(20), slow).await.unwrap().unwrap();
    assert_eq!(slow.grpc_status().as_deref(), Some("0"), "the call in flight did not complete");
    assert_eq!(grpc_messages(slow.body), vec![Bytes::from_static(b"done")]);

    assert_eq!(chain.shim.wait_exit(Duration::from_secs(20)).await, Some(0));
    assert!(!chain.shim_socket.exists(), "the socket file was left behind");
    chain.shim.expect_log(&["signal received: draining"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once() {
    // The drain would last a minute; the second signal ends it.
    let (mut chain, driver) = processes_with_slow_driver(Duration::from_secs(120), "60s").await;
    let socket = chain.shim_socket.clone();
    let slow = tokio::spawn(async move {
        raw_call(&socket, "/openshell.compute.v1.ComputeDriver/Slow", &[], grpc_frame(b"")).await
    });
    assert!(eventually(Duration::from_secs(20), || driver.calls().len() == 1).await);
    chain.relay.signal(rustix::process::Signal::TERM);
    chain.relay.expect_log(&["signal received: draining"]).await;
    chain.relay.signal(rustix::process::Signal::TERM);
    // Well before the 60 s drain would end (room for a loaded machine).
    assert_eq!(chain.relay.wait_exit(Duration::from_secs(20)).await, Some(0));
    chain.relay.expect_log(&["second signal: stopping now"]).await;
    // The gateway's call ends with a status, not a hang.
    let response = tokio::time::timeout(Duration::from_secs(20), slow).await.unwrap().unwrap();
    assert_eq!(response.grpc_status().as_deref(), Some("14"), "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outlasting_the_drain_timeout_ends_unavailable_naming_the_shutdown() {
    let (mut chain, driver) = processes_with_slow_driver(Duration::from_secs(120), "1s").await;
    let socket = chain.shim_socket.clone();
    let slow = tokio::spawn(async move {
        try_raw_call(&socket, "/openshell.compute.v1.ComputeDriver/Slow", &[], grpc_frame(b"")).await
    });
    assert!(eventually(Duration::from_secs(20), || driver.calls().len() == 1).await);
    chain.shim.signal(rustix::process::Signal::TERM);
    let response = tokio::time::timeout(Duration::from_secs(20), slow).await.unwrap().unwrap();
    let response = response.unwrap_or_else(|e| panic!("the call got no gRPC status as the drain ran out: {e}"));
    assert_eq!(response.grpc_status().as_deref(), Some("14"), "{response:?}");
    assert!(response.grpc_message().contains("shim is shutting down"), "{}", response.grpc_message());
    assert_eq!(chain.shim.wait_exit(Duration::from_secs(20)).await, Some(0));
    assert!(!chain.shim_socket.exists(), "the socket file was left behind");
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
    let before = chain.shim.tls.load_full();
    write_leaf(&chain.pki.dir, "client", &foreign);
    let tls = chain.shim.tls.clone();
    wait_for("the shim to load the foreign certificate", || !Arc::ptr_eq(&tls.load_full(), &before)).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        calls += 1;
    }
    let metrics = chain.relay.forwarder.metrics().clone();
    wait_for("the relay to count a refused handshake", || metrics.handshake_failures() >= 1).await;
    let attempts = metrics.handshake_failures();
    // Backoff from 100 ms doubling: a handful of attempts in 2 s, not one per call or more.
    assert!((1..=12).contains(&attempts), "{attempts} connection attempts for {calls} calls in 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_appears_after_callers_gave_up_is_reached_by_the_next_call_at_once() {
    // The relay's next attempt toward the driver is 15 to 30 s away while
    // the first caller waits (4.5 s); the next caller, arriving after it
    // gave up, must not inherit that pause: if it did, its own 4.5 s would
    // run out first and it would fail too.
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(
        dir,
        |relay| {
            relay.settings.dial.backoff_initial = Duration::from_secs(30);
            relay.settings.dial.backoff_max = Duration::from_secs(60);
            relay.settings.dial.connect_wait = Duration::from_millis(4500);
        },
        |shim| shim.settings.dial.connect_wait = Duration::from_secs(20),
    )
    .await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("after waiting 4500 ms"), "{}", status.message());

    openshell_driver_bridge::demo::serve(&chain.driver_socket, DemoDriver::new(), chain.shutdown.clone()).unwrap();
    let answer = gateway.get_capabilities(GetCapabilitiesRequest {}).await;
    assert!(answer.is_ok(), "the new caller waited out an old backoff: {answer:?}");
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

    doomed.shutdown_background();
    // No pings on a Unix socket: the end of file is what ends the watch.
    let status = tokio::time::timeout(Duration::from_secs(20), watch_end(&mut watch)).await.unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("driver.sock") && status.message().contains("connection lost"),
        "{}",
        status.message()
    );

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
async fn a_connection_made_while_the_driver_was_down_keeps_serving_once_it_is_back() {
    // Every connection is served by the one frame relay from its first
    // byte: a connection made during a driver outage waits for the driver,
    // then carries on as any other; it is not retired.
    let rig = Rig::start(|_| {}).await;
    let mut gateway = driver_client(&rig.shim_socket).await.unwrap();
    let mut first = gateway.clone();
    let waiting = tokio::spawn(async move { first.get_capabilities(GetCapabilitiesRequest {}).await });
    rig.open_at_relay(1).await;
    let (driver, _driver_shutdown) = rig.demo_driver();
    waiting.await.unwrap().unwrap();
    for _ in 0..20 {
        gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
    }
    assert_eq!(rig.proxy.connections(), 1, "the shim's connection to the relay was replaced");
    assert_eq!(driver.calls("GetCapabilities"), 21);
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

    assert!(eventually(Duration::from_secs(20), || driver.watchers() == 1).await, "the watch never reached the driver");
    // Ping every 300 ms, unanswered for 300 ms; without the pings the
    // silent client's watch would stay open for good.
    assert!(
        eventually(Duration::from_secs(20), || driver.watchers() == 0).await,
        "the silent client's watch is still open at the driver"
    );
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
    // The shim has seen the relay go (a call already on its way when the
    // link broke would end UNAVAILABLE: it may have reached the relay).
    rig.shim_sees_the_relay_gone().await;
    let during = tokio::spawn(async move { raw_request(&mut gateway, path, &[], grpc_frame(b"")).await });
    // The relay comes back only once the call waits in the shim.
    rig.open_at_shim(1).await;
    let mut config = relay_config(&rig.pki, DriverTarget::Unix(rig.driver_socket.clone()));
    config.listen = addr;
    rig.relay_shutdown = Shutdown::new();
    rig.relay = relay::start(config, rig.relay_shutdown.clone()).await.unwrap();
    let during = during.await.unwrap();
    assert_eq!(during.grpc_status().as_deref(), Some("0"), "{}", during.grpc_message());
    assert!(rig.proxy.connections() >= 2, "the shim did not dial the relay again");
    assert_eq!(driver.calls("GetCapabilities"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_down_past_connect_wait_fails_the_call_and_the_same_connection_works_once_it_is_back() {
    let mut rig = Rig::start(|_| {}).await;
    let (driver, _driver_shutdown) = rig.demo_driver();
    let mut gateway = raw_connection(&rig.shim_socket).await;
    let path = "/openshell.compute.v1.ComputeDriver/GetCapabilities";
    let first = raw_request(&mut gateway, path, &[], grpc_frame(b"")).await;
    assert_eq!(first.grpc_status().as_deref(), Some("0"), "{}", first.grpc_message());

    let addr = rig.relay.local_addr;
    rig.relay_shutdown.stop_now();
    let _ = (&mut rig.relay.task).await;
    rig.shim_sees_the_relay_gone().await;
    // Down for longer than the shim's --connect-wait (3 s in tests).
    let failed = raw_request(&mut gateway, path, &[], grpc_frame(b"")).await;
    assert_eq!(failed.grpc_status().as_deref(), Some("14"), "{}", failed.grpc_message());
    let message = failed.grpc_message();
    assert!(message.contains(&format!("upstream 127.0.0.1:{}", rig.proxy.addr.port())), "{message}");
    assert!(message.contains("after waiting 3000 ms"), "{message}");

    let mut config = relay_config(&rig.pki, DriverTarget::Unix(rig.driver_socket.clone()));
    config.listen = addr;
    rig.relay_shutdown = Shutdown::new();
    rig.relay = relay::start(config, rig.relay_shutdown.clone()).await.unwrap();
    // The same gateway connection: its next call reaches the relay again.
    let again = raw_request(&mut gateway, path, &[], grpc_frame(b"")).await;
    assert_eq!(again.grpc_status().as_deref(), Some("0"), "{}", again.grpc_message());
    assert_eq!(driver.calls("GetCapabilities"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_saying_goaway_lets_calls_finish_and_new_calls_wait_for_its_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let chain =
        Chain::start_with(dir, |relay| relay.settings.dial.connect_wait = Duration::from_secs(20), |_| {}).await;
    let driver = RawDriver::serve(&chain.driver_socket, |call| {
        let delay = if call.path.ends_with("/Slow") {
            Duration::from_secs(4)
        } else if call.path.ends_with("/WatchSandboxes") {
            Duration::from_secs(120)
        } else {
            Duration::ZERO
        };
        Answer { delay, ..Answer::ok(grpc_frame(format!("connection {}", call.connection).as_bytes())) }
    });
    const SERVICE: &str = "/openshell.compute.v1.ComputeDriver";
    // One client connection to the relay carries everything, its health
    // checks included (they show what the relay thinks of its driver hop).
    let mut client = raw_tls_connection(chain.relay.local_addr, &chain.pki).await;
    let first = raw_request(&mut client, &format!("{SERVICE}/Echo"), &[], grpc_frame(b"")).await;
    assert_eq!(grpc_messages(first.body), vec![Bytes::from_static(b"connection 1")]);

    let mut sender = client.clone();
    let slow =
        tokio::spawn(async move { raw_request(&mut sender, &format!("{SERVICE}/Slow"), &[], grpc_frame(b"")).await });
    let mut sender = client.clone();
    let watch = tokio::spawn(async move {
        raw_request(&mut sender, &format!("{SERVICE}/WatchSandboxes"), &[], grpc_frame(b"")).await
    });
    wait_for("the slow call and the watch at the driver", || driver.calls().len() == 3).await;
    driver.goaway_all();

    // The watch ends at once, naming the reason.
    let watch = tokio::time::timeout(Duration::from_secs(20), watch).await.unwrap().unwrap();
    assert_eq!(watch.grpc_status().as_deref(), Some("14"), "{watch:?}");
    assert!(watch.grpc_message().contains("going away"), "{}", watch.grpc_message());
    // The relay has taken the GOAWAY in: its connection to the driver no
    // longer takes calls (health NOT_SERVING while the old one finishes).
    let health = || {
        let mut sender = client.clone();
        async move { raw_request(&mut sender, "/grpc.health.v1.Health/Check", &[], grpc_frame(b"")).await }
    };
    assert_eq!(grpc_messages(health().await.body), vec![Bytes::from_static(&[0x08, 0x02])], "expected NOT_SERVING");
    assert!(!slow.is_finished());

    // A new call waits for the calls in flight, then goes to the driver's
    // next connection.
    let next = raw_request(&mut client, &format!("{SERVICE}/Echo"), &[], grpc_frame(b"")).await;
    assert_eq!(next.grpc_status().as_deref(), Some("0"), "{}", next.grpc_message());
    assert_eq!(grpc_messages(next.body), vec![Bytes::from_static(b"connection 2")]);
    // The call in flight finished on the old connection.
    let slow = tokio::time::timeout(Duration::from_secs(20), slow).await.unwrap().unwrap();
    assert_eq!(slow.grpc_status().as_deref(), Some("0"), "{}", slow.grpc_message());
    assert_eq!(grpc_messages(slow.body), vec![Bytes::from_static(b"connection 1")]);
    assert_eq!(driver.connections(), 2);
}

/// Threads of process `pid` named as tokio names its runtime's workers.
fn runtime_workers(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        // "tokio-runtime-worker" (older tokio) or "tokio-rt-worker", cut to 15 bytes.
        .filter(|comm| ["tokio-runtime-w", "tokio-rt-worker"].contains(&comm.trim()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_with_four_worker_threads_serves_concurrent_calls() {
    let chain = ProcessChain::start(&["--worker-threads", "4"], &["--worker-threads", "4"], &[]).await;
    for bridge in [&chain.relay, &chain.shim] {
        let workers = runtime_workers(bridge.pid());
        assert!(workers >= 4, "{}: {workers} runtime worker threads", bridge.name);
    }
    // Four gateway connections, 25 calls at once on each.
    let mut connections = Vec::new();
    for c in 0..4 {
        let socket = chain.shim_socket.clone();
        connections.push(tokio::spawn(async move {
            let client = driver_client(&socket).await.unwrap();
            let calls = (0..25).map(|i| {
                let mut client = client.clone();
                async move {
                    client.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox(&format!("w{c}-{i}"))) }).await
                }
            });
            futures_util::future::join_all(calls).await
        }));
    }
    for connection in connections {
        for outcome in connection.await.unwrap() {
            outcome.unwrap();
        }
    }
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let listed = gateway.list_sandboxes(ListSandboxesRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.sandboxes.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_ends_every_fresh_connection_is_not_redialled_in_a_loop() {
    // A driver that answers HTTP/2 and then hangs up before any call is
    // answered (crashing on each connection, or refusing the relay) must
    // earn strikes: a pause that doubles, not a redial per microsecond.
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |relay| relay.settings.dial.connect_wait = Duration::from_secs(4), |_| {}).await;
    std::fs::create_dir_all(chain.driver_socket.parent().unwrap()).unwrap();
    let listener = tokio::net::UnixListener::bind(&chain.driver_socket).unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // An empty SETTINGS frame, then gone.
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
        }
    });
    // The gateway's connection alone makes the relay dial the driver (its
    // next hop); every connection the driver takes it then ends unanswered.
    let _gateway = driver_client(&chain.shim_socket).await.unwrap();
    wait_for("the relay to dial the driver", || accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2).await;
    let first = accepted.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = accepted.load(std::sync::atomic::Ordering::SeqCst) - first;
    // Pauses of 0.4, 0.8, 1.6, 3.2 s (each jittered to its upper half): a
    // handful of connections in 4 s (27 without the strikes, as measured).
    assert!(attempts <= 8, "{attempts} driver connections in 4 s");
}
