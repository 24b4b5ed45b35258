//! An emulated wide-area link: a TCP proxy on loopback that delays every
//! byte by a fixed one-way latency and caps the bandwidth, in both
//! directions independently.
//!
//! The proxy terminates TCP on both sides, so the kernel's own TCP windows
//! see a loopback RTT; what sees the added latency is everything end to end
//! above TCP: TLS handshakes, HTTP/2 flow-control windows (WINDOW_UPDATE
//! frames take the long way too) and request/response round trips. Its
//! queue is unbounded, like a deep router buffer: the sender is limited by
//! its HTTP/2 windows, never by the proxy.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct WanLink {
    /// Added one-way latency.
    pub delay: Duration,
    /// Bandwidth cap in bits per second, each direction.
    pub bits_per_second: f64,
}

impl WanLink {
    pub fn describe(&self) -> String {
        format!("{} ms each way, {} Mbit/s each direction", self.delay.as_millis(), self.bits_per_second / 1e6)
    }
}

/// Starts a proxy on 127.0.0.1 forwarding to `target`; returns its address.
/// It runs until the process ends.
pub async fn start(target: SocketAddr, link: WanLink) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, link));
                tokio::spawn(pipe(server_read, client_write, link));
            });
        }
    });
    Ok(addr)
}

/// One direction: stamp each chunk with the time its last bit leaves the
/// capped link plus the latency, and deliver it then.
async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, link: WanLink) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut link_free = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            let start = link_free.max(now);
            link_free = start + Duration::from_secs_f64(n as f64 * 8.0 / link.bits_per_second);
            if tx.send((link_free + link.delay, Bytes::copy_from_slice(&buf[..n]))).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
