//! The admin endpoint: `/healthz` (the process answers), `/readyz` (the
//! next hop can be reached) and `/metrics` (Prometheus text, or OpenMetrics
//! when the scraper's `Accept` asks for it). Plain HTTP/1.1
//! and unauthenticated, so it listens on loopback unless the operator says
//! otherwise with `--unsafe-admin`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::admit::Forwarder;
use crate::obs::metrics::exposition::{Exposition, HopState};
use crate::shutdown::Shutdown;

/// How long `/readyz` waits for the next hop.
const READY_WAIT: Duration = Duration::from_secs(2);

/// Binds `addr` (refusing a non-loopback address unless `allow_remote`) and
/// serves the endpoints of `forwarder` until draining begins.
pub fn start(
    addr: SocketAddr,
    allow_remote: bool,
    forwarder: Forwarder,
    shutdown: Shutdown,
) -> anyhow::Result<SocketAddr> {
    if !addr.ip().is_loopback() && !allow_remote {
        anyhow::bail!(
            "--admin {addr}: not a loopback address; the admin endpoint has no authentication (pass --unsafe-admin to expose it anyway, e.g. for kubelet probes behind a NetworkPolicy)"
        );
    }
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("--admin {addr}: cannot bind: {e}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    tracing::info!(admin = %local, "admin endpoint serving /healthz /readyz /metrics");
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.draining().cancelled() => return,
            };
            let forwarder = forwarder.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let forwarder = forwarder.clone();
                    async move { Ok::<_, Infallible>(answer(request, &forwarder).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
            });
        }
    });
    Ok(local)
}

async fn answer(request: Request<Incoming>, forwarder: &Forwarder) -> Response<Full<Bytes>> {
    match (request.method().as_str(), request.uri().path()) {
        ("GET", "/healthz") => text(StatusCode::OK, "ok\n".into()),
        ("GET", "/readyz") => {
            match (forwarder.dialer().probe(READY_WAIT).await, forwarder.metrics().callback.readiness()) {
                (Ok(peer), Ok(None)) => text(StatusCode::OK, format!("ready: {peer} reachable\n")),
                (Ok(peer), Ok(Some(callback))) => {
                    text(StatusCode::OK, format!("ready: {peer} reachable; {callback}\n"))
                }
                // A shim with --callback-target is not ready without its callback link.
                (Ok(_), Err(why)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                (Err(why), _) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
            }
        }
        ("GET", "/metrics") => {
            let accept = request.headers().get(http::header::ACCEPT).and_then(|v| v.to_str().ok());
            let format = Exposition::from_accept(accept);
            let mut response = text(StatusCode::OK, scrape(forwarder, format));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(format.content_type()));
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /healthz, /readyz or /metrics\n".into()),
    }
}

/// The metrics of `forwarder`'s role, as a scrape in `format` reads them.
pub fn scrape(forwarder: &Forwarder, format: Exposition) -> String {
    let mut out = String::with_capacity(4096);
    forwarder.metrics().render(&hop_state(forwarder), format, &mut out);
    out
}

/// The next hop's state as the metrics show it.
fn hop_state(forwarder: &Forwarder) -> HopState {
    let dialer = forwarder.dialer();
    let status = dialer.status();
    HopState {
        peer: dialer.labels().join(","),
        up: status.open > 0,
        connected_to: status.connected_to,
        last_error: status.last_error,
        connects: status.connects,
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
