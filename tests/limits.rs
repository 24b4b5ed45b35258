//! Limits that keep the bridge serving its clients: unauthenticated TLS
//! handshakes have their own budget, the descriptor limit is raised and
//! fitted at start, and a client beyond the descriptor limit is closed at
//! once instead of waiting in the backlog. Real sockets, real processes.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{tls_args, Bridge, ProcessChain};
use common::*;
use openshell_driver_bridge::connect::open::PREFACE as H2_PREFACE;
use openshell_driver_bridge::demo::driver::{DemoDriver, DemoOptions};
use openshell_driver_bridge::obs::metrics::exposition::Exposition;
use openshell_driver_bridge::role::admin::scrape;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const GET_CAPABILITIES: &str = "/openshell.compute.v1.ComputeDriver/GetCapabilities";

/// One call of the test client (certificate openshell-gateway, from
/// 127.0.0.1) straight to the relay, over a new connection.
async fn call_relay(chain: &Chain) -> RawResponse {
    let call = raw_tls_call(chain.relay.local_addr, &chain.pki, GET_CAPABILITIES, &[], grpc_frame(b""));
    tokio::time::timeout(Duration::from_secs(20), call).await.expect("the call did not finish within 20 s")
}

/// A TCP connection from `source` (a loopback address) that sends nothing.
async fn stalled(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the peer closed `stream` within `limit` (end of file or reset).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(limit, stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_cannot_lock_a_returning_client_out() {
    // Handshakes may take a minute here, far longer than this test: only
    // the budgets can free a place.
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(
        dir,
        |relay| {
            relay.settings.server.handshake_timeout = Duration::from_secs(60);
            relay.settings.server.max_connections = 8;
            relay.settings.server.max_handshakes = 4;
            relay.settings.server.max_handshakes_per_source = 2;
        },
        |_| {},
    )
    .await;
    let driver =
        DemoDriver::with_options(DemoOptions { provision_delay: Duration::from_millis(50), ..Default::default() });
    openshell_driver_bridge::demo::serve(&chain.driver_socket, driver, chain.shutdown.clone()).unwrap();

    // A client that has been connected before.
    assert_eq!(call_relay(&chain).await.grpc_status().as_deref(), Some("0"));

    // Twelve connections that never send a ClientHello, three from each of
    // four other sources, more than --max-connections: two per source fit
    // the cap, and four in all the budget; the other eight are closed.
    let mut stalls = Vec::new();
    for source in 2..=5u8 {
        for _ in 0..3 {
            stalls.push(stalled(Ipv4Addr::new(127, 0, 0, source), chain.relay.local_addr).await);
        }
    }
    let verdicts =
        futures_util::future::join_all(stalls.iter_mut().map(|s| closed_within(s, Duration::from_secs(5)))).await;
    let closed = verdicts.iter().filter(|closed| **closed).count();
    assert_eq!(closed, 8, "connections closed at once, of 12 stalled: {verdicts:?}");
    assert!(
        !verdicts[0] && !verdicts[1] && !verdicts[3] && !verdicts[4],
        "the first two of 127.0.0.2 and .3 are held: {verdicts:?}"
    );

    // The budget is spent by strangers, yet the returning client gets through.
    let response = call_relay(&chain).await;
    assert_eq!(response.grpc_status().as_deref(), Some("0"), "{}", response.grpc_message());

    let metrics = openshell_driver_bridge::role::admin::scrape(
        &chain.relay.forwarder,
        openshell_driver_bridge::obs::metrics::exposition::Exposition::Prometheus,
    );
    assert!(metrics.contains("reason=\"handshake_limit\"} 8"), "{metrics}");
    drop(stalls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refusals_are_logged_folded_by_the_relay_process() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let mut args: Vec<String> = [
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--driver-socket",
        "/nonexistent/driver.sock",
        "--allow-client",
        "dns:openshell-gateway",
        "--handshake-timeout",
        "60s",
        "--max-handshakes-per-source",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(tls_args(&pki.ca_file, &pki.server));
    let relay = Bridge::spawn("relay", &args, &[("OPENSHELL_BRIDGE_MAX_HANDSHAKES", "2")]);
    let line = relay.expect_log(&["relay serving"]).await;
    let addr: SocketAddr = common::process::field(&line, "listen=").unwrap().parse().unwrap();
    let source = |n| Ipv4Addr::new(127, 0, 0, n);

    let mut held = vec![stalled(source(2), addr).await];
    let mut refused = stalled(source(2), addr).await;
    assert!(
        closed_within(&mut refused, Duration::from_secs(10)).await,
        "a second handshake from 127.0.0.2 was not closed"
    );
    relay
        .expect_log(&["refused a connection (handshake_limit)", "--max-handshakes-per-source 1", "from 127.0.0.2"])
        .await;

    held.push(stalled(source(3), addr).await);
    let mut refused = stalled(source(4), addr).await;
    assert!(closed_within(&mut refused, Duration::from_secs(10)).await, "a third handshake in all was not closed");
    relay
        .expect_log(&["refused a connection (handshake_limit)", "--max-handshakes 2 TLS handshakes are in progress"])
        .await;

    let mut again = stalled(source(2), addr).await;
    assert!(closed_within(&mut again, Duration::from_secs(10)).await);
    let per_source = relay.log.lock().unwrap().iter().filter(|l| l.contains("--max-handshakes-per-source 1")).count();
    assert_eq!(per_source, 1, "not folded:\n{}", relay.output());
    for stream in &mut held {
        assert!(!closed_within(stream, Duration::from_millis(200)).await, "a handshake within the budgets was closed");
    }
}

fn shim_args(dir: &Path, pki: &TestPki, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "shim".into(),
        "--socket".into(),
        dir.join("shim/s.sock").display().to_string(),
        // Never dialled: the upstream is reached lazily.
        "--upstream".into(),
        "https://127.0.0.1:9".into(),
    ];
    args.extend(tls_args(&pki.ca_file, &pki.client));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_descriptor_limit_is_raised_then_fitted_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));

    // Soft 100 under a hard 300: raised to 300, where 100 connections fit
    // (2 × 100 + 64).
    let mut raised = Bridge::spawn_with_nofile(
        "raised",
        &shim_args(&dir.path().join("a"), &pki, &["--max-connections", "100", "--log-level", "debug"]),
        &[],
        100,
        300,
    );
    raised.expect_log(&["shim serving"]).await;
    assert!(raised.find_log(&["too low"]).is_none(), "{}", raised.output());
    raised.expect_log(&["raised the file descriptor limit", "from=100", "to=300"]).await;
    raised.signal(rustix::process::Signal::TERM);
    assert_eq!(raised.wait_exit(Duration::from_secs(10)).await, Some(0));

    // Hard 200: the default 1024 connections do not fit; lowered, with both figures named.
    let mut shim = Bridge::spawn_with_nofile("shim", &shim_args(&dir.path().join("b"), &pki, &[]), &[], 200, 200);
    shim.expect_log(&[
        "file descriptor limit (RLIMIT_NOFILE) is 200",
        "--max-connections 1024",
        "serving at most 68 connections",
    ])
    .await;
    shim.expect_log(&["shim serving"]).await;
    // And it serves 68: each client below is served (the shim answers its
    // preface with SETTINGS), the 69th is closed on arrival.
    let socket = dir.path().join("b/shim/s.sock");
    let mut served = Vec::new();
    for i in 0..68 {
        let mut client = tokio::net::UnixStream::connect(&socket).await.unwrap();
        client.write_all(H2_PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(n)) if n > 0), "client {i} was not served: {read:?}");
        served.push(client);
    }
    let mut extra = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let _ = extra.write_all(H2_PREFACE).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the 69th client was not closed: {read:?}");
    shim.expect_log(&["connection limit reached"]).await;
    drop(served);
    shim.signal(rustix::process::Signal::TERM);
    assert_eq!(shim.wait_exit(Duration::from_secs(10)).await, Some(0));

    // The relay counts its handshakes too: 200 - (8 + 2 + 64) leaves 63 connections.
    let mut relay_args: Vec<String> = [
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--driver-socket",
        "/nonexistent/driver.sock",
        "--allow-client",
        "dns:openshell-gateway",
        "--max-handshakes",
        "8",
        "--max-handshakes-per-source",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    relay_args.extend(tls_args(&pki.ca_file, &pki.server));
    let mut relay = Bridge::spawn_with_nofile("relay", &relay_args, &[], 200, 200);
    relay.expect_log(&["is 200", "--max-connections 1024", "serving at most 63 connections"]).await;
    relay.expect_log(&["relay serving"]).await;
    relay.signal(rustix::process::Signal::TERM);
    assert_eq!(relay.wait_exit(Duration::from_secs(10)).await, Some(0));

    // Hard 70: not even a few connections fit; refused with the reason.
    let mut tiny = Bridge::spawn_with_nofile("tiny", &shim_args(&dir.path().join("c"), &pki, &[]), &[], 70, 70);
    assert_eq!(tiny.wait_exit(Duration::from_secs(10)).await, Some(2), "{}", tiny.output());
    assert!(
        tiny.find_log(&["file descriptor limit (RLIMIT_NOFILE) is 70: too low to serve even 4 connections"]).is_some(),
        "{}",
        tiny.output()
    );
}

const CHILD_DIR: &str = "BRIDGE_TEST_FD_CHILD_DIR";

/// The child of `a_client_beyond_the_descriptor_limit_is_closed_at_once`: a
/// shim in a process whose descriptors then run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by a_client_beyond_the_descriptor_limit_is_closed_at_once"]
async fn child_shim_out_of_descriptors() {
    let Some(dir) = std::env::var_os(CHILD_DIR).map(PathBuf::from) else {
        return;
    };
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let limit = rustix::process::Rlimit { current: Some(128), maximum: Some(128) };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    let pki = TestPki::new(&dir.join("pki"));
    let mut config = shim_config(&pki, &dir.join("shim/s.sock"), "127.0.0.1:9".parse().unwrap());
    config.settings.server.max_connections = 8;
    let shutdown = openshell_driver_bridge::shutdown::Shutdown::new();
    let shim = openshell_driver_bridge::role::shim::start(config, shutdown.clone()).unwrap();
    let mut held = Vec::new();
    for _ in 0..1024 {
        match std::fs::File::open("/dev/null") {
            Ok(file) => held.push(file),
            Err(e) => {
                eprintln!("descriptors exhausted after {} more: {e}", held.len());
                break;
            }
        }
    }
    // Reports the refusal counter whenever it changes, for the parent.
    let series = "openshell_bridge_refused_total{role=\"shim\",reason=\"descriptor_limit\"}";
    let mut reported = None;
    for _ in 0..600 {
        let now = sample(&scrape(&shim.forwarder, Exposition::Prometheus), series);
        if now != reported {
            eprintln!("metric {series} {}", now.unwrap_or(0.0));
            reported = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_beyond_the_descriptor_limit_is_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_shim_out_of_descriptors", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    for stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push(line);
            }
        });
    }
    let has = |part: &str| log.lock().unwrap().iter().any(|l| l.contains(part));
    let output = || log.lock().unwrap().join("\n");
    assert!(eventually(Duration::from_secs(30), || has("descriptors exhausted")).await, "child:\n{}", output());

    for attempt in 0..3 {
        let mut client = tokio::net::UnixStream::connect(dir.path().join("shim/s.sock")).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "attempt {attempt}: the client was not closed at once ({read:?}); child:\n{}",
            output()
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || has("refused a connection: out of file descriptors")).await,
        "child:\n{}",
        output()
    );
    // Folded: the first refusal is logged, the next ones are counted for later.
    let lines =
        log.lock().unwrap().iter().filter(|l| l.contains("refused a connection: out of file descriptors")).count();
    assert_eq!(lines, 1, "child:\n{}", output());
    // And every one of the three is counted.
    let counted = "metric openshell_bridge_refused_total{role=\"shim\",reason=\"descriptor_limit\"} 3";
    assert!(eventually(Duration::from_secs(20), || has(counted)).await, "child:\n{}", output());
    child.kill().await.unwrap();
}

const SERVICE: &str = "/openshell.compute.v1.ComputeDriver";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_header_bytes_refuses_a_larger_header_block_with_resource_exhausted_naming_the_limit() {
    let chain = ProcessChain::start(&[], &["--max-header-bytes", "2048"], &[]).await;
    let io = tokio::net::UnixStream::connect(&chain.shim_socket).await.unwrap();
    let mut client = FrameClient::start(io).await;
    let big = "x".repeat(3000);
    client.send(request_headers(1, &format!("{SERVICE}/GetCapabilities"), &[("x-big", &big)], false)).await;
    client.send(last_data(1, grpc_frame(b""))).await;
    let (status, message) = grpc_outcome(&client.end_of(1).await);
    assert_eq!(status, "8", "{message}");
    assert!(message.contains("request headers larger than 2048 bytes"), "{message}");
    // Within the limit, on the same connection: served.
    let fits = "x".repeat(1000);
    client.send(request_headers(3, &format!("{SERVICE}/GetCapabilities"), &[("x-big", &fits)], false)).await;
    client.send(last_data(3, grpc_frame(b""))).await;
    let (status, message) = grpc_outcome(&client.end_of(3).await);
    assert_eq!(status, "0", "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_streams_is_announced_and_a_stream_beyond_it_is_refused() {
    let chain = ProcessChain::start(&[], &["--max-concurrent-streams", "2"], &[]).await;
    let io = tokio::net::UnixStream::connect(&chain.shim_socket).await.unwrap();
    let mut client = FrameClient::start(io).await;
    // The shim's SETTINGS tell the client the limit.
    let announced = loop {
        match client.next().await.expect("the shim closed the connection") {
            h2::frame::Frame::Settings(s) if !s.is_ack() => break s.max_concurrent_streams(),
            _ => {}
        }
    };
    assert_eq!(announced, Some(2));
    // Two calls open (their requests not ended), a third refused.
    let path = format!("{SERVICE}/GetCapabilities");
    for id in [1, 3, 5] {
        client.send(request_headers(id, &path, &[], false)).await;
    }
    match client.end_of(5).await {
        h2::frame::Frame::Reset(reset) => assert_eq!(reset.reason(), h2::Reason::REFUSED_STREAM),
        other => panic!("stream 5 was not refused: {other:?}"),
    }
    // Once one of the two ends, a new one is taken.
    client.send(last_data(1, grpc_frame(b""))).await;
    assert_eq!(grpc_outcome(&client.end_of(1).await).0, "0");
    client.send(request_headers(7, &path, &[], false)).await;
    client.send(last_data(7, grpc_frame(b""))).await;
    assert_eq!(grpc_outcome(&client.end_of(7).await).0, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_connection_beyond_it_and_counts_the_refusal() {
    let chain = ProcessChain::start(&[], &["--max-connections", "2", "--admin", "127.0.0.1:0"], &[]).await;
    // Served: the shim answers the preface with its SETTINGS.
    let served = || async {
        let mut client = tokio::net::UnixStream::connect(&chain.shim_socket).await.unwrap();
        let _ = client.write_all(H2_PREFACE).await;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(20), client.read(&mut buf)).await;
        (matches!(read, Ok(Ok(n)) if n > 0), client)
    };
    let (first, a) = served().await;
    let (second, b) = served().await;
    assert!(first && second, "the two connections within the limit were not both served");
    let (third, _c) = served().await;
    assert!(!third, "a third connection was served with --max-connections 2");
    chain.shim.expect_log(&["refused a connection: connection limit reached (--max-connections)"]).await;
    chain.shim.expect_sample("openshell_bridge_refused_total{role=\"shim\",reason=\"connection_limit\"}", 1.0).await;
    chain.shim.expect_sample("openshell_bridge_client_connections{role=\"shim\"}", 2.0).await;
    // A place freed is taken again.
    drop(a);
    chain.shim.expect_sample("openshell_bridge_client_connections{role=\"shim\"}", 1.0).await;
    let (again, _d) = served().await;
    assert!(again, "a connection within the limit again was not served");
    drop(b);
}
