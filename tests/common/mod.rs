//! Test harness: real certificates, real sockets, the real roles.
//!
//! Everything runs in the test process (driver, relay, shim) over real Unix
//! sockets and loopback TLS; a "gateway" is a tonic client or a raw HTTP/2
//! client on the shim's socket.
#![allow(dead_code)]

pub mod exposition;
pub mod fault;
pub mod process;
pub mod raw_h2;
pub mod tinyproxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openshell_driver_bridge::admit::policy::{Access, Rule};
use openshell_driver_bridge::connect::dialer::DialSettings;
use openshell_driver_bridge::connect::proxy::ProxySetting;
use openshell_driver_bridge::demo::driver::{DemoDriver, DemoOptions};
use openshell_driver_bridge::listen::uds::{own_uid, PrivateSocket};
use openshell_driver_bridge::pki::{self, Ca, LeafSpec};
use openshell_driver_bridge::role::relay::{self, DriverTarget, RelayConfig, RunningRelay};
use openshell_driver_bridge::role::shim::{self, RunningShim, ShimConfig, Upstream};
use openshell_driver_bridge::role::RoleSettings;
use openshell_driver_bridge::shutdown::Shutdown;
use openshell_driver_bridge::tls::config::TlsFiles;

pub const GATEWAY_ID: &str = "openshell-gateway";

/// A minimal valid sandbox named after its id (`name-<id>`).
pub fn sandbox(id: &str) -> openshell_driver_bridge::proto::compute::DriverSandbox {
    use openshell_driver_bridge::proto::compute::{DriverSandbox, DriverSandboxSpec, DriverSandboxTemplate};
    DriverSandbox {
        id: id.into(),
        name: format!("name-{id}"),
        namespace: "default".into(),
        spec: Some(DriverSandboxSpec {
            template: Some(DriverSandboxTemplate { image: "openshell/sandbox:latest".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Reads the watch until it ends; the status it ended with (OK when it
/// ended without one).
pub async fn watch_end(
    watch: &mut tonic::Streaming<openshell_driver_bridge::proto::compute::WatchSandboxesEvent>,
) -> tonic::Status {
    loop {
        match watch.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return tonic::Status::ok("ended cleanly"),
            Err(status) => return status,
        }
    }
}

/// `watch_end`, which must come within `limit`.
pub async fn watch_end_within(
    watch: &mut tonic::Streaming<openshell_driver_bridge::proto::compute::WatchSandboxesEvent>,
    limit: Duration,
) -> tonic::Status {
    tokio::time::timeout(limit, watch_end(watch)).await.expect("the watch did not end in time")
}

/// Creates sandbox `id` through the socket at `socket`; whether `watch`
/// then sees it within 5 s (a watch that ends meanwhile fails the test).
pub async fn create_and_see(
    socket: &Path,
    watch: &mut tonic::Streaming<openshell_driver_bridge::proto::compute::WatchSandboxesEvent>,
    id: &str,
) -> bool {
    use openshell_driver_bridge::proto::compute::watch_sandboxes_event::Payload;
    let mut client = openshell_driver_bridge::grpc::client::driver_client(socket).await.unwrap();
    let request = openshell_driver_bridge::proto::compute::CreateSandboxRequest { sandbox: Some(sandbox(id)) };
    client.create_sandbox(request).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = watch.message().await.unwrap().unwrap();
            if let Some(Payload::Sandbox(s)) = event.payload {
                if s.sandbox.map(|s| s.id).as_deref() == Some(id) {
                    return;
                }
            }
        }
    })
    .await;
    seen.is_ok()
}

/// A CA with a server (localhost, 127.0.0.1) and a client (openshell-gateway)
/// certificate, written to files as an operator would have them.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: Ca,
    pub ca_file: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
}

impl TestPki {
    pub fn new(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).unwrap();
        let ca = Ca::new("bridge test CA").unwrap();
        let ca_file = dir.join("ca.pem");
        pki::write_pem(&ca_file, &ca.cert_pem(), false).unwrap();
        let mut this = TestPki {
            dir: dir.to_path_buf(),
            ca,
            ca_file,
            server: (PathBuf::new(), PathBuf::new()),
            client: (PathBuf::new(), PathBuf::new()),
        };
        this.server = this.issue("server", &LeafSpec::server(&["localhost", "127.0.0.1"]));
        this.client = this.issue("client", &LeafSpec::client(GATEWAY_ID));
        this
    }

    /// Issues a leaf from this CA and writes `<name>.pem` / `<name>-key.pem`.
    pub fn issue(&self, name: &str, spec: &LeafSpec) -> (PathBuf, PathBuf) {
        let leaf = self.ca.issue(spec).unwrap();
        write_leaf(&self.dir, name, &leaf)
    }

    pub fn server_tls(&self) -> TlsFiles {
        files(&self.ca_file, &self.server)
    }

    pub fn client_tls(&self) -> TlsFiles {
        files(&self.ca_file, &self.client)
    }
}

pub fn write_leaf(dir: &Path, name: &str, leaf: &pki::Leaf) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    pki::write_pem(&cert, &leaf.cert_pem, false).unwrap();
    pki::write_pem(&key, &leaf.key_pem, true).unwrap();
    (cert, key)
}

pub fn files(ca: &Path, (cert, key): &(PathBuf, PathBuf)) -> TlsFiles {
    // Short reload interval: rotation tests wait for it.
    TlsFiles { reload_interval: Duration::from_millis(200), ..TlsFiles::new(ca, cert, key) }
}

/// Dial settings for tests: short waits so failures show within seconds.
pub fn quick_dial() -> DialSettings {
    DialSettings {
        connect_wait: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(2),
        keepalive_interval: Some(Duration::from_secs(1)),
        keepalive_timeout: Duration::from_secs(1),
        ..DialSettings::default()
    }
}

pub fn quick_settings() -> RoleSettings {
    RoleSettings { dial: quick_dial(), drain_timeout: Duration::from_secs(2), ..RoleSettings::default() }
}

pub fn relay_config(pki: &TestPki, driver: DriverTarget) -> RelayConfig {
    RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        driver,
        unsafe_driver_target: false,
        tls: pki.server_tls(),
        rules: vec![Rule { pattern: format!("dns:{GATEWAY_ID}").parse().unwrap(), access: Access::Full }],
        any_client: None,
        settings: quick_settings(),
        policy_source: None,
        callback: None,
    }
}

pub fn shim_config(pki: &TestPki, socket: &Path, relay: SocketAddr) -> ShimConfig {
    ShimConfig {
        socket: socket.to_path_buf(),
        upstreams: vec![Upstream { host: "127.0.0.1".into(), port: relay.port() }],
        server_name: None,
        expect_server: vec![],
        tls: pki.client_tls(),
        allow_uids: vec![],
        proxy: ProxySetting::Off,
        proxy_ca: None,
        settings: quick_settings(),
        callback: None,
    }
}

/// driver socket <- relay <- shim socket, all running.
pub struct Chain {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    pub shutdown: Shutdown,
    pub driver_socket: PathBuf,
    pub shim_socket: PathBuf,
    pub relay: RunningRelay,
    pub shim: RunningShim,
}

impl Chain {
    /// A chain in front of whatever serves `driver_socket` (started by the caller).
    pub async fn start_with(
        dir: tempfile::TempDir,
        tweak_relay: impl FnOnce(&mut RelayConfig),
        tweak_shim: impl FnOnce(&mut ShimConfig),
    ) -> Chain {
        let pki = TestPki::new(&dir.path().join("pki"));
        let driver_socket = dir.path().join("driver/driver.sock");
        let shim_socket = dir.path().join("shim/compute-driver.sock");
        let shutdown = Shutdown::new();
        let mut relay_cfg = relay_config(&pki, DriverTarget::Unix(driver_socket.clone()));
        tweak_relay(&mut relay_cfg);
        let relay = relay::start(relay_cfg, shutdown.clone()).await.unwrap();
        let mut shim_cfg = shim_config(&pki, &shim_socket, relay.local_addr);
        tweak_shim(&mut shim_cfg);
        let shim = shim::start(shim_cfg, shutdown.clone()).unwrap();
        Chain { dir, pki, shutdown, driver_socket, shim_socket, relay, shim }
    }

    /// A chain in front of a demo driver.
    pub async fn with_demo_driver() -> (Chain, DemoDriver) {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
        let driver =
            DemoDriver::with_options(DemoOptions { provision_delay: Duration::from_millis(50), ..Default::default() });
        openshell_driver_bridge::demo::serve(&chain.driver_socket, driver.clone(), chain.shutdown.clone()).unwrap();
        (chain, driver)
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.shutdown.stop_now();
    }
}

// ---------------------------------------------------------------------------
// A raw HTTP/2 driver that records exactly what reached it.

/// What a raw driver saw of one call.
#[derive(Clone, Debug)]
pub struct SeenCall {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The length of every DATA frame as the driver's HTTP/2 stack handed
    /// it on, empty ones included.
    pub frames: Vec<usize>,
    /// Which of the driver's connections carried it (1 for the first accepted).
    pub connection: usize,
}

/// How a raw driver answers one call.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    pub trailers: Vec<(String, Vec<u8>)>,
    pub delay: Duration,
}

impl Answer {
    pub fn ok(body: Bytes) -> Answer {
        Answer { body, trailers: vec![("grpc-status".into(), b"0".to_vec())], ..Default::default() }
    }
}

type Handler = Arc<dyn Fn(&SeenCall) -> Answer + Send + Sync>;

/// A driver at the HTTP/2 level: it records every request byte for byte
/// and answers with exactly the bytes its handler gives.
#[derive(Clone)]
pub struct RawDriver {
    pub seen: Arc<Mutex<Vec<SeenCall>>>,
    /// Calls whose response was dropped before it completed (cancellations).
    pub cancelled: Arc<Mutex<Vec<String>>>,
    /// Connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    /// Bumped to make every connection open now say GOAWAY.
    goaway: Arc<tokio::sync::watch::Sender<u64>>,
}

impl RawDriver {
    pub fn serve(socket: &Path, handler: impl Fn(&SeenCall) -> Answer + Send + Sync + 'static) -> RawDriver {
        let listener = PrivateSocket::bind(socket, &[]).unwrap();
        let driver = RawDriver {
            seen: Arc::default(),
            cancelled: Arc::default(),
            accepted: Arc::default(),
            goaway: Arc::new(tokio::sync::watch::channel(0).0),
        };
        let handler: Handler = Arc::new(handler);
        let this = driver.clone();
        tokio::spawn(async move {
            let _keep = &listener;
            loop {
                let (stream, _) = listener.accept().await;
                let this = this.clone();
                let handler = handler.clone();
                let number = this.accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let mut goaway = this.goaway.subscribe();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let this = this.clone();
                        let handler = handler.clone();
                        async move { Ok::<_, std::convert::Infallible>(this.answer(req, handler, number).await) }
                    });
                    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_frame_size(1 << 20)
                        // A driver that sends exactly the headers it is told to.
                        .auto_date_header(false)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        Ok(()) = goaway.changed() => {
                            // A graceful GOAWAY: streams in progress finish, no new ones.
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
        });
        driver
    }

    /// Every connection open now says GOAWAY (gracefully, as a driver that
    /// is being restarted does); connections accepted later are not affected.
    pub fn goaway_all(&self) {
        self.goaway.send_modify(|n| *n += 1);
    }

    /// Connections the driver accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn answer(
        &self,
        req: Request<Incoming>,
        handler: Handler,
        connection: usize,
    ) -> Response<BoxBody<Bytes, std::convert::Infallible>> {
        let (parts, mut body) = req.into_parts();
        let (mut received, mut frames) = (Vec::new(), Vec::new());
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                frames.push(data.len());
                received.extend_from_slice(data);
            }
        }
        let call = SeenCall {
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body: received.into(),
            frames,
            connection,
        };
        self.seen.lock().unwrap().push(call.clone());
        let answer = handler(&call);
        if !answer.delay.is_zero() {
            let guard = CancelGuard(Some((self.cancelled.clone(), call.path.clone())));
            tokio::time::sleep(answer.delay).await;
            std::mem::forget(guard.disarm());
        }
        let mut response = Response::builder().header("content-type", "application/grpc");
        for (name, value) in &answer.headers {
            response = response.header(name.as_str(), value.as_slice());
        }
        let mut trailers = HeaderMap::new();
        for (name, value) in &answer.trailers {
            trailers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        // No trailers given: a Trailers-Only response (status in the headers,
        // END_STREAM on the HEADERS frame), as drivers send for early errors.
        let body = if trailers.is_empty() {
            http_body_util::Empty::new().boxed()
        } else {
            Full::new(answer.body).with_trailers(async move { Some(Ok(trailers)) }).boxed()
        };
        response.body(body).unwrap()
    }

    pub fn calls(&self) -> Vec<SeenCall> {
        self.seen.lock().unwrap().clone()
    }
}

struct CancelGuard(Option<(Arc<Mutex<Vec<String>>>, String)>);

impl CancelGuard {
    fn disarm(mut self) -> Self {
        self.0 = None;
        self
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some((list, path)) = self.0.take() {
            list.lock().unwrap().push(path);
        }
    }
}

// ---------------------------------------------------------------------------
// A raw HTTP/2 gateway: sends exact bytes, returns exact bytes.

/// A complete raw response: headers, data, trailers.
#[derive(Debug)]
pub struct RawResponse {
    /// The response ended with its HEADERS frame (Trailers-Only).
    pub ended_with_headers: bool,
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: HeaderMap,
}

impl RawResponse {
    /// grpc-status from the trailers, or from the headers (Trailers-Only).
    pub fn grpc_status(&self) -> Option<String> {
        grpc_status_of(&self.headers, &self.trailers)
    }

    pub fn grpc_message(&self) -> String {
        grpc_message_of(&self.headers, &self.trailers)
    }
}

/// grpc-status of an answer: from its trailers, or from its headers
/// (Trailers-Only).
pub fn grpc_status_of(headers: &HeaderMap, trailers: &HeaderMap) -> Option<String> {
    trailers.get("grpc-status").or_else(|| headers.get("grpc-status")).map(|v| v.to_str().unwrap().to_owned())
}

/// grpc-message of an answer, percent-decoded; empty when there is none.
pub fn grpc_message_of(headers: &HeaderMap, trailers: &HeaderMap) -> String {
    let raw = trailers.get("grpc-message").or_else(|| headers.get("grpc-message"));
    raw.map(|v| percent_decode(v.to_str().unwrap())).unwrap_or_default()
}

pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends one request over a fresh HTTP/2 connection to the socket at `path`.
pub async fn raw_call(path: &Path, uri_path: &str, headers: &[(&str, &str)], body: Bytes) -> RawResponse {
    let stream = tokio::net::UnixStream::connect(path).await.unwrap();
    raw_call_over(stream, uri_path, headers, body).await
}

/// Sends one request over a fresh mutually authenticated TLS connection
/// to the relay at `addr`, with the test client's certificate.
pub async fn raw_tls_call(
    addr: SocketAddr,
    pki: &TestPki,
    uri_path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> RawResponse {
    raw_call_over(relay_tls(addr, pki).await, uri_path, headers, body).await
}

/// A mutually authenticated TLS connection to the relay at `addr`, with the
/// test client's certificate.
pub async fn relay_tls(addr: SocketAddr, pki: &TestPki) -> openshell_driver_bridge::connect::BoxIo {
    let config = openshell_driver_bridge::tls::config::client_config(&pki.client_tls(), &[]).unwrap();
    let connector = openshell_driver_bridge::connect::tls::TlsConnector {
        address: addr.to_string(),
        server_name: rustls::pki_types::ServerName::try_from("localhost").unwrap(),
        config: Arc::new(arc_swap::ArcSwap::from_pointee(config)),
        live: None,
        proxy: None,
    };
    connector.connect(Duration::from_secs(5)).await.unwrap()
}

async fn raw_call_over(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    uri_path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> RawResponse {
    let mut sender = raw_connection_over(stream).await;
    raw_request(&mut sender, uri_path, headers, body).await
}

/// One mutually authenticated HTTP/2 connection to the relay at `addr`
/// (the test client's certificate), for several requests.
pub async fn raw_tls_connection(addr: SocketAddr, pki: &TestPki) -> RawSender {
    raw_connection_over(relay_tls(addr, pki).await).await
}

/// One HTTP/2 connection to the socket at `path`, for several requests.
pub async fn raw_connection(path: &Path) -> RawSender {
    raw_connection_over(tokio::net::UnixStream::connect(path).await.unwrap()).await
}

pub type RawSender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn raw_connection_over(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
) -> RawSender {
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One request on `sender`'s connection (which must still be open).
pub async fn raw_request(sender: &mut RawSender, uri_path: &str, headers: &[(&str, &str)], body: Bytes) -> RawResponse {
    try_raw_request(sender, uri_path, headers, body).await.unwrap()
}

/// Like `raw_call`, but a connection that ends before the response does is
/// an `Err` naming what happened, not a panic.
pub async fn try_raw_call(
    path: &Path,
    uri_path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<RawResponse, String> {
    let stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let mut sender = raw_connection_over(stream).await;
    try_raw_request(&mut sender, uri_path, headers, body).await
}

/// Like `raw_request`; an `Err` when the response does not come whole.
pub async fn try_raw_request(
    sender: &mut RawSender,
    uri_path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<RawResponse, String> {
    let mut request = Request::builder()
        .method("POST")
        .uri(format!("http://[::]:50051{uri_path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response =
        sender.send_request(request.body(Full::new(body)).unwrap()).await.map_err(|e| format!("no response: {e:?}"))?;
    let (parts, body) = response.into_parts();
    let ended_with_headers = http_body::Body::is_end_stream(&body);
    let collected = body.collect().await.map_err(|e| format!("response cut: {e:?}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    Ok(RawResponse {
        ended_with_headers,
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Wraps a message in gRPC's 5-byte length prefix (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 5);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.freeze()
}

/// Splits a body into its gRPC messages.
pub fn grpc_messages(mut body: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        body.advance(1);
        let len = body.get_u32() as usize;
        out.push(body.split_to(len));
    }
    out
}

/// Waits until `check` holds, polling, for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Counts by key, for tallies.
pub fn tally<'a>(items: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut out = HashMap::new();
    for item in items {
        *out.entry(item).or_insert(0) += 1;
    }
    out
}

/// Waits until `condition` holds, polling it, for at most 20 s (a bound
/// for a loaded machine, not a promise of the bridge's); panics naming
/// `what` when it never does.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(std::time::Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.1 GET (an admin endpoint); (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut reply)).await.unwrap().unwrap();
    let code = reply.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = reply.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (code, body)
}

/// The value of the sample `series` (name and labels, exactly as written)
/// in a scrape, or `None` when there is no such sample.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether a test that must change to another user can run: true as root.
/// Otherwise it writes a skip line straight to stderr (past the test
/// harness's capture, so it shows in every run) and returns false; with
/// `OPENSHELL_BRIDGE_REQUIRE_ROOT_TESTS=1` (CI runs as root) it fails.
pub fn runs_as_root(test: &str) -> bool {
    if own_uid() == 0 {
        return true;
    }
    let required = std::env::var("OPENSHELL_BRIDGE_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1");
    assert!(!required, "{test} needs root, and OPENSHELL_BRIDGE_REQUIRE_ROOT_TESTS=1 says it must run");
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "\n*** SKIPPED {test}: it changes to another UID, which needs root; this run is not root \
             (OPENSHELL_BRIDGE_REQUIRE_ROOT_TESTS=1 makes this a failure) ***\n"
        )
        .as_bytes(),
    );
    false
}

// ---------------------------------------------------------------------------
// An HTTP/2 client spoken frame by frame: it sends what a client library
// would not (more streams than allowed, oversized headers) and shows every
// frame that comes back.

pub type Frame = h2::frame::Frame<Bytes>;

pub struct FrameClient<T> {
    codec: h2::Codec<T, Bytes>,
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> FrameClient<T> {
    /// Sends the preface and empty SETTINGS over `io`.
    pub async fn start(mut io: T) -> FrameClient<T> {
        tokio::io::AsyncWriteExt::write_all(&mut io, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut client = FrameClient { codec: h2::Codec::new(io) };
        client.send(h2::frame::Settings::default().into()).await;
        client
    }

    pub async fn send(&mut self, frame: Frame) {
        std::future::poll_fn(|cx| self.codec.poll_ready(cx)).await.unwrap();
        self.codec.buffer(frame).unwrap();
        std::future::poll_fn(|cx| self.codec.flush(cx)).await.unwrap();
    }

    /// The next frame from the peer, within 20 s (SETTINGS are acknowledged
    /// on the way); `None` when the connection ends.
    pub async fn next(&mut self) -> Option<Frame> {
        use futures_util::StreamExt;
        let frame = match tokio::time::timeout(Duration::from_secs(20), self.codec.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(_))) | Ok(None) => return None,
            Err(_) => panic!("no frame from the peer within 20 s"),
        };
        if let h2::frame::Frame::Settings(settings) = &frame {
            if !settings.is_ack() {
                self.send(h2::frame::Settings::ack().into()).await;
            }
        }
        Some(frame)
    }

    /// Reads until stream `id` ends (its final HEADERS, or a RST_STREAM);
    /// that frame.
    pub async fn end_of(&mut self, id: u32) -> Frame {
        loop {
            match self.next().await.unwrap_or_else(|| panic!("the connection ended before stream {id} did")) {
                h2::frame::Frame::Headers(h) if u32::from(h.stream_id()) == id && h.is_end_stream() => {
                    return h2::frame::Frame::Headers(h)
                }
                h2::frame::Frame::Reset(r) if u32::from(r.stream_id()) == id => return h2::frame::Frame::Reset(r),
                _ => {}
            }
        }
    }
}

/// A gRPC request's HEADERS for `path` on stream `id`, with `extra` metadata.
pub fn request_headers(id: u32, path: &str, extra: &[(&str, &str)], end_stream: bool) -> Frame {
    use h2::frame::{Headers, Pseudo};
    let uri: http::Uri = format!("http://localhost{path}").parse().unwrap();
    let mut fields = HeaderMap::new();
    fields.insert("content-type", "application/grpc".parse().unwrap());
    fields.insert("te", "trailers".parse().unwrap());
    for (name, value) in extra {
        fields.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    let mut headers = Headers::new(id.into(), Pseudo::request(http::Method::POST, uri, None), fields);
    if end_stream {
        headers.set_end_stream();
    }
    headers.into()
}

/// A DATA frame carrying `body` on stream `id`, ending the request.
pub fn last_data(id: u32, body: Bytes) -> Frame {
    let mut data = h2::frame::Data::new(id.into(), body);
    data.set_end_stream(true);
    data.into()
}

/// grpc-status and the decoded grpc-message of a final HEADERS frame.
pub fn grpc_outcome(frame: &Frame) -> (String, String) {
    match frame {
        h2::frame::Frame::Headers(h) => {
            let get = |name: &str| h.fields().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            (get("grpc-status"), percent_decode(&get("grpc-message")))
        }
        other => panic!("not a final HEADERS frame: {other:?}"),
    }
}
