//! `copy-chain`: the bridge's shape with no protocol work in it, the floor
//! for what two extra processes on the path cost on this machine.
//!
//! client --TLS over a Unix socket--> forwarder --TCP--> forwarder --Unix
//! socket--> the driver serving mTLS itself (as for `direct-mtls`).
//!
//! The client and the driver do exactly the TLS and HTTP/2 work of
//! `direct-mtls`; the two forwarders (this bench's own executable, re-run
//! as child processes on tokio's single-thread runtime like the bridge's)
//! only copy bytes: no TLS, no HTTP/2, no authorization. The same legs as
//! the bridge (Unix socket, loopback TCP, Unix socket), so the difference
//! between this path and `direct-mtls` is the cost of the four extra
//! crossings alone, and the difference between `bridge` and this path is
//! what the bridge's own work per hop costs.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::setup::{free_port, wait_tcp, wait_uds, Listener, Proc};

/// The environment variable that turns the bench executable into a
/// forwarder: `LISTEN>TARGET`, each `unix:PATH` or `HOST:PORT`.
pub const FORWARD_ENV: &str = "BENCH_BRIDGE_FORWARD";

/// Each direction's copy buffer: as large as the bridge's socket reads.
const BUFFER: usize = 64 * 1024;

pub struct CopyChain {
    pub front: Proc,
    pub back: Proc,
    pub socket: PathBuf,
}

impl CopyChain {
    /// [client side, server side], as for the proxies.
    pub fn roles(&self) -> [Vec<u32>; 2] {
        [vec![self.front.pid()], vec![self.back.pid()]]
    }

    pub fn check_alive(&mut self) -> Result<(), String> {
        self.front.check_alive()?;
        self.back.check_alive()
    }
}

/// Starts the two forwarders in front of the driver's mTLS socket.
pub async fn start(dir: &Path, driver_tls_socket: &Path) -> Result<CopyChain, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench executable: {e}"))?;
    let port = free_port().map_err(|e| e.to_string())?;
    let middle = format!("127.0.0.1:{port}");
    let socket = dir.join("copy-chain/front.sock");
    std::fs::create_dir_all(socket.parent().expect("has a parent")).map_err(|e| e.to_string())?;
    let spawn = |name: &str, spec: String| {
        Proc::spawn(
            name,
            Command::new(&exe).env(FORWARD_ENV, spec).env_remove("RUST_LOG"),
            dir.join(format!("{name}.log")),
        )
    };
    let mut back = spawn("copy-chain-back", format!("{middle}>unix:{}", driver_tls_socket.display()))?;
    wait_tcp(middle.parse().expect("an address"), &mut back, Duration::from_secs(10)).await?;
    let mut front = spawn("copy-chain-front", format!("unix:{}>{middle}", socket.display()))?;
    wait_uds(&socket, &mut front, Duration::from_secs(10)).await?;
    Ok(CopyChain { front, back, socket })
}

/// The forwarder process: accepts on LISTEN and copies every connection's
/// bytes both ways to a fresh connection to TARGET, until either side ends.
pub fn forwarder_main(spec: &str) -> ExitCode {
    let Some((listen, target)) = spec.split_once('>') else {
        eprintln!("{FORWARD_ENV}={spec}: expected LISTEN>TARGET");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("forwarder: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(forward(listen, target.to_owned())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forwarder {spec}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn forward(listen: &str, target: String) -> io::Result<()> {
    match listen.strip_prefix("unix:") {
        Some(path) => forward_each(UnixListener::bind(path)?, target).await,
        None => forward_each(TcpListener::bind(listen).await?, target).await,
    }
}

async fn forward_each<L: Listener>(listener: L, target: String) -> io::Result<()> {
    loop {
        let inbound = listener.next_connection().await?;
        tokio::spawn(pipe(inbound, target.clone()));
    }
}

async fn pipe<S: AsyncRead + AsyncWrite + Unpin>(mut inbound: S, target: String) {
    let copied = match target.strip_prefix("unix:") {
        Some(path) => copy_both_ways(&mut inbound, UnixStream::connect(path).await).await,
        None => {
            let outbound = TcpStream::connect(&target).await.and_then(|s| s.set_nodelay(true).map(|()| s));
            copy_both_ways(&mut inbound, outbound).await
        }
    };
    if let Err(e) = copied {
        eprintln!("forwarder to {target}: {e}");
    }
}

async fn copy_both_ways<A, B>(inbound: &mut A, outbound: io::Result<B>) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional_with_sizes(inbound, &mut outbound?, BUFFER, BUFFER).await
}
