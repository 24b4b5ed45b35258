//! A controllable TCP fault proxy for the link between shim and relay:
//! pass traffic, blackhole it (connections stay open, nothing moves, no
//! RST: what a dead NAT or a pulled cable looks like), reset every
//! connection, refuse new ones, or add latency.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Stop moving bytes in both directions; keep connections open.
    Blackhole,
    /// Accept and immediately close new connections (existing ones pass).
    Refuse,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    latency: Arc<Mutex<Duration>>,
    resets: watch::Sender<u64>,
    pub accepted: Arc<Mutex<u64>>,
}

impl FaultProxy {
    /// Listens on loopback and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let (resets, resets_rx) = watch::channel(0u64);
        let latency = Arc::new(Mutex::new(Duration::ZERO));
        let accepted = Arc::new(Mutex::new(0));
        let (lat, acc) = (latency.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                *acc.lock().unwrap() += 1;
                if *mode_rx.borrow() == Mode::Refuse {
                    reset(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target).await else {
                    reset(client);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                tokio::spawn(relay_pair(client, server, mode_rx.clone(), resets_rx.clone(), lat.clone()));
            }
        });
        FaultProxy { addr, mode, latency, resets, accepted }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn set_latency(&self, one_way: Duration) {
        *self.latency.lock().unwrap() = one_way;
    }

    /// Resets (RST) every connection open now.
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    pub fn connections(&self) -> u64 {
        *self.accepted.lock().unwrap()
    }
}

/// Closes with RST instead of FIN (linger 0).
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn relay_pair(
    client: TcpStream,
    server: TcpStream,
    mode: watch::Receiver<Mode>,
    mut resets: watch::Receiver<u64>,
    latency: Arc<Mutex<Duration>>,
) {
    resets.mark_unchanged();
    // Linger 0: when the halves are dropped on a reset, the kernel sends RST.
    for stream in [&client, &server] {
        let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, mode.clone(), latency.clone());
    let down = pump(server_read, client_write, mode, latency);
    tokio::select! {
        (client_write, server_write) = async { tokio::join!(up, down) } => {
            drop((client_write, server_write));
        }
        _ = resets.changed() => {}
    }
}

/// Copies `from` to `to` while the mode allows; returns the write half when
/// the source ends so the caller can close it.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    latency: Arc<Mutex<Duration>>,
) -> Option<tokio::net::tcp::OwnedWriteHalf> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while *mode.borrow_and_update() == Mode::Blackhole {
            if mode.changed().await.is_err() {
                return None;
            }
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return Some(to);
                }
                Ok(n) => n,
            },
            _ = mode.changed() => continue,
        };
        let delay = *latency.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        while *mode.borrow() == Mode::Blackhole {
            if mode.changed().await.is_err() {
                return None;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return None;
        }
    }
}
