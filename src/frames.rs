//! The direct path of both roles: the HTTP/2 frames of one client
//! connection carried onto a connection of its own to the next hop (the
//! shim's to the relay, the relay's to the driver).
//!
//! A general HTTP/2 server and client in series (the waiting path below)
//! run two stream state machines, two flow controllers and a task per call
//! on every hop. Here one task decodes each frame, decides, and encodes it
//! again for the other side. Flow control, stream states and settings stay
//! the two ends' own (WINDOW_UPDATE, SETTINGS and PING pass through), so
//! the bridge buffers nothing beyond the frames in hand and applies
//! backpressure by reading a side only when the other can take more.
//!
//! What stays the bridge's:
//! - header blocks are decoded and encoded again per hop (HPACK state is
//!   per connection): `:authority` and `:scheme` become the next hop's and
//!   hop-by-hop headers are dropped; no frame flag crosses without its
//!   fields (padding and priority are not carried);
//! - each new stream is admitted by the forwarder exactly as on the waiting
//!   path (path, policy, `grpc-timeout`), health checks are answered here;
//! - deadlines, draining, a lost next hop and an unanswered keepalive ping
//!   end calls with a gRPC status naming the hop;
//! - frames of a stream the bridge ended are dropped, and their bytes are
//!   handed back to the sender's connection window.
//!
//! When the next hop cannot be reached (or does not answer HTTP/2) as the
//! client connects, the connection is served by the waiting path: its
//! calls wait for the hop (bounded), are retried on another target when
//! never sent, and so on. That connection is retired (GOAWAY, calls in
//! flight finish) once the link has a connection that answers, so the
//! client's next connection comes here.
//!
//! When the next hop is lost under the direct path, the calls it carried
//! end UNAVAILABLE and a new connection is dialled under the same client
//! connection (a client stack that has heard a GOAWAY fails the calls it
//! starts next, so the client is never sent away for this). Calls made
//! meanwhile wait for it, bounded as on the waiting path, and go out in
//! order once it answers. The new connection learns the client's settings
//! and receive window; where the two ends' connection windows then differ,
//! frames wait in the bridge until the receiver has room.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use h2::frame::{self, BytesStr, Data, Frame, GoAway, Headers, Ping, Pseudo, Reason, Reset, StreamId, WindowUpdate};
use h2::Codec;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::connect::{BoxIo, Io};
use crate::forward::{status_name, strip_hop_by_hop, Admission, CallLog, Forwarder};
use crate::link::Link;
use crate::listen::serve::{opening, serve_http2, ServerSettings};
use crate::policy::Caller;
use crate::shutdown::Shutdown;
use crate::status::{BridgeStatus, Code};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frames queued for one side before the bridge stops reading: one frame
/// read makes at most three to send, so this bounds a connection's memory.
const QUEUE_LIMIT: usize = 64;

/// How long a graceful goodbye waits for the client's answer to its PING.
const GOODBYE_GRACE: Duration = Duration::from_secs(1);

/// A health check's request body, at most.
const HEALTH_BODY_LIMIT: usize = 4096;

/// Serves one accepted client connection (already authenticated).
pub async fn serve<I: Io>(
    io: I,
    forwarder: Forwarder,
    caller: Caller,
    settings: &ServerSettings,
    shutdown: &Shutdown,
    peer: &str,
) {
    let Some(mut io) = opening(io, settings, forwarder.metrics(), peer).await else {
        return;
    };
    let link = forwarder.link().clone();
    if !forwarder.policy().admits(&caller) {
        // Every call is refused; such a client must not make the bridge
        // open a connection to the next hop on its behalf.
        let _serving = forwarder.metrics().serving(false);
        let service = forwarder.for_caller(caller);
        return serve_http2(io, service, settings, shutdown, peer, std::future::pending()).await;
    }
    let (upstream, first, hop) = match open_upstream(&link).await {
        Ok(opened) => opened,
        Err(why) => {
            tracing::info!(peer, error = %why, "next hop unreachable as the client connected; this connection's calls wait for it");
            let _serving = forwarder.metrics().serving(false);
            let answered = link.answered_connections();
            let retire = async move {
                // A connection of the link answering means the hop is back.
                while link.answered_connections() == answered {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            };
            return serve_http2(io, forwarder.for_caller(caller), settings, shutdown, peer, retire).await;
        }
    };
    let mut preface = [0u8; PREFACE.len()];
    if io.read_exact(&mut preface).await.is_err() {
        return;
    }
    let _serving = forwarder.metrics().serving(true);
    let mut relay = FrameRelay::new(io, upstream, forwarder, Arc::new(caller), hop, settings, shutdown);
    relay.on_upstream_frame(Frame::Settings(first));
    std::future::poll_fn(|cx| relay.poll_run(cx)).await;
    tracing::debug!(peer, "frame relay ended");
}

/// The next hop as a frame relay sees it.
struct Hop {
    scheme: BytesStr,
    authority: BytesStr,
    label: Arc<str>,
    keepalive: Option<(Duration, Duration)>,
}

/// Dials the next hop and opens HTTP/2 on it: the preface and a SETTINGS
/// of defaults (the client's own follow when it sends them), then waits
/// for the peer's SETTINGS, so that a peer which takes the connection and
/// hangs up (a relay refusing our certificate after a TLS 1.3 handshake)
/// counts as unreachable here rather than after the client's calls went
/// to it. The peer's SETTINGS are returned to be passed on to the client.
async fn open_upstream(link: &Link) -> Result<(Codec<BoxIo, Bytes>, frame::Settings, Hop), String> {
    let dialed = link.dial().await?;
    let label = dialed.label.clone();
    let opened = async {
        let mut io = dialed.io;
        io.write_all(PREFACE).await.map_err(|e| crate::connect::describe_io_error(&e))?;
        let mut codec: Codec<BoxIo, Bytes> = Codec::new(io);
        codec.buffer(frame::Settings::default().into()).map_err(|e| format!("{e:?}"))?;
        std::future::poll_fn(|cx| codec.flush(cx)).await.map_err(|e| crate::connect::describe_io_error(&e))?;
        match futures_util::StreamExt::next(&mut codec).await {
            Some(Ok(Frame::Settings(settings))) if !settings.is_ack() => Ok((codec, settings)),
            Some(Ok(_)) => Err("it did not open with SETTINGS: not an HTTP/2 server".to_string()),
            Some(Err(h2::proto::Error::Io(_, Some(message)))) => Err(message),
            Some(Err(error)) => Err(format!("{error:?}")),
            None => Err("it closed the connection before answering (a peer that refuses our client certificate after the TLS 1.3 handshake does this; see its log)".to_string()),
        }
    };
    let (codec, settings) = match tokio::time::timeout(dialed.answer_timeout, opened).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(why)) => {
            let why = format!("{label}: {why}");
            link.dial_failed(why.clone());
            return Err(why);
        }
        Err(_) => {
            let why = format!("{label}: no HTTP/2 answer within {} ms", dialed.answer_timeout.as_millis());
            link.dial_failed(why.clone());
            return Err(why);
        }
    };
    let text = |value: &str| BytesStr::try_from(Bytes::copy_from_slice(value.as_bytes())).expect("valid UTF-8");
    let hop = Hop {
        scheme: text(dialed.scheme.as_str()),
        authority: text(dialed.authority.as_str()),
        label,
        keepalive: dialed.keepalive,
    };
    Ok((codec, settings, hop))
}

/// A call the bridge forwards.
struct Call {
    log: CallLog,
    streaming: bool,
    deadline: Option<(Instant, Duration)>,
    /// Frames of a call that waits for the next hop's connection (its
    /// HEADERS first); `None` once it was sent.
    waiting: Option<Vec<Frame>>,
    /// The upstream's response HEADERS went to the client.
    answered: bool,
    /// The client ended its request (END_STREAM seen).
    client_done: bool,
    /// The upstream ended its response.
    upstream_done: bool,
    /// Recorded in the metrics and the log.
    finished: bool,
    status: Option<HeaderValue>,
    bytes: u64,
}

impl Call {
    fn finish(&mut self, code: &'static str) {
        if !self.finished {
            self.finished = true;
            self.log.ended(code, self.bytes);
        }
    }
}

/// What `open_upstream` yields.
type Opened = (Codec<BoxIo, Bytes>, frame::Settings, Hop);

/// The next hop's connection.
enum Upstream {
    /// Frames cross.
    Up(Codec<BoxIo, Bytes>),
    /// It sent a GOAWAY: the calls it has may finish until the instant
    /// (watches end at once); new calls wait for the next connection.
    Going(Codec<BoxIo, Bytes>, Instant),
    /// Gone: the next connection is being dialled.
    Down(Pin<Box<dyn Future<Output = Opened> + Send>>),
}

impl Upstream {
    /// The connection, while there is one.
    fn codec(&mut self) -> Option<&mut Codec<BoxIo, Bytes>> {
        match self {
            Upstream::Up(codec) | Upstream::Going(codec, _) => Some(codec),
            Upstream::Down(_) => None,
        }
    }
}

/// Frames for one side held behind a DATA frame its window cannot take
/// yet, in order, and their DATA bytes.
#[derive(Default)]
struct Held {
    frames: VecDeque<Frame>,
    bytes: i64,
}

impl Held {
    /// `frame` to send now, taking its DATA bytes from `window`; or `None`
    /// when it is held (behind others, or beyond the window).
    fn pass(&mut self, frame: Frame, window: &mut i64) -> Option<Frame> {
        let len = data_len(&frame);
        if !self.frames.is_empty() || len > *window {
            self.bytes += len;
            self.frames.push_back(frame);
            return None;
        }
        *window -= len;
        Some(frame)
    }

    /// The first held frame, once `window` has room for it.
    fn release(&mut self, window: &mut i64) -> Option<Frame> {
        let len = data_len(self.frames.front()?);
        if len > *window {
            return None;
        }
        self.bytes -= len;
        *window -= len;
        self.frames.pop_front()
    }

    /// Drops the frames of stream `id`; whether any DATA bytes went.
    fn drop_stream(&mut self, id: StreamId) -> bool {
        let before = self.bytes;
        let bytes = &mut self.bytes;
        self.frames.retain(|frame| {
            let mine = frame_stream(frame) == Some(id);
            if mine {
                *bytes -= data_len(frame);
            }
            !mine
        });
        before != self.bytes
    }
}

/// The window every HTTP/2 connection starts with.
const INITIAL_WINDOW: i64 = 65_535;

/// How long the calls of an upstream that sent a GOAWAY may take to finish
/// before they are cut and the connection is replaced.
const GOING_GRACE: Duration = Duration::from_secs(5);

struct FrameRelay<C> {
    client: Codec<C, Bytes>,
    upstream: Upstream,
    to_client: VecDeque<Frame>,
    to_upstream: VecDeque<Frame>,
    calls: HashMap<StreamId, Call>,
    /// Until when each call waiting for the next hop's connection may wait.
    wait_until: BTreeSet<(Instant, u32)>,
    /// Health checks being read: their request bodies so far.
    health: HashMap<StreamId, BytesMut>,
    deadlines: BTreeSet<(Instant, u32)>,
    timer: Pin<Box<Sleep>>,
    /// Highest stream the client opened.
    last_stream: StreamId,
    // Connection-level flow control. Normally the two ends' windows match
    // and frames cross as they come; after a reconnect they may not, and
    // the bridge then holds frames until the receiving side has room.
    /// What the client may still send us, as the client counts it.
    client_send: i64,
    /// What we may still send the client.
    client_recv: i64,
    /// What we may still send the upstream.
    up_send: i64,
    /// What the upstream may still send us, as it counts it.
    up_recv: i64,
    /// Frames for the upstream behind a DATA frame its window cannot take yet.
    held_up: Held,
    /// The same toward the client.
    held_down: Held,
    /// The client's SETTINGS so far, for the next hop's next connection.
    client_settings: frame::Settings,
    forwarder: Forwarder,
    link: Link,
    caller: Arc<Caller>,
    authority: BytesStr,
    scheme: BytesStr,
    label: Arc<str>,
    /// Why the last connection attempt failed (shared with the dialler).
    dial_error: Arc<std::sync::Mutex<String>>,
    max_streams: usize,
    header_list_limit: u32,
    client_pings: Option<Pinger>,
    upstream_pings: Option<Pinger>,
    /// SETTINGS acknowledgements of the upstream's that answer the bridge's
    /// own SETTINGS, not the client's.
    acks_to_swallow: u32,
    draining: Pin<Box<WaitForCancellationFutureOwned>>,
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
    drain_seen: bool,
    /// A graceful goodbye under way: the PING payload that ends it, and
    /// when it ends anyway.
    goodbye: Option<([u8; 8], Instant)>,
    /// The final GOAWAY went out.
    said_goodbye: bool,
    /// The last stream named in a GOAWAY to the client so far.
    client_goaway: Option<StreamId>,
    /// Send what is queued for the client, then end.
    closing: bool,
    done: bool,
}

impl<C> FrameRelay<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    #[allow(clippy::too_many_arguments)]
    fn new(
        client: C,
        upstream: Codec<BoxIo, Bytes>,
        forwarder: Forwarder,
        caller: Arc<Caller>,
        hop: Hop,
        settings: &ServerSettings,
        shutdown: &Shutdown,
    ) -> Self {
        let mut client = Codec::new(client);
        client.set_max_recv_header_list_size(settings.max_header_list_size as usize);
        let now = Instant::now();
        let client_keepalive = settings.keepalive_interval.map(|every| (every, settings.keepalive_timeout));
        let link = forwarder.link().clone();
        let mut relay = FrameRelay {
            client,
            upstream: Upstream::Up(upstream),
            to_client: VecDeque::new(),
            to_upstream: VecDeque::new(),
            calls: HashMap::new(),
            wait_until: BTreeSet::new(),
            health: HashMap::new(),
            deadlines: BTreeSet::new(),
            timer: Box::pin(tokio::time::sleep_until(now + Duration::from_secs(3600))),
            last_stream: StreamId::zero(),
            client_send: INITIAL_WINDOW,
            client_recv: INITIAL_WINDOW,
            up_send: INITIAL_WINDOW,
            up_recv: INITIAL_WINDOW,
            held_up: Held::default(),
            held_down: Held::default(),
            client_settings: frame::Settings::default(),
            forwarder,
            link,
            caller,
            authority: hop.authority.clone(),
            scheme: hop.scheme.clone(),
            label: hop.label.clone(),
            dial_error: Arc::default(),
            max_streams: settings.max_concurrent_streams as usize,
            header_list_limit: settings.max_header_list_size,
            client_pings: client_keepalive.map(|k| Pinger::new(k, now)),
            upstream_pings: None,
            acks_to_swallow: 0,
            draining: Box::pin(shutdown.draining().clone().cancelled_owned()),
            stopping: Box::pin(shutdown.stopping().clone().cancelled_owned()),
            drain_seen: false,
            goodbye: None,
            said_goodbye: false,
            client_goaway: None,
            closing: false,
            done: false,
        };
        relay.adopt(hop);
        relay
    }

    /// Takes on a freshly opened connection's hop: its names, its pings,
    /// and the acknowledgement of the bridge's own opening SETTINGS.
    fn adopt(&mut self, hop: Hop) {
        self.authority = hop.authority;
        self.scheme = hop.scheme;
        self.label = hop.label;
        self.upstream_pings = hop.keepalive.map(|k| Pinger::new(k, Instant::now()));
        self.acks_to_swallow = 1;
        self.up_send = INITIAL_WINDOW;
        self.up_recv = INITIAL_WINDOW;
        let limit = self.header_list_limit as usize;
        if let Some(codec) = self.codec() {
            codec.set_max_recv_header_list_size(limit);
        }
    }

    fn codec(&mut self) -> Option<&mut Codec<BoxIo, Bytes>> {
        self.upstream.codec()
    }

    fn is_up(&self) -> bool {
        matches!(self.upstream, Upstream::Up(_))
    }

    fn is_down(&self) -> bool {
        matches!(self.upstream, Upstream::Down(_))
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut busy = self.poll_signals(cx);
            if self.done {
                return Poll::Ready(());
            }
            if !self.closing {
                busy |= self.read_client(cx);
                busy |= self.read_upstream(cx);
            }
            if let Some(codec) = self.upstream.codec() {
                match pump(codec, &mut self.to_upstream, cx) {
                    Ok((moved, _)) => busy |= moved,
                    Err(e) => {
                        self.lose_upstream(&crate::connect::describe_io_error(&e));
                        busy = true;
                    }
                }
            } else {
                self.to_upstream.clear();
            }
            match pump(&mut self.client, &mut self.to_client, cx) {
                Ok((moved, flushed)) => {
                    busy |= moved;
                    if self.closing && flushed && self.to_client.is_empty() {
                        return Poll::Ready(());
                    }
                }
                Err(_) => return Poll::Ready(()),
            }
            if !busy {
                return Poll::Pending;
            }
        }
    }

    /// Draining, stopping, timers and the dialler. `true` when something
    /// happened (and the loop should go round again).
    fn poll_signals(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        if self.stopping.as_mut().poll(cx).is_ready() {
            self.finish_all("UNAVAILABLE");
            self.done = true;
            return true;
        }
        if !self.drain_seen && self.draining.as_mut().poll(cx).is_ready() {
            self.drain_seen = true;
            self.begin_drain();
            busy = true;
        }
        if let Upstream::Down(dialling) = &mut self.upstream {
            if let Poll::Ready((codec, settings, hop)) = dialling.as_mut().poll(cx) {
                self.resume(codec, settings, hop);
                busy = true;
            }
        }
        loop {
            let now = Instant::now();
            while let Some(id) = pop_due(&mut self.deadlines, now) {
                if let Some((_, budget)) = self.calls.get(&id).and_then(|c| c.deadline) {
                    let message = format!(
                        "{}: deadline of {} ms expired before {} answered",
                        self.forwarder.role(),
                        budget.as_millis(),
                        self.label
                    );
                    self.end_call(id, BridgeStatus::new(Code::DeadlineExceeded, message), true);
                    busy = true;
                }
            }
            while let Some(id) = pop_due(&mut self.wait_until, now) {
                if self.calls.get(&id).is_some_and(|c| c.waiting.is_some()) {
                    let wait = self.link.settings().connect_wait.as_millis();
                    let cause = self.dial_error.lock().map(|e| e.clone()).unwrap_or_default();
                    let why = format!("{} unreachable after waiting {wait} ms: {cause}", self.label);
                    self.end_call(id, BridgeStatus::new(Code::Unavailable, why), false);
                    busy = true;
                }
            }
            if let Upstream::Going(_, until) = &self.upstream {
                let until = *until;
                let open = self.calls.values().any(|c| c.waiting.is_none());
                if !open || until <= now {
                    self.replace_upstream("it is going away");
                    busy = true;
                }
            }
            if let Some(pinger) = &mut self.client_pings {
                match pinger.due(now) {
                    Ok(Some(ping)) => {
                        self.to_client.push_back(ping.into());
                        busy = true;
                    }
                    Ok(None) => {}
                    Err(timeout) => {
                        tracing::warn!(
                            client = %self.caller,
                            timeout_ms = timeout.as_millis() as u64,
                            "client did not answer a keepalive ping; connection closed"
                        );
                        self.finish_all("UNAVAILABLE");
                        self.done = true;
                        return true;
                    }
                }
            }
            if !self.is_down() {
                if let Some(pinger) = &mut self.upstream_pings {
                    match pinger.due(now) {
                        Ok(Some(ping)) => {
                            self.to_upstream.push_back(ping.into());
                            busy = true;
                        }
                        Ok(None) => {}
                        Err(timeout) => {
                            self.lose_upstream(&format!("keepalive ping unanswered for {} ms", timeout.as_millis()));
                            busy = true;
                        }
                    }
                }
            }
            if self.goodbye.is_some_and(|(_, until)| until <= now) {
                self.finish_goodbye();
                busy = true;
            }
            let upstream_pings = self.upstream_pings.as_ref().filter(|_| !self.is_down());
            let going = match &self.upstream {
                Upstream::Going(_, until) => Some(*until),
                _ => None,
            };
            let wake = [
                self.client_pings.as_ref().map(Pinger::wake),
                upstream_pings.map(Pinger::wake),
                self.deadlines.first().map(|&(at, _)| at),
                self.wait_until.first().map(|&(at, _)| at),
                self.goodbye.map(|(_, until)| until),
                going,
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(wake) = wake else {
                return busy;
            };
            if self.timer.deadline() != wake {
                self.timer.as_mut().reset(wake);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return busy;
            }
        }
    }

    /// Room to queue what another frame read may produce.
    fn room(&self) -> bool {
        self.to_client.len() < QUEUE_LIMIT && self.to_upstream.len() < QUEUE_LIMIT
    }

    fn read_client(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        while self.room() && !self.closing && !self.done {
            match Pin::new(&mut self.client).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(frame))) => self.on_client_frame(frame),
                Poll::Ready(Some(Err(error))) => self.client_error(error),
                Poll::Ready(None) => {
                    self.finish_all("NONE");
                    self.done = true;
                }
            }
            busy = true;
        }
        busy
    }

    fn read_upstream(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        while self.room() && !self.closing && !self.done {
            let Some(codec) = self.codec() else {
                break;
            };
            match Pin::new(codec).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(frame))) => self.on_upstream_frame(frame),
                Poll::Ready(Some(Err(h2::proto::Error::Reset(id, reason, _)))) => {
                    // A header block of the upstream's the bridge could not take.
                    if self.calls.contains_key(&id) {
                        let why = format!("{}: sent an answer the bridge cannot read ({reason:?})", self.label);
                        self.end_call(id, BridgeStatus::new(Code::Internal, why), true);
                    }
                }
                Poll::Ready(Some(Err(h2::proto::Error::GoAway(_, reason, _)))) => {
                    self.lose_upstream(&format!("protocol error ({reason:?})"));
                }
                Poll::Ready(Some(Err(h2::proto::Error::Io(kind, message)))) => {
                    self.lose_upstream(&message.unwrap_or_else(|| io::Error::from(kind).to_string()));
                }
                Poll::Ready(None) => self.lose_upstream("connection closed by the peer"),
            }
            busy = true;
        }
        busy
    }

    fn on_client_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Headers(headers) => self.client_headers(headers),
            Frame::Data(data) => self.client_data(data),
            Frame::Reset(reset) => {
                let id = reset.stream_id();
                self.health.remove(&id);
                if let Some(mut call) = self.calls.remove(&id) {
                    self.forget(id, &call);
                    call.finish("NONE");
                    if call.waiting.is_none() {
                        self.send_upstream(reset.into());
                    }
                }
            }
            Frame::Settings(settings) => {
                if settings.is_ack() {
                    // Acknowledges the upstream's SETTINGS, which died with
                    // a lost connection.
                    if !self.is_down() {
                        self.to_upstream.push_back(settings.into());
                    }
                    return;
                }
                if let Some(size) = settings.header_table_size() {
                    self.client.set_send_header_table_size(size as usize);
                }
                if let Some(size) = settings.max_frame_size() {
                    self.client.set_max_send_frame_size(size as usize);
                }
                merge_settings(&mut self.client_settings, &settings);
                if self.is_down() {
                    // Acknowledged here; the next connection gets them all.
                    self.to_client.push_back(frame::Settings::ack().into());
                } else {
                    self.apply_client_settings(&settings);
                    self.to_upstream.push_back(settings.into());
                }
            }
            Frame::Ping(ping) => {
                if ping.is_ack() && self.goodbye.is_some_and(|(payload, _)| *ping.payload() == payload) {
                    self.finish_goodbye();
                } else if self.client_pings.as_mut().is_some_and(|p| p.answered(&ping)) {
                } else if self.is_down() {
                    if !ping.is_ack() {
                        self.to_client.push_back(Ping::pong(ping.into_payload()).into());
                    }
                } else {
                    self.to_upstream.push_back(ping.into());
                }
            }
            Frame::WindowUpdate(update) => {
                let id = update.stream_id();
                if id.is_zero() {
                    self.client_recv += i64::from(update.size_increment());
                    self.release_held_down();
                    self.grant_upstream();
                } else if self.calls.get(&id).is_some_and(|c| c.waiting.is_none()) {
                    self.to_upstream.push_back(update.into());
                }
            }
            // The client is leaving; the connection ends when it closes.
            Frame::GoAway(_) | Frame::Priority(_) => {}
            Frame::PushPromise(_) => self.client_error(h2::proto::Error::GoAway(
                Bytes::from_static(b"a client may not push"),
                Reason::PROTOCOL_ERROR,
                h2::proto::Initiator::Library,
            )),
        }
    }

    /// What the client's SETTINGS mean for the upstream connection.
    fn apply_client_settings(&mut self, settings: &frame::Settings) {
        if let Some(codec) = self.codec() {
            if let Some(size) = settings.header_table_size() {
                codec.set_recv_header_table_size(size as usize);
            }
            if let Some(size) = settings.max_frame_size() {
                codec.set_max_recv_frame_size(size as usize);
            }
        }
    }

    fn client_headers(&mut self, headers: Headers) {
        let id = headers.stream_id();
        let end = headers.is_end_stream();
        if let Some(call) = self.calls.get_mut(&id) {
            // The request's trailers.
            call.client_done = true;
            let (_, mut fields) = headers.into_parts();
            strip_hop_by_hop(&mut fields);
            let frame = rebuilt(id, Pseudo::default(), fields, true);
            match &mut call.waiting {
                Some(frames) => frames.push(frame),
                None => self.send_upstream(frame),
            }
            self.forget_if_done(id);
            return;
        }
        if self.health.contains_key(&id) || id <= self.last_stream {
            return;
        }
        if !id.is_client_initiated() {
            return self.client_error(h2::proto::Error::GoAway(
                Bytes::from_static(b"even stream id from a client"),
                Reason::PROTOCOL_ERROR,
                h2::proto::Initiator::Library,
            ));
        }
        self.last_stream = id;
        if self.said_goodbye {
            // Past the final GOAWAY's last stream: the client takes it as
            // refused (never processed) and may send it elsewhere.
            return;
        }
        if headers.is_over_size() {
            let limit = self.header_list_limit;
            let status = BridgeStatus::new(
                Code::ResourceExhausted,
                format!("{}: request headers larger than {limit} bytes", self.forwarder.role()),
            );
            return self.answer(id, &status, end);
        }
        if self.calls.len() + self.health.len() >= self.max_streams {
            self.to_client.push_back(Reset::new(id, Reason::REFUSED_STREAM).into());
            return;
        }
        let (mut pseudo, mut fields) = headers.into_parts();
        let path = pseudo.path.as_deref().unwrap_or("");
        let admitted = match self.forwarder.admit(path, &fields, &self.caller) {
            Ok(Admission::Call(admitted)) => admitted,
            Ok(Admission::Health) => {
                if end {
                    self.answer_health(id, &[]);
                } else {
                    self.health.insert(id, BytesMut::new());
                }
                return;
            }
            Err(status) => return self.answer(id, &status, end),
        };
        if self.drain_seen && admitted.streaming {
            let status = BridgeStatus::new(Code::Unavailable, self.forwarder.shutting_down().to_string());
            return self.answer(id, &status, end);
        }
        strip_hop_by_hop(&mut fields);
        pseudo.authority = Some(self.authority.clone());
        pseudo.scheme = Some(self.scheme.clone());
        let now = Instant::now();
        let deadline = admitted.budget.map(|budget| (now + budget, budget));
        if let Some((at, _)) = deadline {
            self.deadlines.insert((at, u32::from(id)));
        }
        let headers = rebuilt(id, pseudo, fields, end);
        let waiting = if self.is_up() {
            None
        } else {
            // The next hop's connection is being replaced: the call waits
            // for the next one, as on the waiting path.
            self.wait_until.insert((now + self.link.settings().connect_wait, u32::from(id)));
            Some(Vec::new())
        };
        let call = Call {
            log: CallLog::new(&self.forwarder, admitted.method, self.caller.clone()),
            streaming: admitted.streaming,
            deadline,
            waiting,
            answered: false,
            client_done: end,
            upstream_done: false,
            finished: false,
            status: None,
            bytes: 0,
        };
        let sent_now = call.waiting.is_none();
        self.calls.insert(id, call);
        if sent_now {
            self.send_upstream(headers);
        } else if let Some(frames) = self.calls.get_mut(&id).and_then(|c| c.waiting.as_mut()) {
            frames.push(headers);
        }
    }

    fn client_data(&mut self, data: Data<Bytes>) {
        let id = data.stream_id();
        let end = data.is_end_stream();
        let len = data.payload().len();
        self.client_send -= len as i64;
        if let Some(call) = self.calls.get_mut(&id) {
            if data.is_padded() {
                // Padding is not kept by h2's frame type, so the windows
                // of the two ends would drift apart.
                let role = self.forwarder.role();
                let status = BridgeStatus::new(Code::Internal, format!("{role}: padded DATA frames are not supported"));
                self.end_call(id, status, true);
                return self.grant_client();
            }
            call.client_done |= end;
            let mut out = Data::new(id, data.into_payload());
            out.set_end_stream(end);
            match &mut call.waiting {
                Some(frames) => frames.push(out.into()),
                None => self.send_upstream(out.into()),
            }
            self.forget_if_done(id);
            return;
        }
        // Not forwarded: the bytes go back to the client's window.
        self.grant_client();
        if let Some(body) = self.health.get_mut(&id) {
            if body.len() + len > HEALTH_BODY_LIMIT {
                self.health.remove(&id);
                let status = BridgeStatus::new(Code::Internal, "health check request unreadable or too large");
                return self.answer(id, &status, end);
            }
            body.extend_from_slice(data.payload());
            if end {
                let body = self.health.remove(&id).unwrap_or_default();
                self.answer_health(id, &body);
            }
        }
    }

    fn on_upstream_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Headers(headers) => {
                let id = headers.stream_id();
                let end = headers.is_end_stream();
                let Some(call) = self.calls.get_mut(&id).filter(|c| c.waiting.is_none()) else {
                    return;
                };
                let (pseudo, mut fields) = headers.into_parts();
                strip_hop_by_hop(&mut fields);
                call.answered = true;
                if end {
                    call.status = fields.get("grpc-status").cloned();
                }
                self.send_client(rebuilt(id, pseudo, fields, end));
                if end {
                    self.upstream_ended(id);
                }
            }
            Frame::Data(data) => {
                let id = data.stream_id();
                let end = data.is_end_stream();
                let len = data.payload().len();
                self.up_recv -= len as i64;
                let Some(call) = self.calls.get_mut(&id).filter(|c| c.waiting.is_none()) else {
                    self.grant_upstream();
                    return;
                };
                if data.is_padded() {
                    let status = BridgeStatus::new(
                        Code::Internal,
                        format!("{}: sent padded DATA frames, which the bridge does not carry", self.label),
                    );
                    self.end_call(id, status, true);
                    return self.grant_upstream();
                }
                call.bytes += len as u64;
                let mut out = Data::new(id, data.into_payload());
                out.set_end_stream(end);
                self.send_client(out.into());
                if end {
                    self.upstream_ended(id);
                }
            }
            Frame::Reset(reset) => {
                let id = reset.stream_id();
                let Some(call) = self.calls.get(&id).filter(|c| c.waiting.is_none()) else {
                    return;
                };
                if call.upstream_done || (reset.reason() == Reason::REFUSED_STREAM && !call.answered) {
                    // The answer is complete and the upstream stops reading the
                    // request; or the upstream refused the stream before doing
                    // anything with it, which tells the client it may retry.
                    self.send_client(reset.into());
                    if let Some(mut call) = self.calls.remove(&id) {
                        self.forget(id, &call);
                        call.finish("UNAVAILABLE");
                    }
                } else {
                    let why = format!("{}: stream broken: stream reset by the peer ({:?})", self.label, reset.reason());
                    self.end_call(id, BridgeStatus::new(Code::Unavailable, why), false);
                }
            }
            Frame::Settings(mut settings) => {
                if settings.is_ack() {
                    if self.acks_to_swallow > 0 {
                        self.acks_to_swallow -= 1;
                    } else {
                        self.to_client.push_back(settings.into());
                    }
                    return;
                }
                if let Some(codec) = self.codec() {
                    if let Some(size) = settings.header_table_size() {
                        codec.set_send_header_table_size(size as usize);
                    }
                    if let Some(size) = settings.max_frame_size() {
                        codec.set_max_send_frame_size(size as usize);
                    }
                }
                if let Some(size) = settings.header_table_size() {
                    self.client.set_recv_header_table_size(size as usize);
                }
                if let Some(size) = settings.max_frame_size() {
                    self.client.set_max_recv_frame_size(size as usize);
                }
                let streams = settings.max_concurrent_streams().unwrap_or(u32::MAX);
                settings.set_max_concurrent_streams(Some(streams.min(self.max_streams as u32)));
                let list = settings.max_header_list_size().unwrap_or(u32::MAX);
                settings.set_max_header_list_size(Some(list.min(self.header_list_limit)));
                self.to_client.push_back(settings.into());
            }
            Frame::Ping(ping) => {
                if !self.upstream_pings.as_mut().is_some_and(|p| p.answered(&ping)) {
                    self.to_client.push_back(ping.into());
                }
            }
            Frame::WindowUpdate(update) => {
                let id = update.stream_id();
                if id.is_zero() {
                    self.up_send += i64::from(update.size_increment());
                    self.release_held_up();
                    self.grant_client();
                } else if self.calls.get(&id).is_some_and(|c| c.waiting.is_none()) {
                    self.send_client(update.into());
                }
            }
            Frame::GoAway(goaway) => {
                let last = goaway.last_stream_id();
                tracing::info!(peer = %self.label, reason = ?goaway.reason(), "next hop is going away; new calls wait for a new connection");
                // Streams past the last one named were not processed.
                let refused: Vec<StreamId> =
                    self.calls.iter().filter(|(id, c)| **id > last && c.waiting.is_none()).map(|(id, _)| *id).collect();
                for id in refused {
                    let why = format!("{}: going away: the call was not processed", self.label);
                    self.end_call(id, BridgeStatus::new(Code::Unavailable, why), false);
                }
                // Watches end now (the gateway re-opens them); other calls
                // may finish before the connection is replaced.
                let watches: Vec<StreamId> =
                    self.calls.iter().filter(|(_, c)| c.streaming && c.waiting.is_none()).map(|(id, _)| *id).collect();
                for id in watches {
                    let why = format!("{}: stream broken: the peer is going away", self.label);
                    self.end_call(id, BridgeStatus::new(Code::Unavailable, why), true);
                }
                if let Upstream::Up(_) = self.upstream {
                    let Upstream::Up(codec) =
                        std::mem::replace(&mut self.upstream, Upstream::Down(Box::pin(std::future::pending())))
                    else {
                        unreachable!("matched above");
                    };
                    self.upstream = Upstream::Going(codec, Instant::now() + GOING_GRACE);
                }
            }
            Frame::Priority(_) | Frame::PushPromise(_) => {}
        }
    }

    /// A frame for the upstream, in order behind any held ones; DATA waits
    /// while the upstream's window cannot take it, and is cut to its frame
    /// size.
    fn send_upstream(&mut self, frame: Frame) {
        if self.is_down() {
            return;
        }
        if let Some(frame) = self.held_up.pass(frame, &mut self.up_send) {
            self.push_upstream(frame);
        }
    }

    fn push_upstream(&mut self, frame: Frame) {
        let max = self.codec().map_or(usize::MAX, |c| c.max_send_frame_size());
        match frame {
            Frame::Data(data) if data.payload().len() > max => {
                let id = data.stream_id();
                let end = data.is_end_stream();
                let mut payload = data.into_payload();
                while !payload.is_empty() {
                    let chunk = payload.split_to(payload.len().min(max));
                    let mut piece = Data::new(id, chunk);
                    piece.set_end_stream(end && payload.is_empty());
                    self.to_upstream.push_back(piece.into());
                }
            }
            frame => self.to_upstream.push_back(frame),
        }
    }

    fn release_held_up(&mut self) {
        while let Some(frame) = self.held_up.release(&mut self.up_send) {
            self.push_upstream(frame);
        }
    }

    /// A frame of the upstream's for the client, in order behind any held
    /// ones; DATA waits while the client's window cannot take it.
    fn send_client(&mut self, frame: Frame) {
        if let Some(frame) = self.held_down.pass(frame, &mut self.client_recv) {
            self.to_client.push_back(frame);
        }
    }

    fn release_held_down(&mut self) {
        while let Some(frame) = self.held_down.release(&mut self.client_recv) {
            self.to_client.push_back(frame);
        }
    }

    /// Tells the client it may send what the upstream can take and the
    /// client does not know of yet (bytes the bridge dropped, or room the
    /// upstream gave).
    fn grant_client(&mut self) {
        if self.is_down() {
            return;
        }
        let grant = self.up_send - self.held_up.bytes - self.client_send;
        if grant > 0 {
            let grant = grant.min(i64::from(u32::MAX >> 1));
            self.to_client.push_back(WindowUpdate::new(StreamId::zero(), grant as u32).into());
            self.client_send += grant;
        }
    }

    /// The same toward the upstream: room the client gave, and bytes of
    /// the upstream's the bridge dropped.
    fn grant_upstream(&mut self) {
        if self.is_down() {
            return;
        }
        let grant = self.client_recv - self.held_down.bytes - self.up_recv;
        if grant > 0 {
            let grant = grant.min(i64::from(u32::MAX >> 1));
            self.to_upstream.push_back(WindowUpdate::new(StreamId::zero(), grant as u32).into());
            self.up_recv += grant;
        }
    }

    /// The upstream ended stream `id`'s response.
    fn upstream_ended(&mut self, id: StreamId) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.upstream_done = true;
            let code = call.status.as_ref().and_then(|v| v.to_str().ok()).map(status_name).unwrap_or("NONE");
            call.finish(code);
            if let Some((at, _)) = call.deadline {
                self.deadlines.remove(&(at, u32::from(id)));
            }
        }
        self.forget_if_done(id);
    }

    fn forget_if_done(&mut self, id: StreamId) {
        if self.calls.get(&id).is_some_and(|c| c.client_done && c.upstream_done) {
            if let Some(call) = self.calls.remove(&id) {
                self.forget(id, &call);
            }
        }
        self.maybe_close();
    }

    /// Drops a call's timers and its frames still held.
    fn forget(&mut self, id: StreamId, call: &Call) {
        if let Some((at, _)) = call.deadline {
            self.deadlines.remove(&(at, u32::from(id)));
        }
        if call.waiting.is_some() {
            self.wait_until.retain(|(_, w)| *w != u32::from(id));
        }
        if self.held_up.drop_stream(id) {
            self.release_held_up();
            self.grant_client();
        }
        if self.held_down.drop_stream(id) {
            self.release_held_down();
            self.grant_upstream();
        }
    }

    /// Ends a forwarded call with `status` to the client (and a cancel to
    /// the upstream when `cancel_upstream`); its later frames are dropped.
    fn end_call(&mut self, id: StreamId, status: BridgeStatus, cancel_upstream: bool) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        self.forget(id, &call);
        if !call.upstream_done {
            // The client has not had the whole answer: it ends with the status.
            let mut fields = status.to_header_map();
            let frame = if call.answered {
                rebuilt(id, Pseudo::default(), fields, true)
            } else {
                fields.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                rebuilt(id, Pseudo::response(StatusCode::OK), fields, true)
            };
            self.to_client.push_back(frame);
        }
        if !call.client_done {
            self.to_client.push_back(Reset::new(id, Reason::NO_ERROR).into());
        }
        if cancel_upstream && !call.upstream_done && call.waiting.is_none() {
            self.send_upstream(Reset::new(id, Reason::CANCEL).into());
        }
        if !call.finished {
            call.finished = true;
            call.log.finished_with(&status);
        }
        self.maybe_close();
    }

    /// A Trailers-Only answer of the bridge's own to a stream never forwarded.
    fn answer(&mut self, id: StreamId, status: &BridgeStatus, client_done: bool) {
        let mut fields = status.to_header_map();
        fields.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        self.to_client.push_back(rebuilt(id, Pseudo::response(StatusCode::OK), fields, true));
        if !client_done {
            self.to_client.push_back(Reset::new(id, Reason::NO_ERROR).into());
        }
    }

    fn answer_health(&mut self, id: StreamId, body: &[u8]) {
        if let Err(status) = crate::health::asked_for_us(body) {
            return self.answer(id, &status, true);
        }
        let mut head = HeaderMap::new();
        head.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        self.to_client.push_back(rebuilt(id, Pseudo::response(StatusCode::OK), head, false));
        let message = crate::health::answer(self.is_up());
        // Our own bytes in the client's window: the upstream is not told
        // of the room the client gives back for them.
        self.client_recv -= message.len() as i64;
        self.to_client.push_back(Data::new(id, message).into());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        self.to_client.push_back(rebuilt(id, Pseudo::default(), trailers, true));
    }

    fn client_error(&mut self, error: h2::proto::Error) {
        match error {
            h2::proto::Error::Reset(id, reason, _) => {
                // A header block the bridge could not take: that stream only.
                if id > self.last_stream && id.is_client_initiated() {
                    self.last_stream = id;
                }
                if self.calls.contains_key(&id) {
                    let role = self.forwarder.role();
                    let status =
                        BridgeStatus::new(Code::Internal, format!("{role}: malformed request frame ({reason:?})"));
                    self.end_call(id, status, true);
                }
                self.to_client.push_back(Reset::new(id, reason).into());
            }
            h2::proto::Error::GoAway(debug, reason, _) => {
                tracing::warn!(client = %self.caller, ?reason, "client broke the HTTP/2 protocol; connection closed");
                self.goaway_to_client(self.last_stream, reason, debug);
                self.finish_all("NONE");
                self.closing = true;
            }
            h2::proto::Error::Io(..) => {
                self.finish_all("NONE");
                self.done = true;
            }
        }
    }

    /// The upstream connection broke: every call on it ends UNAVAILABLE
    /// naming the hop, and a new connection is dialled. The client's
    /// connection stays; its new calls wait for the next hop (bounded), as
    /// on the waiting path.
    fn lose_upstream(&mut self, cause: &str) {
        if self.is_down() {
            return;
        }
        tracing::warn!(peer = %self.label, error = %cause, "next hop connection lost; dialling again");
        let ids: Vec<StreamId> = self.calls.iter().filter(|(_, c)| c.waiting.is_none()).map(|(id, _)| *id).collect();
        for id in ids {
            let why = format!("{}: stream broken: connection lost: {cause}", self.label);
            self.end_call(id, BridgeStatus::new(Code::Unavailable, why), false);
        }
        self.replace_upstream(cause);
    }

    /// Drops the upstream connection (its calls already ended or moved)
    /// and dials the next, with backoff, until one answers.
    fn replace_upstream(&mut self, cause: &str) {
        let ids: Vec<StreamId> = self.calls.iter().filter(|(_, c)| c.waiting.is_none()).map(|(id, _)| *id).collect();
        for id in ids {
            let why = format!("{}: stream broken: {cause}", self.label);
            self.end_call(id, BridgeStatus::new(Code::Unavailable, why), false);
        }
        let waiting: Vec<StreamId> = self.health.keys().copied().collect();
        for id in waiting {
            self.health.remove(&id);
            self.answer_health(id, &[]);
        }
        self.to_upstream.clear();
        self.held_up = Held::default();
        self.held_down = Held::default();
        if let Ok(mut error) = self.dial_error.lock() {
            *error = cause.to_owned();
        }
        let link = self.link.clone();
        let errors = self.dial_error.clone();
        self.upstream = Upstream::Down(Box::pin(async move {
            let settings = link.settings().clone();
            let mut backoff = settings.backoff_initial;
            loop {
                match open_upstream(&link).await {
                    Ok(opened) => return opened,
                    Err(why) => {
                        if let Ok(mut error) = errors.lock() {
                            *error = why;
                        }
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(settings.backoff_max);
            }
        }));
    }

    /// A new upstream connection answered: it learns the client's settings
    /// and the room the client has, the client learns its settings, and
    /// the calls that waited go out in order.
    fn resume(&mut self, mut codec: Codec<BoxIo, Bytes>, settings: frame::Settings, hop: Hop) {
        // Client stream ids rise, so id order is the order the calls came in.
        let mut waiting: Vec<StreamId> =
            self.calls.iter().filter(|(_, c)| c.waiting.is_some()).map(|(id, _)| *id).collect();
        waiting.sort_unstable();
        tracing::info!(peer = %hop.label, waiting = waiting.len(), "next hop connected again");
        if let Some(size) = self.client_settings.header_table_size() {
            codec.set_recv_header_table_size(size as usize);
        }
        if let Some(size) = self.client_settings.max_frame_size() {
            codec.set_max_recv_frame_size(size as usize);
        }
        self.upstream = Upstream::Up(codec);
        self.adopt(hop);
        // The bridge's opening SETTINGS and the client's, re-sent.
        self.acks_to_swallow = 2;
        self.to_upstream.push_back(self.client_settings.clone().into());
        // The room the client has beyond a new connection's default.
        self.grant_upstream();
        self.on_upstream_frame(Frame::Settings(settings));
        // Only waiting calls have a wait bound, and none waits any more.
        self.wait_until.clear();
        for id in waiting {
            let Some(frames) = self.calls.get_mut(&id).and_then(|c| c.waiting.take()) else {
                continue;
            };
            for frame in frames {
                let frame = match frame {
                    Frame::Headers(headers) if headers.is_end_headers() => {
                        let end = headers.is_end_stream();
                        let (mut pseudo, fields) = headers.into_parts();
                        if pseudo.path.is_some() {
                            pseudo.authority = Some(self.authority.clone());
                            pseudo.scheme = Some(self.scheme.clone());
                        }
                        rebuilt(id, pseudo, fields, end)
                    }
                    frame => frame,
                };
                self.send_upstream(frame);
            }
        }
        self.grant_client();
    }

    /// Draining: no new calls (GOAWAY), watches end now, other calls may
    /// finish until the bridge stops.
    fn begin_drain(&mut self) {
        self.begin_goodbye();
        let watches: Vec<StreamId> = self.calls.iter().filter(|(_, c)| c.streaming).map(|(id, _)| *id).collect();
        for id in watches {
            let status = BridgeStatus::new(Code::Unavailable, self.forwarder.shutting_down().to_string());
            self.end_call(id, status, true);
        }
        self.maybe_close();
    }

    /// Tells the client to open no more streams here, the way a graceful
    /// HTTP/2 server does: a GOAWAY naming no stream yet, and a PING. Streams
    /// the client sent before it saw the GOAWAY still arrive and are served;
    /// when the PING comes back, everything sent before it has arrived, and
    /// the final GOAWAY names the last stream.
    fn begin_goodbye(&mut self) {
        if self.goodbye.is_some() || self.said_goodbye {
            return;
        }
        let payload = rand::random();
        self.goaway_to_client(StreamId::MAX, Reason::NO_ERROR, Bytes::new());
        self.to_client.push_back(Ping::new(payload).into());
        self.goodbye = Some((payload, Instant::now() + GOODBYE_GRACE));
    }

    fn finish_goodbye(&mut self) {
        self.goodbye = None;
        self.said_goodbye = true;
        self.goaway_to_client(self.last_stream, Reason::NO_ERROR, Bytes::new());
        self.maybe_close();
    }

    /// A GOAWAY to the client; never naming a later stream than one sent
    /// before (the client would take that as a protocol error).
    fn goaway_to_client(&mut self, last: StreamId, reason: Reason, debug: Bytes) {
        let last = self.client_goaway.map_or(last, |sent| sent.min(last));
        self.client_goaway = Some(last);
        self.to_client.push_back(GoAway::with_debug_data(last, reason, debug).into());
    }

    /// After the final GOAWAY, the connection ends when its calls have.
    fn maybe_close(&mut self) {
        if self.said_goodbye && self.calls.is_empty() && self.health.is_empty() {
            self.closing = true;
        }
    }

    /// Records every call still open as ended with `code`.
    fn finish_all(&mut self, code: &'static str) {
        for call in self.calls.values_mut() {
            call.finish(code);
        }
    }
}

/// The stream of the earliest timer in `timers` if it is due at `now`,
/// taken out of the set.
fn pop_due(timers: &mut BTreeSet<(Instant, u32)>, now: Instant) -> Option<StreamId> {
    let &(at, id) = timers.first()?;
    if at > now {
        return None;
    }
    timers.pop_first();
    Some(StreamId::from(id))
}

/// The flow-controlled length of a frame: a DATA frame's payload (the
/// bridge sends no padding), nothing for the others.
fn data_len(frame: &Frame) -> i64 {
    match frame {
        Frame::Data(data) => data.payload().len() as i64,
        _ => 0,
    }
}

/// The stream a frame belongs to, if any.
fn frame_stream(frame: &Frame) -> Option<StreamId> {
    match frame {
        Frame::Data(data) => Some(data.stream_id()),
        Frame::Headers(headers) => Some(headers.stream_id()),
        Frame::Reset(reset) => Some(reset.stream_id()),
        Frame::WindowUpdate(update) if !update.stream_id().is_zero() => Some(update.stream_id()),
        _ => None,
    }
}

/// Folds `update` into `settings`: the client's SETTINGS as they stand.
fn merge_settings(settings: &mut frame::Settings, update: &frame::Settings) {
    if let Some(v) = update.header_table_size() {
        settings.set_header_table_size(Some(v));
    }
    if let Some(v) = update.is_push_enabled() {
        settings.set_enable_push(v);
    }
    if let Some(v) = update.max_concurrent_streams() {
        settings.set_max_concurrent_streams(Some(v));
    }
    if let Some(v) = update.initial_window_size() {
        settings.set_initial_window_size(Some(v));
    }
    if let Some(v) = update.max_frame_size() {
        settings.set_max_frame_size(Some(v));
    }
    if let Some(v) = update.max_header_list_size() {
        settings.set_max_header_list_size(Some(v));
    }
}

/// The bridge's own keepalive pings to one side. Their answers stop here;
/// every other PING crosses. The payload is drawn at random per connection,
/// so that two bridges in a row (a shim in front of a relay, each pinging
/// its client) never take each other's answers for their own.
struct Pinger {
    every: Duration,
    timeout: Duration,
    payload: [u8; 8],
    next: Instant,
    sent: Option<Instant>,
}

impl Pinger {
    fn new((every, timeout): (Duration, Duration), now: Instant) -> Pinger {
        Pinger { every, timeout, payload: rand::random(), next: now + every, sent: None }
    }

    /// A ping to send now, if one is due; `Err(timeout)` when the last one
    /// went unanswered that long.
    fn due(&mut self, now: Instant) -> Result<Option<Ping>, Duration> {
        match self.sent {
            Some(sent) if now >= sent + self.timeout => Err(self.timeout),
            None if now >= self.next => {
                self.sent = Some(now);
                Ok(Some(Ping::new(self.payload)))
            }
            _ => Ok(None),
        }
    }

    /// When `due` has something to say next.
    fn wake(&self) -> Instant {
        match self.sent {
            Some(sent) => sent + self.timeout,
            None => self.next,
        }
    }

    /// Whether `ping` answers ours (then it goes no further).
    fn answered(&mut self, ping: &Ping) -> bool {
        if self.sent.is_none() || !ping.is_ack() || *ping.payload() != self.payload {
            return false;
        }
        self.sent = None;
        self.next = Instant::now() + self.every;
        true
    }
}

/// A header block for the other side: a fresh frame, so no flag (padding,
/// priority) of the received one is carried without its fields.
fn rebuilt(id: StreamId, pseudo: Pseudo, fields: HeaderMap, end: bool) -> Frame {
    let mut headers = Headers::new(id, pseudo, fields);
    if end {
        headers.set_end_stream();
    }
    headers.into()
}

/// Moves queued frames into `codec` while it takes them, then flushes.
/// Whether any moved, and whether everything buffered reached the socket.
fn pump<T: AsyncRead + AsyncWrite + Unpin>(
    codec: &mut Codec<T, Bytes>,
    queue: &mut VecDeque<Frame>,
    cx: &mut Context<'_>,
) -> io::Result<(bool, bool)> {
    let mut moved = false;
    while !queue.is_empty() {
        match codec.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                let frame = queue.pop_front().expect("queue is not empty");
                codec.buffer(frame).map_err(|e| io::Error::other(format!("frame not sendable: {e:?}")))?;
                moved = true;
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok((moved, false)),
        }
    }
    match codec.flush(cx) {
        Poll::Ready(Ok(())) => Ok((moved, true)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok((moved, false)),
    }
}

impl<C> Drop for FrameRelay<C> {
    fn drop(&mut self) {
        for call in self.calls.values_mut() {
            call.finish("NONE");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinger_pings_when_due_takes_only_its_own_answer_and_reports_silence() {
        let start = Instant::now();
        let every = Duration::from_secs(10);
        let timeout = Duration::from_secs(5);
        let mut pinger = Pinger::new((every, timeout), start);
        assert!(pinger.due(start).unwrap().is_none(), "nothing before the interval");
        assert_eq!(pinger.wake(), start + every);
        let ping = pinger.due(start + every).unwrap().expect("a ping when due");
        assert!(!ping.is_ack());
        assert!(pinger.due(start + every).unwrap().is_none(), "one ping at a time");
        assert_eq!(pinger.wake(), start + every + timeout);
        // Someone else's answer, or a ping rather than an answer, is not ours.
        assert!(!pinger.answered(&Ping::pong(*b"12345678")));
        assert!(!pinger.answered(&Ping::new(*ping.payload())));
        assert!(pinger.answered(&Ping::pong(*ping.payload())));
        assert!(!pinger.answered(&Ping::pong(*ping.payload())), "answered once");
        // Unanswered past the timeout: silence.
        pinger.due(Instant::now() + every).unwrap().expect("the next ping");
        assert_eq!(pinger.due(Instant::now() + every + timeout + timeout), Err(timeout));
    }

    #[test]
    fn client_settings_merge_field_by_field() {
        let mut merged = frame::Settings::default();
        let mut first = frame::Settings::default();
        first.set_initial_window_size(Some(1 << 20));
        first.set_enable_push(false);
        merge_settings(&mut merged, &first);
        let mut second = frame::Settings::default();
        second.set_max_frame_size(Some(1 << 16));
        merge_settings(&mut merged, &second);
        assert_eq!(merged.initial_window_size(), Some(1 << 20));
        assert_eq!(merged.is_push_enabled(), Some(false));
        assert_eq!(merged.max_frame_size(), Some(1 << 16));
        assert_eq!(merged.header_table_size(), None);
    }

    #[test]
    fn held_frames_keep_their_order_and_wait_for_room() {
        let (one, two) = (StreamId::from(1), StreamId::from(3));
        let data = |id, len: usize| Frame::from(Data::new(id, Bytes::from(vec![0u8; len])));
        let mut held = Held::default();
        let mut window = 10;
        assert!(held.pass(data(one, 4), &mut window).is_some(), "fits: passes");
        assert_eq!(window, 6);
        assert!(held.pass(data(one, 8), &mut window).is_none(), "too big: held");
        assert!(held.pass(Reset::new(two, Reason::CANCEL).into(), &mut window).is_none(), "behind a held frame");
        assert_eq!((held.bytes, window), (8, 6));
        assert!(held.release(&mut window).is_none(), "still no room");
        window += 2;
        assert!(matches!(held.release(&mut window), Some(Frame::Data(_))));
        assert!(matches!(held.release(&mut window), Some(Frame::Reset(_))));
        assert_eq!((held.bytes, window), (0, 0));
        held.pass(data(one, 5), &mut window);
        held.pass(data(two, 3), &mut window);
        assert!(!held.drop_stream(StreamId::from(5)), "no frames of that stream");
        assert!(held.drop_stream(one));
        assert_eq!(held.bytes, 3);
    }

    #[test]
    fn only_data_frames_count_against_windows() {
        let id = StreamId::from(1);
        assert_eq!(data_len(&Data::new(id, Bytes::from_static(b"hello")).into()), 5);
        assert_eq!(data_len(&Reset::new(id, Reason::CANCEL).into()), 0);
        assert_eq!(frame_stream(&WindowUpdate::new(StreamId::zero(), 1).into()), None);
        assert_eq!(frame_stream(&WindowUpdate::new(id, 1).into()), Some(id));
    }
}
