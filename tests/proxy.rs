//! Egress through an HTTP CONNECT proxy, with a real proxy: Debian's
//! tinyproxy, started per test on a free loopback port from a generated
//! configuration. The shim's mTLS runs end to end through the tunnel.
//!
//! Without tinyproxy installed the scenarios skip loudly;
//! `OPENSHELL_BRIDGE_REQUIRE_INTEROP=1` (set in CI, which installs it)
//! makes that a failure.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use openshell_driver_bridge::connect::proxy::ProxySetting;
use openshell_driver_bridge::grpc::client::driver_client;
use openshell_driver_bridge::proto::compute::*;
use tonic::Code;

/// A tinyproxy process on loopback, killed when dropped.
struct Tinyproxy {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Tinyproxy {
    /// Starts tinyproxy with `extra` configuration lines; None (after a
    /// loud skip line) when it is not installed.
    fn start(test: &str, extra: &str) -> Option<Tinyproxy> {
        let binary = find_tinyproxy(test)?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().port();
        let config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 50\nLogLevel Info\nAllow 127.0.0.1\nLogFile \"{}\"\n{extra}\n",
            dir.path().join("tinyproxy.log").display()
        );
        std::fs::write(dir.path().join("tinyproxy.conf"), config).unwrap();
        let mut proxy = Tinyproxy { binary, dir, port, child: None };
        proxy.run();
        Some(proxy)
    }

    fn run(&mut self) {
        let child = Command::new(&self.binary)
            .arg("-d")
            .arg("-c")
            .arg(self.dir.path().join("tinyproxy.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy starts");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("tinyproxy did not listen on 127.0.0.1:{} within 5 s; log:\n{}", self.port, self.log());
    }

    /// Kills the proxy at once: every tunnel through it closes.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same port.
    fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.path().join("tinyproxy.log"));
        self.run();
    }

    fn url(&self, credentials: &str) -> String {
        format!("http://{credentials}127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }

    /// How many CONNECTs to `target` the proxy logged.
    fn connects_to(&self, target: SocketAddr) -> usize {
        self.log().matches(&format!("CONNECT 127.0.0.1:{}", target.port())).count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_tinyproxy(test: &str) -> Option<PathBuf> {
    let found = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy", "/usr/local/bin/tinyproxy"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf);
    if found.is_none() {
        let required = std::env::var("OPENSHELL_BRIDGE_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
        assert!(!required, "{test} needs tinyproxy (apt-get install tinyproxy); OPENSHELL_BRIDGE_REQUIRE_INTEROP=1");
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "\n*** SKIPPED {test}: tinyproxy is not installed (apt-get install tinyproxy; \
                 OPENSHELL_BRIDGE_REQUIRE_INTEROP=1 makes this a failure) ***\n"
            )
            .as_bytes(),
        );
    }
    found
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn via(url: &str) -> ProxySetting {
    ProxySetting::from_flag(url).unwrap()
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

async fn chain_through(setting: ProxySetting) -> (Chain, openshell_driver_bridge::demo::driver::DemoDriver) {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, |shim| shim.proxy = setting).await;
    let driver = openshell_driver_bridge::demo::driver::DemoDriver::new();
    openshell_driver_bridge::demo::serve(&chain.driver_socket, driver.clone(), chain.shutdown.clone()).unwrap();
    (chain, driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_and_a_watch_go_through_the_proxy_tunnel() {
    let Some(proxy) = Tinyproxy::start("a_unary_call_and_a_watch_go_through_the_proxy_tunnel", "") else { return };
    let (chain, _driver) = chain_through(via(&proxy.url(""))).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let caps = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, "demo");
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("tunnelled")) }).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap();
    assert!(first.is_some(), "the watch ended at once");
    // The shim went through the proxy, not around it.
    assert!(proxy.connects_to(chain.relay.local_addr) >= 1, "no CONNECT in the proxy's log:\n{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_excludes_the_upstream_so_calls_work_with_the_proxy_stopped() {
    let Some(mut proxy) = Tinyproxy::start("no_proxy_excludes_the_upstream", "") else { return };
    let url = proxy.url("");
    proxy.kill();
    let env = |vars: &[(&str, &str)]| {
        ProxySetting::Environment(vars.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())
    };
    let setting = env(&[("HTTPS_PROXY", &url), ("no_proxy", "example.org, 127.0.0.0/8")]);
    let (chain, _driver) = chain_through(setting).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let caps = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, "demo");

    // The same environment without the exclusion uses the (stopped) proxy.
    let (chain, _driver) = chain_through(env(&[("HTTPS_PROXY", &url), ("no_proxy", "example.org")])).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&format!("proxy {url} unreachable")), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_are_named_and_the_password_never_shown() {
    let test = "wrong_or_missing_credentials_are_named";
    let Some(proxy) = Tinyproxy::start(test, "BasicAuth alice s3cret") else { return };
    let (chain, _driver) = chain_through(via(&proxy.url("alice:wr0ng@"))).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(message.contains("refused the credentials of user alice"), "{message}");
    // tinyproxy 1.11 answers wrong credentials with 401, not 407: both count.
    assert!(message.contains("(HTTP/1.0 401 ") || message.contains("(HTTP/1.0 407 "), "{message}");
    assert!(message.contains(&format!("upstream 127.0.0.1:{}", chain.relay.local_addr.port())), "{message}");
    assert!(!message.contains("wr0ng"), "password shown: {message}");
    assert!(!chain.shim.forwarder.dialer().status().last_error.unwrap_or_default().contains("wr0ng"));

    let (chain, _driver) = chain_through(via(&proxy.url(""))).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert!(status.message().contains("wants credentials"), "{}", status.message());
    assert!(status.message().contains("407 Proxy Authentication Required"), "{}", status.message());

    // The right ones open the tunnel.
    let (chain, _driver) = chain_through(via(&proxy.url("alice:s3cret@"))).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_denies_the_port_is_named_with_its_status_line() {
    // CONNECT only to port 1: the relay's port is refused with 403.
    let Some(proxy) = Tinyproxy::start("a_proxy_that_denies_the_port", "ConnectPort 1") else { return };
    let (chain, _driver) = chain_through(via(&proxy.url(""))).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let expected =
        format!("proxy {} refused the tunnel to 127.0.0.1:{}: HTTP/1.", proxy.url(""), chain.relay.local_addr.port());
    assert!(status.message().contains(&expected), "{}", status.message());
    assert!(status.message().contains(" 403 "), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_is_down_is_named_connection_refused() {
    let url = format!("http://127.0.0.1:{}", free_port().port());
    let (chain, _driver) = chain_through(via(&url)).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(message.contains(&format!("proxy {url} unreachable: connection refused")), "{message}");
    assert!(message.contains(&format!("upstream 127.0.0.1:{}", chain.relay.local_addr.port())), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restart_ends_a_watch_unavailable_and_the_next_call_takes_a_new_tunnel() {
    let Some(mut proxy) = Tinyproxy::start("a_proxy_restart_ends_a_watch", "") else { return };
    let (chain, _driver) = chain_through(via(&proxy.url(""))).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("before")) }).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap();

    proxy.restart();
    let status = tokio::time::timeout(Duration::from_secs(20), watch_end(&mut watch)).await.unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("upstream"), "{}", status.message());

    let caps = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, "demo");
    assert!(proxy.connects_to(chain.relay.local_addr) >= 1, "the new proxy saw no CONNECT:\n{}", proxy.log());
}

async fn bridge(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut bridge = common::process::Bridge::spawn("proxy-cli", &args, env);
    let code = bridge.wait_exit(Duration::from_secs(60)).await;
    (code, bridge.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_config_names_each_upstreams_proxy_and_never_the_password() {
    let shim = [
        "shim",
        "--socket",
        "/tmp/never-bound/s.sock",
        "--upstream",
        "https://relay.corp.example:7443,https://10.1.2.3:7443",
        "--ca",
        "ca.pem",
        "--cert",
        "c.pem",
        "--key",
        "k.pem",
        "--print-config",
    ];
    let (code, out) = bridge(
        &shim,
        &[("https_proxy", "http://alice:hunter22@proxy.corp:3128"), ("NO_PROXY", "10.0.0.0/8"), ("grpc_proxy", "")],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "# proxy: relay.corp.example:7443 via proxy http://alice:***@proxy.corp:3128 (https_proxy); \
             10.1.2.3:7443 direct (NO_PROXY entry \"10.0.0.0/8\" matches; https_proxy not used)"
        ),
        "{out}"
    );
    assert!(!out.contains("hunter22"), "{out}");

    let with_flag: Vec<&str> = shim.iter().copied().chain(["--proxy", "http://bob:hunter22@proxy.corp:3128"]).collect();
    let (code, out) = bridge(&with_flag, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("proxy = \"http://bob:***@proxy.corp:3128\"  # flag"), "{out}");
    assert!(!out.contains("hunter22"), "{out}");

    let (code, out) = bridge(&shim, &[("OPENSHELL_BRIDGE_PROXY", "https://bob:hunter22@proxy.corp:3128")]).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--proxy: https:// to the proxy is not supported yet"), "{out}");
    assert!(!out.contains("hunter22"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_accepts_but_never_answers_connect_is_named_after_the_connect_timeout() {
    // Takes connections, reads, and says nothing (a proxy stuck on its own upstream).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let (chain, _driver) = chain_through(via(&url)).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let expected =
        format!("proxy {url} did not answer CONNECT 127.0.0.1:{} within 2000 ms", chain.relay.local_addr.port());
    assert!(status.message().contains(&expected), "{}", status.message());
    held.abort();
}

/// `check shim` against the chain's relay through `proxy`.
async fn check_through(chain: &Chain, proxy: &str) -> (Option<i32>, String) {
    let socket = chain.dir.path().join("check/s.sock").display().to_string();
    let upstream = format!("https://127.0.0.1:{}", chain.relay.local_addr.port());
    let files = chain.pki.client_tls();
    let (ca, cert, key) =
        (files.ca.display().to_string(), files.cert.display().to_string(), files.key.display().to_string());
    let args = [
        "check",
        "shim",
        "--server-name",
        "localhost",
        "--socket",
        &socket,
        "--upstream",
        &upstream,
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--proxy",
        proxy,
    ];
    bridge(&args, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shim_walks_the_proxy_steps() {
    let Some(proxy) = Tinyproxy::start("check_shim_walks_the_proxy_steps", "BasicAuth alice s3cret") else { return };
    let (chain, _driver) = chain_through(ProxySetting::Off).await;
    let port = chain.relay.local_addr.port();

    let (code, out) = check_through(&chain, &proxy.url("alice:s3cret@")).await;
    assert_eq!(code, Some(0), "{out}");
    let via = format!("127.0.0.1:{port} via proxy {} (--proxy)", proxy.url("alice:***@"));
    assert!(out.contains(&via), "{out}");
    assert!(out.contains(&format!("proxy-connect     CONNECT 127.0.0.1:{port}: HTTP/1.0 200 ")), "{out}");
    assert!(out.contains("check: 12 passed, 0 failed"), "{out}");
    assert!(!out.contains("s3cret"), "{out}");

    let (code, out) = check_through(&chain, &proxy.url("alice:wr0ng@")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  proxy-connect") && out.contains("refused the credentials of user alice"), "{out}");
    assert!(out.contains("SKIP  tls-handshake     the proxy opened no tunnel"), "{out}");
    assert!(!out.contains("wr0ng"), "{out}");
}
