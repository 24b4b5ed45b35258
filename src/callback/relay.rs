//! The relay's side of the way back: the callback listener, and the links
//! of the shims that serve callbacks.
//!
//! A shim's callback link arrives on the relay's TLS port with the
//! callback ALPN protocol; it is taken only from the callback identity
//! (`--callback-client`), anything else is refused and logged. On a link
//! the relay is the HTTP/2 *client*: every connection accepted on
//! `--callback-listen` becomes one stream on the newest link that takes
//! it. While no link is up, callback connections are closed at once (the
//! sandbox's supervisor retries), with a folded log line saying why.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::pump::{pump, Side};
use super::{CallbackSettings, STREAM_WINDOW};
use crate::connect::Io;
use crate::obs::fold::Fold;
use crate::obs::metrics::callback::Refusal;
use crate::obs::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::tls::identity::{IdentityPattern, PeerIdentity};

/// The relay's callback configuration, validated.
#[derive(Clone, Debug)]
pub struct RelayCallback {
    /// Where sandboxes connect (`--callback-listen`).
    pub listen: SocketAddr,
    /// The identity whose shim serves callbacks (`--callback-client`).
    pub client: IdentityPattern,
    pub settings: CallbackSettings,
}

/// How long a new stream may take: the shim's connect to the gateway included.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The shims' callback links, newest last. A cheap handle.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    client: IdentityPattern,
    settings: CallbackSettings,
    keepalive: Option<(Duration, Duration)>,
    metrics: Arc<Metrics>,
    links: Mutex<Vec<Link>>,
    next_id: AtomicU64,
    /// Refusal lines, folded per reason.
    refusals: Fold,
    /// Sandbox connections open at once, at most `--callback-max-connections`.
    open: Arc<Semaphore>,
}

#[derive(Clone)]
struct Link {
    id: u64,
    sender: SendRequest<Bytes>,
}

impl Hub {
    pub fn new(callback: &RelayCallback, keepalive: Option<(Duration, Duration)>, metrics: Arc<Metrics>) -> Hub {
        metrics.callback.enable(false, Box::new(|| "no shim has connected".into()));
        Hub {
            inner: Arc::new(Inner {
                client: callback.client.clone(),
                settings: callback.settings.clone(),
                keepalive,
                metrics,
                links: Mutex::default(),
                next_id: AtomicU64::new(0),
                refusals: Fold::new(Duration::from_secs(10)),
                open: Arc::new(Semaphore::new(callback.settings.max_connections)),
            }),
        }
    }

    /// Serves a TLS connection that negotiated the callback protocol, as
    /// the HTTP/2 client of the shim behind it, until the link ends.
    pub async fn serve_link<I: Io>(&self, io: I, identity: &PeerIdentity, peer: &str, shutdown: &Shutdown) {
        let inner = &self.inner;
        if !inner.client.matches(identity) {
            inner.metrics.callback.refused(Refusal::Identity);
            tracing::warn!(
                %peer,
                "refused a callback link: client identity {identity} is not the callback identity (--callback-client {}); connection closed",
                inner.client
            );
            return;
        }
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(inner.settings.connection_window())
            .max_frame_size(super::MAX_FRAME)
            .max_send_buffer_size(STREAM_WINDOW as usize)
            .enable_push(false)
            .handshake::<_, Bytes>(io);
        let (sender, mut connection) = match tokio::time::timeout(OPEN_TIMEOUT, handshake).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %super::describe_h2(&e), "callback link failed to open");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "callback link failed to open: no HTTP/2 answer within 10 s");
                return;
            }
        };
        let ping = connection.ping_pong();
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&inner.links).push(Link { id, sender });
        inner.metrics.callback.link_up();
        tracing::info!(%peer, "callback link up: this shim serves callbacks");
        let cause = tokio::select! {
            result = &mut connection => match result {
                Ok(()) => "the shim closed it".to_string(),
                Err(e) => super::describe_h2(&e),
            },
            why = super::keepalive(ping, inner.keepalive, || {}) => why,
            () = self.drained(shutdown) => "the relay is shutting down".to_string(),
        };
        lock(&inner.links).retain(|link| link.id != id);
        inner.metrics.callback.link_down(&cause);
        tracing::warn!(%peer, error = %cause, "callback link down; its callback connections were closed");
    }

    /// Resolves once draining has begun and no callback connection is left
    /// (or the drain time is over).
    async fn drained(&self, shutdown: &Shutdown) {
        shutdown.draining().cancelled().await;
        for _ in 0..u32::MAX {
            if self.inner.metrics.callback.open_connections() == 0 || shutdown.stopping().is_cancelled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Carries one sandbox connection to the gateway through the newest
    /// link, or closes it at once saying why.
    async fn carry(&self, socket: TcpStream, remote: SocketAddr, stopping: &CancellationToken) {
        let inner = &self.inner;
        let (send, recv) = match self.open_stream().await {
            Ok(stream) => stream,
            Err((why, text)) => {
                inner.metrics.callback.refused(why);
                if let Some(repeated) = inner.refusals.hit(why.label()) {
                    tracing::warn!(%remote, repeated, reason = why.label(), "closed a callback connection at once: {text}");
                }
                let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
                return;
            }
        };
        let _open = inner.metrics.callback.opened();
        tracing::debug!(%remote, "callback connection carried to the shim");
        let outcome =
            pump(socket, send, recv, Side::Relay, inner.settings.idle_timeout, stopping, &inner.metrics.callback).await;
        match outcome {
            Ok(()) => tracing::debug!(%remote, "callback connection ended"),
            Err(why) => tracing::debug!(%remote, error = %why, "callback connection closed"),
        }
    }

    /// A new stream on the newest link that takes one, answered by the shim.
    async fn open_stream(&self) -> Result<(SendStream<Bytes>, RecvStream), (Refusal, String)> {
        let no_shim = || {
            (
                Refusal::NoShim,
                format!(
                    "no shim serves callbacks (is the shim of {} running with --callback-target, and its callback link up?)",
                    self.inner.client
                ),
            )
        };
        let tries = lock(&self.inner.links).len();
        for _ in 0..tries {
            let Some(link) = lock(&self.inner.links).last().cloned() else {
                return Err(no_shim());
            };
            let sender = match tokio::time::timeout(OPEN_TIMEOUT, link.sender.clone().ready()).await {
                Ok(Ok(sender)) => Some(sender),
                Ok(Err(_)) => None,
                Err(_) => {
                    return Err((Refusal::NoShim, "the shim took no new stream within 10 s".into()));
                }
            };
            // The stream carries no address: the shim connects to its own
            // --callback-target, whatever a request says.
            let request =
                http::Request::builder().method("POST").uri("https://callback/").body(()).expect("static request");
            let opened = sender.and_then(|mut sender| sender.send_request(request, false).ok());
            let Some((response, send)) = opened else {
                // The link is going away (GOAWAY) or gone: use the next.
                lock(&self.inner.links).retain(|l| l.id != link.id);
                continue;
            };
            return match tokio::time::timeout(OPEN_TIMEOUT, response).await {
                Ok(Ok(response)) if response.status() == http::StatusCode::OK => Ok((send, response.into_body())),
                Ok(Ok(response)) => Err((
                    Refusal::GatewayUnreachable,
                    format!(
                        "the shim could not reach the gateway (answer {}; its log names --callback-target)",
                        response.status()
                    ),
                )),
                Ok(Err(e)) => {
                    Err((Refusal::GatewayUnreachable, format!("the shim ended the stream: {}", super::describe_h2(&e))))
                }
                Err(_) => Err((Refusal::GatewayUnreachable, "the shim did not answer within 10 s".into())),
            };
        }
        Err(no_shim())
    }
}

impl Hub {
    /// A sandbox's connection, accepted by the callback listener: carried
    /// to the gateway on a task of its own, or closed at once when
    /// `--callback-max-connections` are open.
    pub fn take(&self, socket: TcpStream, remote: SocketAddr, shutdown: &Shutdown) {
        let Ok(permit) = self.inner.open.clone().try_acquire_owned() else {
            let max = self.inner.settings.max_connections;
            self.inner.metrics.callback.refused(Refusal::ConnectionLimit);
            if let Some(repeated) = self.inner.refusals.hit("connection_limit") {
                tracing::warn!(%remote, max, repeated, "closed a callback connection at once: --callback-max-connections {max} are open");
            }
            let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
            return;
        };
        let hub = self.clone();
        let stopping = shutdown.stopping().clone();
        shutdown.tasks().spawn(async move {
            let _permit = permit;
            hub.carry(socket, remote, &stopping).await;
        });
    }
}

/// A callback link arrived while this relay serves no callbacks.
pub fn refuse_unserved(metrics: &Metrics, peer: &str) {
    metrics.callback.refused(Refusal::NotServed);
    tracing::warn!(%peer, "refused a callback link: this relay has no --callback-listen; connection closed");
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
