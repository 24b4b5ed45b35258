//! The hostile matrix: every kind of wrong peer gets a clear refusal, the
//! bridge logs why, other callers stay undisturbed and the process keeps
//! running. Relay and shim run as real processes here, as an operator runs
//! them, so the assertions are on what an operator would see.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::process::{Bridge, ProcessChain};
use common::*;
use openshell_driver_bridge::grpc::client::driver_client;
use openshell_driver_bridge::pki::{self, Ca, LeafSpec};
use openshell_driver_bridge::proto::compute::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.unwrap()).collect()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn roots(ca: &Ca) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    roots
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client of the relay with full control over what it presents.
fn client_config(
    ca: &Ca,
    identity: Option<&pki::Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots(ca));
    let mut config = match identity {
        Some(leaf) => builder.with_client_auth_cert(certs(&leaf.cert_pem), key(&leaf.key_pem)).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// Connects, completes the handshake if it can, then sends the HTTP/2
/// preface and reads: with TLS 1.3 a refused client certificate shows up
/// here, as the alert the relay sends. Returns the error text, or "accepted".
async fn tls_attempt(addr: &str, config: rustls::ClientConfig) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = match connector.connect(name, tcp).await {
        Ok(stream) => stream,
        Err(e) => return format!("handshake: {e}"),
    };
    if let Err(e) = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await {
        return format!("write: {e}");
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => "accepted".into(),
        Ok(Ok(_)) => "closed".into(),
        Ok(Err(e)) => format!("read: {e}"),
        Err(_) => "no answer".into(),
    }
}

/// A second shim in front of the chain's relay, presenting a certificate of
/// the chain's CA for the identity `dns:NAME`; its socket and process.
async fn shim_as(chain: &ProcessChain, name: &str) -> (std::path::PathBuf, Bridge) {
    let identity = chain.pki.issue(name, &LeafSpec::client(name));
    let socket = chain.dir.path().join(format!("{name}/s.sock"));
    let mut args: Vec<String> = vec![
        "shim".into(),
        "--socket".into(),
        socket.display().to_string(),
        "--upstream".into(),
        format!("https://{}", chain.relay_addr),
        "--server-name".into(),
        "localhost".into(),
    ];
    args.extend(common::process::tls_args(&chain.pki.ca_file, &identity));
    let shim = Bridge::spawn(&format!("{name}-shim"), &args, &[]);
    shim.expect_log(&["shim serving"]).await;
    (socket, shim)
}

/// A gateway-side watch that must survive the whole matrix.
async fn bystander(chain: &ProcessChain) -> tonic::Streaming<WatchSandboxesEvent> {
    let mut client = driver_client(&chain.shim_socket).await.unwrap();
    client.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner()
}

/// The bystander still gets live events, and the call path still works.
async fn undisturbed(chain: &mut ProcessChain, watch: &mut tonic::Streaming<WatchSandboxesEvent>, id: &str) {
    assert!(create_and_see(&chain.shim_socket, watch, id).await, "bystander watch missed {id}");
    assert!(chain.relay.is_running() && chain.shim.is_running());
    assert!(chain.driver.as_mut().is_none_or(|d| d.is_running()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tls_clients_are_refused_with_the_reason_logged_and_counted() {
    let mut chain = ProcessChain::start(&["--admin", "127.0.0.1:0"], &[], &[]).await;
    let mut watch = bystander(&chain).await;
    let addr = chain.relay_addr.clone();
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let ca = &chain.pki.ca;
    let other_ca = Ca::new("another CA").unwrap();
    let now = OffsetDateTime::now_utc();

    // No client certificate at all.
    let outcome = tls_attempt(&addr, client_config(ca, None, tls13)).await;
    assert!(outcome.contains("CertificateRequired"), "{outcome}");
    chain.relay.expect_log(&["TLS handshake refused", "no certificate"]).await;

    // A certificate from another CA.
    let foreign = other_ca.issue(&LeafSpec::client(GATEWAY_ID)).unwrap();
    let outcome = tls_attempt(&addr, client_config(ca, Some(&foreign), tls13)).await;
    assert!(outcome.contains("UnknownCA") || outcome.contains("BadCertificate"), "{outcome}");
    chain.relay.expect_log(&["TLS handshake refused", "not issued by a trusted CA"]).await;

    // A self-signed certificate.
    let selfish = pki::self_signed(&LeafSpec::client(GATEWAY_ID)).unwrap();
    let mark = chain.relay.mark();
    let outcome = tls_attempt(&addr, client_config(ca, Some(&selfish), tls13)).await;
    assert!(outcome.starts_with("read:"), "{outcome}");
    chain.relay.expect_log_after(mark, &["TLS handshake refused", "not issued by a trusted CA"]).await;

    // A certificate of the CA, but for a server only (no clientAuth usage).
    let wrong_use = ca.issue(&LeafSpec::server(&[GATEWAY_ID])).unwrap();
    let mark = chain.relay.mark();
    let outcome = tls_attempt(&addr, client_config(ca, Some(&wrong_use), tls13)).await;
    assert!(outcome.starts_with("read:"), "{outcome}");
    chain.relay.expect_log_after(mark, &["TLS handshake refused", "peer certificate rejected"]).await;

    // Expired, and not yet valid.
    let expired = ca.issue(&LeafSpec::client(GATEWAY_ID).valid_between(now - days(30), now - days(1))).unwrap();
    let outcome = tls_attempt(&addr, client_config(ca, Some(&expired), tls13)).await;
    assert!(outcome.contains("CertificateExpired") || outcome.contains("BadCertificate"), "{outcome}");
    chain.relay.expect_log(&["TLS handshake refused", "expired"]).await;
    let early = ca.issue(&LeafSpec::client(GATEWAY_ID).valid_between(now + days(1), now + days(30))).unwrap();
    let outcome = tls_attempt(&addr, client_config(ca, Some(&early), tls13)).await;
    assert!(outcome.starts_with("read:"), "{outcome}");
    chain.relay.expect_log(&["TLS handshake refused", "not valid yet"]).await;

    // A TLS 1.2-only client while 1.2 is off.
    let good = ca.issue(&LeafSpec::client(GATEWAY_ID)).unwrap();
    let mark = chain.relay.mark();
    let outcome = tls_attempt(&addr, client_config(ca, Some(&good), &[&rustls::version::TLS12])).await;
    assert!(outcome.contains("ProtocolVersion") || outcome.contains("HandshakeFailure"), "{outcome}");
    // This attempt's own line, not one of the refusals above.
    chain.relay.expect_log_after(mark, &["TLS handshake refused", "peer is incompatible"]).await;

    // The same certificate over TLS 1.3 is fine: the refusals were about the peers.
    assert_eq!(tls_attempt(&addr, client_config(ca, Some(&good), tls13)).await, "accepted");

    // Each refusal counted under its reason (the self-signed one is of an unknown CA too).
    let expected: Vec<(String, f64)> = [
        ("no_certificate", 1.0),
        ("unknown_ca", 2.0),
        ("expired", 1.0),
        ("not_yet_valid", 1.0),
        ("bad_certificate", 1.0),
        ("incompatible", 1.0),
    ]
    .iter()
    .map(|(reason, n)| {
        (format!("openshell_bridge_tls_handshake_failures_total{{role=\"relay\",reason=\"{reason}\"}}"), *n)
    })
    .collect();
    chain.relay.expect_samples(&expected).await;

    undisturbed(&mut chain, &mut watch, "after-tls-clients").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_tls_and_silent_peers_on_the_relay_port_are_dropped() {
    let mut chain = ProcessChain::start(&["--admin", "127.0.0.1:0"], &[], &[]).await;
    let mut watch = bystander(&chain).await;
    let addr = chain.relay_addr.clone();

    let mut plain = TcpStream::connect(&addr).await.unwrap();
    plain.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "plaintext HTTP/2 got an answer");
    chain.relay.expect_log(&["refused plaintext HTTP/2 on the TLS port"]).await;

    let mut noise = TcpStream::connect(&addr).await.unwrap();
    noise.write_all(&[0x00, 0xff, 0x13, 0x37, 0x42, 0x99, 0x01]).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), noise.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    chain.relay.expect_log(&["refused bytes that are not TLS"]).await;

    // Opens TCP, sends a ClientHello's first byte and nothing else: the
    // handshake timeout (1 s here) frees the connection.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    silent.write_all(&[0x16]).await.unwrap();
    // Closed by the relay (the test would wait 20 s for nothing otherwise).
    let n = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    chain.relay.expect_log(&["TLS handshake timed out"]).await;
    let expected: Vec<(String, f64)> = [("not_tls", 2.0), ("timeout", 1.0)]
        .iter()
        .map(|(reason, n)| {
            (format!("openshell_bridge_tls_handshake_failures_total{{role=\"relay\",reason=\"{reason}\"}}"), *n)
        })
        .collect();
    chain.relay.expect_samples(&expected).await;

    undisturbed(&mut chain, &mut watch, "after-non-tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_on_the_shim_socket_are_refused() {
    let mut chain = ProcessChain::start(&[], &["--admin", "127.0.0.1:0"], &[]).await;
    let mut watch = bystander(&chain).await;

    let mut http1 = tokio::net::UnixStream::connect(&chain.shim_socket).await.unwrap();
    http1.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), http1.read_to_string(&mut reply)).await.unwrap().unwrap();
    assert!(reply.starts_with("HTTP/1.1 505"), "{reply}");
    assert!(reply.contains("gRPC over HTTP/2 only"), "{reply}");
    chain.shim.expect_log(&["refused an HTTP/1.x request"]).await;

    let mut noise = tokio::net::UnixStream::connect(&chain.shim_socket).await.unwrap();
    noise.write_all(b"\x00\x01garbage\xff\xfe").await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), noise.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    chain.shim.expect_log(&["refused a connection that does not speak HTTP/2"]).await;
    let expected: Vec<(String, f64)> = ["http1", "not_http2"]
        .iter()
        .map(|reason| (format!("openshell_bridge_refused_total{{role=\"shim\",reason=\"{reason}\"}}"), 1.0))
        .collect();
    chain.shim.expect_samples(&expected).await;

    undisturbed(&mut chain, &mut watch, "after-shim-noise").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_not_allowed_gets_permission_denied_naming_it() {
    let mut chain = ProcessChain::start(&["--admin", "127.0.0.1:0"], &[], &[]).await;
    let mut watch = bystander(&chain).await;
    // A second shim with a valid certificate of the CA but an unlisted name.
    let (socket, _shim) = shim_as(&chain, "intruder").await;
    let mut client = driver_client(&socket).await.unwrap();
    let status = client.list_sandboxes(ListSandboxesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("client identity dns:intruder is not allowed"), "{}", status.message());
    chain.relay.expect_log(&["refused by policy", "dns:intruder"]).await;
    chain.relay.expect_sample("openshell_bridge_refused_total{role=\"relay\",reason=\"policy\"}", 1.0).await;
    undisturbed(&mut chain, &mut watch, "after-intruder").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_any_client_admits_any_certificate_of_the_ca_and_nothing_else() {
    let chain = ProcessChain::start(&["--allow-any-client"], &[], &[]).await;
    let line = chain.relay.expect_log(&["relay serving"]).await;
    assert!(line.contains("any"), "{line}");
    // An identity nobody listed, from the CA: admitted for every method.
    let (socket, _shim) = shim_as(&chain, "stranger").await;
    let mut stranger = driver_client(&socket).await.unwrap();
    stranger.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("by-stranger")) }).await.unwrap();
    let listed = stranger.list_sandboxes(ListSandboxesRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.sandboxes.len(), 1);
    // Not a certificate of another CA.
    let other_ca = Ca::new("another CA").unwrap();
    let foreign = other_ca.issue(&LeafSpec::client("stranger")).unwrap();
    let mark = chain.relay.mark();
    let outcome =
        tls_attempt(&chain.relay_addr, client_config(&chain.pki.ca, Some(&foreign), &[&rustls::version::TLS13])).await;
    assert_ne!(outcome, "accepted");
    chain.relay.expect_log_after(mark, &["TLS handshake refused", "not issued by a trusted CA"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_identity_may_list_but_not_create() {
    let mut chain = ProcessChain::start(
        &["--allow-client", &format!("dns:{GATEWAY_ID}"), "--allow-client-read-only", "dns:viewer"],
        &[],
        &[],
    )
    .await;
    let (socket, _shim) = shim_as(&chain, "viewer").await;
    let mut viewer_client = driver_client(&socket).await.unwrap();
    let listed = viewer_client.list_sandboxes(ListSandboxesRequest {}).await.unwrap().into_inner();
    assert!(listed.sandboxes.is_empty());
    let status =
        viewer_client.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("ro-attempt")) }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("read-only") && status.message().contains("CreateSandbox"),
        "{}",
        status.message()
    );
    chain.relay.expect_log(&["refused by policy", "dns:viewer", "CreateSandbox"]).await;
    // The driver never saw it: nothing was created.
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let listed = gateway.list_sandboxes(ListSandboxesRequest {}).await.unwrap().into_inner();
    assert!(listed.sandboxes.is_empty(), "a refused Create reached the driver");
    assert!(chain.relay.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_contract_are_refused_at_the_relay_too() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
    let driver = RawDriver::serve(&chain.driver_socket, |call| Answer::ok(call.body.clone()));
    // Talk to the relay directly, as a client holding a valid certificate.
    let client = chain.pki.ca.issue(&LeafSpec::client(GATEWAY_ID)).unwrap();
    let config = client_config(&chain.pki.ca, Some(&client), &[&rustls::version::TLS13]);
    let tcp = TcpStream::connect(chain.relay.local_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, http_body_util::Full<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post("https://localhost/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(grpc_frame(b"")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "12");
    assert!(driver.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_dropped_rapidly_leave_the_bridge_serving() {
    let mut chain = ProcessChain::start(&[], &[], &[]).await;
    let mut watch = bystander(&chain).await;
    let started = std::time::Instant::now();
    for i in 0..1000 {
        if i % 2 == 0 {
            let tcp = TcpStream::connect(&chain.relay_addr).await.unwrap();
            drop(tcp);
        } else {
            let unix = tokio::net::UnixStream::connect(&chain.shim_socket).await.unwrap();
            drop(unix);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "connection loop took too long");
    }
    undisturbed(&mut chain, &mut watch, "after-thousand").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_token_appears_in_no_output_even_at_trace_level() {
    let token = "eyJhbGciOi.SECRET-TOKEN-7f3a9c.signature";
    let env = [("RUST_LOG", "trace")];
    let mut chain = ProcessChain::start(&[], &[], &env).await;
    let mut client = driver_client(&chain.shim_socket).await.unwrap();
    let mut sb = sandbox("secret-holder");
    sb.spec.as_mut().unwrap().sandbox_token = token.into();
    client.create_sandbox(CreateSandboxRequest { sandbox: Some(sb.clone()) }).await.unwrap();
    client.validate_sandbox_create(ValidateSandboxCreateRequest { sandbox: Some(sb.clone()) }).await.unwrap_err();
    // Refused calls carry it too: none of them may echo it.
    let status = client.create_sandbox(CreateSandboxRequest { sandbox: Some(sb) }).await.unwrap_err();
    assert!(!status.message().contains("SECRET-TOKEN"));
    client.get_sandbox(GetSandboxRequest { sandbox_id: "secret-holder".into(), ..Default::default() }).await.unwrap();
    // Every process stops and its output is read to the end: all it logged is there.
    for bridge in [chain.driver.as_mut().unwrap(), &mut chain.relay, &mut chain.shim] {
        bridge.signal(rustix::process::Signal::TERM);
        assert_eq!(bridge.wait_exit(Duration::from_secs(20)).await, Some(0), "{}", bridge.name);
    }
    let output = chain.output();
    assert!(output.lines().count() > 50, "trace logging produced too little to be meaningful:\n{output}");
    assert!(output.contains("CreateSandbox"), "calls were not logged at all");
    for needle in ["SECRET-TOKEN-7f3a9c", "eyJhbGciOi"] {
        assert!(!output.contains(needle), "the token leaked into the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_socket_paths_are_refused_at_start_and_left_intact() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let regular = run.join("regular.sock");
    std::fs::File::create(&regular).unwrap().write_all(b"operator data").unwrap();
    let link = run.join("link.sock");
    std::os::unix::fs::symlink(dir.path().join("elsewhere.sock"), &link).unwrap();
    for (path, why) in [(&regular, "is not a socket"), (&link, "symlink")] {
        let mut args: Vec<String> = vec![
            "shim".into(),
            "--socket".into(),
            path.display().to_string(),
            "--upstream".into(),
            "https://127.0.0.1:9".into(),
        ];
        args.extend(common::process::tls_args(&pki.ca_file, &pki.client));
        let mut shim = Bridge::spawn("shim", &args, &[]);
        assert_eq!(shim.wait_exit(Duration::from_secs(10)).await, Some(2));
        let output = shim.output();
        assert!(output.contains("--socket") && output.contains(why), "{output}");
    }
    assert_eq!(std::fs::read(&regular).unwrap(), b"operator data");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}

/// Runs `python3` as `uid` to connect to `socket` and send the HTTP/2
/// preface; prints what happened.
fn connect_as(uid: u32, socket: &Path) -> String {
    use std::os::unix::process::CommandExt;
    let script = "import socket,sys\n\
s=socket.socket(socket.AF_UNIX)\n\
try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print('connect-error', e.errno); sys.exit(0)\n\
s.settimeout(5)\n\
try:\n s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00')\n d=s.recv(64)\n print('answered' if d else 'closed')\nexcept OSError as e:\n print('closed', e.errno)\n";
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(socket)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_user_is_dropped() {
    if !runs_as_root("a_peer_of_another_user_is_dropped") {
        return;
    }
    let mut chain = ProcessChain::start(&[], &["--admin", "127.0.0.1:0"], &[]).await;
    let mut watch = bystander(&chain).await;
    let nobody = 65534;
    // As deployed (directory 0700) another user cannot even reach the socket.
    assert_eq!(connect_as(nobody, &chain.shim_socket), "connect-error 13");
    // Even if an operator loosens the permissions, the peer check drops it.
    use std::os::unix::fs::PermissionsExt;
    let parent = chain.shim_socket.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&chain.shim_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(chain.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let outcome = connect_as(nobody, &chain.shim_socket);
    assert!(outcome.starts_with("closed"), "{outcome}");
    chain.shim.expect_log(&["refused a peer of another user", "peer_uid=65534", "--allow-uid 65534"]).await;
    chain.shim.expect_sample("openshell_bridge_refused_total{role=\"shim\",reason=\"peer_uid\"}", 1.0).await;
    undisturbed(&mut chain, &mut watch, "after-other-uid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_uid_admits_a_gateway_running_as_another_user() {
    if !runs_as_root("allow_uid_admits_a_gateway_running_as_another_user") {
        return;
    }
    let chain = ProcessChain::start(&[], &["--allow-uid", "65534"], &[]).await;
    use std::os::unix::fs::PermissionsExt;
    let parent = chain.shim_socket.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&chain.shim_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(chain.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    assert_eq!(connect_as(65534, &chain.shim_socket), "answered");
}

/// A TLS server that presents `leaf` (no client auth) and does nothing
/// else: enough to see what the shim thinks of the certificate.
async fn fake_relay(leaf: &pki::Leaf) -> std::net::SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs(&leaf.cert_pem), key(&leaf.key_pem))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut sink = [0u8; 1024];
                    while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    addr
}

/// The status a gateway gets from a shim whose upstream is `addr`.
async fn shim_verdict(
    pki: &TestPki,
    dir: &Path,
    addr: std::net::SocketAddr,
    tweak: impl FnOnce(&mut openshell_driver_bridge::role::shim::ShimConfig),
) -> tonic::Status {
    let socket = dir.join(format!("shim-{}/s.sock", addr.port()));
    let mut config = shim_config(pki, &socket, addr);
    config.settings.dial.connect_wait = Duration::from_millis(500);
    tweak(&mut config);
    let shutdown = openshell_driver_bridge::shutdown::Shutdown::new();
    let _shim = openshell_driver_bridge::role::shim::start(config, shutdown.clone()).unwrap();
    let mut client = driver_client(&socket).await.unwrap();
    let status = client.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    shutdown.stop_now();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_refuses_a_relay_it_cannot_trust() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let now = OffsetDateTime::now_utc();

    let wrong_name = fake_relay(&pki.ca.issue(&LeafSpec::server(&["other.example"])).unwrap()).await;
    let status = shim_verdict(&pki, dir.path(), wrong_name, |_| {}).await;
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("not valid for name"), "{}", status.message());
    assert!(status.message().contains("--server-name"), "{}", status.message());

    let other_ca = Ca::new("another CA").unwrap();
    let foreign = fake_relay(&other_ca.issue(&LeafSpec::server(&["localhost", "127.0.0.1"])).unwrap()).await;
    let status = shim_verdict(&pki, dir.path(), foreign, |_| {}).await;
    assert!(status.message().contains("not issued by a trusted CA"), "{}", status.message());

    let expired = pki
        .ca
        .issue(&LeafSpec::server(&["localhost", "127.0.0.1"]).valid_between(now - days(30), now - days(1)))
        .unwrap();
    let status = shim_verdict(&pki, dir.path(), fake_relay(&expired).await, |_| {}).await;
    assert!(status.message().contains("expired"), "{}", status.message());

    // The right CA and name, but not the pinned identity.
    let plain = fake_relay(&pki.ca.issue(&LeafSpec::server(&["localhost", "127.0.0.1"])).unwrap()).await;
    let status = shim_verdict(&pki, dir.path(), plain, |c| {
        c.expect_server = vec!["uri:spiffe://corp/relay".parse().unwrap()];
    })
    .await;
    assert!(status.message().contains("is not the expected uri:spiffe://corp/relay"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_spiffe_identity_and_tls12_opt_in_work_end_to_end() {
    // A relay whose certificate carries a SPIFFE ID, pinned by the shim; the
    // relay admits a SPIFFE prefix and has opted into TLS 1.2.
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let server = pki.issue(
        "spiffe-server",
        &LeafSpec::server(&["localhost", "127.0.0.1"]).with_uri("spiffe://corp/ns/drivers/sa/relay"),
    );
    let client = pki.issue("spiffe-client", &LeafSpec::client(GATEWAY_ID).with_uri("spiffe://corp/ns/edge/sa/gw"));
    let shutdown = openshell_driver_bridge::shutdown::Shutdown::new();
    let driver_socket = dir.path().join("driver/d.sock");
    openshell_driver_bridge::demo::serve(
        &driver_socket,
        openshell_driver_bridge::demo::driver::DemoDriver::new(),
        shutdown.clone(),
    )
    .unwrap();
    let mut relay_cfg = relay_config(&pki, openshell_driver_bridge::role::relay::DriverTarget::Unix(driver_socket));
    relay_cfg.tls = files(&pki.ca_file, &server);
    relay_cfg.tls.tls12 = true;
    relay_cfg.rules = vec![openshell_driver_bridge::admit::policy::Rule {
        pattern: "uri:spiffe://corp/ns/edge/*".parse().unwrap(),
        access: openshell_driver_bridge::admit::policy::Access::Full,
    }];
    let relay = openshell_driver_bridge::role::relay::start(relay_cfg, shutdown.clone()).await.unwrap();
    let socket = dir.path().join("shim/s.sock");
    let mut shim_cfg = shim_config(&pki, &socket, relay.local_addr);
    shim_cfg.tls = files(&pki.ca_file, &client);
    shim_cfg.tls.tls12 = true;
    shim_cfg.expect_server = vec!["uri:spiffe://corp/ns/drivers/sa/relay".parse().unwrap()];
    let _shim = openshell_driver_bridge::role::shim::start(shim_cfg, shutdown.clone()).unwrap();
    let mut gateway = driver_client(&socket).await.unwrap();
    let caps = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, "demo");

    // A TLS 1.2-only client now gets in, since the relay opted in.
    let leaf = pki.ca.issue(&LeafSpec::client(GATEWAY_ID).with_uri("spiffe://corp/ns/edge/sa/other")).unwrap();
    let outcome =
        tls_attempt(&relay.local_addr.to_string(), client_config(&pki.ca, Some(&leaf), &[&rustls::version::TLS12]))
            .await;
    assert_eq!(outcome, "accepted");
    shutdown.stop_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_with_large_requests_do_not_starve_the_connection() {
    // The relay refuses these at their headers and drops the request bytes
    // that follow; it must hand those bytes back to the connection's flow
    // control window, or a few refusals would stall every later call.
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(
        dir,
        |relay| {
            relay.rules = vec![openshell_driver_bridge::admit::policy::Rule {
                pattern: format!("dns:{GATEWAY_ID}").parse().unwrap(),
                access: openshell_driver_bridge::admit::policy::Access::ReadOnly,
            }]
        },
        |_| {},
    )
    .await;
    let driver = openshell_driver_bridge::demo::driver::DemoDriver::new();
    openshell_driver_bridge::demo::serve(&chain.driver_socket, driver.clone(), chain.shutdown.clone()).unwrap();
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    gateway.list_sandboxes(ListSandboxesRequest {}).await.unwrap();

    let mut big = sandbox("big");
    let labels = &mut big.spec.as_mut().unwrap().template.as_mut().unwrap().labels;
    labels.insert("padding".into(), "x".repeat(512 * 1024));
    for _ in 0..12 {
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(big.clone()) }),
        )
        .await
        .expect("a refused call hung")
        .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{}", refused.message());
    }
    // 6 MiB refused on one connection; reads still flow.
    let listed = tokio::time::timeout(Duration::from_secs(5), gateway.list_sandboxes(ListSandboxesRequest {}))
        .await
        .expect("the connection stalled after the refusals")
        .unwrap();
    assert!(listed.into_inner().sandboxes.is_empty());
    assert_eq!(driver.calls("CreateSandbox"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_the_relay_does_not_admit_never_gets_a_driver_connection_opened_for_it() {
    // Each admitted client connection gets a driver connection of its own;
    // one whose every call will be refused must not cost the driver anything.
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(
        dir,
        |relay| {
            relay.rules = vec![openshell_driver_bridge::admit::policy::Rule {
                pattern: "dns:someone-else".parse().unwrap(),
                access: openshell_driver_bridge::admit::policy::Access::Full,
            }]
        },
        |_| {},
    )
    .await;
    // A "driver" that only counts who connects.
    std::fs::create_dir_all(chain.driver_socket.parent().unwrap()).unwrap();
    let listener = tokio::net::UnixListener::bind(&chain.driver_socket).unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let status = gateway.list_sandboxes(ListSandboxesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
    assert!(status.message().contains("dns:openshell-gateway"), "{}", status.message());
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "the driver was dialled for a refused client");
    assert_eq!(chain.relay.forwarder.metrics().connections(), 1, "the refused client is still served");
}
