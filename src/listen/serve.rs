//! What both listeners share: their limits and timers, the connection
//! limit, and the check of a client's HTTP/2 preface.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::preface::{Opening, Prefixed};
use crate::connect::Io;
use crate::metrics::{Metrics, Refusal};

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

/// Bounds the number of connections of one listener.
#[derive(Clone)]
pub struct ConnectionLimit(Arc<Semaphore>, usize, Arc<crate::fold::Fold>);

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        ConnectionLimit(Arc::new(Semaphore::new(max)), max, Arc::new(crate::fold::Fold::new(Duration::from_secs(10))))
    }

    /// A permit, or `None` (counted, and logged folded) when the listener is full.
    pub fn admit(&self, listener: &str, metrics: &Metrics) -> Option<OwnedSemaphorePermit> {
        match self.0.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                metrics.refused(Refusal::ConnectionLimit);
                if let Some(repeated) = self.2.hit("connection limit") {
                    tracing::warn!(
                        listener,
                        max = self.1,
                        repeated,
                        "refused a connection: connection limit reached (--max-connections)"
                    );
                }
                None
            }
        }
    }
}

/// Reads the HTTP/2 preface of `io` (refusing and counting anything else);
/// the stream with the preface still to be read.
pub async fn opening<I: Io>(io: I, settings: &ServerSettings, metrics: &Metrics, peer: &str) -> Option<Prefixed<I>> {
    match super::preface::expect_http2(io, settings.handshake_timeout, peer).await {
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
