//! The doctor against real chains, run as the real binary: a healthy chain
//! passes every step, and each classic breakage fails at the step that
//! names it, with a hint, and a non-zero exit.

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::{tls_args, Bridge};
use common::*;
use openshell_driver_bridge::admit::policy::{Access, Rule};
use openshell_driver_bridge::pki::{Ca, LeafSpec};

const SHIM_STEPS: &[&str] = &[
    "config",
    "files",
    "cert-key",
    "chain",
    "validity",
    "peer-name",
    "socket",
    "proxy",
    "tcp-connect",
    "tls-handshake",
    "get-capabilities",
];

/// What one `check` run printed and how it exited.
struct Run {
    code: Option<i32>,
    output: String,
}

impl Run {
    /// The line of `step`, which must carry `status`.
    fn step(&self, status: &str, step: &str) -> String {
        self.find(step)
            .filter(|line| line.trim_start().starts_with(status))
            .unwrap_or_else(|| panic!("no {status} line for step {step}; output:\n{}", self.output))
    }

    fn find(&self, step: &str) -> Option<String> {
        self.output
            .lines()
            .find(|line| line.starts_with("  ") && line.split_whitespace().nth(1) == Some(step))
            .map(str::to_owned)
    }

    /// The hint printed under the step's line.
    fn hint(&self, step: &str) -> String {
        let mut lines = self.output.lines().skip_while(|line| self.find(step).as_deref() != Some(*line));
        lines.next();
        match lines.next().map(str::trim) {
            Some(hint) if hint.starts_with("hint:") => hint.to_owned(),
            _ => panic!("no hint under step {step}; output:\n{}", self.output),
        }
    }
}

async fn check(args: Vec<String>) -> Run {
    let mut bridge = Bridge::spawn("check", &args, &[]);
    let code = bridge.wait_exit(Duration::from_secs(60)).await;
    // The output readers may lag the exit by a moment.
    bridge.wait_for_log(&["check: "], Duration::from_secs(2)).await;
    Run { code, output: bridge.output() }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `check shim` with the flags a shim in front of `port` would have.
fn shim_check(dir: &Path, port: u16, ca: &Path, identity: &(std::path::PathBuf, std::path::PathBuf)) -> Vec<String> {
    let mut args = strings(&["check", "shim", "--server-name", "localhost"]);
    args.extend(["--socket".into(), dir.join("check-shim/compute-driver.sock").display().to_string()]);
    args.extend(["--upstream".into(), format!("https://127.0.0.1:{port}")]);
    args.extend(tls_args(ca, identity));
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_chain_passes_every_shim_step() {
    let (chain, _driver) = Chain::with_demo_driver().await;
    let port = chain.relay.local_addr.port();
    let run = check(shim_check(chain.dir.path(), port, &chain.pki.ca_file, &chain.pki.client)).await;
    assert_eq!(run.code, Some(0), "{}", run.output);
    for step in SHIM_STEPS {
        run.step("OK", step);
    }
    let handshake = run.step("OK", "tls-handshake");
    assert!(handshake.contains("TLS 1.3 TLS13_") && handshake.contains("peer dns:localhost (expires "), "{handshake}");
    let caps = run.step("OK", "get-capabilities");
    assert!(caps.contains("driver demo ") && caps.contains("round trip"), "{caps}");
    assert!(run.step("OK", "peer-name").contains("we present dns:openshell-gateway"), "{}", run.output);
    assert!(run.output.contains("check: 11 passed, 0 failed"), "{}", run.output);
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_relay_side_passes_and_sees_its_port_served() {
    let (chain, _driver) = Chain::with_demo_driver().await;
    let mut args = strings(&["check", "relay", "--allow-client", "dns:openshell-gateway"]);
    args.extend(["--listen".into(), chain.relay.local_addr.to_string()]);
    args.extend(["--driver-socket".into(), chain.driver_socket.display().to_string()]);
    args.extend(tls_args(&chain.pki.ca_file, &chain.pki.server));
    let run = check(args).await;
    assert_eq!(run.code, Some(0), "{}", run.output);
    assert!(run.step("OK", "chain").contains("serverAuth"), "{}", run.output);
    assert!(run.step("OK", "peer-name").contains("localhost, 127.0.0.1"), "{}", run.output);
    assert!(run.step("OK", "listen").contains("in use"), "{}", run.output);
    assert!(run.step("OK", "get-capabilities").contains("driver demo"), "{}", run.output);
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_side_names_a_missing_driver_socket() {
    let (chain, _driver) = Chain::with_demo_driver().await;
    let missing = chain.dir.path().join("nowhere/driver.sock");
    let mut args = strings(&["check", "relay", "--listen", "127.0.0.1:0", "--allow-client", "dns:openshell-gateway"]);
    args.extend(["--driver-socket".into(), missing.display().to_string()]);
    args.extend(tls_args(&chain.pki.ca_file, &chain.pki.server));
    let run = check(args).await;
    assert_eq!(run.code, Some(1), "{}", run.output);
    assert!(run.step("FAIL", "driver-connect").contains("nowhere/driver.sock: no such socket"), "{}", run.output);
    assert!(run.hint("driver-connect").contains("--driver-socket"), "{}", run.output);
    run.step("SKIP", "get-capabilities");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_ca_fails_at_the_handshake_with_a_hint() {
    let (chain, _driver) = Chain::with_demo_driver().await;
    let other = TestPki::new(&chain.dir.path().join("other-pki"));
    let port = chain.relay.local_addr.port();
    let run = check(shim_check(chain.dir.path(), port, &other.ca_file, &chain.pki.client)).await;
    assert_eq!(run.code, Some(1), "{}", run.output);
    run.step("OK", "tcp-connect");
    // Two development PKIs have CAs of the same name: the signature, not the name, gives it away.
    let failed = run.step("FAIL", "tls-handshake");
    assert!(failed.contains("peer certificate rejected"), "{failed}");
    let hint = run.hint("tls-handshake");
    assert!(hint.contains("--ca") && hint.contains("another key signed it"), "{hint}");
    run.step("SKIP", "get-capabilities");
    // Our own certificate is not from that CA either: worth a warning, not a failure.
    run.step("WARN", "chain");
    assert!(run.output.contains("1 failed"), "{}", run.output);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_of_another_ca_fails_at_the_handshake() {
    let (chain, _driver) = Chain::with_demo_driver().await;
    let port = chain.relay.local_addr.port();
    // Another development PKI: a CA of the same name, another key.
    let same_name = TestPki::new(&chain.dir.path().join("same-name-pki"));
    let run = check(shim_check(chain.dir.path(), port, &chain.pki.ca_file, &same_name.client)).await;
    assert_eq!(run.code, Some(1), "{}", run.output);
    assert!(run.step("FAIL", "tls-handshake").to_lowercase().contains("decrypt"), "{}", run.output);
    assert!(run.hint("tls-handshake").contains("does not trust our --cert"), "{}", run.output);
    run.step("SKIP", "get-capabilities");
    // A CA of another name.
    let other = Ca::new("another CA").unwrap();
    let client = write_leaf(chain.dir.path(), "other-client", &other.issue(&LeafSpec::client(GATEWAY_ID)).unwrap());
    let run = check(shim_check(chain.dir.path(), port, &chain.pki.ca_file, &client)).await;
    assert_eq!(run.code, Some(1), "{}", run.output);
    assert!(run.step("FAIL", "tls-handshake").contains("unknown_ca"), "{}", run.output);
    assert!(run.hint("tls-handshake").contains("does not trust our --cert"), "{}", run.output);
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_down_fails_at_tcp_connect_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let run = check(shim_check(dir.path(), port, &pki.ca_file, &pki.client)).await;
    assert_eq!(run.code, Some(1), "{}", run.output);
    let failed = run.step("FAIL", "tcp-connect");
    assert!(failed.contains(&format!("127.0.0.1:{port}: connection refused")), "{failed}");
    assert!(run.hint("tcp-connect").contains("is the relay running"), "{}", run.output);
    run.step("SKIP", "tls-handshake");
    run.step("SKIP", "get-capabilities");
    for step in &SHIM_STEPS[..7] {
        run.step("OK", step);
    }
    assert!(run.output.contains("check: 8 passed, 1 failed, 2 skipped"), "{}", run.output);
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_not_allowed_fails_at_get_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(
        dir,
        |relay| relay.rules = vec![Rule { pattern: "dns:someone-else".parse().unwrap(), access: Access::Full }],
        |_| {},
    )
    .await;
    let port = chain.relay.local_addr.port();
    let run = check(shim_check(chain.dir.path(), port, &chain.pki.ca_file, &chain.pki.client)).await;
    assert_eq!(run.code, Some(1), "{}", run.output);
    run.step("OK", "tls-handshake");
    let failed = run.step("FAIL", "get-capabilities");
    assert!(failed.contains("PERMISSION_DENIED") && failed.contains("dns:openshell-gateway"), "{failed}");
    assert!(run.hint("get-capabilities").contains("--allow-client dns:openshell-gateway"), "{}", run.output);
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_of_a_healthy_shim_passes() {
    let (chain, _driver) = Chain::with_demo_driver().await;
    let run = check(vec!["check".into(), "--socket".into(), chain.shim_socket.display().to_string()]).await;
    assert_eq!(run.code, Some(0), "{}", run.output);
    run.step("OK", "socket");
    run.step("OK", "connect");
    assert!(run.step("OK", "get-capabilities").contains("driver demo"), "{}", run.output);
    assert!(run.step("OK", "list-sandboxes").contains("sandbox(es)"), "{}", run.output);
    assert!(run.output.contains("check: 4 passed, 0 failed"), "{}", run.output);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_socket_fails_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("shim/compute-driver.sock");
    let run =
        check(vec!["check".into(), "--timeout".into(), "2s".into(), "--socket".into(), missing.display().to_string()])
            .await;
    assert_eq!(run.code, Some(1), "{}", run.output);
    assert!(run.step("FAIL", "socket").contains("no such socket"), "{}", run.output);
    assert!(run.hint("socket").contains("is the shim running"), "{}", run.output);
    run.step("SKIP", "get-capabilities");
}

#[tokio::test(flavor = "multi_thread")]
async fn command_line_mistakes_exit_2() {
    let run = check(strings(&["check"])).await;
    assert_eq!(run.code, Some(2), "{}", run.output);
    assert!(run.output.contains("nothing to check"), "{}", run.output);
    let mut both = strings(&["check", "--socket", "/tmp/x.sock", "relay", "--listen", "127.0.0.1:0"]);
    both.extend(strings(&["--driver-socket", "/tmp/d.sock", "--allow-client", "dns:x"]));
    both.extend(strings(&["--ca", "ca.pem", "--cert", "c.pem", "--key", "k.pem"]));
    let run = check(both).await;
    assert_eq!(run.code, Some(2), "{}", run.output);
    assert!(run.output.contains("not both"), "{}", run.output);
}
