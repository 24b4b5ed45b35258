//! A link: one multiplexed HTTP/2 connection to the next hop, kept alive.
//!
//! The link connects lazily on the first call, tries its targets in order
//! (the one that last worked first), retries with exponential backoff and
//! jitter while calls wait, and pings the peer so a silently dead one is
//! noticed within seconds. A call waits for the link at most `connect_wait`.
//! A call is given to another connection only when hyper hands it back
//! unsent; once it may have reached the peer it is never repeated.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::body::{describe_hyper_error, RelayBody};
use crate::connect::Connector;
use crate::status::{BridgeStatus, Code};

/// One peer a link can reach.
pub struct Target {
    pub connector: Connector,
    /// `:authority` and scheme of requests sent to this peer.
    pub scheme: Scheme,
    pub authority: Authority,
    /// How errors name this peer, e.g. `upstream relay.example:7443`.
    pub label: String,
}

/// Timing of connection management.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    /// How long a call waits for the link to come up.
    pub connect_wait: Duration,
    /// One connection attempt (TCP + TLS), at most.
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// HTTP/2 PING interval; a ping unanswered for `keepalive_timeout`
    /// closes the connection and fails its streams.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub stream_window: u32,
    pub connection_window: u32,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            connect_wait: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive_interval: Some(Duration::from_secs(5)),
            keepalive_timeout: Duration::from_secs(5),
            stream_window: 2 * 1024 * 1024,
            connection_window: 8 * 1024 * 1024,
        }
    }
}

/// A cheap handle; clones share the connection.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    role: &'static str,
    targets: Vec<Target>,
    /// The targets' labels, shared with every response body that names them.
    hops: Vec<Arc<str>>,
    settings: LinkSettings,
    state: Mutex<State>,
    changed: Notify,
    /// Wakes a connect loop sleeping in backoff when a caller arrives after
    /// every earlier one gave up.
    kick: Notify,
}

#[derive(Default)]
struct State {
    conn: Option<Conn>,
    connecting: bool,
    waiting: usize,
    /// Counts arrivals of a caller while nobody else waited: fresh demand.
    /// The connect loop answers it with an attempt now and a reset backoff,
    /// rather than leaving the newcomer behind a backoff grown for callers
    /// that are gone.
    demand: u64,
    preferred: usize,
    generation: u64,
    last_error: Option<String>,
    connects: u64,
    /// Connections in a row that closed before answering anything: a peer
    /// that accepts TCP and TLS and then hangs up (a TLS 1.3 server refusing
    /// our certificate does exactly that) must not be redialled in a loop.
    strikes: u32,
    /// No new connection before this instant.
    not_before: Option<Instant>,
}

#[derive(Clone)]
struct Conn {
    sender: SendRequest<RelayBody>,
    target: usize,
    generation: u64,
    /// Set once a response came back on this connection.
    answered: Arc<std::sync::atomic::AtomicBool>,
}

/// What the link looks like from outside, for health and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub connected_to: Option<String>,
    pub last_error: Option<String>,
    pub connects: u64,
}

impl Link {
    /// `role` names the far side in messages ("upstream", "driver").
    pub fn new(role: &'static str, targets: Vec<Target>, settings: LinkSettings) -> Link {
        assert!(!targets.is_empty(), "a link needs at least one target");
        Link {
            inner: Arc::new(Inner {
                role,
                hops: targets.iter().map(|t| Arc::from(t.label.as_str())).collect(),
                targets,
                settings,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                kick: Notify::new(),
            }),
        }
    }

    pub fn status(&self) -> LinkStatus {
        let state = self.inner.lock();
        let connected_to =
            state.conn.as_ref().filter(|c| !c.sender.is_closed()).map(|c| self.inner.targets[c.target].label.clone());
        LinkStatus { connected_to, last_error: state.last_error.clone(), connects: state.connects }
    }

    /// Labels of every target, in order.
    pub fn labels(&self) -> Vec<String> {
        self.inner.targets.iter().map(|t| t.label.clone()).collect()
    }

    /// Sends `request` (its URI path is kept, scheme and authority are the
    /// target's) and waits for the response headers. Fails with
    /// `UNAVAILABLE` naming the hop when the link cannot be had in time or
    /// breaks before the response.
    pub async fn send(&self, mut request: Request<RelayBody>) -> Result<(Response<Incoming>, Arc<str>), BridgeStatus> {
        let wait_until = Instant::now() + self.inner.settings.connect_wait;
        loop {
            let mut conn = self.ready(wait_until, self.inner.settings.connect_wait).await?;
            let target = &self.inner.targets[conn.target];
            *request.uri_mut() = target_uri(target, request.uri());
            match conn.sender.try_send_request(request).await {
                Ok(response) => {
                    if !conn.answered.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        self.inner.lock().strikes = 0;
                    }
                    return Ok((response, self.inner.hops[conn.target].clone()));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) => {
                        // hyper proves it never left: safe to try again on a fresh connection.
                        tracing::debug!(peer = %target.label, "connection closed before the call was sent; retrying it on a new connection");
                        self.forget(conn.generation);
                        request = unsent;
                    }
                    None => {
                        let cause = describe_hyper_error(error.error());
                        return Err(BridgeStatus::new(
                            Code::Unavailable,
                            format!("{}: call failed after it was sent (not retried): {cause}", target.label),
                        ));
                    }
                },
            }
        }
    }

    /// A live connection, connecting if needed, waiting at most until
    /// `wait_until` (`wait` after the caller began, for the message).
    async fn ready(&self, wait_until: Instant, wait: Duration) -> Result<Conn, BridgeStatus> {
        // The common case, a live connection: one lock, nothing else.
        if let Some(conn) = self.inner.lock().conn.as_ref().filter(|c| !c.sender.is_closed()) {
            return Ok(conn.clone());
        }
        let _waiter = Waiter::new(&self.inner);
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.inner.lock();
                if let Some(conn) = &state.conn {
                    if !conn.sender.is_closed() {
                        return Ok(conn.clone());
                    }
                    state.conn = None;
                }
                if !state.connecting {
                    state.connecting = true;
                    tokio::spawn(connect_loop(self.inner.clone()));
                }
            }
            if tokio::time::timeout_at(wait_until, notified).await.is_err() {
                return Err(self.unavailable(wait));
            }
        }
    }

    /// Whether the next hop can be reached (connecting if needed, waiting at
    /// most `wait`); the peer's label when it can.
    pub async fn probe(&self, wait: Duration) -> Result<String, BridgeStatus> {
        let conn = self.ready(Instant::now() + wait, wait).await?;
        Ok(self.inner.targets[conn.target].label.clone())
    }

    fn unavailable(&self, wait: Duration) -> BridgeStatus {
        let state = self.inner.lock();
        let wait = wait.as_millis();
        let who = self.describe_targets();
        let cause = state.last_error.as_deref().unwrap_or("still connecting");
        BridgeStatus::new(Code::Unavailable, format!("{who} unreachable after waiting {wait} ms: {cause}"))
    }

    fn describe_targets(&self) -> String {
        let labels = self.labels();
        if labels.len() == 1 {
            labels.into_iter().next().unwrap_or_default()
        } else {
            format!("{}s {}", self.inner.role, labels.join(", "))
        }
    }

    fn forget(&self, generation: u64) {
        let mut state = self.inner.lock();
        if state.conn.as_ref().map(|c| c.generation) == Some(generation) {
            state.conn = None;
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("link state lock poisoned")
    }
}

/// Counts callers waiting for the link, so the connect loop stops retrying
/// when nobody is waiting.
struct Waiter<'a>(&'a Inner);

impl<'a> Waiter<'a> {
    fn new(inner: &'a Inner) -> Self {
        let mut state = inner.lock();
        if state.waiting == 0 {
            state.demand += 1;
            inner.kick.notify_waiters();
        }
        state.waiting += 1;
        drop(state);
        Waiter(inner)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

/// Keeps trying targets, with backoff, until one answers or nobody waits.
async fn connect_loop(inner: Arc<Inner>) {
    let mut backoff = inner.settings.backoff_initial;
    let not_before = inner.lock().not_before;
    if let Some(at) = not_before {
        tokio::time::sleep_until(at).await;
    }
    loop {
        let (start, demand) = {
            let state = inner.lock();
            (state.preferred, state.demand)
        };
        let mut errors = Vec::new();
        for offset in 0..inner.targets.len() {
            let index = (start + offset) % inner.targets.len();
            match connect_one(&inner, index).await {
                Ok(()) => return,
                Err(error) => errors.push(format!("{}: {error}", inner.targets[index].label)),
            }
        }
        let message = errors.join("; ");
        let kicked = inner.kick.notified();
        tokio::pin!(kicked);
        kicked.as_mut().enable();
        let (give_up, fresh) = {
            let mut state = inner.lock();
            if state.last_error.as_deref() != Some(message.as_str()) {
                tracing::warn!(role = inner.role, error = %message, "cannot connect");
            }
            state.last_error = Some(message);
            if state.waiting == 0 {
                state.connecting = false;
            }
            (state.waiting == 0, state.demand != demand)
        };
        inner.changed.notify_waiters();
        if give_up {
            return;
        }
        if fresh {
            // A caller arrived during this attempt after all earlier ones left.
            backoff = inner.settings.backoff_initial;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(jitter(backoff)) => backoff = (backoff * 2).min(inner.settings.backoff_max),
            _ = &mut kicked => backoff = inner.settings.backoff_initial,
        }
    }
}

/// Full jitter on the upper half: spreads reconnects of many shims without
/// ever retrying sooner than half the backoff.
fn jitter(backoff: Duration) -> Duration {
    let half = backoff / 2;
    half + half.mul_f64(rand::random::<f64>())
}

async fn connect_one(inner: &Arc<Inner>, index: usize) -> Result<(), String> {
    let target = &inner.targets[index];
    let settings = &inner.settings;
    let io = target.connector.connect(settings.connect_timeout).await.map_err(|e| e.to_string())?;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(64 * 1024)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .keep_alive_while_idle(true);
    let handshake = builder.handshake::<_, RelayBody>(TokioIo::new(io));
    let (sender, connection) = tokio::time::timeout(settings.connect_timeout, handshake)
        .await
        .map_err(|_| "HTTP/2 handshake timed out".to_string())?
        .map_err(|e| format!("HTTP/2 handshake failed: {}", describe_hyper_error(&e)))?;

    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let generation = {
        let mut state = inner.lock();
        state.generation += 1;
        state.connects += 1;
        state.preferred = index;
        state.connecting = false;
        state.last_error = None;
        state.conn = Some(Conn { sender, target: index, generation: state.generation, answered: answered.clone() });
        state.generation
    };
    tracing::info!(role = inner.role, peer = %target.label, "connected");
    inner.changed.notify_waiters();

    let inner = inner.clone();
    tokio::spawn(async move {
        let outcome = connection.await;
        let label = &inner.targets[index].label;
        match outcome {
            Ok(()) => tracing::info!(role = inner.role, peer = %label, "connection closed"),
            Err(e) => {
                let cause = describe_hyper_error(&e);
                tracing::warn!(role = inner.role, peer = %label, error = %cause, "connection lost");
                let silent = !answered.load(std::sync::atomic::Ordering::Relaxed) && !cause.contains("alert");
                let hint = if silent {
                    " (it hung up before answering anything: a peer that refuses our client certificate after the TLS 1.3 handshake does this; see its log)"
                } else {
                    ""
                };
                inner.lock().last_error = Some(format!("{label}: connection lost: {cause}{hint}"));
            }
        }
        let mut state = inner.lock();
        if state.conn.as_ref().map(|c| c.generation) == Some(generation) {
            state.conn = None;
        }
        if answered.load(std::sync::atomic::Ordering::Relaxed) {
            state.strikes = 0;
            state.not_before = None;
        } else {
            state.strikes = state.strikes.saturating_add(1);
            let pause = (inner.settings.backoff_initial * 2u32.saturating_pow(state.strikes.min(8)))
                .min(inner.settings.backoff_max);
            state.not_before = Some(Instant::now() + jitter(pause));
        }
    });
    Ok(())
}

fn target_uri(target: &Target, original: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(target.scheme.clone());
    parts.authority = Some(target.authority.clone());
    parts.path_and_query = original.path_and_query().cloned();
    Uri::from_parts(parts).unwrap_or_else(|_| original.clone())
}
