//! The real binary as a child process, with its log captured line by line,
//! for scenarios that must see what an operator sees: exit codes, log
//! lines, signals.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::TestPki;

pub const BIN: &str = env!("CARGO_BIN_EXE_openshell-driver-bridge");

/// A running `openshell-driver-bridge` process.
pub struct Bridge {
    pub name: String,
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The tasks copying stdout and stderr into `log`; they end at EOF.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Bridge {
    /// Starts the binary with `args`; its stderr and stdout are captured.
    pub fn spawn(name: &str, args: &[String], env: &[(&str, &str)]) -> Bridge {
        Self::spawn_program(name, Command::new(BIN), args, env)
    }

    /// Like `spawn`, with the descriptor limit (`RLIMIT_NOFILE`) of the
    /// process set to `soft` and `hard` before it starts.
    pub fn spawn_with_nofile(name: &str, args: &[String], env: &[(&str, &str)], soft: u64, hard: u64) -> Bridge {
        let mut command = Command::new(BIN);
        let limit = rustix::process::Rlimit { current: Some(soft), maximum: Some(hard) };
        // SAFETY: the closure only makes one system call (no allocation, no locks).
        unsafe {
            command.pre_exec(move || {
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).map_err(Into::into)
            });
        }
        Self::spawn_program(name, command, args, env)
    }

    /// Starts `command` (some program) with `args`, its output captured.
    pub fn spawn_program(name: &str, mut command: Command, args: &[String], env: &[(&str, &str)]) -> Bridge {
        command
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn openshell-driver-bridge");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let tag = name.to_owned();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if std::env::var_os("BRIDGE_TEST_ECHO").is_some() {
                        eprintln!("[{tag}] {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            }));
        }
        Bridge { name: name.to_owned(), child, log, readers }
    }

    /// Waits until a log line contains every one of `parts`; returns it.
    pub async fn wait_for_log(&self, parts: &[&str], limit: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(line) = self.find_log(parts) {
                return Some(line);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn find_log(&self, parts: &[&str]) -> Option<String> {
        self.log.lock().unwrap().iter().find(|line| parts.iter().all(|p| line.contains(p))).cloned()
    }

    /// Everything logged so far.
    pub fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Asserts a log line with all `parts` appears within 5 s.
    pub async fn expect_log(&self, parts: &[&str]) -> String {
        match self.wait_for_log(parts, Duration::from_secs(5)).await {
            Some(line) => line,
            None => panic!("{}: no log line with {parts:?}; log:\n{}", self.name, self.output()),
        }
    }

    /// How many lines are logged so far: a mark for `expect_log_after`.
    pub fn mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Asserts a line with all `parts` appears after `mark` (lines logged
    /// before it do not count), within 20 s; returns it.
    pub async fn expect_log_after(&self, mark: usize, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found =
                self.log.lock().unwrap()[mark..].iter().find(|line| parts.iter().all(|p| line.contains(p))).cloned();
            if let Some(line) = found {
                return line;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{}: no log line with {parts:?} after line {mark}; log:\n{}", self.name, self.output());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address of the admin endpoint (`--admin`), from the log.
    pub async fn admin_addr(&self) -> std::net::SocketAddr {
        let line = self.expect_log(&["admin endpoint serving"]).await;
        field(&line, "admin=").expect("admin= in the log").parse().unwrap()
    }

    /// A scrape of the admin endpoint's `/metrics`.
    pub async fn scrape(&self) -> String {
        let (code, body) = super::http_get(self.admin_addr().await, "/metrics").await;
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Waits (20 s at most) until the admin endpoint's scrape has `series`
    /// (name and labels, exactly as written) at `value`; returns the scrape.
    pub async fn expect_sample(&self, series: &str, value: f64) -> String {
        let addr = self.admin_addr().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, scrape) = super::http_get(addr, "/metrics").await;
            if super::sample(&scrape, series) == Some(value) {
                return scrape;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{}: {series} is not {value} in:\n{scrape}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Like `expect_sample` for several series at once; on time-out the
    /// panic names every series that is not at its value.
    pub async fn expect_samples(&self, expected: &[(String, f64)]) -> String {
        let addr = self.admin_addr().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, scrape) = super::http_get(addr, "/metrics").await;
            let wrong: Vec<String> = expected
                .iter()
                .filter(|(series, value)| super::sample(&scrape, series) != Some(*value))
                .map(|(series, value)| format!("{series} is {:?}, not {value}", super::sample(&scrape, series)))
                .collect();
            if wrong.is_empty() {
                return scrape;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{}:\n{}\nin:\n{scrape}", self.name, wrong.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits for exit, at most `limit`; the exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let code = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => return None,
        };
        // The process is gone, but its last lines may still be in the pipes:
        // let the readers reach end of file so `output()` holds everything.
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        code
    }
}

/// Flags of the TLS material at `(cert, key)` with the CA of `pki`.
pub fn tls_args(ca: &Path, (cert, key): &(PathBuf, PathBuf)) -> Vec<String> {
    vec![
        "--ca".into(),
        ca.display().to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
    ]
}

/// demo-driver, relay and shim as three processes, as an operator runs them.
pub struct ProcessChain {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    /// The demo-driver process, when the chain runs one.
    pub driver: Option<Bridge>,
    pub relay: Bridge,
    pub shim: Bridge,
    pub relay_addr: String,
    pub driver_socket: PathBuf,
    pub shim_socket: PathBuf,
}

impl ProcessChain {
    /// Starts the three with extra flags for relay and shim and an extra
    /// environment for all (e.g. `RUST_LOG`).
    pub async fn start(relay_extra: &[&str], shim_extra: &[&str], env: &[(&str, &str)]) -> ProcessChain {
        Self::start_with_driver(relay_extra, shim_extra, env, |socket| {
            Box::pin(async move {
                let driver = Bridge::spawn(
                    "driver",
                    &["demo-driver".into(), "--socket".into(), socket.display().to_string()],
                    env,
                );
                driver.expect_log(&["demo driver serving"]).await;
                Some(driver)
            })
        })
        .await
    }

    /// Like `start`, but `driver` starts whatever serves the driver socket
    /// (it gets the socket path) and returns the process to keep, if any.
    pub async fn start_with_driver<'a>(
        relay_extra: &[&str],
        shim_extra: &[&str],
        env: &'a [(&'a str, &'a str)],
        driver: impl FnOnce(PathBuf) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Bridge>> + 'a>>,
    ) -> ProcessChain {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(&dir.path().join("pki"));
        let driver_socket = dir.path().join("driver/driver.sock");
        let shim_socket = dir.path().join("shim/compute-driver.sock");
        let driver = driver(driver_socket.clone()).await;

        let mut relay_args: Vec<String> = vec![
            "relay".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--driver-socket".into(),
            driver_socket.display().to_string(),
            "--handshake-timeout".into(),
            "1s".into(),
            "--connect-wait".into(),
            "3s".into(),
        ];
        relay_args.extend(tls_args(&pki.ca_file, &pki.server));
        if !relay_extra.iter().any(|a| a.starts_with("--allow-")) {
            relay_args.extend(["--allow-client".into(), format!("dns:{}", super::GATEWAY_ID)]);
        }
        relay_args.extend(relay_extra.iter().map(|s| s.to_string()));
        let relay = Bridge::spawn("relay", &relay_args, env);
        let line = relay.expect_log(&["relay serving"]).await;
        let relay_addr = field(&line, "listen=").expect("listen= in relay log");

        let mut shim_args: Vec<String> = vec![
            "shim".into(),
            "--socket".into(),
            shim_socket.display().to_string(),
            "--upstream".into(),
            format!("https://{relay_addr}"),
            "--server-name".into(),
            "localhost".into(),
            "--connect-wait".into(),
            "3s".into(),
        ];
        if !shim_extra.contains(&"--cert") {
            shim_args.extend(tls_args(&pki.ca_file, &pki.client));
        }
        shim_args.extend(shim_extra.iter().map(|s| s.to_string()));
        let shim = Bridge::spawn("shim", &shim_args, env);
        shim.expect_log(&["shim serving"]).await;
        ProcessChain { dir, pki, driver, relay, shim, relay_addr, driver_socket, shim_socket }
    }

    pub fn output(&self) -> String {
        let driver = self.driver.as_ref().map(Bridge::output).unwrap_or_default();
        format!("{driver}\n{}\n{}", self.relay.output(), self.shim.output())
    }
}

/// The value after `key` in a text log line, up to the next space.
pub fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    Some(line[start..].split_whitespace().next()?.trim_matches('"').to_owned())
}
