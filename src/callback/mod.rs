//! The way back: sandboxes started by a remote driver connect to the
//! gateway through the bridge.
//!
//! ```text
//! sandbox --TCP--> relay --callback-listen ==callback link (opened by the shim)==> shim --TCP--> gateway --callback-target
//! ```
//!
//! The shim keeps a *callback link* to the relay: mutual TLS with the same
//! identities as its driver connections, dialled by the same dialer
//! (targets in order, backoff, strikes), but negotiating its own ALPN
//! protocol ([`ALPN_CALLBACK`]). After the handshake the roles reverse: the
//! relay speaks HTTP/2 as client and opens one stream per sandbox
//! connection accepted on `--callback-listen`; the shim serves the link as
//! HTTP/2 server and connects each stream to `--callback-target`, and to
//! nothing else: a stream carries no address, and its headers are never
//! read.
//!
//! A stream is an opaque byte pipe ([`pump`]): the shim answers `200` once
//! the gateway accepted the TCP connection (`502` and the stream ends when
//! it did not), then DATA frames carry the bytes both ways, END_STREAM is a
//! half-close (shutdown of the socket's write side), and a reset is a
//! close (an RST on the socket). Flow control holds end to end: a socket is
//! read only while its stream has send capacity, and received bytes are
//! released to the peer's window only once written to the socket, so each
//! connection holds at most its window (`STREAM_WINDOW`) in each
//! direction. TLS between sandbox and gateway stays end to end; the bridge
//! never looks at, nor logs, a byte of it.

pub mod pump;
pub mod relay;
pub mod shim;

use std::time::Duration;

pub use crate::tls::config::ALPN_CALLBACK;

/// The HTTP/2 window of one callback stream, in each direction.
pub const STREAM_WINDOW: u32 = 256 * 1024;

/// The largest HTTP/2 frame either end of a link accepts: a socket read
/// (64 KiB) goes out as one DATA frame instead of four.
pub const MAX_FRAME: u32 = 64 * 1024;

/// Limits of the callback path (each a flag of both roles).
#[derive(Clone, Debug)]
pub struct CallbackSettings {
    /// Callback connections carried at once (`--callback-max-connections`).
    pub max_connections: usize,
    /// A callback connection that moves no byte either way for this long
    /// is closed (`--callback-idle-timeout`).
    pub idle_timeout: Duration,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings { max_connections: 1024, idle_timeout: Duration::from_secs(3600) }
    }
}

impl CallbackSettings {
    /// Concurrent streams on one link: the connection limit, as HTTP/2 counts it.
    fn max_streams(&self) -> u32 {
        u32::try_from(self.max_connections).unwrap_or(u32::MAX)
    }

    /// The link's connection window: every stream's window, so a stalled
    /// stream never blocks the others (bounded by the connection limit).
    fn connection_window(&self) -> u32 {
        let total = u64::from(STREAM_WINDOW) * self.max_connections.max(1) as u64;
        total.min(i32::MAX as u64) as u32
    }
}

/// Pings the link's peer every `every`; returns why the link is to be
/// considered dead (a ping unanswered within `timeout`, or the connection
/// gone). Never returns when pings are off. `answered` is told of each pong.
async fn keepalive(
    ping: Option<h2::PingPong>,
    every: Option<(Duration, Duration)>,
    mut answered: impl FnMut(),
) -> String {
    let (Some(mut ping), Some((every, timeout))) = (ping, every) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => answered(),
            Ok(Err(e)) => return describe_h2(&e),
            Err(_) => return format!("keepalive ping unanswered for {} ms", timeout.as_millis()),
        }
    }
}

/// An HTTP/2 error in words.
fn describe_h2(error: &h2::Error) -> String {
    if let Some(io) = error.get_io() {
        return crate::describe::describe_io_error(io);
    }
    if let Some(reason) = error.reason() {
        if error.is_go_away() {
            return format!("the peer is going away ({reason:?})");
        }
        return format!("stream reset ({reason:?})");
    }
    error.to_string()
}
