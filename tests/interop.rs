//! Scenarios: the bridge works with a gRPC stack other than its own.
//!
//! A gateway and a driver written with Python's grpcio (gRPC's C core, not
//! hyper/tonic) talk through shim and relay over real sockets and real mTLS:
//!
//! - a grpcio gateway drives a grpcio driver (`tests/interop/gateway.py` on
//!   the shim's socket, `tests/interop/driver.py` behind the relay);
//! - the same grpcio gateway drives the bridge's own demo driver;
//! - a tonic gateway drives the grpcio driver.
//!
//! The session covers unary calls, an error with its message and trailing
//! metadata, custom (text and binary) metadata echoed back, a server stream
//! of snapshot and live events, and a cancellation that reaches the driver.
//! One known gap is kept as an ignored scenario: grpcio's own default
//! `:authority` for Unix sockets, which h2 refuses.
//!
//! Needs `python3` with grpcio and grpcio-tools:
//! `python3 -m pip install -r tests/interop/requirements.txt`. Without them
//! the scenarios are skipped with a note on stderr, unless
//! `OPENSHELL_BRIDGE_REQUIRE_INTEROP=1` (set in CI) makes that a failure.
//! The Python stubs are generated from `proto/` at test time into a
//! temporary directory; nothing generated is committed.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use openshell_driver_bridge::demo::driver::DemoDriver;
use openshell_driver_bridge::grpc::client::driver_client;
use openshell_driver_bridge::proto::compute::watch_sandboxes_event::Payload;
use openshell_driver_bridge::proto::compute::*;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tonic::metadata::MetadataValue;
use tonic::Code;

const PYTHON: &str = "python3";
const REQUIRE_ENV: &str = "OPENSHELL_BRIDGE_REQUIRE_INTEROP";
const INSTALL: &str = "python3 -m pip install -r tests/interop/requirements.txt";

/// What the grpcio driver reports, and prints when a watch of it ends.
const PYTHON_DRIVER: &str = "python-grpcio";
const WATCH_CANCELLED: &str = "WatchSandboxes cancelled by the caller";

/// Starting Python and importing grpcio can take a while on a cold machine.
const PYTHON_START: Duration = Duration::from_secs(30);
/// The whole scripted gateway session (each call in it has its own deadline).
const SESSION: Duration = Duration::from_secs(60);
/// One call or one streamed message from the tonic gateway.
const CALL: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_gateway_drives_a_grpcio_driver_through_the_bridge() {
    let Some(stubs) = python_stubs().await else {
        return;
    };
    let chain = Chain::start_with(tempfile::tempdir().unwrap(), |_| {}, |_| {}).await;
    let mut driver = python_driver(&stubs, &chain.driver_socket).await;

    let mut gateway = python_gateway(&stubs, &chain.shim_socket, PYTHON_DRIVER, Authority::Localhost);
    gateway.assert_success(SESSION, &[&driver]).await;

    // The gateway cancelled its watch; see `cancellation_reported`.
    driver.cancellation_reported().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_gateway_drives_the_demo_driver_through_the_bridge() {
    let Some(stubs) = python_stubs().await else {
        return;
    };
    let chain = Chain::start_with(tempfile::tempdir().unwrap(), |_| {}, |_| {}).await;
    openshell_driver_bridge::demo::serve(&chain.driver_socket, DemoDriver::new(), chain.shutdown.clone()).unwrap();

    let mut gateway = python_gateway(&stubs, &chain.shim_socket, "demo", Authority::Localhost);
    gateway.assert_success(SESSION, &[]).await;
}

/// Known gap: since 1.57 grpcio sends the %-encoded socket path as the
/// `:authority` of a `unix:` target (grpc/grpc#38142). h2, under the shim
/// as under any tonic driver, refuses it with RST_STREAM(PROTOCOL_ERROR)
/// before the bridge sees the call (hyperium/h2#487), so the gateway gets
/// `INTERNAL: Stream removed`. A grpcio gateway must set
/// `grpc.default_authority` (the other scenarios send "localhost").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "h2 refuses grpcio's default unix :authority (grpc/grpc#38142, hyperium/h2#487)"]
async fn grpcio_gateway_with_grpcio_default_unix_authority_reaches_the_driver() {
    let Some(stubs) = python_stubs().await else {
        return;
    };
    let chain = Chain::start_with(tempfile::tempdir().unwrap(), |_| {}, |_| {}).await;
    let driver = python_driver(&stubs, &chain.driver_socket).await;

    let mut gateway = python_gateway(&stubs, &chain.shim_socket, PYTHON_DRIVER, Authority::GrpcioDefault);
    gateway.assert_success(SESSION, &[&driver]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_gateway_drives_a_grpcio_driver_through_the_bridge() {
    let Some(stubs) = python_stubs().await else {
        return;
    };
    let chain = Chain::start_with(tempfile::tempdir().unwrap(), |_| {}, |_| {}).await;
    let mut driver = python_driver(&stubs, &chain.driver_socket).await;
    let mut client = bounded(driver_client(&chain.shim_socket)).await.unwrap();

    let caps = bounded(client.get_capabilities(GetCapabilitiesRequest {})).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, PYTHON_DRIVER);
    assert!(!caps.driver_version.is_empty());

    for id in ["tonic-a", "tonic-b"] {
        bounded(client.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox(id)) })).await.unwrap();
    }
    let listed = bounded(client.list_sandboxes(ListSandboxesRequest {})).await.unwrap().into_inner().sandboxes;
    let ids: Vec<_> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["tonic-a", "tonic-b"]);
    let spec = listed[0].spec.as_ref().unwrap();
    assert_eq!(spec.environment["INTEROP"], "1");
    assert!(spec.sandbox_token.is_empty(), "the driver echoed the token");

    // An error from grpcio: code, message and trailing metadata intact.
    let missing = bounded(
        client.get_sandbox(GetSandboxRequest { sandbox_id: "tonic-ghost".into(), sandbox_name: String::new() }),
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert_eq!(missing.message(), "sandbox tonic-ghost not found by the python-grpcio driver");
    assert_eq!(missing.metadata().get("x-driver").unwrap(), PYTHON_DRIVER);
    assert_eq!(
        missing.metadata().get_bin("x-driver-detail-bin").unwrap().to_bytes().unwrap(),
        &b"\x00\x01\xfe\xff not found"[..]
    );

    // Custom metadata reaches grpcio and comes back as trailers.
    let blob: Vec<u8> = (0..=255).collect();
    let mut request = tonic::Request::new(GetCapabilitiesRequest {});
    request.metadata_mut().insert("x-interop", "from-tonic".parse().unwrap());
    request.metadata_mut().insert_bin("x-interop-bin", MetadataValue::from_bytes(&blob));
    let response = bounded(client.get_capabilities(request)).await.unwrap();
    assert_eq!(response.metadata().get("x-interop").unwrap(), "from-tonic");
    assert_eq!(response.metadata().get_bin("x-interop-bin").unwrap().to_bytes().unwrap(), &blob[..]);

    // The watch: a snapshot of both sandboxes, then three live events, each
    // its own message; dropping the stream cancels it at the driver.
    let mut watch = bounded(client.watch_sandboxes(WatchSandboxesRequest {})).await.unwrap().into_inner();
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(bounded(watch.message()).await.unwrap().unwrap().payload);
    }
    let snapshot: Vec<_> = events[..2]
        .iter()
        .map(|payload| match payload {
            Some(Payload::Sandbox(s)) => s.sandbox.as_ref().unwrap().id.as_str(),
            other => panic!("expected a snapshot, got {other:?}"),
        })
        .collect();
    assert_eq!(snapshot, ["tonic-a", "tonic-b"]);
    let live: Vec<_> = events[2..]
        .iter()
        .map(|payload| match payload {
            Some(Payload::PlatformEvent(p)) => {
                let event = p.event.as_ref().unwrap();
                assert_eq!(event.source, PYTHON_DRIVER);
                assert_eq!(event.metadata["driver"], PYTHON_DRIVER);
                event.reason.as_str()
            }
            other => panic!("expected a live platform event, got {other:?}"),
        })
        .collect();
    assert_eq!(live, ["Pulling", "Pulled", "Started"]);
    drop(watch);
    driver.cancellation_reported().await;

    for id in ["tonic-a", "tonic-b"] {
        let deleted =
            bounded(client.delete_sandbox(DeleteSandboxRequest { sandbox_id: id.into(), sandbox_name: String::new() }))
                .await
                .unwrap()
                .into_inner();
        assert!(deleted.deleted, "{id}");
    }
    let left = bounded(client.list_sandboxes(ListSandboxesRequest {})).await.unwrap().into_inner();
    assert!(left.sandboxes.is_empty());
}

// ---------------------------------------------------------------------------
// The Python side.

/// The harness's sandbox, with an environment and a token for the Python
/// side to carry.
fn sandbox(id: &str) -> DriverSandbox {
    let mut sandbox = common::sandbox(id);
    let spec = sandbox.spec.get_or_insert_with(Default::default);
    spec.environment = [("INTEROP".to_owned(), "1".to_owned())].into();
    spec.sandbox_token = "not-a-real-token".into();
    sandbox
}

/// A call or message of the tonic gateway, which must not take long.
async fn bounded<T>(call: impl std::future::Future<Output = T>) -> T {
    timeout(CALL, call).await.unwrap_or_else(|_| panic!("no answer through the bridge within {CALL:?}"))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop").join(name)
}

fn python(args: &[&std::ffi::OsStr]) -> Command {
    let mut command = Command::new(PYTHON);
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // Nothing written next to the scripts; lines as soon as printed.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts the grpcio driver on `socket` and waits until it serves.
async fn python_driver(stubs: &Stubs, socket: &Path) -> Process {
    let driver_py = script("driver.py");
    let mut driver = Process::spawn(
        "driver.py",
        python(&[driver_py.as_os_str(), socket.as_os_str(), "--stubs".as_ref(), stubs.dir.path().as_os_str()]),
    );
    driver.expect_line("ready", PYTHON_START, &[]).await;
    driver
}

/// The `:authority` the grpcio gateway sends.
enum Authority {
    /// "localhost", as grpc-go and Kubernetes send on Unix sockets.
    Localhost,
    /// grpcio's own default for a `unix:` target: the %-encoded socket path.
    GrpcioDefault,
}

/// Starts the grpcio gateway's scripted session on `socket`.
fn python_gateway(stubs: &Stubs, socket: &Path, expected_driver: &str, authority: Authority) -> Process {
    let gateway_py = script("gateway.py");
    let authority = match authority {
        Authority::Localhost => "localhost",
        Authority::GrpcioDefault => "",
    };
    Process::spawn(
        "gateway.py",
        python(&[
            gateway_py.as_os_str(),
            socket.as_os_str(),
            "--driver".as_ref(),
            expected_driver.as_ref(),
            "--authority".as_ref(),
            authority.as_ref(),
            "--stubs".as_ref(),
            stubs.dir.path().as_os_str(),
        ]),
    )
}

/// The Python stubs generated from `proto/`, shared by the scenarios that
/// run at the same time and removed when the last of them is done.
struct Stubs {
    dir: tempfile::TempDir,
}

/// The stubs, or `None` (after a note on stderr) when Python's grpcio is not
/// installed; a failure instead when `OPENSHELL_BRIDGE_REQUIRE_INTEROP=1`.
async fn python_stubs() -> Option<Arc<Stubs>> {
    static SHARED: OnceLock<tokio::sync::Mutex<Weak<Stubs>>> = OnceLock::new();
    let mut shared = SHARED.get_or_init(Default::default).lock().await;
    if let Some(stubs) = shared.upgrade() {
        return Some(stubs);
    }

    if let Err(reason) = python_grpc_available().await {
        if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
            panic!("{REQUIRE_ENV}=1 but Python's grpcio is not usable ({reason}); run `{INSTALL}`");
        }
        eprintln!(
            "SKIPPED interop scenario: Python's grpcio is not usable ({reason}); \
             run `{INSTALL}` to enable it ({REQUIRE_ENV}=1 turns this skip into a failure)"
        );
        return None;
    }

    let dir = tempfile::Builder::new().prefix("interop-stubs-").tempdir().unwrap();
    let stubs_py = script("stubs.py");
    let mut generate = Process::spawn("stubs.py", python(&[stubs_py.as_os_str(), dir.path().as_os_str()]));
    let status = generate.exit_status(PYTHON_START).await;
    assert!(status.success(), "generating the Python stubs from proto/ failed ({status}):\n{}", generate.transcript());
    let stubs = Arc::new(Stubs { dir });
    *shared = Arc::downgrade(&stubs);
    Some(stubs)
}

/// Whether `python3 -c "import grpc, grpc_tools"` works, and why not.
async fn python_grpc_available() -> Result<(), String> {
    let mut command = python(&["-c".as_ref(), "import grpc, grpc_tools".as_ref()]);
    let mut probe = match command.spawn() {
        Ok(child) => Process::adopt("python3 -c 'import grpc, grpc_tools'", child),
        Err(e) => return Err(format!("cannot run {PYTHON}: {e}")),
    };
    let status = probe.exit_status(PYTHON_START).await;
    if status.success() {
        Ok(())
    } else {
        let transcript = probe.transcript();
        let last =
            transcript.lines().last().and_then(|line| line.split_once("| ")).map_or("no output", |(_, text)| text);
        Err(format!("`import grpc, grpc_tools` failed: {last}"))
    }
}

// ---------------------------------------------------------------------------
// Child processes that never outlive a scenario.

/// A child process with its output collected. Dropping it kills and reaps
/// the process, so a failing or timed-out scenario leaves nothing behind.
struct Process {
    name: String,
    child: std::process::Child,
    stdout: mpsc::UnboundedReceiver<String>,
    transcript: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    fn spawn(name: &str, mut command: Command) -> Process {
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name} with {PYTHON}: {e}"));
        Process::adopt(name, child)
    }

    fn adopt(name: &str, mut child: std::process::Child) -> Process {
        let transcript = Arc::new(Mutex::new(String::new()));
        let (lines, stdout) = mpsc::unbounded_channel();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, "out", transcript.clone(), Some(lines)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, "err", transcript.clone(), None));
        }
        Process { name: name.to_owned(), child, stdout, transcript, readers }
    }

    /// Everything the process printed so far, one line per line.
    fn transcript(&self) -> String {
        let text = self.transcript.lock().unwrap();
        format!("--- {} ---\n{}", self.name, text)
    }

    /// Waits up to 10 s for the grpcio driver to report the watch's cancellation.
    /// Reported, not asserted: under CPU load grpcio's server sometimes never
    /// runs the handler's cancellation callback although the relay's
    /// RST_STREAM(CANCEL) for that stream reached it (h2 debug traces of a
    /// failing run show the reset sent on each hop). That a cancellation
    /// crosses the bridge is asserted against our own drivers in
    /// tests/resilience.rs (a_dropped_watch_is_cancelled_at_the_driver,
    /// a_cancelled_call_is_cancelled_at_the_driver).
    async fn cancellation_reported(&mut self) {
        let seen = timeout(Duration::from_secs(10), async {
            while let Some(line) = self.stdout.recv().await {
                if line == WATCH_CANCELLED {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !seen {
            eprintln!(
                "note: {} did not report the watch's cancellation within 10 s (see cancellation_reported)",
                self.name
            );
        }
    }

    /// Waits for the process to print exactly `wanted` on a line.
    async fn expect_line(&mut self, wanted: &str, limit: Duration, others: &[&Process]) {
        let found = timeout(limit, async {
            while let Some(line) = self.stdout.recv().await {
                if line == wanted {
                    return true;
                }
            }
            false // stdout closed: the process ended
        })
        .await;
        let why = match found {
            Ok(true) => return,
            Ok(false) => "it ended first".to_owned(),
            Err(_) => format!("not within {limit:?}"),
        };
        panic!("{} never printed {wanted:?} ({why}):\n{}", self.name, report(self, others));
    }

    /// Waits, bounded, for the process to exit and for its output to drain.
    async fn exit_status(&mut self, limit: Duration) -> ExitStatus {
        let polled = timeout(limit, async {
            loop {
                match self.child.try_wait() {
                    Ok(Some(status)) => return status,
                    Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => panic!("cannot wait for {}: {e}", self.name),
                }
            }
        })
        .await;
        let Ok(status) = polled else {
            panic!("{} did not finish within {limit:?}:\n{}", self.name, self.transcript());
        };
        // The pipes close with the process; give the readers a moment.
        let _ = timeout(Duration::from_secs(2), async {
            while !self.readers.iter().all(JoinHandle::is_finished) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        status
    }

    /// Waits for the process to exit and fails the scenario unless it
    /// exited 0, showing its output and that of `others`.
    async fn assert_success(&mut self, limit: Duration, others: &[&Process]) {
        let status = self.exit_status(limit).await;
        assert!(status.success(), "{} failed ({status}):\n{}", self.name, report(self, others));
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(main: &Process, others: &[&Process]) -> String {
    std::iter::once(main).chain(others.iter().copied()).map(Process::transcript).collect::<Vec<_>>().join("\n")
}

/// Copies a pipe into the transcript line by line, and forwards stdout
/// lines to the scenario.
fn collect(
    pipe: impl Read + Send + 'static,
    stream: &'static str,
    transcript: Arc<Mutex<String>>,
    lines: Option<mpsc::UnboundedSender<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            {
                let mut text = transcript.lock().unwrap();
                text.push_str(stream);
                text.push_str("| ");
                text.push_str(&line);
                text.push('\n');
            }
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    })
}
