//! Enterprise networks: certificate revocation lists (refused at the
//! handshake, reloaded live, cutting the open connections of a revoked
//! certificate), the access policy re-read without a restart, and
//! certificates issued by an intermediate CA. Real sockets, real TLS, the
//! real roles; certificates and CRLs are made here with rcgen.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use openshell_driver_bridge::admit::policy::{Access, Rule};
use openshell_driver_bridge::connect::proxy::ProxySetting;
use openshell_driver_bridge::grpc::client::driver_client;
use openshell_driver_bridge::pki::{self, Ca, LeafSpec};
use openshell_driver_bridge::proto::compute::watch_sandboxes_event::Payload;
use openshell_driver_bridge::proto::compute::*;
use openshell_driver_bridge::role::relay::{self, DriverTarget, RunningRelay};
use openshell_driver_bridge::role::shim::{self, RunningShim};
use openshell_driver_bridge::shutdown::Shutdown;
use openshell_driver_bridge::tls::config::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

fn leaf_der(cert_file: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(cert_file).unwrap()
}

fn in_a_week() -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::days(7)
}

/// Writes a CRL of `ca` listing `revoked` (certificate files) to `path`.
fn write_crl(ca: &Ca, path: &Path, revoked: &[&Path], number: u64, next_update: OffsetDateTime) {
    let ders: Vec<CertificateDer<'static>> = revoked.iter().map(|f| leaf_der(f)).collect();
    let refs: Vec<&CertificateDer<'_>> = ders.iter().collect();
    pki::write_pem(path, &ca.crl(&refs, number, next_update).unwrap(), false).unwrap();
}

/// A relay in front of a demo driver, admitting `dns:gw-a` and `dns:gw-b`
/// (and whatever `tweak` adds).
struct Site {
    dir: tempfile::TempDir,
    pki: TestPki,
    shutdown: Shutdown,
    relay: RunningRelay,
    crl: PathBuf,
}

impl Site {
    async fn start(tweak: impl FnOnce(&mut relay::RelayConfig, &TestPki, &Path)) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(&dir.path().join("pki"));
        let crl = dir.path().join("pki/ca.crl");
        write_crl(&pki.ca, &crl, &[], 1, in_a_week());
        let driver_socket = dir.path().join("driver/driver.sock");
        let shutdown = Shutdown::new();
        let driver = openshell_driver_bridge::demo::driver::DemoDriver::with_options(
            openshell_driver_bridge::demo::driver::DemoOptions {
                provision_delay: Duration::from_millis(20),
                ..Default::default()
            },
        );
        openshell_driver_bridge::demo::serve(&driver_socket, driver, shutdown.clone()).unwrap();
        let mut config = relay_config(&pki, DriverTarget::Unix(driver_socket));
        config.rules = ["gw-a", "gw-b"]
            .iter()
            .map(|n| Rule { pattern: format!("dns:{n}").parse().unwrap(), access: Access::Full })
            .collect();
        config.tls.crls = vec![crl.clone()];
        tweak(&mut config, &pki, dir.path());
        let relay = relay::start(config, shutdown.clone()).await.unwrap();
        Site { dir, pki, shutdown, relay, crl }
    }

    /// A client certificate for `dns:NAME` from the site's CA.
    fn client(&self, name: &str) -> TlsFiles {
        let files = self.pki.issue(name, &LeafSpec::client(name));
        common::files(&self.pki.ca_file, &files)
    }

    /// A shim in front of the relay presenting `tls`.
    fn shim(&self, name: &str, tls: TlsFiles) -> RunningShim {
        self.shim_via(name, tls, ProxySetting::Off)
    }

    /// A shim in front of the relay presenting `tls`, reaching it as `proxy` says.
    fn shim_via(&self, name: &str, tls: TlsFiles, proxy: ProxySetting) -> RunningShim {
        let socket = self.dir.path().join(format!("{name}/shim.sock"));
        let mut config = shim_config(&self.pki, &socket, self.relay.local_addr);
        config.tls = tls;
        config.proxy = proxy;
        shim::start(config, self.shutdown.clone()).unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.shutdown.stop_now();
    }
}

/// A TLS 1.3 client learns the server's verdict on its certificate on its
/// first read: "ok" when the relay answers HTTP/2, else the error.
async fn handshake_verdict(addr: std::net::SocketAddr, tls: &TlsFiles) -> String {
    let config = openshell_driver_bridge::tls::config::client_config(tls, &[]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = match connector.connect(name, tcp).await {
        Ok(stream) => stream,
        Err(e) => return openshell_driver_bridge::describe::describe_tls_io_error(&e),
    };
    let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) => "ok".into(),
        Ok(Err(e)) => openshell_driver_bridge::describe::describe_tls_io_error(&e),
        Err(_) => "timeout".into(),
    }
}

/// The relay's metrics as a scraper reads them.
fn scrape(relay: &RunningRelay) -> String {
    use openshell_driver_bridge::obs::metrics::exposition::{Exposition, HopState};
    let hop = HopState { peer: "driver".into(), connected_to: None, last_error: None, connects: 0, up: true };
    let mut out = String::new();
    relay.forwarder.metrics().render(&hop, Exposition::Prometheus, &mut out);
    out
}

async fn open_watch(socket: &Path) -> tonic::Streaming<WatchSandboxesEvent> {
    let mut client = driver_client(socket).await.unwrap();
    client.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner()
}

/// The watch sees sandbox `id`, created through `socket`.
async fn sees_created(socket: &Path, watch: &mut tonic::Streaming<WatchSandboxesEvent>, id: &str) {
    assert!(create_and_see(socket, watch, id).await, "the watch did not see {id}");
}

// ---------------------------------------------------------------------------
// Revocation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_at_the_handshake() {
    let site = Site::start(|_, _, _| {}).await;
    let good = site.client("gw-a");
    let revoked = site.client("gw-b");
    write_crl(&site.pki.ca, &site.crl, &[&revoked.cert], 2, in_a_week());
    // Wait for the reload (200 ms interval), then try both.
    wait_for_verdict(site.relay.local_addr, &revoked, "revoked").await;
    assert_eq!(handshake_verdict(site.relay.local_addr, &good).await, "ok");
}

/// Until the verdict for `tls` is "ok" or, for any other `part`, contains
/// it (5 s at most).
async fn wait_for_verdict(addr: std::net::SocketAddr, tls: &TlsFiles, part: &str) {
    let mut last = String::new();
    for _ in 0..50 {
        last = handshake_verdict(addr, tls).await;
        if last == part || (part != "ok" && last.contains(part)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the relay's verdict never became {part:?}; last: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_from_the_start() {
    let site = Site::start(|config, pki, dir| {
        let revoked = pki.issue("gw-b", &LeafSpec::client("gw-b"));
        let crl = dir.join("pki/start.crl");
        write_crl(&pki.ca, &crl, &[&revoked.0], 1, in_a_week());
        config.tls.crls = vec![crl];
    })
    .await;
    let revoked = common::files(&site.pki.ca_file, &(site.pki.dir.join("gw-b.pem"), site.pki.dir.join("gw-b-key.pem")));
    let verdict = handshake_verdict(site.relay.local_addr, &revoked).await;
    assert!(verdict.contains("revoked"), "{verdict}");
    assert_eq!(handshake_verdict(site.relay.local_addr, &site.client("gw-a")).await, "ok");
    let metrics = site.relay.forwarder.metrics().clone();
    common::wait_for("the relay to count the refused handshake", || metrics.handshake_failures() >= 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_refuses_a_revoked_relay_certificate() {
    let site = Site::start(|_, _, _| {}).await;
    let crl = site.dir.path().join("pki/relay-revoked.crl");
    write_crl(&site.pki.ca, &crl, &[&site.pki.server.0], 1, in_a_week());
    let mut tls = site.client("gw-a");
    tls.crls = vec![crl];
    let shim = site.shim("gw-a", tls);
    let mut client = driver_client(&shim.socket).await.unwrap();
    let status = client.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("revoked"), "{}", status.message());

    // The same shim without the CRL gets through: the CRL made the difference.
    let shim = site.shim("gw-a2", site.client("gw-a"));
    let mut client = driver_client(&shim.socket).await.unwrap();
    client.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_revokes_the_relay_certificate_closes_the_shims_open_connection() {
    revoking_the_relay_certificate_closes_the_shims_open_connection(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_revokes_the_relay_certificate_closes_the_shims_connection_through_a_proxy() {
    let test = "a_reload_that_revokes_the_relay_certificate_closes_the_shims_connection_through_a_proxy";
    let Some(proxy) = common::tinyproxy::Tinyproxy::start(test, "") else { return };
    revoking_the_relay_certificate_closes_the_shims_open_connection(Some(&proxy)).await;
    assert!(proxy.log().contains("CONNECT 127.0.0.1:"), "the shim did not go through the proxy:\n{}", proxy.log());
}

async fn revoking_the_relay_certificate_closes_the_shims_open_connection(proxy: Option<&common::tinyproxy::Tinyproxy>) {
    let site = Site::start(|_, _, _| {}).await;
    let crl = site.dir.path().join("pki/shim.crl");
    write_crl(&site.pki.ca, &crl, &[], 1, in_a_week());
    let mut tls = site.client("gw-a");
    tls.crls = vec![crl.clone()];
    let route = match proxy {
        Some(proxy) => ProxySetting::from_flag(&proxy.url("")).unwrap(),
        None => ProxySetting::Off,
    };
    let shim = site.shim_via("gw-a", tls, route);
    let mut watch = open_watch(&shim.socket).await;
    sees_created(&shim.socket, &mut watch, "before").await;

    let written = Instant::now();
    write_crl(&site.pki.ca, &crl, &[&site.pki.server.0], 2, in_a_week());
    let status = watch_end_within(&mut watch, Duration::from_secs(10)).await;
    eprintln!("shim side: CRL written -> the gateway's watch ended in {} ms", written.elapsed().as_millis());
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("relay certificate revoked"), "{}", status.message());
    // The shim does not come back to that relay.
    let mut client = driver_client(&shim.socket).await.unwrap();
    let status = client.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("revoked"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_of_an_issuer_that_is_not_loaded_does_not_apply() {
    let site = Site::start(|_, _, _| {}).await;
    let client = site.client("gw-a");
    // Another CA "revokes" a certificate with the client's very serial.
    let other = Ca::new("another CA").unwrap();
    let der = leaf_der(&client.cert);
    let pem = other.crl(&[&der], 1, in_a_week()).unwrap();
    pki::write_pem(&site.crl, &pem, false).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(handshake_verdict(site.relay.local_addr, &client).await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_crl_is_refused_at_start_naming_flag_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let bad = dir.path().join("pki/garbage.crl");
    std::fs::write(&bad, "not a revocation list\n").unwrap();
    let mut config = relay_config(&pki, DriverTarget::Unix(dir.path().join("driver.sock")));
    config.tls.crls = vec![bad.clone()];
    let error =
        relay::start(config, Shutdown::new()).await.err().expect("a relay with a garbage CRL started").to_string();
    assert!(error.starts_with(&format!("--crl {}", bad.display())), "{error}");
    assert!(error.contains("does not parse as a certificate revocation list"), "{error}");

    // A certificate passed where the CRL belongs is named as such.
    let mut config = shim_config(&pki, &dir.path().join("shim/s.sock"), "127.0.0.1:1".parse().unwrap());
    config.tls.crls = vec![pki.ca_file.clone()];
    let error =
        shim::start(config, Shutdown::new()).err().expect("a shim with a certificate as CRL started").to_string();
    assert!(error.contains("--crl") && error.contains("holds no CRL"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_revokes_an_open_clients_certificate_closes_its_connection_only() {
    let site = Site::start(|_, _, _| {}).await;
    let a = site.client("gw-a");
    let b = site.client("gw-b");
    let shim_a = site.shim("gw-a", a.clone());
    let shim_b = site.shim("gw-b", b);
    let mut watch_a = open_watch(&shim_a.socket).await;
    let mut watch_b = open_watch(&shim_b.socket).await;
    sees_created(&shim_a.socket, &mut watch_a, "before-a").await;
    sees_created(&shim_b.socket, &mut watch_b, "before-b").await;

    // The drill: a CRL listing gw-a's certificate dropped in place.
    let written = Instant::now();
    write_crl(&site.pki.ca, &site.crl, &[&a.cert], 2, in_a_week());
    let status = watch_end_within(&mut watch_a, Duration::from_secs(10)).await;
    let took = written.elapsed();
    eprintln!("revocation drill: CRL written -> gw-a's watch ended in {} ms", took.as_millis());
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("client certificate revoked"), "{}", status.message());
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // gw-b is undisturbed; gw-a cannot come back.
    sees_created(&shim_b.socket, &mut watch_b, "after-b").await;
    let verdict = handshake_verdict(site.relay.local_addr, &a).await;
    assert!(verdict.contains("revoked"), "{verdict}");
    let mut client_a = driver_client(&shim_a.socket).await.unwrap();
    let status = client_a.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!site.relay.forwarder.sessions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_stale_new_crl_is_refused_and_the_previous_kept() {
    let site = Site::start(|_, _, _| {}).await;
    let a = site.client("gw-a");
    let b = site.client("gw-b");
    write_crl(&site.pki.ca, &site.crl, &[&b.cert], 5, in_a_week());
    wait_for_verdict(site.relay.local_addr, &b, "revoked").await;

    // Garbage in place of the CRL: refused, gw-b stays revoked.
    pki::write_pem(&site.crl, "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", false).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(handshake_verdict(site.relay.local_addr, &b).await.contains("revoked"));
    assert_eq!(handshake_verdict(site.relay.local_addr, &a).await, "ok");

    // A stale CRL (its nextUpdate passed) that lists nobody: refused too.
    let past = OffsetDateTime::now_utc() - time::Duration::seconds(10);
    write_crl(&site.pki.ca, &site.crl, &[], 6, past);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(handshake_verdict(site.relay.local_addr, &b).await.contains("revoked"));

    // An older CRL (a lower number) that lists nobody: refused too.
    write_crl(&site.pki.ca, &site.crl, &[], 4, in_a_week());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(handshake_verdict(site.relay.local_addr, &b).await.contains("revoked"));

    // A newer, fresh one is taken.
    let next_update = in_a_week();
    write_crl(&site.pki.ca, &site.crl, &[], 7, next_update);
    wait_for_verdict(site.relay.local_addr, &b, "ok").await;
    let metrics = scrape(&site.relay);
    let line = format!(
        "openshell_bridge_crl_next_update_timestamp_seconds{{role=\"relay\",file=\"{}\"}} {}",
        site.crl.display(),
        next_update.unix_timestamp()
    );
    assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
}

// ---------------------------------------------------------------------------
// The access policy, reloaded

/// A relay started from a `--config` file, as an operator runs it, whose
/// policy lines are `policy`; the file and the command line.
struct PolicySite {
    site: Site,
    file: PathBuf,
    argv: Vec<std::ffi::OsString>,
}

fn relay_toml(dir: &Path, pki: &TestPki, policy: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndriver-socket = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nreload-interval = \"200ms\"\n{policy}\n",
        dir.join("driver/driver.sock").display(),
        pki.ca_file.display(),
        pki.server.0.display(),
        pki.server.1.display(),
    )
}

impl PolicySite {
    async fn start(policy: &str) -> PolicySite {
        let mut file = PathBuf::new();
        let mut argv = Vec::new();
        let site = Site::start(|config, pki, dir| {
            file = dir.join("relay.toml");
            std::fs::write(&file, relay_toml(dir, pki, policy)).unwrap();
            argv = ["openshell-driver-bridge", "relay", "--config"].iter().map(Into::into).collect();
            argv.push(file.clone().into());
            let parsed = openshell_driver_bridge::cli::args::parse_from(argv.clone()).ok().unwrap();
            let openshell_driver_bridge::cli::args::Command::Relay(args) = parsed.cli.command else {
                panic!("not a relay command line")
            };
            let from_file = args.to_config().unwrap();
            config.rules = from_file.rules;
            config.any_client = from_file.any_client;
            config.policy_source = Some(openshell_driver_bridge::cli::policy::source(argv.clone(), file.clone()));
        })
        .await;
        PolicySite { site, file, argv }
    }

    fn rewrite(&self, policy: &str) {
        let text = relay_toml(self.site.dir.path(), &self.site.pki, policy);
        let temp = self.file.with_extension("tmp");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, &self.file).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_closes_removed_identities_restricts_moved_ones_and_leaves_others() {
    let ps = PolicySite::start("allow-client = [\"dns:gw-a\", \"dns:gw-b\", \"dns:gw-c\"]").await;
    let site = &ps.site;
    let shims: Vec<RunningShim> = ["gw-a", "gw-b", "gw-c"].iter().map(|n| site.shim(n, site.client(n))).collect();
    let mut watches = Vec::new();
    for shim in &shims {
        watches.push(open_watch(&shim.socket).await);
    }
    sees_created(&shims[0].socket, &mut watches[0], "before").await;

    ps.rewrite("allow-client = [\"dns:gw-a\"]\nallow-client-read-only = [\"dns:gw-b\"]");
    let status = watch_end_within(&mut watches[2], Duration::from_secs(5)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("dns:gw-c") && status.message().contains("no longer allowed"),
        "{}",
        status.message()
    );
    assert_eq!(site.relay.forwarder.metrics().policy_reloads("ok"), 1);
    let metrics = scrape(&site.relay);
    assert!(metrics.contains("openshell_bridge_policy_reloads_total{role=\"relay\",result=\"ok\"} 1"), "{metrics}");

    // gw-b, now read-only, keeps its watch (it sees gw-a's sandbox) but may not create.
    let (a, b) = watches.split_at_mut(1);
    sees_created(&shims[0].socket, &mut a[0], "after").await;
    let mut seen = false;
    for _ in 0..50 {
        let event = tokio::time::timeout(Duration::from_secs(5), b[0].message()).await.unwrap().unwrap().unwrap();
        if let Some(Payload::Sandbox(s)) = event.payload {
            if s.sandbox.map(|s| s.id).as_deref() == Some("after") {
                seen = true;
                break;
            }
        }
    }
    assert!(seen, "gw-b's watch did not continue");
    let mut client_b = driver_client(&shims[1].socket).await.unwrap();
    let refused = client_b.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("by-b")) }).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("read-only"), "{}", refused.message());
    client_b.list_sandboxes(ListSandboxesRequest::default()).await.unwrap();

    // gw-c comes back: every call is refused naming it.
    let mut client_c = driver_client(&shims[2].socket).await.unwrap();
    let refused = client_c.list_sandboxes(ListSandboxesRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("dns:gw-c"), "{}", refused.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_new_policy_file_is_refused_naming_file_line_and_key_and_the_running_policy_kept() {
    let ps = PolicySite::start("allow-client = [\"dns:gw-a\"]\nallow-client-read-only = [\"dns:gw-b\"]").await;
    let site = &ps.site;
    let shim_a = site.shim("gw-a", site.client("gw-a"));
    let mut watch_a = open_watch(&shim_a.socket).await;

    // A pattern that is no identity, on line 8 of the file.
    ps.rewrite("allow-client = [\"dns:gw-b\"]\nallow-client-read-only = [\"gw-a\"]");
    let source = openshell_driver_bridge::cli::policy::source(ps.argv.clone(), ps.file.clone());
    let error = (source.load)().expect_err("the invalid file was accepted");
    let at = format!("{}:8: key `allow-client-read-only`", ps.file.display());
    assert!(error.contains(&at), "{error}");
    assert!(wait_until(|| site.relay.forwarder.metrics().policy_reloads("refused") >= 1).await);

    // Still in force: gw-a full (its watch open, it may create), gw-b read-only.
    sees_created(&shim_a.socket, &mut watch_a, "still-a").await;
    let shim_b = site.shim("gw-b", site.client("gw-b"));
    let mut client_b = driver_client(&shim_b.socket).await.unwrap();
    let refused = client_b.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("by-b")) }).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(site.relay.forwarder.metrics().policy_reloads("ok"), 0);

    // An unknown key is refused the same way.
    ps.rewrite("allow-clients = [\"dns:gw-b\"]");
    let error = (source.load)().expect_err("the invalid file was accepted");
    assert!(error.contains(&format!("{}:7: key `allow-clients`", ps.file.display())), "{error}");
}

async fn wait_until(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..50 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

// ---------------------------------------------------------------------------
// Intermediate CAs

/// A root (the only certificate of `--ca`), an intermediate, and leaves
/// issued by it, written with the intermediate after the leaf.
struct IntermediatePki {
    intermediate: Ca,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn intermediate_pki(dir: &Path) -> IntermediatePki {
    std::fs::create_dir_all(dir).unwrap();
    let root = Ca::root("enterprise root").unwrap();
    let intermediate = root.intermediate("enterprise issuing CA").unwrap();
    let ca = dir.join("root.pem");
    pki::write_pem(&ca, &root.cert_pem(), false).unwrap();
    let write = |name: &str, spec: &LeafSpec| {
        let mut leaf = intermediate.issue(spec).unwrap();
        leaf.cert_pem.push_str(&intermediate.cert_pem());
        write_leaf(dir, name, &leaf)
    };
    let server = write("server", &LeafSpec::server(&["localhost", "127.0.0.1"]));
    let client = write("client", &LeafSpec::client(GATEWAY_ID));
    IntermediatePki { intermediate, ca, server, client }
}

/// Driver, relay and shim over `pki`; the relay also loads `crls`.
async fn intermediate_chain(
    dir: &Path,
    pki: &IntermediatePki,
    crls: Vec<PathBuf>,
) -> (RunningRelay, RunningShim, Shutdown) {
    let shutdown = Shutdown::new();
    let driver_socket = dir.join("driver/driver.sock");
    openshell_driver_bridge::demo::serve(
        &driver_socket,
        openshell_driver_bridge::demo::driver::DemoDriver::with_options(Default::default()),
        shutdown.clone(),
    )
    .unwrap();
    let unused = TestPki::new(&dir.join("unused"));
    let mut relay_cfg = relay_config(&unused, DriverTarget::Unix(driver_socket));
    relay_cfg.tls = common::files(&pki.ca, &pki.server);
    relay_cfg.tls.crls = crls;
    let relay = relay::start(relay_cfg, shutdown.clone()).await.unwrap();
    let mut shim_cfg = shim_config(&unused, &dir.join("shim/s.sock"), relay.local_addr);
    shim_cfg.tls = common::files(&pki.ca, &pki.client);
    let shim = shim::start(shim_cfg, shutdown.clone()).unwrap();
    (relay, shim, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_with_an_intermediate_work_both_ways_with_only_the_root_in_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = intermediate_pki(&dir.path().join("pki"));
    // The relay watches a CRL of the intermediate, listing nobody yet.
    let crl = dir.path().join("pki/issuing.crl");
    pki::write_pem(&crl, &pki.intermediate.crl(&[], 1, in_a_week()).unwrap(), false).unwrap();
    let (relay, shim, shutdown) = intermediate_chain(dir.path(), &pki, vec![crl.clone()]).await;
    let mut client = driver_client(&shim.socket).await.unwrap();
    let caps = client.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, "demo");

    // The CRL of the intermediate (known only from the client's chain) applies.
    let tls = common::files(&pki.ca, &pki.client);
    assert_eq!(handshake_verdict(relay.local_addr, &tls).await, "ok");
    let leaf = leaf_der(&pki.client.0);
    pki::write_pem(&crl, &pki.intermediate.crl(&[&leaf], 2, in_a_week()).unwrap(), false).unwrap();
    wait_for_verdict(relay.local_addr, &tls, "revoked").await;
    shutdown.stop_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_init_intermediate_writes_a_chain_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let mut init = common::process::Bridge::spawn(
        "certs",
        &["certs".into(), "init".into(), "--intermediate".into(), "--out".into(), out.display().to_string()],
        &[],
    );
    assert_eq!(init.wait_exit(Duration::from_secs(30)).await, Some(0), "{}", init.output());
    for name in ["ca.pem", "intermediate.pem", "server.pem", "client.pem", "server-key.pem", "client-key.pem"] {
        assert!(out.join(name).exists(), "{name} missing");
    }
    assert_eq!(std::fs::read_to_string(out.join("server.pem")).unwrap().matches("BEGIN CERTIFICATE").count(), 2);
    let shutdown = Shutdown::new();
    let unused = TestPki::new(&dir.path().join("unused"));
    let driver_socket = dir.path().join("driver/driver.sock");
    openshell_driver_bridge::demo::serve(
        &driver_socket,
        openshell_driver_bridge::demo::driver::DemoDriver::with_options(Default::default()),
        shutdown.clone(),
    )
    .unwrap();
    let mut relay_cfg = relay_config(&unused, DriverTarget::Unix(driver_socket));
    relay_cfg.tls = common::files(&out.join("ca.pem"), &(out.join("server.pem"), out.join("server-key.pem")));
    let relay = relay::start(relay_cfg, shutdown.clone()).await.unwrap();
    let mut shim_cfg = shim_config(&unused, &dir.path().join("shim/s.sock"), relay.local_addr);
    shim_cfg.tls = common::files(&out.join("ca.pem"), &(out.join("client.pem"), out.join("client-key.pem")));
    let shim = shim::start(shim_cfg, shutdown.clone()).unwrap();
    let mut client = driver_client(&shim.socket).await.unwrap();
    client.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
    shutdown.stop_now();
}

/// `check` run as the binary: its output and exit status.
async fn check(args: Vec<String>) -> (Option<i32>, String) {
    let mut bridge = common::process::Bridge::spawn("check", &args, &[]);
    let code = bridge.wait_exit(Duration::from_secs(60)).await;
    bridge.wait_for_log(&["check: "], Duration::from_secs(2)).await;
    (code, bridge.output())
}

fn shim_check_args(dir: &Path, port: u16, ca: &Path, identity: &(PathBuf, PathBuf)) -> Vec<String> {
    let mut args: Vec<String> = ["check", "shim", "--server-name", "localhost"].iter().map(|s| s.to_string()).collect();
    args.extend(["--socket".into(), dir.join("check-shim/compute-driver.sock").display().to_string()]);
    args.extend(["--upstream".into(), format!("https://127.0.0.1:{port}")]);
    args.extend(common::process::tls_args(ca, identity));
    args
}

fn step_line<'a>(output: &'a str, step: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.starts_with("  ") && line.split_whitespace().nth(1) == Some(step))
        .unwrap_or_else(|| panic!("no line for step {step}:\n{output}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_chain_and_names_a_missing_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = intermediate_pki(&dir.path().join("pki"));
    let (relay, _shim, shutdown) = intermediate_chain(dir.path(), &pki, vec![]).await;
    let port = relay.local_addr.port();

    // Whole chains: every step passes, and the chains are shown.
    let (code, output) = check(shim_check_args(dir.path(), port, &pki.ca, &pki.client)).await;
    assert_eq!(code, Some(0), "{output}");
    let chain = step_line(&output, "chain");
    assert!(
        chain.contains("CN=openshell-gateway <- CN=enterprise issuing CA <- CN=enterprise root (in --ca)"),
        "{chain}"
    );
    let handshake = step_line(&output, "tls-handshake");
    assert!(handshake.contains("<- CN=enterprise issuing CA <- CN=enterprise root (in --ca)"), "{handshake}");

    // Our own --cert without its intermediate: the chain step names it.
    let leaf_only = dir.path().join("pki/client-leaf-only.pem");
    let full = std::fs::read_to_string(&pki.client.0).unwrap();
    let first_end = full.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    pki::write_pem(&leaf_only, &full[..first_end], false).unwrap();
    let (_, output) = check(shim_check_args(dir.path(), port, &pki.ca, &(leaf_only, pki.client.1.clone()))).await;
    let chain = step_line(&output, "chain");
    assert!(chain.contains("WARN") && chain.contains("missing intermediate is CN=enterprise issuing CA"), "{output}");

    // The relay sends its leaf without the intermediate: the handshake step names it.
    let full = std::fs::read_to_string(&pki.server.0).unwrap();
    let first_end = full.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    pki::write_pem(&pki.server.0, &full[..first_end], false).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (code, output) = check(shim_check_args(dir.path(), port, &pki.ca, &pki.client)).await;
    assert_eq!(code, Some(1), "{output}");
    let handshake = step_line(&output, "tls-handshake");
    assert!(handshake.contains("FAIL") && handshake.contains("CN=enterprise issuing CA (missing)"), "{output}");
    assert!(output.contains("a missing intermediate CA"), "{output}");
    shutdown.stop_now();
}

// ---------------------------------------------------------------------------
// The drills as an operator runs them: processes, a --config file, SIGHUP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_policy_and_a_new_crl_to_a_running_relay_process() {
    use common::process::{field, tls_args, Bridge};
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let crl = dir.path().join("pki/ca.crl");
    write_crl(&pki.ca, &crl, &[], 1, in_a_week());
    let driver_socket = dir.path().join("driver/driver.sock");
    let driver =
        Bridge::spawn("driver", &["demo-driver".into(), "--socket".into(), driver_socket.display().to_string()], &[]);
    driver.expect_log(&["demo driver serving"]).await;
    // Only SIGHUP reloads here: the files are checked once an hour.
    let config = dir.path().join("relay.toml");
    let write_config = |clients: &str| {
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndriver-socket = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\ncrl = [\"{}\"]\nreload-interval = \"1h\"\nallow-client = [{clients}]\n",
            driver_socket.display(),
            pki.ca_file.display(),
            pki.server.0.display(),
            pki.server.1.display(),
            crl.display()
        );
        pki::write_pem(&config, &text, false).unwrap();
    };
    write_config(&format!("\"dns:{GATEWAY_ID}\", \"dns:gw-b\""));
    let relay = Bridge::spawn("relay", &["relay".into(), "--config".into(), config.display().to_string()], &[]);
    let line = relay.expect_log(&["relay serving"]).await;
    let relay_addr = field(&line, "listen=").unwrap();
    assert!(relay.find_log(&["CRL in use", "issuer CN=bridge test CA", "0 revoked"]).is_some(), "{}", relay.output());

    let gw_b = pki.issue("gw-b", &LeafSpec::client("gw-b"));
    let mut shims = Vec::new();
    for (name, identity) in [("gateway", &pki.client), ("gw-b", &gw_b)] {
        let socket = dir.path().join(format!("{name}/s.sock"));
        let mut args: Vec<String> = vec![
            "shim".into(),
            "--socket".into(),
            socket.display().to_string(),
            "--upstream".into(),
            format!("https://{relay_addr}"),
            "--server-name".into(),
            "localhost".into(),
            "--connect-wait".into(),
            "2s".into(),
        ];
        args.extend(tls_args(&pki.ca_file, identity));
        let shim = Bridge::spawn(name, &args, &[]);
        shim.expect_log(&["shim serving"]).await;
        shims.push((socket, shim));
    }
    let mut watch_gw = open_watch(&shims[0].0).await;
    let mut watch_b = open_watch(&shims[1].0).await;
    sees_created(&shims[0].0, &mut watch_gw, "one").await;

    // Policy: gw-b removed, SIGHUP.
    write_config(&format!("\"dns:{GATEWAY_ID}\""));
    relay.signal(rustix::process::Signal::HUP);
    let status = watch_end_within(&mut watch_b, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let reloaded = relay.expect_log(&["access policy reloaded", "SIGHUP"]).await;
    assert!(reloaded.contains("removed=dns:gw-b (full)") && reloaded.contains("closed_connections=1"), "{reloaded}");
    sees_created(&shims[0].0, &mut watch_gw, "two").await;

    // The cut-off drill: a CRL listing the gateway's certificate, SIGHUP.
    let written = Instant::now();
    write_crl(&pki.ca, &crl, &[&pki.client.0], 2, in_a_week());
    relay.signal(rustix::process::Signal::HUP);
    let status = watch_end_within(&mut watch_gw, Duration::from_secs(10)).await;
    eprintln!(
        "revocation drill (processes, SIGHUP): CRL written -> the gateway's watch ended in {} ms",
        written.elapsed().as_millis()
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("client certificate revoked"), "{}", status.message());
    relay.expect_log(&["client certificate revoked by the reloaded CRL", &format!("client=dns:{GATEWAY_ID}")]).await;
    relay.expect_log(&["CRL in use", "1 revoked"]).await;
    let mut client = driver_client(&shims[0].0).await.unwrap();
    let refused = client.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    relay.expect_log(&["TLS handshake refused", "revoked"]).await;
    if std::env::var_os("SHOW_LOG").is_some() {
        eprintln!("{}", relay.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_the_crl_files() {
    let site = Site::start(|_, _, _| {}).await;
    let port = site.relay.local_addr.port();
    let mut args = shim_check_args(site.dir.path(), port, &site.pki.ca_file, &site.pki.client);
    args.extend(["--crl".into(), site.crl.display().to_string()]);
    let (_, output) = check(args.clone()).await;
    let files = step_line(&output, "files");
    assert!(files.contains("OK") && files.contains("ca.crl (CRL of issuer CN=bridge test CA, 0 revoked"), "{output}");

    let garbage = site.dir.path().join("pki/garbage.crl");
    std::fs::write(&garbage, "<html>not found</html>").unwrap();
    args.extend(["--crl".into(), garbage.display().to_string()]);
    let (code, output) = check(args).await;
    assert_eq!(code, Some(1), "{output}");
    let files = step_line(&output, "files");
    assert!(files.contains("FAIL") && files.contains("garbage.crl: the file does not parse"), "{output}");
}
