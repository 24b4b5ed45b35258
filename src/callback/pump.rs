//! One callback connection: a TCP socket on one side, an HTTP/2 stream on
//! the other, bytes copied both ways with flow control end to end.
//!
//! - socket to stream: send capacity is reserved first, and the socket is
//!   read only for as many bytes as the stream may send now; end of file
//!   is END_STREAM (a half-close).
//! - stream to socket: each DATA frame is written to the socket, and only
//!   then released to the peer's window; END_STREAM shuts the socket's
//!   write side.
//! - trouble either way (a reset, the link gone, a socket error, the idle
//!   timeout, the drain's end) ends both: the stream is reset and the
//!   socket closed with an RST, so neither end mistakes it for a clean end
//!   and neither hangs.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::obs::metrics::callback::{CallbackMetrics, Direction};

/// Largest read from a socket at once.
const CHUNK: usize = 64 * 1024;

/// Which side of the link this end is, for the byte counters.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    /// The relay: its socket is the sandbox's.
    Relay,
    /// The shim: its socket is the gateway's.
    Shim,
}

impl Side {
    fn read_from_socket(self) -> Direction {
        match self {
            Side::Relay => Direction::ToGateway,
            Side::Shim => Direction::ToSandbox,
        }
    }

    fn written_to_socket(self) -> Direction {
        match self {
            Side::Relay => Direction::ToSandbox,
            Side::Shim => Direction::ToGateway,
        }
    }
}

/// Copies between `socket` and the stream (`send`, `recv`) until both
/// directions have ended, or until trouble ends both; `Err` says why.
pub async fn pump(
    mut socket: TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    side: Side,
    idle_timeout: Duration,
    stopping: &CancellationToken,
    metrics: &CallbackMetrics,
) -> Result<(), String> {
    let start = Instant::now();
    // Milliseconds since `start` at the last byte moved either way.
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let outcome = {
        let (mut reader, mut writer) = socket.split();
        let up = async {
            loop {
                send.reserve_capacity(CHUNK);
                while send.capacity() == 0 {
                    match poll_fn(|cx| send.poll_capacity(cx)).await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(super::describe_h2(&e)),
                        None => return Err("the stream was reset".to_string()),
                    }
                }
                let mut buf = vec![0u8; send.capacity().min(CHUNK)];
                let n = tokio::select! {
                    read = reader.read(&mut buf) => read.map_err(|e| crate::describe::describe_io_error(&e))?,
                    reset = poll_fn(|cx| send.poll_reset(cx)) => return Err(match reset {
                        Ok(reason) => format!("the stream was reset ({reason:?})"),
                        Err(e) => super::describe_h2(&e),
                    }),
                };
                if n == 0 {
                    send.send_data(Bytes::new(), true).map_err(|e| super::describe_h2(&e))?;
                    return Ok(());
                }
                buf.truncate(n);
                send.send_data(Bytes::from(buf), false).map_err(|e| super::describe_h2(&e))?;
                metrics.bytes(side.read_from_socket(), n);
                touch();
            }
        };
        let down = async {
            while let Some(data) = recv.data().await {
                let data = data.map_err(|e| super::describe_h2(&e))?;
                writer.write_all(&data).await.map_err(|e| crate::describe::describe_io_error(&e))?;
                let _ = recv.flow_control().release_capacity(data.len());
                metrics.bytes(side.written_to_socket(), data.len());
                touch();
            }
            writer.shutdown().await.map_err(|e| crate::describe::describe_io_error(&e))
        };
        let idle = async {
            loop {
                let since = Duration::from_millis(last.load(Ordering::Relaxed));
                let deadline = start + since + idle_timeout;
                if Instant::now() >= deadline {
                    return format!("idle for {} s (--callback-idle-timeout)", idle_timeout.as_secs());
                }
                tokio::time::sleep_until(deadline).await;
            }
        };
        tokio::pin!(up, down, idle);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                result = &mut up, if !up_done => match result {
                    Ok(()) => up_done = true,
                    Err(e) => break Err(e),
                },
                result = &mut down, if !down_done => match result {
                    Ok(()) => down_done = true,
                    Err(e) => break Err(e),
                },
                why = &mut idle => break Err(why),
                _ = stopping.cancelled() => break Err("the bridge is stopping".to_string()),
            }
            if up_done && down_done {
                break Ok(());
            }
        }
    };
    if outcome.is_err() {
        send.send_reset(Reason::CANCEL);
        // An RST rather than a FIN: the other end must not take this for
        // a clean end of the byte stream.
        let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
    }
    drop(socket);
    outcome
}
