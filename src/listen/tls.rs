//! The relay's listener: TCP, then mutual TLS, then the client's identity.
//!
//! The server configuration is read from a swappable cell for every
//! handshake, so rotated certificates apply to new connections while
//! established ones keep theirs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::accept::Acceptor;
use super::handshakes::{Handshakes, Refused};
use super::limit::ConnectionLimit;
use crate::admit::policy::Caller;
use crate::admit::Forwarder;
use crate::callback::relay::Hub;
use crate::obs::fold::Fold;
use crate::obs::metrics::{Metrics, Refusal};
use crate::pipeline::ServerSettings;
use crate::shutdown::Shutdown;
use crate::tls::config::ALPN_CALLBACK;
use crate::tls::identity::PeerIdentity;

/// Accepts TLS clients on `listener` until draining begins. Handshakes in
/// progress are bounded by their own budget (see [`super::handshakes`]); the
/// connection permit is taken once the client is authenticated. A client
/// that negotiated the callback protocol is a shim's callback link: it goes
/// to `callback` (see [`crate::callback::relay`]), never to the driver.
pub async fn run(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    forwarder: Forwarder,
    settings: ServerSettings,
    shutdown: Shutdown,
    callback: Option<Hub>,
) {
    let limit = ConnectionLimit::new(settings.max_connections);
    let handshakes = Handshakes::new(settings.max_handshakes, settings.max_handshakes_per_source);
    let name = match listener.local_addr() {
        Ok(addr) => format!("relay {addr}"),
        Err(_) => "relay".to_owned(),
    };
    let mut acceptor = Acceptor::new(listener, name);
    acceptor.count_refusals_in(forwarder.metrics().clone());
    let refusals = Fold::new(Duration::from_secs(10));
    let settings = Arc::new(settings);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            _ = shutdown.draining().cancelled() => break,
        };
        let slot = match handshakes.begin(remote.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refuse_handshake(tcp, remote, why, &handshakes, &refusals, forwarder.metrics());
                continue;
            }
        };
        crate::connect::tcp::tune_tcp(&tcp);
        let acceptor = TlsAcceptor::from(tls.load_full());
        let forwarder = forwarder.clone();
        let settings = settings.clone();
        let limit = limit.clone();
        let handshakes = handshakes.clone();
        let task_shutdown = shutdown.clone();
        let callback = callback.clone();
        shutdown.tasks().spawn(async move {
            let Some((stream, caller, chain)) = handshake(acceptor, tcp, remote, &settings, forwarder.metrics()).await
            else {
                return;
            };
            let _known = handshakes.established(slot);
            if stream.get_ref().1.alpn_protocol() == Some(ALPN_CALLBACK) {
                let peer = format!("{remote} ({caller})");
                match (&callback, &caller) {
                    (Some(hub), Caller::Tls(identity)) => hub.serve_link(stream, identity, &peer, &task_shutdown).await,
                    _ => crate::callback::relay::refuse_unserved(forwarder.metrics(), &peer),
                }
                return;
            }
            let Some(_permit) = limit.admit("relay", forwarder.metrics()) else {
                return;
            };
            if !forwarder.policy().admits(&caller) {
                // Still served: every call gets PERMISSION_DENIED naming the identity.
                tracing::warn!(%remote, client = %caller, "client identity is not allowed; its calls will be refused");
            } else {
                tracing::info!(%remote, client = %caller, "client connected");
            }
            let peer = format!("{remote} ({caller})");
            // Registered, so that a reload revoking its certificate or no
            // longer admitting its identity can cut it.
            let session = match &caller {
                Caller::Tls(identity) => Some(forwarder.sessions().open(identity.clone(), chain, remote.to_string())),
                Caller::Local { .. } => None,
            };
            crate::pipeline::serve_session(stream, forwarder, caller, session, &settings, &task_shutdown, &peer).await;
            tracing::debug!(%peer, "client disconnected");
        });
    }
}

/// Closes a connection that found no place among the handshakes in
/// progress; counted, and logged folded.
fn refuse_handshake(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    why: Refused,
    handshakes: &Handshakes,
    refusals: &Fold,
    metrics: &Metrics,
) {
    drop(tcp);
    metrics.refused(Refusal::HandshakeLimit);
    let (kind, text) = match why {
        Refused::Budget => ("budget", format!("--max-handshakes {} TLS handshakes are in progress", handshakes.max())),
        Refused::PerSource => (
            "per source",
            format!(
                "--max-handshakes-per-source {} TLS handshakes are in progress from {}",
                handshakes.max_per_source(),
                super::handshakes::source_of(remote.ip())
            ),
        ),
    };
    if let Some(repeated) = refusals.hit(kind) {
        tracing::warn!(%remote, repeated, "refused a connection (handshake_limit): {text}; closed it at once");
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    settings: &ServerSettings,
    metrics: &Metrics,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Caller,
    Vec<rustls::pki_types::CertificateDer<'static>>,
)> {
    let attempt = async {
        if refuse_non_tls(&tcp, remote).await.is_none() {
            metrics.handshake_failed("not_tls");
            return None;
        }
        Some(acceptor.accept(tcp).await)
    };
    let stream = match tokio::time::timeout(settings.handshake_timeout, attempt).await {
        Err(_) => {
            metrics.handshake_failed("timeout");
            tracing::warn!(%remote, timeout_ms = settings.handshake_timeout.as_millis() as u64, "TLS handshake timed out; connection closed");
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Err(e))) => {
            metrics.handshake_failed(crate::describe::handshake_reason(&e));
            tracing::warn!(%remote, reason = %crate::describe::describe_tls_io_error(&e), "TLS handshake refused");
            return None;
        }
        Ok(Some(Ok(stream))) => stream,
    };
    let (_, session) = stream.get_ref();
    let chain: Vec<_> =
        session.peer_certificates().unwrap_or_default().iter().map(|c| c.clone().into_owned()).collect();
    let Some(leaf) = chain.first() else {
        tracing::warn!(%remote, "TLS client presented no certificate; connection closed");
        return None;
    };
    match PeerIdentity::from_der(leaf.as_ref()) {
        Ok(identity) => Some((stream, Caller::Tls(Arc::new(identity)), chain)),
        Err(e) => {
            tracing::warn!(%remote, error = %e, "cannot read the client certificate's identity; connection closed");
            None
        }
    }
}

/// A TLS connection starts with a handshake record (0x16). Plaintext
/// HTTP/2, HTTP/1 or stray bytes are named in the log instead of showing up
/// as an obscure TLS decoding error.
async fn refuse_non_tls(tcp: &tokio::net::TcpStream, remote: SocketAddr) -> Option<()> {
    let mut first = [0u8; 4];
    let n = tcp.peek(&mut first).await.ok()?;
    if n == 0 {
        tracing::info!(%remote, "connection closed before a TLS handshake");
        return None;
    }
    if first[0] == 0x16 {
        return Some(());
    }
    let what = if first[..n].starts_with(b"PRI ") {
        "plaintext HTTP/2"
    } else if first[..n].iter().all(u8::is_ascii_uppercase) {
        "plaintext HTTP/1"
    } else {
        "bytes that are not TLS"
    };
    tracing::warn!(%remote, "refused {what} on the TLS port: clients must use TLS with a certificate of --ca");
    None
}
