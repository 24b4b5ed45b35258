//! Egress through an HTTP CONNECT proxy, with a real proxy: Debian's
//! tinyproxy, started per test on a free loopback port from a generated
//! configuration (`common/tinyproxy.rs`), plain or behind a TLS front (an
//! `https://` proxy). The shim's mTLS runs end to end through the tunnel.
//!
//! Without tinyproxy installed the scenarios skip loudly;
//! `OPENSHELL_BRIDGE_REQUIRE_INTEROP=1` (set in CI, which installs it)
//! makes that a failure.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::ProcessChain;
use common::tinyproxy::{Tinyproxy, TlsFront};
use common::*;
use openshell_driver_bridge::connect::proxy::ProxySetting;
use openshell_driver_bridge::grpc::client::driver_client;
use openshell_driver_bridge::proto::compute::*;
use openshell_driver_bridge::role::relay::{self, DriverTarget};
use openshell_driver_bridge::role::shim::{self, ShimConfig, Upstream};
use openshell_driver_bridge::shutdown::Shutdown;
use tonic::Code;

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn via(url: &str) -> ProxySetting {
    ProxySetting::from_flag(url).unwrap()
}

async fn chain_through(setting: ProxySetting) -> (Chain, openshell_driver_bridge::demo::driver::DemoDriver) {
    chain_with(|shim| shim.proxy = setting).await
}

async fn chain_with(
    tweak_shim: impl FnOnce(&mut ShimConfig),
) -> (Chain, openshell_driver_bridge::demo::driver::DemoDriver) {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, tweak_shim).await;
    let driver = openshell_driver_bridge::demo::driver::DemoDriver::new();
    openshell_driver_bridge::demo::serve(&chain.driver_socket, driver.clone(), chain.shutdown.clone()).unwrap();
    (chain, driver)
}

/// Every RPC of the contract through the shim at `socket`: the demo's
/// scripted session (each unary call, a watch and its events), then the
/// workspace calls it does not make.
async fn every_rpc(socket: &std::path::Path) {
    let steps = openshell_driver_bridge::demo::smoke::run(socket).await;
    assert!(openshell_driver_bridge::demo::smoke::passed(&steps), "{steps:#?}");
    let mut gateway = driver_client(socket).await.unwrap();
    gateway.ensure_workspace(EnsureWorkspaceRequest { workspace: "ws".into() }).await.unwrap();
    gateway.delete_workspace(DeleteWorkspaceRequest { workspace: "ws".into() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_and_a_watch_go_through_the_proxy_tunnel() {
    let Some(proxy) = Tinyproxy::start("every_rpc_and_a_watch_go_through_the_proxy_tunnel", "") else { return };
    let (chain, _driver) = chain_through(via(&proxy.url(""))).await;
    every_rpc(&chain.shim_socket).await;
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
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("proxy = \"https://bob:***@proxy.corp:3128\"  # env"), "{out}");
    assert!(!out.contains("hunter22"), "{out}");

    let (code, out) = bridge(&shim, &[("OPENSHELL_BRIDGE_PROXY", "socks5://bob:hunter22@proxy.corp:1080")]).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--proxy: only the http:// and https:// schemes are supported"), "{out}");
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
    check_through_with(chain, &["--proxy", proxy]).await
}

async fn check_through_with(chain: &Chain, proxy_args: &[&str]) -> (Option<i32>, String) {
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
    ];
    let args: Vec<&str> = args.iter().chain(proxy_args).copied().collect();
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

// ---------------------------------------------------------------------------
// https:// proxies: TLS to the proxy itself, then CONNECT inside it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_proxy_verified_with_proxy_ca_carries_every_rpc_and_a_watch() {
    let Some(proxy) = Tinyproxy::start("an_https_proxy_verified_with_proxy_ca", "BasicAuth alice s3cret") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let front = TlsFront::start(dir.path(), proxy.port).await;
    let url = front.url("alice:s3cret@");
    let ca = front.ca_file.clone();
    let (chain, _driver) = chain_with(|shim| {
        shim.proxy = via(&url);
        shim.proxy_ca = Some(ca);
    })
    .await;
    every_rpc(&chain.shim_socket).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("over-tls-proxy")) }).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap();
    assert!(first.is_some(), "the watch ended at once");
    // TLS to the proxy, then CONNECT (with the credentials) inside it.
    assert!(front.handshakes() >= 1, "no TLS handshake with the proxy's front");
    assert!(proxy.connects_to(chain.relay.local_addr) >= 1, "no CONNECT in the proxy's log:\n{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_proxy_whose_certificate_does_not_chain_to_proxy_ca_is_named_and_sent_nothing() {
    let Some(proxy) = Tinyproxy::start("an_https_proxy_whose_certificate_does_not_chain", "") else { return };
    let dir = tempfile::tempdir().unwrap();
    let front = TlsFront::start(dir.path(), proxy.port).await;
    let url = front.url("");
    // The bridge's own CA: not the one that issued the proxy's certificate.
    let (chain, _driver) = chain_with(|shim| {
        shim.proxy = via(&url);
        shim.proxy_ca = Some(shim.tls.ca.clone());
    })
    .await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(message.contains(&format!("TLS to proxy {url} failed: ")), "{message}");
    assert!(message.contains("--proxy-ca FILE"), "{message}");
    assert_eq!(front.handshakes(), 0);
    assert_eq!(proxy.connects_to(chain.relay.local_addr), 0, "CONNECT sent to an unverified proxy:\n{}", proxy.log());
}

/// Without `--proxy-ca`, the system's roots: here `SSL_CERT_FILE`, which
/// the system's store honours, pointed at the proxy's CA, then at another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_proxy_is_verified_against_the_system_roots_without_proxy_ca() {
    let Some(proxy) = Tinyproxy::start("an_https_proxy_is_verified_against_the_system_roots", "") else { return };
    let dir = tempfile::tempdir().unwrap();
    let front = TlsFront::start(dir.path(), proxy.port).await;
    let url = front.url("");
    let ca = front.ca_file.display().to_string();
    let chain = ProcessChain::start(&[], &["--proxy", &url], &[("SSL_CERT_FILE", &ca)]).await;
    chain.shim.expect_log(&["shim serving", "proxy_tls=verified against the system's roots"]).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let caps = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, "demo");
    assert!(front.handshakes() >= 1);

    let other = tempfile::tempdir().unwrap();
    let other_ca = TestPki::new(other.path()).ca_file.display().to_string();
    let chain = ProcessChain::start(&[], &["--proxy", &url], &[("SSL_CERT_FILE", &other_ca)]).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    let status = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&format!("TLS to proxy {url} failed: ")), "{}", status.message());
    assert!(status.message().contains("system's roots, or to --proxy-ca FILE"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shim_walks_the_https_proxy_steps() {
    let Some(proxy) = Tinyproxy::start("check_shim_walks_the_https_proxy_steps", "") else { return };
    let (chain, _driver) = chain_through(ProxySetting::Off).await;
    let front = TlsFront::start(chain.dir.path(), proxy.port).await;
    let url = front.url("");
    let port = chain.relay.local_addr.port();

    let ca = front.ca_file.display().to_string();
    let (code, out) = check_through_with(&chain, &["--proxy", &url, "--proxy-ca", &ca]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("TLS to the proxy verified against --proxy-ca {ca}")), "{out}");
    assert!(out.contains(&format!("proxy-tls         TLS with proxy {url} in ")), "{out}");
    assert!(out.contains(&format!("proxy-connect     CONNECT 127.0.0.1:{port}: HTTP/1.0 200 ")), "{out}");
    assert!(out.contains("check: 13 passed, 0 failed"), "{out}");

    let wrong = chain.pki.ca_file.display().to_string();
    let (code, out) = check_through_with(&chain, &["--proxy", &url, "--proxy-ca", &wrong]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  proxy-tls") && out.contains(&format!("TLS to proxy {url} failed")), "{out}");
    assert!(out.contains("give its CA with --proxy-ca FILE"), "{out}");
    assert!(out.contains("SKIP  proxy-connect     no TLS connection to the proxy"), "{out}");

    let (code, out) = check_through_with(&chain, &["--proxy", &url, "--proxy-ca", "/nonexistent/proxy-ca.pem"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  proxy") && out.contains("--proxy-ca /nonexistent/proxy-ca.pem"), "{out}");
}

// ---------------------------------------------------------------------------
// Fail-over and keepalive work through the proxy as without it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_over_across_upstreams_works_through_the_proxy() {
    let Some(proxy) = Tinyproxy::start("fail_over_across_upstreams_works_through_the_proxy", "") else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let driver_socket = dir.path().join("driver/driver.sock");
    let shim_socket = dir.path().join("shim/s.sock");
    let (driver_stop, first_stop, second_stop, shim_stop) =
        (Shutdown::new(), Shutdown::new(), Shutdown::new(), Shutdown::new());
    let driver = openshell_driver_bridge::demo::driver::DemoDriver::new();
    openshell_driver_bridge::demo::serve(&driver_socket, driver, driver_stop.clone()).unwrap();
    let first =
        relay::start(relay_config(&pki, DriverTarget::Unix(driver_socket.clone())), first_stop.clone()).await.unwrap();
    let second =
        relay::start(relay_config(&pki, DriverTarget::Unix(driver_socket.clone())), second_stop.clone()).await.unwrap();
    let mut config = shim_config(&pki, &shim_socket, first.local_addr);
    config.upstreams.push(Upstream { host: "127.0.0.1".into(), port: second.local_addr.port() });
    config.proxy = via(&proxy.url(""));
    let _shim = shim::start(config, shim_stop.clone()).unwrap();

    let mut gateway = driver_client(&shim_socket).await.unwrap();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("first")) }).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap();
    assert!(proxy.connects_to(first.local_addr) >= 1, "{}", proxy.log());
    assert_eq!(proxy.connects_to(second.local_addr), 0, "{}", proxy.log());

    // The first relay goes away: the watch ends, the next call fails over.
    first_stop.stop_now();
    let status = tokio::time::timeout(Duration::from_secs(20), watch_end(&mut watch)).await.unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let caps = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, "demo");
    assert!(proxy.connects_to(second.local_addr) >= 1, "no CONNECT to the second upstream:\n{}", proxy.log());
    for stop in [driver_stop, second_stop, shim_stop] {
        stop.stop_now();
    }
}

/// Opens a watch through a shim (keepalive as `tweak` leaves it) behind a
/// proxy that closes tunnels idle for 3 s, waits `idle`, then creates a
/// sandbox: the watch's end status, or None when the event arrived.
async fn idle_watch_through(proxy: &Tinyproxy, idle: Duration, keepalive: bool) -> Option<tonic::Status> {
    let url = proxy.url("");
    let (chain, _driver) = chain_with(|shim| {
        shim.proxy = via(&url);
        if !keepalive {
            shim.settings.dial.keepalive_interval = None;
        }
    })
    .await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("before")) }).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap();
    // Let the first events settle, then say nothing for `idle`.
    while let Ok(next) = tokio::time::timeout(Duration::from_millis(500), watch.message()).await {
        if let Err(status) = next {
            return Some(status);
        }
    }
    if let Ok(next) = tokio::time::timeout(idle, watch.message()).await {
        return Some(next.err().unwrap_or_else(|| tonic::Status::unknown("an event arrived while idle")));
    }
    let mut other = driver_client(&chain.shim_socket).await.unwrap();
    if let Err(status) = other.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("after")) }).await {
        return Some(status);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), watch.message()).await {
            Ok(Ok(Some(event))) if format!("{event:?}").contains("\"after\"") => return None,
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return Some(tonic::Status::ok("ended cleanly")),
            Ok(Err(status)) => return Some(status),
            Err(_) => break,
        }
    }
    Some(tonic::Status::deadline_exceeded("the event created after the idle period did not arrive"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_holds_an_idle_tunnel_open_past_the_proxys_idle_timeout() {
    let Some(proxy) = Tinyproxy::start_with_idle_timeout("keepalive_holds_an_idle_tunnel_open", 3, "") else {
        return;
    };
    // Pings every second (quick_dial) cross the tunnel: 8 s idle is nothing.
    let ended = idle_watch_through(&proxy, Duration::from_secs(8), true).await;
    assert!(ended.is_none(), "the watch ended through a kept-alive tunnel: {ended:?}\n{}", proxy.log());
    // Without them the proxy closes the idle tunnel (the relay pings only
    // every 10 s): the idle timeout is real, and keepalive is what beat it.
    let ended = idle_watch_through(&proxy, Duration::from_secs(8), false).await;
    let status = ended.expect("without keepalive the proxy's idle timeout closes the tunnel");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_notices_a_frozen_proxy_and_the_next_call_takes_a_new_tunnel() {
    let Some(proxy) = Tinyproxy::start("keepalive_notices_a_frozen_proxy", "") else { return };
    let (chain, _driver) = chain_through(via(&proxy.url(""))).await;
    let mut gateway = driver_client(&chain.shim_socket).await.unwrap();
    gateway.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("before")) }).await.unwrap();
    let mut watch = gateway.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap();

    // Frozen: the tunnel stays open and carries nothing. Keepalive (1 s
    // interval, 1 s timeout in quick_dial) must end the watch, not TCP.
    proxy.freeze();
    let frozen = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(20), watch_end(&mut watch)).await.unwrap();
    let noticed = frozen.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("keepalive"), "{}", status.message());
    assert!(noticed < Duration::from_secs(10), "noticed after {noticed:?}");

    proxy.thaw();
    let caps = gateway.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, "demo");
    assert!(proxy.connects_to(chain.relay.local_addr) >= 2, "no new tunnel:\n{}", proxy.log());
}
