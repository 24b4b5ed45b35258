//! A link: one multiplexed HTTP/2 connection to the next hop, kept alive.
//!
//! The link connects lazily on the first call, tries its targets in order
//! (the one that last worked first), retries with exponential backoff and
//! jitter while calls wait, and pings the peer so a silently dead one is
//! noticed within seconds. A call waits for the link at most `connect_wait`.
//! A call is given to another connection only when h2 refuses to open its
//! stream (the connection is gone or going away); once it may have reached
//! the peer it is never repeated.
//!
//! The client side speaks h2 directly rather than through hyper's client:
//! the call's own task opens the stream and reads the answer, with no
//! dispatch channel and no helper tasks per call (hyper spawns two), which
//! cut the task polls per relayed call by about a third.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::uri::{Authority, Scheme};
use http::{request, Request, Response, Uri};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::body::describe_h2_error;
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
    answered_connections: std::sync::atomic::AtomicU64,
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

impl State {
    /// A connection ended before its peer answered anything: no new one
    /// before a pause that doubles with each such connection in a row.
    fn strike(&mut self, settings: &LinkSettings) {
        self.strikes = self.strikes.saturating_add(1);
        let pause = (settings.backoff_initial * 2u32.saturating_pow(self.strikes.min(8))).min(settings.backoff_max);
        self.not_before = Some(Instant::now() + jitter(pause));
    }
}

#[derive(Clone)]
struct Conn {
    sender: SendRequest<Bytes>,
    target: usize,
    generation: u64,
    /// Set once a response came back on this connection.
    answered: Arc<AtomicBool>,
    /// Why the connection ended, set when it does.
    ended: Arc<OnceLock<String>>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.ended.get().is_some()
    }
}

/// A connection of a caller's own to the next hop (see [`Link::dial`]).
pub struct Dialed {
    pub io: crate::connect::BoxIo,
    /// `:scheme` and `:authority` of requests sent on it.
    pub scheme: Scheme,
    pub authority: Authority,
    /// e.g. `upstream relay.example:7443`.
    pub label: Arc<str>,
    /// Ping interval and timeout on it.
    pub keepalive: Option<(Duration, Duration)>,
    /// How long the peer has to answer the connection's opening.
    pub answer_timeout: Duration,
}

/// The hop a response came from, for the messages of its body.
#[derive(Clone)]
pub struct Hop {
    /// e.g. `upstream relay.example:7443`.
    pub label: Arc<str>,
    ended: Arc<OnceLock<String>>,
}

impl Hop {
    /// Why a stream from this hop broke: the connection's end when the link
    /// ended it (a keepalive ping unanswered), else h2's cause.
    pub fn why_broken(&self, error: &h2::Error) -> String {
        match self.ended.get() {
            Some(why) => why.clone(),
            None => describe_h2_error(error),
        }
    }
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
                answered_connections: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    pub fn status(&self) -> LinkStatus {
        let state = self.inner.lock();
        let connected_to =
            state.conn.as_ref().filter(|c| !c.is_closed()).map(|c| self.inner.targets[c.target].label.clone());
        LinkStatus { connected_to, last_error: state.last_error.clone(), connects: state.connects }
    }

    /// A connection of the caller's own to the next hop, for a caller that
    /// speaks HTTP/2 on it itself: the targets are tried in order, the one
    /// that last worked first. Fails at once while the link backs off from
    /// peers that hung up on it.
    pub async fn dial(&self) -> Result<Dialed, String> {
        let start = {
            let state = self.inner.lock();
            if state.not_before.is_some_and(|at| at > Instant::now()) {
                let why = state.last_error.clone().unwrap_or_default();
                return Err(format!("backing off after connections that ended unanswered: {why}"));
            }
            state.preferred
        };
        let settings = &self.inner.settings;
        let mut errors = Vec::new();
        for offset in 0..self.inner.targets.len() {
            let index = (start + offset) % self.inner.targets.len();
            let target = &self.inner.targets[index];
            match target.connector.connect(settings.connect_timeout).await {
                Ok(io) => {
                    return Ok(Dialed {
                        io,
                        scheme: target.scheme.clone(),
                        authority: target.authority.clone(),
                        label: self.inner.hops[index].clone(),
                        keepalive: settings.keepalive_interval.map(|every| (every, settings.keepalive_timeout)),
                        answer_timeout: settings.connect_timeout,
                    })
                }
                Err(error) => errors.push(format!("{}: {error}", target.label)),
            }
        }
        Err(errors.join("; "))
    }

    /// A connection from [`Link::dial`] ended before its peer answered:
    /// counted as the link's own would be, so the link and later dials
    /// back off instead of redialling a peer that hangs up on us.
    pub fn dial_failed(&self, why: String) {
        let mut state = self.inner.lock();
        state.last_error = Some(why);
        state.strike(&self.inner.settings);
    }

    pub fn settings(&self) -> &LinkSettings {
        &self.inner.settings
    }

    /// How many of the link's connections have answered a call: it grows
    /// when the next hop is back after an outage.
    pub fn answered_connections(&self) -> u64 {
        self.inner.answered_connections.load(Ordering::Relaxed)
    }

    /// Labels of every target, in order.
    pub fn labels(&self) -> Vec<String> {
        self.inner.targets.iter().map(|t| t.label.clone()).collect()
    }

    /// Sends a request with `head` (its path is kept, scheme and authority
    /// are the target's) and `body`, and waits for the response headers.
    /// Fails with `UNAVAILABLE` naming the hop when the link cannot be had
    /// in time or breaks before the response.
    ///
    /// With `whole_message` (a method whose caller sends its one message
    /// right after the headers: every method of the contract), the headers
    /// wait for the body's first frame, so both leave in one write and the
    /// next hop gets the request whole rather than in two wake-ups.
    pub async fn send(
        &self,
        head: request::Parts,
        mut body: Incoming,
        whole_message: bool,
    ) -> Result<(Response<RecvStream>, Hop), BridgeStatus> {
        let mut first = None;
        if whole_message && !body.is_end_stream() {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                Some(Ok(frame)) => first = Some(frame),
                Some(Err(_)) => return Err(BridgeStatus::new(Code::Cancelled, "the caller cancelled the call")),
                None => {}
            }
        }
        let end_of_stream = first.is_none() && body.is_end_stream();
        let wait_until = Instant::now() + self.inner.settings.connect_wait;
        loop {
            let conn = self.ready(wait_until, self.inner.settings.connect_wait).await?;
            let target = &self.inner.targets[conn.target];
            let mut outbound = Request::new(());
            *outbound.method_mut() = head.method.clone();
            *outbound.uri_mut() = target_uri(target, &head.uri);
            *outbound.headers_mut() = head.headers.clone();
            let opened = match conn.sender.clone().ready().await {
                Ok(mut sender) => sender.send_request(outbound, end_of_stream),
                Err(error) => Err(error),
            };
            let (response, stream) = match opened {
                Ok(opened) => opened,
                // Anything but a misuse means the connection is gone or going
                // away and the stream was never opened: safe to try again on
                // a fresh connection.
                Err(error) if error.is_io() || error.reason().is_some() => {
                    tracing::debug!(peer = %target.label, error = %describe_h2_error(&error), "connection closed before the call was sent; retrying it on a new connection");
                    self.forget(conn.generation);
                    continue;
                }
                Err(error) => {
                    return Err(BridgeStatus::new(
                        Code::Internal,
                        format!("{}: the call could not be sent on: {error}", target.label),
                    ))
                }
            };
            if !end_of_stream {
                RequestPipe::start(first, body, stream).await;
            }
            let hop = Hop { label: self.inner.hops[conn.target].clone(), ended: conn.ended.clone() };
            return match response.await {
                Ok(response) => {
                    if !conn.answered.swap(true, Ordering::Relaxed) {
                        self.inner.answered_connections.fetch_add(1, Ordering::Relaxed);
                        self.inner.lock().strikes = 0;
                    }
                    Ok((response, hop))
                }
                Err(error) => Err(BridgeStatus::new(
                    Code::Unavailable,
                    format!(
                        "{}: call failed after it was sent (not retried): {}",
                        target.label,
                        hop.why_broken(&error)
                    ),
                )),
            };
        }
    }

    /// A live connection, connecting if needed, waiting at most until
    /// `wait_until` (`wait` after the caller began, for the message).
    async fn ready(&self, wait_until: Instant, wait: Duration) -> Result<Conn, BridgeStatus> {
        // The common case, a live connection: one lock, nothing else.
        if let Some(conn) = self.inner.lock().conn.as_ref().filter(|c| !c.is_closed()) {
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
                    if !conn.is_closed() {
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
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(64 * 1024)
        // hyper's client limits, kept: a 16 KiB header block from the peer and
        // 1 MiB of queued request data per stream.
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .enable_push(false);
    let (sender, mut connection) = tokio::time::timeout(settings.connect_timeout, builder.handshake::<_, Bytes>(io))
        .await
        .map_err(|_| "HTTP/2 handshake timed out".to_string())?
        .map_err(|e| format!("HTTP/2 handshake failed: {}", describe_h2_error(&e)))?;
    let ping_pong = connection.ping_pong();

    let answered = Arc::new(AtomicBool::new(false));
    let ended = Arc::new(OnceLock::new());
    let generation = {
        let mut state = inner.lock();
        state.generation += 1;
        state.connects += 1;
        state.preferred = index;
        state.connecting = false;
        state.last_error = None;
        state.conn = Some(Conn {
            sender,
            target: index,
            generation: state.generation,
            answered: answered.clone(),
            ended: ended.clone(),
        });
        state.generation
    };
    tracing::info!(role = inner.role, peer = %target.label, "connected");
    inner.changed.notify_waiters();

    let inner = inner.clone();
    let keepalive = keepalive(ping_pong, settings.keepalive_interval, settings.keepalive_timeout);
    tokio::spawn(async move {
        let outcome = tokio::select! {
            outcome = &mut connection => outcome.map_err(|e| describe_h2_error(&e)),
            why = keepalive => Err(why),
        };
        let label = &inner.targets[index].label;
        let why = match outcome {
            Ok(()) => {
                tracing::info!(role = inner.role, peer = %label, "connection closed");
                "connection closed by the peer".to_string()
            }
            Err(cause) => {
                tracing::warn!(role = inner.role, peer = %label, error = %cause, "connection lost");
                let silent = !answered.load(Ordering::Relaxed) && !cause.contains("alert");
                let hint = if silent {
                    " (it hung up before answering anything: a peer that refuses our client certificate after the TLS 1.3 handshake does this; see its log)"
                } else {
                    ""
                };
                inner.lock().last_error = Some(format!("{label}: connection lost: {cause}{hint}"));
                format!("connection lost: {cause}")
            }
        };
        // Recorded before the connection is dropped, so the streams it fails
        // name this cause.
        let _ = ended.set(why);
        drop(connection);
        let mut state = inner.lock();
        if state.conn.as_ref().map(|c| c.generation) == Some(generation) {
            state.conn = None;
        }
        if answered.load(Ordering::Relaxed) {
            state.strikes = 0;
            state.not_before = None;
        } else {
            state.strike(&inner.settings);
        }
    });
    Ok(())
}

/// Pings the peer every `interval`; returns, ending the connection, when a
/// ping goes unanswered for `timeout`. Without an interval it never returns.
async fn keepalive(ping_pong: Option<PingPong>, interval: Option<Duration>, timeout: Duration) -> String {
    let (Some(mut ping_pong), Some(interval)) = (ping_pong, interval) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection failed; it reports that itself.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return format!("keepalive ping unanswered for {} ms", timeout.as_millis()),
        }
    }
}

/// Carries a request body from the caller's stream to the upstream stream,
/// frame by frame, holding at most one frame beyond what the upstream's flow
/// control lets through: after each frame it waits until h2 has room again
/// before reading the next, so a slow peer holds the caller back instead of
/// the bridge buffering for it.
struct RequestPipe {
    /// A frame already read from `body`, to send before reading on.
    first: Option<Frame<Bytes>>,
    body: Incoming,
    stream: SendStream<Bytes>,
    /// A frame was handed to h2; wait for room before reading the next.
    gated: bool,
}

impl RequestPipe {
    /// Runs the pipe as far as it goes now (a unary request's one message
    /// is usually there already, and then it travels in the same write as
    /// the request's headers) and hands the rest to a task of its own.
    async fn start(first: Option<Frame<Bytes>>, body: Incoming, stream: SendStream<Bytes>) {
        let mut pipe = RequestPipe { first, body, stream, gated: false };
        let done = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut pipe).poll(cx).is_ready())).await;
        if !done {
            tokio::spawn(pipe);
        }
    }

    /// Whether the body ends right after the frame just read. Callers often
    /// end a stream with an empty DATA frame right behind the message
    /// (tonic does); when that frame is already here it is folded into
    /// the message's own (END_STREAM on the message), so the next hop gets
    /// the whole request in one write instead of a second write (and a
    /// wake-up) for an empty frame. Anything else read ahead waits in
    /// `first` for its turn; `Err` when the caller broke off.
    fn end_follows(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        if self.body.is_end_stream() {
            return Ok(true);
        }
        if self.first.is_some() {
            return Ok(false);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => Ok(false),
            Poll::Ready(None) => Ok(true),
            Poll::Ready(Some(Ok(next))) => {
                if next.data_ref().is_some_and(Bytes::is_empty) && self.body.is_end_stream() {
                    return Ok(true);
                }
                self.first = Some(next);
                Ok(false)
            }
            Poll::Ready(Some(Err(_))) => Err(()),
        }
    }
}

impl Future for RequestPipe {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if this.gated {
                this.stream.reserve_capacity(1);
                while this.stream.capacity() == 0 {
                    match this.stream.poll_capacity(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    }
                }
                this.gated = false;
            }
            let next = match this.first.take() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(&mut this.body).poll_frame(cx),
            };
            match next {
                Poll::Pending => {
                    // The peer reset the stream: nothing more to carry.
                    if this.stream.poll_reset(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let ended = match frame.into_data() {
                        Ok(data) => {
                            let end = match this.end_follows(cx) {
                                Ok(end) => end,
                                Err(()) => {
                                    this.stream.send_reset(Reason::CANCEL);
                                    return Poll::Ready(());
                                }
                            };
                            this.stream.send_data(data, end).map(|()| end)
                        }
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => this.stream.send_trailers(trailers).map(|()| true),
                            Err(_) => Ok(false),
                        },
                    };
                    match ended {
                        Ok(false) => this.gated = true,
                        Ok(true) | Err(_) => return Poll::Ready(()),
                    }
                }
                Poll::Ready(None) => {
                    let _ = this.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                // The caller reset its stream or its connection broke: the
                // upstream stream is cancelled too.
                Poll::Ready(Some(Err(_))) => {
                    this.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
            }
        }
    }
}

fn target_uri(target: &Target, original: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(target.scheme.clone());
    parts.authority = Some(target.authority.clone());
    parts.path_and_query = original.path_and_query().cloned();
    Uri::from_parts(parts).unwrap_or_else(|_| original.clone())
}
