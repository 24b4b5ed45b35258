//! Drives the relay role's frame relay with arbitrary bytes from both
//! sides: the fuzz target `frame_relay` and the test
//! `tests/fuzz_regressions.rs` (which replays `fuzz/regressions/frame_relay/`
//! and `fuzz/seeds/frame_relay/` under `cargo test`) both call `run`.
//!
//! One relay per process, started once with throw-away certificates
//! (`openshell_driver_bridge::role::relay::start`, its public API; no hook), in
//! front of a scripted driver on a temporary Unix socket. Each input is
//! split by its first two bytes into what a client sends after a valid
//! preface (over mTLS, as a shim would) and what the driver sends after
//! its opening SETTINGS, on every connection the relay makes to it.
//!
//! Properties:
//! - nothing panics, in any task of the relay (a panic hook records it);
//! - the relay ends the client's connection once the client has sent
//!   everything and closed its side (within 5 s);
//! - every connection the relay made to the driver ends with it (within
//!   5 s): nothing the relay opened outlives the client it was for.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use openshell_driver_bridge::admit::policy::{Access, Rule};
use openshell_driver_bridge::connect::dialer::DialSettings;
use openshell_driver_bridge::connect::tls::TlsConnector;
use openshell_driver_bridge::pipeline::ServerSettings;
use openshell_driver_bridge::pki::{self, Ca, LeafSpec};
use openshell_driver_bridge::role::relay::{self, DriverTarget, RelayConfig};
use openshell_driver_bridge::role::RoleSettings;
use openshell_driver_bridge::shutdown::Shutdown;
use openshell_driver_bridge::tls::config::{client_config, TlsFiles};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: how the scripted driver opens (the relay's
/// dialer waits for it before it counts the driver as answering).
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// How long any one step may take before the property counts as broken.
const BOUND: Duration = Duration::from_secs(5);
/// A side that sent nothing for this long has said what it had to say.
const IDLE: Duration = Duration::from_millis(20);

/// Reads what `io` sends until it is quiet for `IDLE` (or ends), at most
/// `limit` in all.
async fn read_until_quiet(io: &mut (impl tokio::io::AsyncRead + Unpin), limit: Duration) {
    let mut sink = [0u8; 16 * 1024];
    let until = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(IDLE, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

struct World {
    runtime: tokio::runtime::Runtime,
    relay: SocketAddr,
    connector: TlsConnector,
    /// What the driver sends after its SETTINGS, for the current input.
    script: Arc<Mutex<Vec<u8>>>,
    /// Driver connections accepted, and ended.
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    _shutdown: Shutdown,
    _dir: tempfile::TempDir,
}

static WORLD: OnceLock<World> = OnceLock::new();
static PANICKED: AtomicBool = AtomicBool::new(false);

fn world() -> &'static World {
    WORLD.get_or_init(|| {
        // libFuzzer's C++ `main` does not ignore SIGPIPE as a Rust `main`
        // (the bridge's own) does: a write to a socket the other side
        // closed would kill the process instead of failing.
        // SAFETY: setting a signal's disposition to SIG_IGN, once, before
        // any thread of ours starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            previous(info);
        }));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);
        let ca = Ca::new("frame relay fuzz CA").expect("CA");
        pki::write_pem(&path("ca.pem"), &ca.cert_pem(), false).expect("write CA");
        let write_leaf = |name: &str, spec: &LeafSpec| -> (PathBuf, PathBuf) {
            let leaf = ca.issue(spec).expect("leaf");
            let (cert, key) = (path(&format!("{name}.pem")), path(&format!("{name}-key.pem")));
            pki::write_pem(&cert, &leaf.cert_pem, false).expect("write cert");
            pki::write_pem(&key, &leaf.key_pem, true).expect("write key");
            (cert, key)
        };
        let server = write_leaf("server", &LeafSpec::server(&["localhost"]));
        let client = write_leaf("client", &LeafSpec::client("openshell-gateway"));
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let driver_socket = path("driver.sock");
        let script: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (accepted, ended): (Arc<AtomicUsize>, Arc<AtomicUsize>) = (Arc::default(), Arc::default());
        let shutdown = Shutdown::new();
        let relay = runtime.block_on(async {
            let listener = tokio::net::UnixListener::bind(&driver_socket).expect("driver socket");
            tokio::spawn(driver(listener, script.clone(), accepted.clone(), ended.clone()));
            let settings = RoleSettings {
                dial: DialSettings {
                    connect_wait: Duration::from_secs(1),
                    connect_timeout: Duration::from_secs(1),
                    backoff_initial: Duration::from_millis(10),
                    backoff_max: Duration::from_millis(100),
                    keepalive_interval: None,
                    keepalive_timeout: Duration::from_secs(1),
                },
                server: ServerSettings { keepalive_interval: None, ..ServerSettings::default() },
                drain_timeout: Duration::from_secs(1),
                ..RoleSettings::default()
            };
            let config = RelayConfig {
                listen: "127.0.0.1:0".parse().expect("address"),
                driver: DriverTarget::Unix(driver_socket.clone()),
                unsafe_driver_target: false,
                tls: TlsFiles::new(path("ca.pem"), &server.0, &server.1),
                rules: vec![Rule { pattern: "dns:openshell-gateway".parse().expect("pattern"), access: Access::Full }],
                any_client: None,
                policy_source: None,
                callback: None,
                settings,
            };
            relay::start(config, shutdown.clone()).await.expect("relay starts").local_addr
        });
        let tls = client_config(&TlsFiles::new(path("ca.pem"), &client.0, &client.1), &[]).expect("client TLS");
        let connector = TlsConnector {
            address: relay.to_string(),
            server_name: ServerName::try_from("localhost").expect("name"),
            config: Arc::new(arc_swap::ArcSwap::from_pointee(tls)),
            live: None,
            proxy: None,
        };
        World { runtime, relay, connector, script, accepted, ended, _shutdown: shutdown, _dir: dir }
    })
}

/// The scripted driver: SETTINGS; then, once the relay has sent what it
/// had (its SETTINGS, the client's, the calls), the script; then it reads
/// until the relay closes the connection (or `BOUND` × 2 passes: then the
/// connection is not counted as ended).
async fn driver(
    listener: tokio::net::UnixListener,
    script: Arc<Mutex<Vec<u8>>>,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
) {
    while let Ok((mut stream, _)) = listener.accept().await {
        accepted.fetch_add(1, Ordering::SeqCst);
        let bytes = script.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let ended = ended.clone();
        tokio::spawn(async move {
            let talk = async {
                let mut sink = [0u8; 16 * 1024];
                let mut preface = [0u8; 24];
                if stream.read_exact(&mut preface).await.is_ok() {
                    let _ = stream.write_all(SETTINGS).await;
                    read_until_quiet(&mut stream, Duration::from_millis(500)).await;
                    let _ = stream.write_all(&bytes).await;
                }
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            };
            if tokio::time::timeout(BOUND * 2, talk).await.is_ok() {
                ended.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
}

/// One input: `[split: u16 big-endian][client bytes][driver bytes]`, the
/// split taken modulo the bytes there are.
pub fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let rest = &data[2..];
    let split = usize::from(u16::from_be_bytes([data[0], data[1]])) % (rest.len() + 1);
    let (client, script) = rest.split_at(split);
    let world = world();
    *world.script.lock().unwrap_or_else(|p| p.into_inner()) = script.to_vec();
    world.runtime.block_on(async {
        let before = world.accepted.load(Ordering::SeqCst);
        let mut io = world.connector.connect(BOUND).await.unwrap_or_else(|e| panic!("relay {}: {e}", world.relay));
        // The client's bytes once the relay has dialled the driver (if it
        // does within a second: after strikes it may be backing off).
        let _ = io.write_all(PREFACE).await;
        let dialled = tokio::time::Instant::now() + Duration::from_secs(1);
        while world.accepted.load(Ordering::SeqCst) == before && tokio::time::Instant::now() < dialled {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The relay may close first (a protocol error): writing can fail.
        let _ = tokio::time::timeout(BOUND, async {
            io.write_all(client).await?;
            io.flush().await
        })
        .await;
        read_until_quiet(&mut io, Duration::from_secs(1)).await;
        let _ = tokio::time::timeout(BOUND, io.shutdown()).await;
        let mut sink = [0u8; 16 * 1024];
        let read_all = async { while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {} };
        assert!(
            tokio::time::timeout(BOUND, read_all).await.is_ok(),
            "the relay kept the connection of a client that had left"
        );
        drop(io);
        let deadline = tokio::time::Instant::now() + BOUND * 3;
        while world.ended.load(Ordering::SeqCst) != world.accepted.load(Ordering::SeqCst) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a driver connection outlived its client: {} accepted, {} ended",
                world.accepted.load(Ordering::SeqCst),
                world.ended.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(!PANICKED.load(Ordering::SeqCst), "a task of the relay panicked (see above)");
}
