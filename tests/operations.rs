//! What an operator watches: the admin endpoint (health, readiness,
//! Prometheus metrics), the gRPC health service on the shim's socket, and
//! the configuration file as the binary reads it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::exposition::parse_exposition;
use common::process::{field, Bridge, BIN};
use common::*;
use openshell_driver_bridge::demo::driver::DemoDriver;
use openshell_driver_bridge::grpc::client::driver_client;
use openshell_driver_bridge::obs::metrics::exposition::Exposition;
use openshell_driver_bridge::proto::compute::*;
use openshell_driver_bridge::role::admin::scrape;
use openshell_driver_bridge::role::relay::{self, DriverTarget, RunningRelay};
use openshell_driver_bridge::role::shim::{self, RunningShim};
use openshell_driver_bridge::shutdown::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 GET; (status code, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (code, _, body) = get_with(addr, path, "").await;
    (code, body)
}

/// A GET with `extra` header lines; (status code, head, body).
async fn get_with(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut reply)).await.unwrap().unwrap();
    let code = reply.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    (code, head.to_owned(), body.to_owned())
}

fn admin_on_loopback() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(
        dir,
        |relay| relay.settings.admin = admin_on_loopback(),
        |shim| shim.settings.admin = admin_on_loopback(),
    )
    .await;
    let (shim_admin, relay_admin) = (chain.shim.admin.unwrap(), chain.relay.admin.unwrap());

    // No driver yet: alive, but not ready, and the reason names the driver.
    assert_eq!(get(shim_admin, "/healthz").await, (200, "ok\n".into()));
    let (code, body) = get(relay_admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("driver") && body.contains("driver.sock"), "{body}");

    let driver = DemoDriver::new();
    openshell_driver_bridge::demo::serve(&chain.driver_socket, driver, chain.shutdown.clone()).unwrap();
    let (code, body) = get(relay_admin, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(shim_admin, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("upstream 127.0.0.1:"), "{body}");

    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
    gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
    let missing = gateway.get_sandbox(GetSandboxRequest { sandbox_id: "nope".into(), ..Default::default() }).await;
    assert!(missing.is_err());
    let _watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap();
    let refused = raw_call(&chain.shim_socket, "/other.Service/Call", &[], grpc_frame(b"")).await;
    assert_eq!(refused.grpc_status().as_deref(), Some("12"));
    // A client with no certificate at the relay: a handshake failure.
    let _ = tokio::net::TcpStream::connect(chain.relay.local_addr).await.unwrap().write_all(b"hello").await;
    let relay_metrics = chain.relay.forwarder.metrics().clone();
    // Counted by its reason: a connection the shim gives up mid-handshake (the
    // refused call's, closed at once) may count as another reason meanwhile.
    wait_for("the relay to count the failed handshake", || relay_metrics.handshake_failures_for("not_tls") == 1).await;

    let (code, metrics) = get(shim_admin, "/metrics").await;
    assert_eq!(code, 200);
    for expected in [
        "openshell_bridge_calls_total{role=\"shim\",method=\"GetCapabilities\",code=\"OK\"} 2",
        "openshell_bridge_calls_total{role=\"shim\",method=\"GetSandbox\",code=\"NOT_FOUND\"} 1",
        "openshell_bridge_call_duration_seconds_count{role=\"shim\",method=\"GetCapabilities\"} 2",
        "openshell_bridge_open_calls{role=\"shim\"} 1",
        "openshell_bridge_refused_total{role=\"shim\",reason=\"path\"} 1",
        // The gateway's connection.
        "openshell_bridge_client_connections{role=\"shim\"} 1",
        "# TYPE openshell_bridge_call_duration_seconds histogram",
    ] {
        assert!(metrics.contains(expected), "missing {expected:?} in:\n{metrics}");
    }
    assert!(metrics.contains("openshell_bridge_link_up{role=\"shim\",peer=\"upstream 127.0.0.1:"), "{metrics}");
    // Every client connection has a next-hop connection of its own: the
    // readiness probe's, the gateway's and the refused call's.
    let connects = metric_value(&metrics, "openshell_bridge_link_connects_total{role=\"shim\"}");
    assert!(connects >= 2.0, "{metrics}");
    assert!(
        metrics.contains("openshell_bridge_certificate_expiry_timestamp_seconds{role=\"shim\",file=\""),
        "{metrics}"
    );
    let (_, relay_metrics) = get(relay_admin, "/metrics").await;
    assert!(
        relay_metrics.contains("openshell_bridge_tls_handshake_failures_total{role=\"relay\",reason=\"not_tls\"} 1"),
        "{relay_metrics}"
    );
    assert!(relay_metrics.contains("openshell_bridge_response_bytes_total{role=\"relay\"}"), "{relay_metrics}");
    // The gateway's connection through the shim (the probe's is gone).
    let relay_clients = metric_value(&relay_metrics, "openshell_bridge_client_connections{role=\"relay\"}");
    assert!(relay_clients >= 1.0, "{relay_metrics}");
    assert_eq!(get(shim_admin, "/nothing").await.0, 404);
}

/// A relay and a shim in front of it, each with a shutdown of its own, so
/// the relay can go away under a shim that stays. No driver.
struct Split {
    _dir: tempfile::TempDir,
    relay_shutdown: Shutdown,
    relay: RunningRelay,
    shim_shutdown: Shutdown,
    shim: RunningShim,
    shim_socket: std::path::PathBuf,
}

impl Split {
    async fn start() -> Split {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(&dir.path().join("pki"));
        let relay_shutdown = Shutdown::new();
        let driver = DriverTarget::Unix(dir.path().join("driver/d.sock"));
        let relay = relay::start(relay_config(&pki, driver), relay_shutdown.clone()).await.unwrap();
        let shim_socket = dir.path().join("shim/s.sock");
        let shim_shutdown = Shutdown::new();
        let shim = shim::start(shim_config(&pki, &shim_socket, relay.local_addr), shim_shutdown.clone()).unwrap();
        Split { _dir: dir, relay_shutdown, relay, shim_shutdown, shim, shim_socket }
    }

    /// Stops the relay (its connections dropped) and waits until the shim
    /// has seen its last connection to it go.
    async fn stop_relay(&mut self) {
        self.relay_shutdown.stop_now();
        let _ = (&mut self.relay.task).await;
        let dialer = self.shim.forwarder.dialer().clone();
        wait_for("the shim to see its connections to the relay end", || dialer.status().open == 0).await;
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        self.relay_shutdown.stop_now();
        self.shim_shutdown.stop_now();
    }
}

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const SERVING: &[u8] = &[0x08, 0x01];
const NOT_SERVING: &[u8] = &[0x08, 0x02];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_socket_answers_grpc_health_checks_serving_then_not_serving_on_one_connection() {
    let mut split = Split::start().await;
    // One gateway connection for every check, as a prober that keeps its channel.
    let mut gateway = raw_connection(&split.shim_socket).await;
    // The relay is up but has no driver: the shim's hop is up, so SERVING
    // describes the shim's hop; readiness of the driver is the relay's business.
    let response = raw_request(&mut gateway, HEALTH_CHECK, &[], grpc_frame(b"")).await;
    assert_eq!(response.grpc_status().as_deref(), Some("0"), "{}", response.grpc_message());
    assert_eq!(grpc_messages(response.body), vec![bytes::Bytes::from_static(SERVING)], "expected SERVING");

    let unknown = raw_request(&mut gateway, HEALTH_CHECK, &[], grpc_frame(b"\x0a\x03foo")).await;
    assert_eq!(unknown.grpc_status().as_deref(), Some("5"));

    // The relay goes away under the live shim: the same connection's next
    // check says NOT_SERVING.
    split.stop_relay().await;
    let response = raw_request(&mut gateway, HEALTH_CHECK, &[], grpc_frame(b"")).await;
    assert_eq!(response.grpc_status().as_deref(), Some("0"), "{}", response.grpc_message());
    assert_eq!(grpc_messages(response.body), vec![bytes::Bytes::from_static(NOT_SERVING)], "expected NOT_SERVING");
}

/// `openshell_bridge_link_up` of the shim in `scrape`.
fn link_up(scrape: &str) -> f64 {
    let prefix = "openshell_bridge_link_up{role=\"shim\",peer=\"upstream 127.0.0.1:";
    let line = scrape.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no link_up in:\n{scrape}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_up_is_one_while_a_connection_to_the_next_hop_is_open() {
    let mut split = Split::start().await;
    let forwarder = split.shim.forwarder.clone();
    let metrics = move || scrape(&forwarder, Exposition::Prometheus);
    // Lazy: no client, no connection to the relay.
    assert_eq!(link_up(&metrics()), 0.0);
    let mut gateway = raw_connection(&split.shim_socket).await;
    // A health check answers once the connection's hop has answered (or not).
    let response = raw_request(&mut gateway, HEALTH_CHECK, &[], grpc_frame(b"")).await;
    assert_eq!(grpc_messages(response.body), vec![bytes::Bytes::from_static(SERVING)]);
    assert_eq!(link_up(&metrics()), 1.0);
    split.stop_relay().await;
    assert_eq!(link_up(&metrics()), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shims_readyz_is_503_naming_the_upstream_while_it_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let closed: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = shim_config(&pki, &dir.path().join("s/s.sock"), closed);
    config.settings.admin = admin_on_loopback();
    let shutdown = Shutdown::new();
    let running = shim::start(config, shutdown.clone()).unwrap();
    let (code, body) = http_get(running.admin.unwrap(), "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("not ready"), "{body}");
    assert!(body.contains(&format!("upstream 127.0.0.1:{}", closed.port())), "{body}");
    assert!(body.contains("connection refused"), "{body}");
    assert_eq!(http_get(running.admin.unwrap(), "/healthz").await, (200, "ok\n".into()));
    shutdown.stop_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_client_abandons_counts_with_code_none() {
    let (chain, _) = {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
        let driver = RawDriver::serve(&chain.driver_socket, |_| Answer {
            delay: Duration::from_secs(60),
            ..Answer::ok(grpc_frame(b""))
        });
        (chain, driver)
    };
    let socket = chain.shim_socket.clone();
    let call = tokio::spawn(async move {
        raw_call(&socket, "/openshell.compute.v1.ComputeDriver/GetSandbox", &[], grpc_frame(b"")).await
    });
    let shim_metrics = chain.shim.forwarder.metrics().clone();
    wait_for("the call to be open at the shim", || shim_metrics.in_flight() == 1).await;
    call.abort();
    let shim = chain.shim.forwarder.clone();
    let series = "openshell_bridge_calls_total{role=\"shim\",method=\"GetSandbox\",code=\"NONE\"}";
    wait_for("the abandoned call to be counted", || sample(&scrape(&shim, Exposition::Prometheus), series).is_some())
        .await;
    let metrics = scrape(&shim, Exposition::Prometheus);
    assert_eq!(sample(&metrics, series), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "openshell_bridge_open_calls{role=\"shim\"}"), Some(0.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_endpoint_off_loopback_needs_unsafe_admin() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let mut args: Vec<String> = vec![
        "shim".into(),
        "--socket".into(),
        dir.path().join("s/s.sock").display().to_string(),
        "--upstream".into(),
        "https://127.0.0.1:9".into(),
        "--admin".into(),
        "0.0.0.0:0".into(),
    ];
    args.extend(common::process::tls_args(&pki.ca_file, &pki.client));
    let mut shim = Bridge::spawn("shim", &args, &[]);
    assert_eq!(shim.wait_exit(Duration::from_secs(10)).await, Some(2));
    assert!(shim.output().contains("--admin 0.0.0.0:0: not a loopback address"), "{}", shim.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_runs_from_a_config_file_and_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let driver_socket = dir.path().join("driver/d.sock");
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        format!(
            "# relay for the edge gateways\nlisten = \"127.0.0.1:0\"\ndriver-socket = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             allow-client = [\"dns:{GATEWAY_ID}\"]\nallow-client-read-only = [\"uri:spiffe://corp/ro/*\"]\nconnect-wait = \"2s\"\n",
            driver_socket.display(),
            pki.ca_file.display(),
            pki.server.0.display(),
            pki.server.1.display()
        ),
    )
    .unwrap();
    let config = file.display().to_string();
    let mut shown =
        Bridge::spawn("relay", &["relay".into(), "--config".into(), config.clone(), "--print-config".into()], &[]);
    assert_eq!(shown.wait_exit(Duration::from_secs(10)).await, Some(0));
    let text = shown.output();
    assert!(text.contains("connect-wait = \"2s\"  # file"), "{text}");
    assert!(text.contains("allow-client-read-only = [\"uri:spiffe://corp/ro/*\"]  # file"), "{text}");
    assert!(text.contains("drain-timeout = \"10s\"  # default"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "key material in --print-config");

    // The environment beats the file: shown as such, and in force.
    let env = [("OPENSHELL_BRIDGE_CONNECT_WAIT", "1s")];
    let mut shown =
        Bridge::spawn("relay", &["relay".into(), "--config".into(), config.clone(), "--print-config".into()], &env);
    assert_eq!(shown.wait_exit(Duration::from_secs(10)).await, Some(0));
    let text = shown.output();
    assert!(text.contains("connect-wait = \"1s\"  # env"), "{text}");
    let relay = Bridge::spawn("relay", &["relay".into(), "--config".into(), config], &env);
    let line = relay.expect_log(&["relay serving"]).await;
    assert!(line.contains("uri:spiffe://corp/ro/* (read-only)"), "{line}");
    // No driver at driver-socket: a call waits for it as long as the
    // environment says (the file says 2 s), then fails naming the wait.
    let addr: SocketAddr = field(&line, "listen=").unwrap().parse().unwrap();
    let path = "/openshell.compute.v1.ComputeDriver/GetCapabilities";
    let response = raw_tls_call(addr, &pki, path, &[], grpc_frame(b"")).await;
    assert_eq!(response.grpc_status().as_deref(), Some("14"), "{}", response.grpc_message());
    assert!(response.grpc_message().contains("after waiting 1000 ms"), "{}", response.grpc_message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_answers_grpc_health_checks_of_an_allowed_client_itself() {
    let (chain, driver) = Chain::with_demo_driver().await;
    let check = |body: &'static [u8]| {
        raw_tls_call(chain.relay.local_addr, &chain.pki, "/grpc.health.v1.Health/Check", &[], grpc_frame(body))
    };
    let whole = check(b"").await;
    assert_eq!(whole.grpc_status().as_deref(), Some("0"), "{}", whole.grpc_message());
    assert_eq!(grpc_messages(whole.body), vec![bytes::Bytes::from_static(&[0x08, 0x01])], "expected SERVING");
    let named = check(b"\x0a\x22openshell.compute.v1.ComputeDriver").await;
    assert_eq!(named.grpc_status().as_deref(), Some("0"), "{}", named.grpc_message());
    let unknown = check(b"\x0a\x03foo").await;
    assert_eq!(unknown.grpc_status().as_deref(), Some("5"));
    assert!(unknown.grpc_message().contains("foo"), "{}", unknown.grpc_message());
    // None of it reached the driver.
    assert_eq!(driver.calls("GetCapabilities"), 0);
    assert!(!chain.relay.task.is_finished());
}

/// The value of the sample `series` (name and labels) in a scrape.
fn metric_value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{scrape}"))
}

/// One call whose `:path` is sent as it is, over an HTTP/2 connection
/// spoken frame by frame (a client library refuses a newline in a path).
/// Returns the `grpc-status` of the answer, or what ended the stream.
async fn call_with_raw_path(socket: &std::path::Path, path: &str) -> String {
    use futures_util::StreamExt;
    use h2::frame::{BytesStr, Data, Frame, Headers, Pseudo, Settings};
    let mut io = tokio::net::UnixStream::connect(socket).await.unwrap();
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let mut codec: h2::Codec<_, bytes::Bytes> = h2::Codec::new(io);
    let id = h2::frame::StreamId::from(1);
    let uri: http::Uri = "http://localhost/placeholder".parse().unwrap();
    let mut pseudo = Pseudo::request(http::Method::POST, uri, None);
    pseudo.path = Some(BytesStr::try_from(bytes::Bytes::copy_from_slice(path.as_bytes())).unwrap());
    let mut fields = http::HeaderMap::new();
    fields.insert("content-type", "application/grpc".parse().unwrap());
    fields.insert("te", "trailers".parse().unwrap());
    let mut data = Data::new(id, grpc_frame(b""));
    data.set_end_stream(true);
    let frames: Vec<Frame> = vec![Settings::default().into(), Headers::new(id, pseudo, fields).into(), data.into()];
    for frame in frames {
        std::future::poll_fn(|cx| codec.poll_ready(cx)).await.unwrap();
        codec.buffer(frame).unwrap();
    }
    std::future::poll_fn(|cx| codec.flush(cx)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = match tokio::time::timeout_at(deadline, codec.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => return format!("connection error: {e}"),
            Ok(None) => return "connection closed".into(),
            Err(_) => panic!("no answer to {path:?}"),
        };
        match frame {
            Frame::Settings(settings) if !settings.is_ack() => {
                std::future::poll_fn(|cx| codec.poll_ready(cx)).await.unwrap();
                codec.buffer(Settings::ack().into()).unwrap();
                std::future::poll_fn(|cx| codec.flush(cx)).await.unwrap();
            }
            Frame::Headers(headers) if headers.stream_id() == id => {
                if let Some(status) = headers.fields().get("grpc-status") {
                    return status.to_str().unwrap().to_owned();
                }
                if headers.is_end_stream() {
                    return "ended without grpc-status".into();
                }
            }
            Frame::Reset(reset) if reset.stream_id() == id => return format!("reset: {:?}", reset.reason()),
            Frame::GoAway(goaway) => return format!("goaway: {:?}", goaway.reason()),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_the_wire_cannot_forge_log_lines_or_break_the_scrape() {
    use common::process::{field, ProcessChain};
    let chain =
        ProcessChain::start(&[], &["--admin", "127.0.0.1:0"], &[("RUST_LOG", "info,openshell_bridge::call=debug")])
            .await;
    let line = chain.shim.expect_log(&["admin endpoint serving"]).await;
    let admin: SocketAddr = field(&line, "admin=").expect("admin= in the shim's log").parse().unwrap();

    // A method of the service whose name holds a newline, a quote and a
    // backslash (the relay and the driver get it as it is), and a path
    // outside the contract with a newline and a quote, refused by the shim.
    let method = "Bad\nFORGED INFO openshell_driver_bridge: \"x\\y";
    let inside = format!("/openshell.compute.v1.ComputeDriver/{method}");
    let outside = "/other.Service/Evil\nFORGED WARN \"path\"";
    let answered = call_with_raw_path(&chain.shim_socket, &inside).await;
    assert!(!answered.is_empty());
    assert_eq!(call_with_raw_path(&chain.shim_socket, outside).await, "12");

    // The scrape parses line by line and carries the method name whole.
    for (accept, last) in [("", "\n"), ("Accept: application/openmetrics-text;version=1.0.0\r\n", "# EOF\n")] {
        let (code, head, body) = get_with(admin, "/metrics", accept).await;
        assert_eq!(code, 200);
        assert!(body.ends_with(last), "{body}");
        let samples = parse_exposition(&body);
        assert!(
            samples.iter().flatten().any(|(key, value)| key == "method" && value == method),
            "no sample with method {method:?} in:\n{body}"
        );
        assert!(body.contains(r#"method="Bad\nFORGED INFO openshell_driver_bridge: \"x\\y""#), "{body}");
        assert!(body.contains("openshell_bridge_refused_total{role=\"shim\",reason=\"path\"} 1"), "{body}");
        let wanted = if accept.is_empty() { "text/plain; version=0.0.4" } else { "application/openmetrics-text" };
        assert!(head.to_ascii_lowercase().contains(&format!("content-type: {wanted}")), "{head}");
    }

    // The log holds both, escaped; no line of it starts where a name said.
    chain.shim.expect_log(&["refused: path outside the contract", r#"Evil\nFORGED WARN \"path\""#]).await;
    chain.shim.expect_log(&["openshell_bridge::call", r#"Bad\nFORGED INFO openshell_driver_bridge: \"x\\y"#]).await;
    chain.relay.expect_log(&["openshell_bridge::call", r#"Bad\nFORGED INFO"#]).await;
    for bridge in [&chain.shim, &chain.relay] {
        let log = bridge.output();
        for line in log.lines().filter(|l| l.contains("FORGED")) {
            assert!(line.contains("\\nFORGED"), "{}: a raw newline from the wire in the log:\n{log}", bridge.name);
        }
    }
}

/// A shim process whose upstream is never reached (it dials lazily).
fn lone_shim(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Bridge {
    let pki = TestPki::new(&dir.join("pki"));
    let mut args: Vec<String> = vec![
        "shim".into(),
        "--socket".into(),
        dir.join("s/s.sock").display().to_string(),
        "--upstream".into(),
        "https://127.0.0.1:9".into(),
    ];
    args.extend(common::process::tls_args(&pki.ca_file, &pki.client));
    args.extend(extra.iter().map(|s| s.to_string()));
    Bridge::spawn("shim", &args, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let shim = lone_shim(dir.path(), &["--log-format", "json"], &[]);
    let line = shim.expect_log(&["shim serving"]).await;
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
    assert!(line.contains("\"message\":\"shim serving\""), "{line}");
    assert!(line.contains("\"socket\":\""), "{line}");
    for line in shim.output().lines() {
        assert!(line.starts_with('{') && line.ends_with('}'), "not a JSON object: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_wins_over_log_level() {
    // --log-level error would hide the start-up line (info); RUST_LOG=info shows it.
    let dir = tempfile::tempdir().unwrap();
    let shim = lone_shim(&dir.path().join("a"), &["--log-level", "error"], &[("RUST_LOG", "info")]);
    shim.expect_log(&["shim serving"]).await;

    // --log-level info would show it; RUST_LOG=warn hides it. A warning
    // (a refused HTTP/1 request) is logged after start-up, so once it is
    // there, the start-up line would be too.
    let shim = lone_shim(&dir.path().join("b"), &["--log-level", "info"], &[("RUST_LOG", "warn")]);
    let socket = dir.path().join("b/s/s.sock");
    wait_for("the shim's socket", || socket.exists()).await;
    let mut http1 = tokio::net::UnixStream::connect(&socket).await.unwrap();
    http1.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(20), http1.read_to_string(&mut reply)).await.unwrap().unwrap();
    shim.expect_log(&["refused an HTTP/1.x request"]).await;
    assert!(shim.find_log(&["shim serving"]).is_none(), "RUST_LOG=warn did not win:\n{}", shim.output());
}

/// Whether this machine lets us make a network namespace of our own
/// (`unshare -rn`): in one, listening on every address exposes nothing.
fn can_unshare_network() -> bool {
    std::process::Command::new("unshare")
        .args(["-rn", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_listening_beyond_loopback_says_so_and_one_on_loopback_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let relay_args = |listen: &str| {
        let mut args: Vec<String> = ["relay", "--listen", listen, "--driver-socket", "/nonexistent/d.sock"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--allow-client".into(), format!("dns:{GATEWAY_ID}")]);
        args.extend(common::process::tls_args(&pki.ca_file, &pki.server));
        args
    };
    let on_loopback = Bridge::spawn("relay", &relay_args("127.0.0.1:0"), &[]);
    on_loopback.expect_log(&["relay serving"]).await;
    // The line comes before "relay serving" when it comes at all.
    assert!(on_loopback.find_log(&["network address"]).is_none(), "{}", on_loopback.output());

    if !can_unshare_network() {
        let required = std::env::var("OPENSHELL_BRIDGE_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1");
        assert!(!required, "`unshare -rn` is not possible here, and OPENSHELL_BRIDGE_REQUIRE_ROOT_TESTS=1");
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"\n*** SKIPPED the non-loopback half of a_relay_listening_beyond_loopback_says_so: \
              no network namespace (`unshare -rn`) here, and tests listen on loopback only ***\n",
        );
        return;
    }
    // 0.0.0.0 inside a network namespace of its own: only its own (down) loopback.
    let mut args = vec!["-rn".to_string(), BIN.to_string()];
    args.extend(relay_args("0.0.0.0:0"));
    let everywhere = Bridge::spawn_program("relay-any", tokio::process::Command::new("unshare"), &args, &[]);
    let line = everywhere.expect_log(&["relay listening on a network address"]).await;
    assert!(line.contains("0.0.0.0:"), "{line}");
    assert!(line.contains("clients must present a certificate of --ca"), "{line}");
}
