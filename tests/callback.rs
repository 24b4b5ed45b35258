//! The way back: sandboxes in the driver's network reach the gateway
//! through the relay's callback listener and the shim's callback link,
//! over real sockets and real TLS (the sandbox's TLS with the gateway
//! stays end to end; the bridge carries opaque bytes).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{field, ProcessChain};
use common::{relay_config, shim_config, wait_for, TestPki, GATEWAY_ID};
use openshell_driver_bridge::admit::policy::{Access, Rule};
use openshell_driver_bridge::callback::relay::RelayCallback;
use openshell_driver_bridge::callback::shim::ShimCallback;
use openshell_driver_bridge::callback::CallbackSettings;
use openshell_driver_bridge::demo::gateway;
use openshell_driver_bridge::obs::metrics::callback::Refusal;
use openshell_driver_bridge::pki::LeafSpec;
use openshell_driver_bridge::role::relay::{self, DriverTarget, RunningRelay};
use openshell_driver_bridge::role::shim::{self, RunningShim, ShimConfig};
use openshell_driver_bridge::shutdown::Shutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// The gateway's stand-ins

/// A listener standing in for the gateway's, counting connections.
struct Gateway {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Gateway {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A TLS echo server with the test server certificate (`localhost`):
/// echoes every byte, and ends its side once the client ended its own.
async fn echo_gateway(pki: &TestPki) -> Gateway {
    let tls = gateway::server_tls(&pki.server.0, &pki.server.1).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tcp_gateway(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(stream) = acceptor.accept(tcp).await else { return };
            let (mut reader, mut writer) = tokio::io::split(stream);
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
            let _ = writer.shutdown().await;
        }
    })
    .await
}

/// A plain TCP gateway running `serve` on every connection.
async fn tcp_gateway<F, Fut>(serve: F) -> Gateway
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp));
        }
    });
    Gateway { addr, accepted }
}

/// The TLS gRPC stand-in of the gateway's endpoint.
async fn grpc_gateway(pki: &TestPki, shutdown: &Shutdown) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    gateway::serve(listener, gateway::server_tls(&pki.server.0, &pki.server.1).unwrap(), shutdown.clone());
    addr
}

/// A free loopback port where nothing listens.
async fn nothing_listens() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// ---------------------------------------------------------------------------
// The sandbox's side

/// A sandbox's TLS connection to the gateway through `callback`, verifying
/// the gateway's certificate as `localhost`.
async fn sandbox_tls(callback: SocketAddr, pki: &TestPki) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&pki.ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(openshell_driver_bridge::tls::config::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(callback).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("TLS handshake through the callback path within 10 s")
        .expect("TLS handshake with the gateway through the callback path")
}

/// Writes `message` and reads back as many bytes, within 10 s.
async fn echo_once<S: AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    stream.flush().await.unwrap();
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .expect("echo within 10 s")
        .expect("echo");
    back
}

/// How a connection ended, waiting at most `limit`: `Some` with what the
/// read said (end of file or an error), `None` if it still hangs.
async fn ended_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Option<String> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(limit, stream.read(&mut byte)).await {
        Ok(Ok(0)) => Some("end of file".into()),
        Ok(Ok(_)) => Some("unexpected data".into()),
        Ok(Err(e)) => Some(format!("error: {e}")),
        Err(_) => None,
    }
}

/// A plain TCP connection to `callback` that the relay closes at once.
async fn closed_at_once(callback: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut tcp = match TcpStream::connect(callback).await {
        Ok(tcp) => tcp,
        // Reset so early that the connect itself reports it.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
        Err(e) => panic!("connect to the callback listener {callback}: {e}"),
    };
    let _ = tcp.write_all(b"hello").await;
    let how = ended_within(&mut tcp, Duration::from_secs(3)).await;
    assert!(how.is_some(), "the callback connection was not closed within 3 s");
    started.elapsed()
}

// ---------------------------------------------------------------------------
// The bridge: a relay with a callback listener, a shim with a callback target

struct Way {
    dir: tempfile::TempDir,
    pki: TestPki,
    relay_shutdown: Shutdown,
    relay: RunningRelay,
    relay_settings: CallbackSettings,
    shim_shutdown: Shutdown,
    shim: Option<RunningShim>,
    target: SocketAddr,
    callback: SocketAddr,
}

fn callback_settings() -> CallbackSettings {
    CallbackSettings::default()
}

impl Way {
    fn pki() -> (tempfile::TempDir, TestPki) {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(&dir.path().join("pki"));
        (dir, pki)
    }

    /// Relay and shim, the shim's callbacks going to `target`.
    async fn start(dir: tempfile::TempDir, pki: TestPki, target: SocketAddr) -> Way {
        Self::start_with(dir, pki, target, callback_settings()).await
    }

    async fn start_with(dir: tempfile::TempDir, pki: TestPki, target: SocketAddr, settings: CallbackSettings) -> Way {
        let relay_shutdown = Shutdown::new();
        let relay = start_relay(&dir, &pki, None, &settings, &relay_shutdown).await;
        let callback = relay.callback_addr.unwrap();
        let mut way = Way {
            dir,
            pki,
            relay_shutdown,
            relay,
            relay_settings: settings,
            shim_shutdown: Shutdown::new(),
            shim: None,
            target,
            callback,
        };
        way.start_shim().await;
        way
    }

    fn shim_config(&self) -> ShimConfig {
        let mut config =
            shim_config(&self.pki, &self.dir.path().join("shim/compute-driver.sock"), self.relay.local_addr);
        config.server_name = Some("localhost".into());
        config.callback = Some(ShimCallback { target: self.target.to_string(), settings: callback_settings() });
        config
    }

    async fn start_shim(&mut self) {
        self.shim_shutdown = Shutdown::new();
        self.shim = Some(shim::start(self.shim_config(), self.shim_shutdown.clone()).unwrap());
        self.wait_for_link().await;
    }

    async fn stop_shim(&mut self) {
        self.shim_shutdown.stop_now();
        if let Some(shim) = self.shim.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), shim.task).await;
        }
    }

    async fn restart_relay(&mut self) {
        self.relay_shutdown.stop_now();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.relay.task).await;
        self.relay_shutdown = Shutdown::new();
        let fixed = Some((self.relay.local_addr, self.callback));
        self.relay = start_relay(&self.dir, &self.pki, fixed, &self.relay_settings, &self.relay_shutdown).await;
    }

    /// Links up at the relay (shims serving callbacks).
    fn links(&self) -> i64 {
        self.relay.forwarder.metrics().callback.links()
    }

    async fn wait_for_link(&self) {
        let metrics = self.relay.forwarder.metrics().clone();
        wait_for("the shim's callback link at the relay", || metrics.callback.links() >= 1).await;
    }
}

impl Drop for Way {
    fn drop(&mut self) {
        self.relay_shutdown.stop_now();
        self.shim_shutdown.stop_now();
    }
}

/// A relay admitting the test client, serving callbacks; on `fixed`
/// addresses (a restart) or fresh ones.
async fn start_relay(
    dir: &tempfile::TempDir,
    pki: &TestPki,
    fixed: Option<(SocketAddr, SocketAddr)>,
    settings: &CallbackSettings,
    shutdown: &Shutdown,
) -> RunningRelay {
    let mut config = relay_config(pki, DriverTarget::Unix(dir.path().join("driver/driver.sock")));
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    config.listen = fixed.map_or(loopback, |(listen, _)| listen);
    config.callback = Some(RelayCallback {
        listen: fixed.map_or(loopback, |(_, callback)| callback),
        client: format!("dns:{GATEWAY_ID}").parse().unwrap(),
        settings: settings.clone(),
    });
    // A restarted relay binds the addresses its predecessor just left.
    for attempt in 0..50 {
        match relay::start(config.clone(), shutdown.clone()).await {
            Ok(relay) => return relay,
            Err(e) if attempt < 49 => {
                eprintln!("relay start: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("relay start: {e}"),
        }
    }
    unreachable!()
}

// ---------------------------------------------------------------------------
// Scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_calls_the_gateway_over_grpc_with_tls_end_to_end() {
    let (dir, pki) = Way::pki();
    let gateway_shutdown = Shutdown::new();
    let target = grpc_gateway(&pki, &gateway_shutdown).await;
    let way = Way::start(dir, pki, target).await;
    let name =
        gateway::call(way.callback, &way.pki.ca_file, "localhost").await.expect("a gRPC call through the way back");
    assert_eq!(name, gateway::NAME);
    // The sandbox verified the gateway's certificate by name: a name the
    // certificate does not carry fails, so TLS is the gateway's, end to end.
    let wrong = gateway::call(way.callback, &way.pki.ca_file, "gateway.example").await;
    assert!(wrong.is_err(), "a name the gateway's certificate lacks must fail: {wrong:?}");
    let scrape = openshell_driver_bridge::role::admin::scrape(
        &way.relay.forwarder,
        openshell_driver_bridge::obs::metrics::exposition::Exposition::Prometheus,
    );
    for sample in [
        "openshell_bridge_callback_connections{role=\"relay\"}",
        "openshell_bridge_callback_connections_carried_total{role=\"relay\"}",
        "openshell_bridge_callback_bytes_total{role=\"relay\",direction=\"to_gateway\"}",
        "openshell_bridge_callback_link_up{role=\"relay\"} 1",
    ] {
        assert!(scrape.contains(sample), "{sample} missing from:\n{scrape}");
    }
    gateway_shutdown.stop_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sandboxes_call_back_at_once() {
    const SANDBOXES: usize = 200;
    let (dir, pki) = Way::pki();
    let gateway = echo_gateway(&pki).await;
    let way = Arc::new(Way::start(dir, pki, gateway.addr).await);
    let all_connected = Arc::new(tokio::sync::Barrier::new(SANDBOXES + 1));
    let done = Arc::new(tokio::sync::Barrier::new(SANDBOXES + 1));
    let mut tasks = Vec::new();
    for i in 0..SANDBOXES {
        let (way, all_connected, done) = (way.clone(), all_connected.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut tls = sandbox_tls(way.callback, &way.pki).await;
            let message = format!("sandbox {i} calling back");
            assert_eq!(echo_once(&mut tls, message.as_bytes()).await, message.as_bytes());
            all_connected.wait().await;
            done.wait().await;
            assert_eq!(echo_once(&mut tls, b"still here").await, b"still here");
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), all_connected.wait()).await.expect("200 sandboxes connected");
    assert_eq!(way.relay.forwarder.metrics().callback.open_connections(), SANDBOXES as i64);
    assert_eq!(gateway.accepted(), SANDBOXES);
    done.wait().await;
    for task in tasks {
        task.await.unwrap();
    }
}

/// Deterministic bytes that differ at every position of a long run.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_on_one_connection() {
    const SIZE: usize = 64 * 1024 * 1024;
    let (dir, pki) = Way::pki();
    let gateway = echo_gateway(&pki).await;
    let way = Way::start(dir, pki, gateway.addr).await;
    let tls = sandbox_tls(way.callback, &way.pki).await;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let sent = Arc::new(pattern(SIZE, 64));
    let to_send = sent.clone();
    let writing = tokio::spawn(async move {
        for chunk in to_send.chunks(1 << 20) {
            writer.write_all(chunk).await.unwrap();
        }
        writer.shutdown().await.unwrap();
    });
    let mut received = Vec::with_capacity(SIZE);
    tokio::time::timeout(Duration::from_secs(240), reader.read_to_end(&mut received))
        .await
        .expect("64 MiB back within 240 s")
        .expect("read to the end");
    writing.await.unwrap();
    assert_eq!(received.len(), SIZE, "every byte came back, and the gateway's end of stream after them");
    assert!(received == *sent, "the bytes came back unchanged");
    let metrics = &way.relay.forwarder.metrics().callback;
    let scrape = openshell_driver_bridge::role::admin::scrape(
        &way.relay.forwarder,
        openshell_driver_bridge::obs::metrics::exposition::Exposition::Prometheus,
    );
    let counted = scrape
        .lines()
        .find(|l| l.starts_with("openshell_bridge_callback_bytes_total{role=\"relay\",direction=\"to_sandbox\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    assert!(counted >= SIZE as u64, "to_sandbox bytes counted: {counted}");
    let _ = metrics;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_carried_both_ways() {
    let (dir, pki) = Way::pki();
    // The gateway reads the request to its end, then answers and ends; or,
    // when the sandbox says nothing first, it speaks first, ends its side,
    // and still reads what the sandbox sends after that.
    let heard = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let log = heard.clone();
    let gateway = tcp_gateway(move |mut tcp| {
        let log = log.clone();
        async move {
            let mut first = [0u8; 1];
            let spoke_first = tokio::time::timeout(Duration::from_millis(500), tcp.peek(&mut first)).await.is_err();
            if spoke_first {
                tcp.write_all(b"banner").await.unwrap();
                tcp.shutdown().await.unwrap();
                let mut rest = Vec::new();
                tcp.read_to_end(&mut rest).await.unwrap();
                log.lock().unwrap().push(rest);
            } else {
                let mut request = Vec::new();
                tcp.read_to_end(&mut request).await.unwrap();
                log.lock().unwrap().push(request.clone());
                tcp.write_all(b"reply to ").await.unwrap();
                tcp.write_all(&request).await.unwrap();
                tcp.shutdown().await.unwrap();
            }
        }
    })
    .await;
    let way = Way::start(dir, pki, gateway.addr).await;

    // The sandbox ends its side first: the gateway sees end of stream and
    // its answer still comes back.
    let mut sandbox = TcpStream::connect(way.callback).await.unwrap();
    sandbox.write_all(b"request").await.unwrap();
    sandbox.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sandbox.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert_eq!(answer, b"reply to request");

    // The gateway ends its side first: the sandbox sees end of stream and
    // what it sends afterwards still reaches the gateway.
    let mut sandbox = TcpStream::connect(way.callback).await.unwrap();
    let mut banner = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sandbox.read_to_end(&mut banner)).await.unwrap().unwrap();
    assert_eq!(banner, b"banner");
    sandbox.write_all(b"after the gateway's end").await.unwrap();
    sandbox.shutdown().await.unwrap();
    wait_for("the gateway to hear the sandbox after its own end", || heard.lock().unwrap().len() == 2).await;
    assert_eq!(heard.lock().unwrap()[1], b"after the gateway's end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_callback_connection_survives() {
    // Two minutes and a little: longer than any default keepalive or
    // timeout a proxy might hide. CALLBACK_IDLE_SECONDS shortens it.
    let idle: u64 = std::env::var("CALLBACK_IDLE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(130);
    let (dir, pki) = Way::pki();
    let gateway = echo_gateway(&pki).await;
    let way = Way::start(dir, pki, gateway.addr).await;
    let mut tls = sandbox_tls(way.callback, &way.pki).await;
    assert_eq!(echo_once(&mut tls, b"before").await, b"before");
    tokio::time::sleep(Duration::from_secs(idle)).await;
    assert_eq!(echo_once(&mut tls, b"after a long silence").await, b"after a long silence");
    assert_eq!(way.relay.forwarder.metrics().callback.open_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_silent_past_the_idle_timeout_is_closed() {
    let (dir, pki) = Way::pki();
    let gateway = echo_gateway(&pki).await;
    let settings = CallbackSettings { idle_timeout: Duration::from_secs(2), ..callback_settings() };
    let way = Way::start_with(dir, pki, gateway.addr, settings).await;
    let mut tls = sandbox_tls(way.callback, &way.pki).await;
    assert_eq!(echo_once(&mut tls, b"hello").await, b"hello");
    let started = Instant::now();
    let how = ended_within(&mut tls, Duration::from_secs(10)).await;
    assert!(how.is_some(), "an idle connection must be closed after --callback-idle-timeout");
    assert!(started.elapsed() >= Duration::from_millis(1500), "closed too early: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_restarted_its_connections_close_and_new_ones_work_once_it_is_back() {
    let (dir, pki) = Way::pki();
    let gateway = echo_gateway(&pki).await;
    let mut way = Way::start(dir, pki, gateway.addr).await;
    let mut open = sandbox_tls(way.callback, &way.pki).await;
    assert_eq!(echo_once(&mut open, b"hello").await, b"hello");

    way.stop_shim().await;
    let how = ended_within(&mut open, Duration::from_secs(10)).await;
    assert!(how.is_some(), "the sandbox's connection must close when the shim goes, not hang");
    wait_for("the relay to see the link gone", || way.links() == 0).await;

    // No shim: new connections are closed at once, and counted.
    let took = closed_at_once(way.callback).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    assert!(way.relay.forwarder.metrics().callback.refusals(Refusal::NoShim) >= 1);

    way.start_shim().await;
    let mut again = sandbox_tls(way.callback, &way.pki).await;
    assert_eq!(echo_once(&mut again, b"back").await, b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restarted_its_connections_close_and_the_shim_comes_back() {
    let (dir, pki) = Way::pki();
    let gateway = echo_gateway(&pki).await;
    let mut way = Way::start(dir, pki, gateway.addr).await;
    let mut open = sandbox_tls(way.callback, &way.pki).await;
    assert_eq!(echo_once(&mut open, b"hello").await, b"hello");

    way.restart_relay().await;
    let how = ended_within(&mut open, Duration::from_secs(10)).await;
    assert!(how.is_some(), "the sandbox's connection must close when the relay goes, not hang");
    // The shim dials the new relay again (backoff at most 5 s).
    way.wait_for_link().await;
    let mut again = sandbox_tls(way.callback, &way.pki).await;
    assert_eq!(echo_once(&mut again, b"back").await, b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_down_the_sandbox_is_closed_at_once_and_the_shim_names_the_target() {
    let down = nothing_listens().await;
    let target = down.to_string();
    let chain = ProcessChain::start(
        &["--callback-listen", "127.0.0.1:0"],
        &["--callback-target", &target, "--log-level", "info"],
        &[],
    )
    .await;
    let serving = chain.relay.expect_log(&["relay serving"]).await;
    let callback: SocketAddr = field(&serving, "callback_listen=").unwrap().parse().unwrap();
    match chain.shim.wait_for_log(&["callback link up"], Duration::from_secs(20)).await {
        Some(_) => {}
        None => panic!("no callback link; log:\n{}", chain.output()),
    }
    let took = closed_at_once(callback).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    chain.shim.expect_log(&["cannot reach the gateway at --callback-target", &target]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_is_not_the_callback_identity_cannot_receive_callbacks() {
    let (dir, pki) = Way::pki();
    let gateway = echo_gateway(&pki).await;
    let other = pki.issue("other", &LeafSpec::client("other-gateway"));
    // The relay admits both identities for the contract; callbacks go to openshell-gateway's shim only.
    let relay_shutdown = Shutdown::new();
    let mut config = relay_config(&pki, DriverTarget::Unix(dir.path().join("driver/driver.sock")));
    config.rules.push(Rule { pattern: "dns:other-gateway".parse().unwrap(), access: Access::Full });
    config.callback = Some(RelayCallback {
        listen: "127.0.0.1:0".parse().unwrap(),
        client: format!("dns:{GATEWAY_ID}").parse().unwrap(),
        settings: callback_settings(),
    });
    let relay = relay::start(config, relay_shutdown.clone()).await.unwrap();
    let callback = relay.callback_addr.unwrap();

    let rogue_shutdown = Shutdown::new();
    let mut rogue = shim_config(&pki, &dir.path().join("rogue/compute-driver.sock"), relay.local_addr);
    rogue.tls = common::files(&pki.ca_file, &other);
    rogue.callback = Some(ShimCallback { target: gateway.addr.to_string(), settings: callback_settings() });
    let _rogue = shim::start(rogue, rogue_shutdown.clone()).unwrap();
    let metrics = relay.forwarder.metrics().clone();
    wait_for("the relay to refuse the other identity's callback link", || {
        metrics.callback.refusals(Refusal::Identity) >= 1
    })
    .await;
    assert_eq!(metrics.callback.links(), 0);
    closed_at_once(callback).await;
    assert_eq!(gateway.accepted(), 0, "no callback may reach a shim of another identity");

    let shim_shutdown = Shutdown::new();
    let mut good = shim_config(&pki, &dir.path().join("shim/compute-driver.sock"), relay.local_addr);
    good.callback = Some(ShimCallback { target: gateway.addr.to_string(), settings: callback_settings() });
    let _good = shim::start(good, shim_shutdown.clone()).unwrap();
    wait_for("the callback identity's link", || metrics.callback.links() == 1).await;
    let mut tls = sandbox_tls(callback, &pki).await;
    assert_eq!(echo_once(&mut tls, b"hello").await, b"hello");
    assert_eq!(metrics.callback.links(), 1, "the other identity still has no link");
    for shutdown in [relay_shutdown, rogue_shutdown, shim_shutdown] {
        shutdown.stop_now();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cannot_make_the_shim_connect_anywhere_but_its_target() {
    let (dir, pki) = Way::pki();
    let target = tcp_gateway(|mut tcp| async move {
        let (mut reader, mut writer) = tcp.split();
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
    })
    .await;
    let decoy = tcp_gateway(|_| async {}).await;

    // A relay of our CA that, once the shim's callback link is up, asks
    // for the decoy's address every way a request can name one.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_relay = listener.local_addr().unwrap();
    let server = openshell_driver_bridge::tls::config::server_config(&pki.server_tls()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let shutdown = Shutdown::new();
    let mut config = shim_config(&pki, &dir.path().join("shim/compute-driver.sock"), fake_relay);
    config.server_name = Some("localhost".into());
    config.callback = Some(ShimCallback { target: target.addr.to_string(), settings: callback_settings() });
    let _shim = shim::start(config, shutdown.clone()).unwrap();

    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    let tls = acceptor.accept(tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"openshell-callback/1"[..]));
    let (sender, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let decoy_addr = decoy.addr.to_string();
    let requests = [
        http::Request::builder().uri(format!("http://{decoy_addr}/")).body(()).unwrap(),
        http::Request::builder().uri(format!("http://callback/{decoy_addr}")).body(()).unwrap(),
        http::Request::builder()
            .uri("http://callback/")
            .header("x-target", decoy_addr.as_str())
            .header("forwarded", format!("host={decoy_addr}"))
            .body(())
            .unwrap(),
        http::Request::builder().method("CONNECT").uri(decoy_addr.as_str()).body(()).unwrap(),
    ];
    let count = requests.len();
    for request in requests {
        let mut sender = sender.clone().ready().await.unwrap();
        let (response, mut send) = sender.send_request(request, false).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response).await.unwrap().unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        send.send_data(Bytes::from_static(b"where am I"), true).unwrap();
        let mut body = response.into_body();
        let mut echoed = Vec::new();
        while let Some(Ok(data)) = tokio::time::timeout(Duration::from_secs(10), body.data()).await.unwrap() {
            let _ = body.flow_control().release_capacity(data.len());
            echoed.extend_from_slice(&data);
        }
        assert_eq!(echoed, b"where am I", "the bytes went to the target");
    }
    assert_eq!(decoy.accepted(), 0, "the shim connected to an address the relay named");
    assert_eq!(target.accepted(), count);
    shutdown.stop_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_callback_connections_after_the_drain_timeout() {
    let (dir, pki) = Way::pki();
    let gateway = echo_gateway(&pki).await;
    let way = Way::start(dir, pki, gateway.addr).await;
    let mut open = sandbox_tls(way.callback, &way.pki).await;
    assert_eq!(echo_once(&mut open, b"hello").await, b"hello");
    let drain = Duration::from_secs(2);
    let started = Instant::now();
    way.relay_shutdown.begin(drain);
    // During the drain the open connection still works; new ones are not taken.
    assert_eq!(echo_once(&mut open, b"draining").await, b"draining");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(way.callback).await.is_err(), "the callback listener must close on drain");
    let how = ended_within(&mut open, Duration::from_secs(10)).await;
    assert!(how.is_some(), "the connection must close once the drain time is over");
    assert!(
        started.elapsed() >= drain - Duration::from_millis(100),
        "closed before the drain time: {:?}",
        started.elapsed()
    );
}

/// Runs the binary with `args` to its end; exit code and output.
async fn run_binary(args: &[String]) -> (Option<i32>, String) {
    let mut bridge = common::process::Bridge::spawn("cli", args, &[]);
    let code = bridge.wait_exit(Duration::from_secs(30)).await;
    (code, bridge.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_callback_path() {
    let (dir, pki) = Way::pki();
    let gateway = echo_gateway(&pki).await;
    let way = Way::start(dir, pki, gateway.addr).await;
    let tls = |(cert, key): &(std::path::PathBuf, std::path::PathBuf)| {
        common::process::tls_args(&way.pki.ca_file, &(cert.clone(), key.clone()))
    };
    let mut shim: Vec<String> = ["check", "shim", "--socket"].map(String::from).to_vec();
    shim.push(way.dir.path().join("check/compute-driver.sock").display().to_string());
    shim.extend([
        "--upstream".into(),
        format!("https://{}", way.relay.local_addr),
        "--server-name".into(),
        "localhost".into(),
    ]);
    shim.extend(["--callback-target".into(), way.target.to_string()]);
    shim.extend(tls(&way.pki.client));
    let (_, output) = run_binary(&shim).await;
    for (step, detail) in [("callback-target", "accepts connections"), ("callback-link", "took the callback link")] {
        assert!(
            output.lines().any(|l| l.contains("OK") && l.contains(step) && l.contains(detail)),
            "no OK {step}:\n{output}"
        );
    }
    // The probe's link took no sandbox: the shim's link still serves.
    let mut tls_stream = sandbox_tls(way.callback, &way.pki).await;
    assert_eq!(echo_once(&mut tls_stream, b"after the check").await, b"after the check");

    let mut shim_down = shim.clone();
    let at = shim_down.iter().position(|a| a == "--callback-target").unwrap();
    shim_down[at + 1] = nothing_listens().await.to_string();
    let (code, output) = run_binary(&shim_down).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.lines().any(|l| l.contains("FAIL") && l.contains("callback-target")), "{output}");

    let mut relay: Vec<String> =
        ["check", "relay", "--listen", "127.0.0.1:0", "--driver-socket", "/nonexistent/driver.sock"]
            .map(String::from)
            .to_vec();
    relay.extend([
        "--allow-client".into(),
        format!("dns:{GATEWAY_ID}"),
        "--callback-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    relay.extend(tls(&way.pki.server));
    let (_, output) = run_binary(&relay).await;
    assert!(
        output
            .lines()
            .any(|l| l.contains("OK") && l.contains("callback-listen") && l.contains(&format!("dns:{GATEWAY_ID}"))),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_identity_must_be_named_when_several_may_call() {
    let (_dir, pki) = Way::pki();
    let mut base: Vec<String> =
        ["relay", "--print-config", "--listen", "127.0.0.1:0", "--driver-socket", "/run/x.sock"]
            .map(String::from)
            .to_vec();
    base.extend(common::process::tls_args(&pki.ca_file, &pki.server));
    base.extend(
        ["--allow-client", "dns:a", "--allow-client", "dns:b", "--callback-listen", "127.0.0.1:0"].map(String::from),
    );
    let (code, output) = run_binary(&base).await;
    assert_ne!(code, Some(0));
    assert!(output.contains("--callback-listen") && output.contains("--callback-client"), "{output}");
    let mut named = base.clone();
    named.extend(["--callback-client", "dns:c"].map(String::from));
    let (code, output) = run_binary(&named).await;
    assert_ne!(code, Some(0));
    assert!(output.contains("--callback-client dns:c: not an allowed client"), "{output}");
    let mut good = base.clone();
    good.extend(["--callback-client", "dns:b"].map(String::from));
    let (code, output) = run_binary(&good).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("callback-client = \"dns:b\""), "{output}");
}
