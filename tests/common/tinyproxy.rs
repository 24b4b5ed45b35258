//! Debian's tinyproxy as the HTTP CONNECT proxy of the egress scenarios
//! (`tests/proxy.rs`, and the idle watches of `tests/interop.rs`), started
//! per test on a free loopback port from a generated configuration; and a
//! TLS front that makes it an `https://` proxy.
//!
//! Without tinyproxy installed the scenarios skip loudly;
//! `OPENSHELL_BRIDGE_REQUIRE_INTEROP=1` (set in CI, which installs it)
//! makes that a failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A tinyproxy process on loopback, killed when dropped.
pub struct Tinyproxy {
    binary: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Tinyproxy {
    /// Starts tinyproxy with `extra` configuration lines; None (after a
    /// loud skip line) when it is not installed. It closes a tunnel idle
    /// for 60 s.
    pub fn start(test: &str, extra: &str) -> Option<Tinyproxy> {
        Self::start_with_idle_timeout(test, 60, extra)
    }

    /// Like `start`, closing a tunnel idle (no byte either way) for
    /// `idle_secs`, as corporate proxies do.
    pub fn start_with_idle_timeout(test: &str, idle_secs: u32, extra: &str) -> Option<Tinyproxy> {
        let binary = find_tinyproxy(test)?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().port();
        let config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout {idle_secs}\nMaxClients 50\nLogLevel Info\nAllow 127.0.0.1\nLogFile \"{}\"\n{extra}\n",
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
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the proxy without closing anything (SIGSTOP): its tunnels stay
    /// open and carry nothing, as with a proxy host that froze or a path
    /// that silently drops packets.
    pub fn freeze(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Lets a frozen proxy run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let child = self.child.as_ref().expect("tinyproxy runs");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a pid");
        rustix::process::kill_process(pid, signal).expect("signal tinyproxy");
    }

    /// Kills it and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.path().join("tinyproxy.log"));
        self.run();
    }

    pub fn url(&self, credentials: &str) -> String {
        format!("http://{credentials}127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }

    /// How many CONNECTs to `target` the proxy logged.
    pub fn connects_to(&self, target: SocketAddr) -> usize {
        self.log().matches(&format!("CONNECT 127.0.0.1:{}", target.port())).count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        // SIGKILL ends a frozen proxy too.
        self.kill();
    }
}

/// TLS in front of a proxy: what an `https://` proxy is. Its certificate
/// (for localhost and 127.0.0.1) comes from a CA of its own, written to
/// `ca_file`; it speaks TLS 1.2 only, as many corporate proxies still do.
/// Every connection is carried to the proxy behind it once its handshake
/// is done.
pub struct TlsFront {
    pub addr: SocketAddr,
    /// The CA that issued the front's certificate (the `--proxy-ca`).
    pub ca_file: PathBuf,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    _pki: super::TestPki,
}

impl TlsFront {
    pub async fn start(dir: &Path, behind: u16) -> TlsFront {
        let pki = super::TestPki::new(&dir.join("proxy-pki"));
        let certs = openshell_driver_bridge::tls::material::load_certs("--cert", &pki.server.0).unwrap();
        let key = openshell_driver_bridge::tls::material::load_key("--key", &pki.server.1, false).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(openshell_driver_bridge::tls::config::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut proxy) = tokio::net::TcpStream::connect(("127.0.0.1", behind)).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut proxy).await;
                });
            }
        });
        TlsFront { addr, ca_file: pki.ca_file.clone(), handshakes, task, _pki: pki }
    }

    /// `https://[credentials]127.0.0.1:PORT`.
    pub fn url(&self, credentials: &str) -> String {
        format!("https://{credentials}127.0.0.1:{}", self.addr.port())
    }

    /// TLS handshakes completed with a client.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
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
