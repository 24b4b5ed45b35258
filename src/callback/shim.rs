//! The shim's side of the way back: the callback link it keeps to the
//! relay, and the gateway connection of each stream on it.
//!
//! The link is dialled by the shim's own dialer (targets in order,
//! per-address connect timeout, backoff with jitter, strikes: see
//! [`crate::connect::dialer`]); only its opening differs: once TLS (with
//! the callback ALPN protocol) is up, the shim is the HTTP/2 *server*. Each
//! stream the relay opens is connected to `--callback-target`, the one
//! address the shim ever connects a callback to; the stream's headers are
//! not read.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::{Connection, SendResponse};
use h2::RecvStream;
use tokio::net::TcpStream;

use super::pump::{pump, Side};
use super::{CallbackSettings, STREAM_WINDOW};
use crate::connect::dialer::{Dialer, Live, Reached};
use crate::connect::BoxIo;
use crate::obs::fold::Fold;
use crate::obs::metrics::callback::Refusal;
use crate::obs::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The shim's callback configuration, validated.
#[derive(Clone, Debug)]
pub struct ShimCallback {
    /// `HOST:PORT` of the gateway's own listener (`--callback-target`).
    pub target: String,
    pub settings: CallbackSettings,
}

/// Parses `--callback-target HOST:PORT`.
pub fn parse_target(text: &str) -> Result<String, String> {
    let hint = "expected HOST:PORT of the gateway's listener, such as 127.0.0.1:8080";
    let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("--callback-target {text:?}: no port; {hint}"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("--callback-target {text:?}: {port:?} is not a port; {hint}"))?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let unbracketed_v6 = bare == host && host.contains(':');
    if bare.is_empty()
        || unbracketed_v6
        || bare.contains(['/', '@', ' '])
        || (bare.contains(':') && bare.parse::<std::net::Ipv6Addr>().is_err())
    {
        return Err(format!("--callback-target {text:?}: {host:?} is not a host; {hint} (IPv6 as [::1]:PORT)"));
    }
    Ok(text.to_owned())
}

/// What serving the link needs.
struct Serving {
    target: Arc<str>,
    settings: CallbackSettings,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    /// "cannot reach the gateway" lines, folded per cause.
    failures: Arc<Fold>,
}

/// Keeps the callback link up until draining; returns its task.
pub fn start(
    dialer: Dialer,
    callback: &ShimCallback,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let why_down = dialer.clone();
    metrics.callback.enable(true, Box::new(move || why_down.last_error()));
    let serving = Arc::new(Serving {
        target: Arc::from(callback.target.as_str()),
        settings: callback.settings.clone(),
        connect_timeout: dialer.settings().connect_timeout,
        metrics,
        shutdown,
        failures: Arc::new(Fold::new(Duration::from_secs(10))),
    });
    tokio::spawn(run(dialer, serving))
}

async fn run(dialer: Dialer, serving: Arc<Serving>) {
    let failed = AtomicU32::new(0);
    let settings = serving.settings.clone();
    loop {
        let opening = |io: BoxIo| open(io, settings.clone());
        let reached = tokio::select! {
            reached = dialer.open_with_backoff_using(opening, &failed) => reached,
            _ = serving.shutdown.draining().cancelled() => return,
        };
        let Reached { opened, label, keepalive, mut live, .. } = reached;
        serving.metrics.callback.link_up();
        tracing::info!(relay = %label, target = %serving.target, "callback link up: serving callbacks to the gateway");
        let cause = serve(opened, keepalive, &mut live, &serving).await;
        serving.metrics.callback.link_down(&cause);
        if serving.shutdown.draining().is_cancelled() {
            return;
        }
        live.lost(&format!("callback {label}"), &cause);
    }
}

/// The opening of a callback link: HTTP/2 as server, the relay's preface awaited.
async fn open(io: BoxIo, settings: CallbackSettings) -> Result<Connection<BoxIo, Bytes>, String> {
    h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(settings.connection_window())
        .max_concurrent_streams(settings.max_streams())
        .max_frame_size(super::MAX_FRAME)
        .max_send_buffer_size(STREAM_WINDOW as usize)
        .handshake(io)
        .await
        .map_err(|e| {
            format!(
                "the relay did not open the callback link ({}); a relay that does not take this identity as its --callback-client, or that has no --callback-listen, closes it: see its log",
                super::describe_h2(&e)
            )
        })
}

/// Serves streams on the link until it ends; why it ended.
async fn serve(
    mut connection: Connection<BoxIo, Bytes>,
    keepalive: Option<(Duration, Duration)>,
    live: &mut Live,
    serving: &Arc<Serving>,
) -> String {
    let pong = AtomicBool::new(false);
    let pings = super::keepalive(connection.ping_pong(), keepalive, || pong.store(true, Ordering::Relaxed));
    tokio::pin!(pings);
    let shutdown = &serving.shutdown;
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                None => return "the relay closed the callback link".to_string(),
                Some(Err(e)) => return super::describe_h2(&e),
                Some(Ok((request, respond))) => {
                    live.answered();
                    let serving = serving.clone();
                    // The request's address and headers are never read.
                    let recv = request.into_body();
                    shutdown.tasks().spawn(async move { serve_stream(recv, respond, &serving).await });
                }
            },
            why = &mut pings => return why,
            _ = shutdown.draining().cancelled(), if !draining => {
                // No new streams; those open run until they end or the drain time is over.
                draining = true;
                connection.graceful_shutdown();
            }
            _ = shutdown.stopping().cancelled() => return "the shim is stopping".to_string(),
        }
        if pong.load(Ordering::Relaxed) {
            live.answered();
        }
    }
}

/// Connects one stream to the gateway and carries it, or refuses it (502)
/// with a log line naming the target.
async fn serve_stream(recv: RecvStream, mut respond: SendResponse<Bytes>, serving: &Serving) {
    let target = &*serving.target;
    let connected = match tokio::time::timeout(serving.connect_timeout, TcpStream::connect(target)).await {
        Ok(Ok(socket)) => Ok(socket),
        Ok(Err(e)) => Err(crate::describe::describe_io_error(&e)),
        Err(_) => Err(format!("no connection within {} ms", serving.connect_timeout.as_millis())),
    };
    let socket = match connected {
        Ok(socket) => socket,
        Err(why) => {
            serving.metrics.callback.refused(Refusal::GatewayUnreachable);
            if let Some(repeated) = serving.failures.hit(&why) {
                tracing::warn!(
                    target = %target,
                    error = %why,
                    repeated,
                    "callback: cannot reach the gateway at --callback-target {target}: {why}; the sandbox's connection was closed"
                );
            }
            let refused =
                http::Response::builder().status(http::StatusCode::BAD_GATEWAY).body(()).expect("static response");
            let _ = respond.send_response(refused, true);
            return;
        }
    };
    crate::connect::tcp::tune_tcp(&socket);
    let accepted = http::Response::builder().status(http::StatusCode::OK).body(()).expect("static response");
    let Ok(send) = respond.send_response(accepted, false) else {
        return;
    };
    let _open = serving.metrics.callback.opened();
    let outcome = pump(
        socket,
        send,
        recv,
        Side::Shim,
        serving.settings.idle_timeout,
        serving.shutdown.stopping(),
        &serving.metrics.callback,
    )
    .await;
    if let Err(why) = outcome {
        tracing::debug!(target = %target, error = %why, "callback connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(parse_target("127.0.0.1:8080").is_ok());
        assert!(parse_target("gateway.local:443").is_ok());
        assert!(parse_target("[::1]:8080").is_ok());
        for (bad, why) in
            [("127.0.0.1", "no port"), ("host:0", "not a port"), (":80", "not a host"), ("::1:80", "not a host")]
        {
            let err = parse_target(bad).unwrap_err();
            assert!(err.contains(why) && err.contains("--callback-target"), "{bad}: {err}");
        }
    }
}
