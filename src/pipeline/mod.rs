//! The pipeline every accepted connection takes, in both roles: its
//! opening checked (the HTTP/2 preface, or a clear refusal), the caller
//! admitted or not, then the frame relay to the next hop.
//!
//! ```text
//! listener (UDS | mTLS) -> preface -> admission -> frame relay -> dialer -> connector
//! ```

use std::time::Duration;

pub mod preface;

use crate::admit::policy::Caller;
use crate::admit::sessions::Session;
use crate::admit::Forwarder;
use crate::connect::Io;
use crate::frames::{FrameRelay, Limits};
use crate::obs::metrics::{Metrics, Refusal};
use crate::shutdown::Shutdown;
use preface::{Opening, Prefixed};
use tokio::io::AsyncReadExt;

/// Limits and timers of a listener.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Largest header block a peer may send (bytes).
    pub max_header_list_size: u32,
    /// Concurrent calls on one connection.
    pub max_concurrent_streams: u32,
    /// Connections at once; more are closed on arrival.
    pub max_connections: usize,
    /// Time a TLS client gets to finish its handshake.
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once (apart from `max_connections`).
    pub max_handshakes: usize,
    /// TLS handshakes in progress at once from one source address.
    pub max_handshakes_per_source: usize,
    /// Pings to the client: only where it crosses a network (the relay's
    /// TLS listener), never on the shim's Unix socket.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_header_list_size: 16 * 1024,
            max_concurrent_streams: 1024,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 128,
            max_handshakes_per_source: 16,
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves one accepted client connection (already authenticated as
/// `caller`) until it ends.
pub async fn serve_connection<I: Io>(
    io: I,
    forwarder: Forwarder,
    caller: Caller,
    settings: &ServerSettings,
    shutdown: &Shutdown,
    peer: &str,
) {
    serve_session(io, forwarder, caller, None, settings, shutdown, peer).await
}

/// [`serve_connection`] for a connection registered as `session` (the
/// relay's TLS clients): a reload may cut it.
pub async fn serve_session<I: Io>(
    io: I,
    forwarder: Forwarder,
    caller: Caller,
    session: Option<Session>,
    settings: &ServerSettings,
    shutdown: &Shutdown,
    peer: &str,
) {
    let Some(mut io) = opening(io, settings, forwarder.metrics(), peer).await else {
        return;
    };
    let mut preface = [0u8; crate::connect::open::PREFACE.len()];
    if io.read_exact(&mut preface).await.is_err() {
        return;
    }
    // A client whose every call is refused must not make the bridge open a
    // connection to the next hop on its behalf.
    let dial = forwarder.policy().admits(&caller);
    let _serving = forwarder.metrics().serving();
    let limits = Limits {
        max_header_list_size: settings.max_header_list_size,
        max_concurrent_streams: settings.max_concurrent_streams,
        keepalive: settings.keepalive_interval.map(|every| (every, settings.keepalive_timeout)),
    };
    let cut = session.as_ref().map(|s| s.cut().clone());
    FrameRelay::new(io, forwarder, caller, &limits, shutdown, dial, cut).run().await;
    drop(session);
    tracing::debug!(peer, "connection ended");
}

/// Reads the HTTP/2 preface of `io` (refusing and counting anything else);
/// the stream with the preface still to be read.
async fn opening<I: Io>(io: I, settings: &ServerSettings, metrics: &Metrics, peer: &str) -> Option<Prefixed<I>> {
    match preface::expect_http2(io, settings.handshake_timeout, peer).await {
        Ok(io) => Some(io),
        Err(Opening::Http1) => {
            metrics.refused(Refusal::Http1);
            None
        }
        Err(Opening::Garbage) => {
            metrics.refused(Refusal::NotHttp2);
            None
        }
        Err(_) => None,
    }
}
