//! The HTTP/2 server side of a connection on the waiting path (calls wait
//! for the link), shared by both listeners.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::preface::{Opening, Prefixed};
use crate::connect::Io;
use crate::forward::CallService;
use crate::metrics::{Metrics, Refusal};
use crate::shutdown::Shutdown;

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
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub stream_window: u32,
    pub connection_window: u32,
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
            stream_window: 2 * 1024 * 1024,
            connection_window: 8 * 1024 * 1024,
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

/// Serves HTTP/2 (prior knowledge) on `io`, whose preface is checked, as
/// the waiting path: until the peer leaves or the shutdown ends it (on
/// draining the connection gets a GOAWAY and its calls may finish; on stop
/// it is dropped). When `retire` completes the connection is wound down as
/// on draining.
pub async fn serve_http2<I: Io>(
    io: Prefixed<I>,
    service: CallService,
    settings: &ServerSettings,
    shutdown: &Shutdown,
    peer: &str,
    retire: impl std::future::Future<Output = ()>,
) {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_list_size)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_stream_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(64 * 1024)
        // The response headers are the driver's: hyper would add a `date`
        // to every answer of a driver that sends none.
        .auto_date_header(false)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = async { tokio::select! { _ = shutdown.draining().cancelled() => {}, _ = retire => {} } } => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.stopping().cancelled() => Ok(()),
            }
        }
    };
    if let Err(error) = result {
        tracing::info!(peer, error = %crate::body::describe_hyper_error(&error), "connection ended with an error");
    }
}
