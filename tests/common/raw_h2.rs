//! HTTP/2 spoken frame by frame, for the frame relay's tests: a client that
//! sends arbitrary frames and raw bytes to either role and reads back every
//! frame the bridge answers with, and a driver that does the same on the
//! driver's Unix socket and records what reaches it.
//!
//! Both sides use h2's own codec (the `unstable` feature) to read frames;
//! request header blocks and padded DATA are written as raw bytes, so a
//! test controls every flag. Every wait is bounded.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use h2::frame::{Frame, GoAway, Headers, Ping, Pseudo, Reason, Settings, StreamId, WindowUpdate};
use h2::Codec;
use http::{HeaderMap, HeaderValue, StatusCode};
use openshell_driver_bridge::connect::BoxIo;
use openshell_driver_bridge::listen::uds::PrivateSocket;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const METHOD: &str = "/openshell.compute.v1.ComputeDriver/GetCapabilities";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;

/// The largest window HTTP/2 allows.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

// ---------------------------------------------------------------------------
// Frames as bytes.

/// One frame: 9-byte head and `payload`.
pub fn raw_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A DATA frame with `pad` bytes of padding (pad-length octet not counted).
pub fn padded_data(stream: u32, payload: &[u8], pad: u8, end: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + payload.len() + pad as usize);
    body.push(pad);
    body.extend_from_slice(payload);
    body.extend(std::iter::repeat_n(0u8, pad as usize));
    raw_frame(DATA, PADDED | if end { END_STREAM } else { 0 }, stream, &body)
}

/// An HPACK integer with a `bits`-bit prefix, `flags` in the high bits.
pub fn hpack_int(out: &mut Vec<u8>, bits: u8, flags: u8, mut value: usize) {
    let max = (1usize << bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field, never indexed (so no dynamic table state).
pub fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 7, 0, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 7, 0, value.len());
    out.extend_from_slice(value);
}

/// The header block of a gRPC request for `path`, as a gateway sends it.
pub fn request_block(path: &str) -> Vec<u8> {
    let mut out = vec![0x83, 0x86]; // :method POST, :scheme http
    hpack_int(&mut out, 4, 0x00, 4); // :path, name indexed
    hpack_int(&mut out, 7, 0, path.len());
    out.extend_from_slice(path.as_bytes());
    hpack_int(&mut out, 4, 0x00, 1); // :authority, name indexed
    hpack_int(&mut out, 7, 0, b"[::]:50051".len());
    out.extend_from_slice(b"[::]:50051");
    hpack_literal(&mut out, b"content-type", b"application/grpc");
    hpack_literal(&mut out, b"te", b"trailers");
    out
}

/// A complete request HEADERS frame.
pub fn request_headers(stream: u32, path: &str, end: bool) -> Vec<u8> {
    raw_frame(HEADERS, END_HEADERS | if end { END_STREAM } else { 0 }, stream, &request_block(path))
}

pub fn raw_rst(stream: u32, reason: u32) -> Vec<u8> {
    raw_frame(RST_STREAM, 0, stream, &reason.to_be_bytes())
}

pub fn raw_window_update(stream: u32, increment: u32) -> Vec<u8> {
    raw_frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// A SETTINGS frame of (identifier, value) pairs, values unchecked.
pub fn raw_settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (id, value) in pairs {
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&value.to_be_bytes());
    }
    raw_frame(SETTINGS, 0, 0, &body)
}

/// Wraps a message in gRPC's 5-byte length prefix.
pub fn grpc(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 5);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.freeze()
}

// ---------------------------------------------------------------------------
// The client.

/// What reading from the bridge gave.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a few at a time, matched on by tests
pub enum Event {
    Frame(Frame),
    /// The bridge closed the connection (or reset it).
    Closed,
    /// The bytes the bridge sent are not HTTP/2 as h2 reads it.
    Broken(String),
    Timeout,
}

/// A whole response read off one stream.
#[derive(Debug, Default)]
pub struct Answer {
    pub status: Option<StatusCode>,
    pub headers: HeaderMap,
    pub body: BytesMut,
    pub trailers: HeaderMap,
    pub reset: Option<Reason>,
}

impl Answer {
    pub fn grpc_status(&self) -> Option<String> {
        super::grpc_status_of(&self.headers, &self.trailers)
    }

    pub fn grpc_message(&self) -> String {
        super::grpc_message_of(&self.headers, &self.trailers)
    }
}

/// A client connection to a role, spoken frame by frame.
pub struct RawClient {
    codec: Codec<BoxIo, Bytes>,
    inbox: VecDeque<Event>,
    /// Answer the bridge's PINGs and SETTINGS as a client would.
    pub polite: bool,
    /// Everything the bridge sent, in order (as read so far).
    pub seen: Vec<Frame>,
    /// The frames `seen` could not keep a copy of (PRIORITY, PUSH_PROMISE).
    pub uncopied: Vec<String>,
    conn_window: i64,
    stream_windows: HashMap<u32, i64>,
    peer_initial: i64,
    ended: bool,
}

impl RawClient {
    /// Over `io`: the preface, then (if `settings`) an empty SETTINGS.
    pub async fn over(mut io: BoxIo, settings: bool) -> RawClient {
        tokio::io::AsyncWriteExt::write_all(&mut io, PREFACE).await.unwrap();
        let mut client = RawClient {
            codec: Codec::new(io),
            inbox: VecDeque::new(),
            polite: true,
            seen: Vec::new(),
            uncopied: Vec::new(),
            conn_window: 65_535,
            stream_windows: HashMap::new(),
            peer_initial: 65_535,
            ended: false,
        };
        if settings {
            client.send_raw(&raw_settings(&[])).await.unwrap();
        }
        client
    }

    pub async fn unix(path: &Path) -> RawClient {
        let stream = tokio::net::UnixStream::connect(path).await.unwrap();
        RawClient::over(Box::new(stream), true).await
    }

    /// Writes raw bytes; frames read meanwhile wait in the inbox (so a
    /// bridge that answers as it reads never blocks the writer).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut written = 0;
        poll_fn(|cx| {
            while written < bytes.len() {
                match Pin::new(self.codec.get_mut()).poll_write(cx, &bytes[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if !self.read_into_inbox(cx) {
                            return Poll::Pending;
                        }
                    }
                }
            }
            Pin::new(self.codec.get_mut()).poll_flush(cx)
        })
        .await
    }

    /// Sends one frame through h2's encoder.
    pub async fn send(&mut self, frame: impl Into<Frame>) -> io::Result<()> {
        let mut frame = Some(frame.into());
        poll_fn(|cx| loop {
            if let Some(f) = frame.take() {
                match self.codec.poll_ready(cx) {
                    Poll::Ready(Ok(())) => self.codec.buffer(f).map_err(|e| io::Error::other(format!("{e:?}")))?,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        frame = Some(f);
                        if !self.read_into_inbox(cx) {
                            return Poll::Pending;
                        }
                        continue;
                    }
                }
            }
            match self.codec.flush(cx) {
                Poll::Ready(r) => return Poll::Ready(r),
                Poll::Pending => {
                    if !self.read_into_inbox(cx) {
                        return Poll::Pending;
                    }
                }
            }
        })
        .await
    }

    /// Reads what is there into the inbox; whether anything came.
    fn read_into_inbox(&mut self, cx: &mut Context<'_>) -> bool {
        if self.ended {
            return false;
        }
        let mut any = false;
        while let Poll::Ready(item) = Pin::new(&mut self.codec).poll_next(cx) {
            any = true;
            let event = match item {
                Some(Ok(frame)) => Event::Frame(frame),
                Some(Err(h2::proto::Error::Io(..))) | None => Event::Closed,
                Some(Err(e)) => Event::Broken(format!("{e:?}")),
            };
            let last = !matches!(event, Event::Frame(_));
            self.inbox.push_back(event);
            if last {
                self.ended = true;
                break;
            }
        }
        any
    }

    /// The next event, within `limit`. PINGs and SETTINGS of the bridge
    /// are answered (when `polite`) and still returned; window updates
    /// are counted for `send_body`.
    pub async fn next(&mut self, limit: Duration) -> Event {
        let event = match self.inbox.pop_front() {
            Some(event) => event,
            None if self.ended => Event::Closed,
            None => {
                let read = poll_fn(|cx| if self.read_into_inbox(cx) { Poll::Ready(()) } else { Poll::Pending });
                match tokio::time::timeout(limit, read).await {
                    Ok(()) => self.inbox.pop_front().unwrap_or(Event::Closed),
                    Err(_) => return Event::Timeout,
                }
            }
        };
        if let Event::Frame(frame) = &event {
            match clone_frame(frame) {
                Some(copy) => self.seen.push(copy),
                None => self.uncopied.push(format!("{frame:?}")),
            }
            match frame {
                Frame::Ping(ping) if !ping.is_ack() && self.polite => {
                    let _ = self.send(Ping::pong(*ping.payload())).await;
                }
                Frame::Settings(settings) if !settings.is_ack() => {
                    if let Some(size) = settings.initial_window_size() {
                        let delta = i64::from(size) - self.peer_initial;
                        self.peer_initial = i64::from(size);
                        self.stream_windows.values_mut().for_each(|w| *w += delta);
                    }
                    if self.polite {
                        let _ = self.send(Settings::ack()).await;
                    }
                }
                Frame::WindowUpdate(update) => {
                    let id = u32::from(update.stream_id());
                    let add = i64::from(update.size_increment());
                    if id == 0 {
                        self.conn_window += add;
                    } else if let Some(w) = self.stream_windows.get_mut(&id) {
                        *w += add;
                    }
                }
                _ => {}
            }
        }
        event
    }

    /// Reads until a frame `pick` takes, the connection ends or `limit`
    /// passes; every frame read on the way stays in `seen`.
    pub async fn until<T>(&mut self, limit: Duration, mut pick: impl FnMut(&Frame) -> Option<T>) -> Result<T, Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Event::Frame(frame) => {
                    if let Some(found) = pick(&frame) {
                        return Ok(found);
                    }
                }
                other => return Err(other),
            }
        }
    }

    /// The GOAWAY the bridge sends, within `limit`.
    pub async fn goaway(&mut self, limit: Duration) -> GoAway {
        match self
            .until(limit, |f| match f {
                Frame::GoAway(g) => {
                    Some(GoAway::with_debug_data(g.last_stream_id(), g.reason(), g.debug_data().clone()))
                }
                _ => None,
            })
            .await
        {
            Ok(goaway) => goaway,
            Err(event) => panic!("no GOAWAY: {event:?}; frames seen: {:?}", self.seen),
        }
    }

    /// Waits for the connection to end (after a GOAWAY, say); panics if
    /// it is still open after `limit`.
    pub async fn expect_closed(&mut self, limit: Duration) {
        match self.until(limit, |_| None::<()>).await {
            Err(Event::Closed) => {}
            other => panic!("connection not closed: {other:?}"),
        }
    }

    /// Opens stream `id` with a request for `path` (and END_STREAM when
    /// `end`), counting its window.
    pub async fn open(&mut self, id: u32, path: &str, end: bool) -> io::Result<()> {
        self.stream_windows.insert(id, self.peer_initial);
        self.send_raw(&request_headers(id, path, end)).await
    }

    /// Sends `body` on stream `id` in DATA frames of `chunk` bytes with
    /// `pad` bytes of padding each (0: unpadded), the last with
    /// END_STREAM, never beyond the windows the bridge gave (padding
    /// counts); waits for window updates, at most `limit` in all.
    pub async fn send_body(&mut self, id: u32, body: &[u8], chunk: usize, pad: u8, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut rest = body;
        loop {
            let take = rest.len().min(chunk);
            let cost = take as i64 + if pad > 0 { i64::from(pad) + 1 } else { 0 };
            let stream = *self.stream_windows.get(&id).unwrap_or(&0);
            if cost <= self.conn_window && cost <= stream {
                let end = take == rest.len();
                let frame = if pad > 0 {
                    padded_data(id, &rest[..take], pad, end)
                } else {
                    raw_frame(DATA, if end { END_STREAM } else { 0 }, id, &rest[..take])
                };
                self.send_raw(&frame).await.unwrap();
                self.conn_window -= cost;
                *self.stream_windows.get_mut(&id).unwrap() -= cost;
                rest = &rest[take..];
                if end {
                    return;
                }
                continue;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Event::Frame(_) => {}
                other => panic!(
                    "stalled sending stream {id}: {} of {} bytes sent, windows {} / {stream}: {other:?}",
                    body.len() - rest.len(),
                    body.len(),
                    self.conn_window
                ),
            }
        }
    }

    /// Reads stream `id`'s whole answer (other frames are kept in `seen`),
    /// giving back the window its DATA took.
    pub async fn answer(&mut self, id: u32, limit: Duration) -> Answer {
        self.answers(&[id], limit).await.remove(&id).expect("the stream's answer")
    }

    /// The whole answers of streams `ids`, read as they come.
    pub async fn answers(&mut self, ids: &[u32], limit: Duration) -> HashMap<u32, Answer> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut answers: HashMap<u32, Answer> = ids.iter().map(|id| (*id, Answer::default())).collect();
        let mut open: Vec<u32> = ids.to_vec();
        while !open.is_empty() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = match self.next(left).await {
                Event::Frame(frame) => frame,
                other => panic!("streams {open:?} unfinished ({answers:?}): {other:?}"),
            };
            let id = match &frame {
                Frame::Headers(h) => u32::from(h.stream_id()),
                Frame::Data(d) => u32::from(d.stream_id()),
                Frame::Reset(r) => u32::from(r.stream_id()),
                _ => continue,
            };
            if !open.contains(&id) {
                continue;
            }
            let answer = answers.get_mut(&id).unwrap();
            let ended = match frame {
                Frame::Headers(h) => {
                    let end = h.is_end_stream();
                    let (pseudo, fields) = h.into_parts();
                    if answer.status.is_none() {
                        answer.status = pseudo.status;
                        answer.headers = fields;
                    } else {
                        answer.trailers = fields;
                    }
                    end
                }
                Frame::Data(d) => {
                    let end = d.is_end_stream();
                    let len = d.payload().len() as u32;
                    answer.body.extend_from_slice(d.payload());
                    if len > 0 {
                        let mut credit = raw_window_update(0, len);
                        if !end {
                            credit.extend(raw_window_update(id, len));
                        }
                        let _ = self.send_raw(&credit).await;
                    }
                    end
                }
                Frame::Reset(r) => {
                    answer.reset = Some(r.reason());
                    true
                }
                _ => false,
            };
            if ended {
                open.retain(|s| *s != id);
            }
        }
        answers
    }

    /// A whole unary call on stream `id`: request `body` (one DATA frame),
    /// its answer.
    pub async fn call(&mut self, id: u32, body: &[u8]) -> Answer {
        self.open(id, METHOD, false).await.unwrap();
        self.send_body(id, &grpc(body), 16_384, 0, Duration::from_secs(20)).await;
        self.answer(id, Duration::from_secs(20)).await
    }
}

/// Frames are not `Clone`; a copy good enough for a record of them
/// (`None` for PRIORITY and PUSH_PROMISE, which h2 cannot copy).
pub fn clone_frame(frame: &Frame) -> Option<Frame> {
    Some(match frame {
        Frame::Data(d) => {
            let mut copy = h2::frame::Data::new(d.stream_id(), d.payload().clone());
            copy.set_end_stream(d.is_end_stream());
            copy.into()
        }
        Frame::Headers(h) => {
            let mut copy = Headers::new(h.stream_id(), Pseudo::default(), h.fields().clone());
            if h.is_end_stream() {
                copy.set_end_stream();
            }
            copy.into()
        }
        Frame::Settings(s) => s.clone().into(),
        Frame::Ping(p) => {
            if p.is_ack() {
                Ping::pong(*p.payload()).into()
            } else {
                Ping::new(*p.payload()).into()
            }
        }
        Frame::GoAway(g) => GoAway::with_debug_data(g.last_stream_id(), g.reason(), g.debug_data().clone()).into(),
        Frame::Reset(r) => h2::frame::Reset::new(r.stream_id(), r.reason()).into(),
        Frame::WindowUpdate(w) => WindowUpdate::new(w.stream_id(), w.size_increment()).into(),
        Frame::Priority(_) | Frame::PushPromise(_) => return None,
    })
}

// ---------------------------------------------------------------------------
// The driver.

/// How the frame driver answers a call.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Headers, the request body back (one frame per 16 KiB), trailers.
    Echo,
    /// The request body back in padded DATA frames of `chunk` bytes with
    /// `pad` bytes of padding each.
    Padded { chunk: usize, pad: u8 },
    /// `total` bytes of answer (gRPC messages of up to 16 KiB), as fast
    /// as the windows allow.
    Stream { total: u64 },
}

/// The frame driver's settings.
#[derive(Clone, Debug)]
pub struct DriverOptions {
    pub reply: Reply,
    /// Its MAX_CONCURRENT_STREAMS, if any.
    pub max_streams: Option<u32>,
    /// Answers wait this long after the request ended.
    pub delay: Duration,
    /// A PING with this payload as each connection opens.
    pub ping: Option<[u8; 8]>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions { reply: Reply::Echo, max_streams: None, delay: Duration::ZERO, ping: None }
    }
}

/// What the frame driver saw, over all its connections.
#[derive(Debug, Default)]
pub struct Record {
    /// Streams opened by request HEADERS.
    pub streams: usize,
    /// Streams open at once, at most.
    pub max_open: usize,
    /// Request bodies of completed requests, by stream id (last connection wins).
    pub bodies: Vec<Bytes>,
    /// PINGs (not answers) received.
    pub pings: usize,
    /// Answers to the driver's own PINGs, and their payloads.
    pub pongs: Vec<[u8; 8]>,
    /// SETTINGS ACKs received beyond the SETTINGS the driver sent on that connection.
    pub unasked_acks: usize,
    /// SETTINGS ACKs received in all.
    pub acks: usize,
    /// Non-ACK SETTINGS received.
    pub settings: usize,
    /// RST_STREAMs received.
    pub resets: usize,
    /// DATA bytes of answers written.
    pub sent: u64,
    /// Answers that ended (END_STREAM written).
    pub answered: usize,
}

/// A driver spoken frame by frame on a Unix socket.
#[derive(Clone)]
pub struct FrameDriver {
    pub record: Arc<Mutex<Record>>,
    pub accepted: Arc<AtomicUsize>,
}

impl FrameDriver {
    pub fn serve(socket: &Path, options: DriverOptions) -> FrameDriver {
        let listener = PrivateSocket::bind(socket, &[]).unwrap();
        let driver = FrameDriver { record: Arc::default(), accepted: Arc::default() };
        let this = driver.clone();
        tokio::spawn(async move {
            let _keep = &listener;
            loop {
                let (stream, _) = listener.accept().await;
                this.accepted.fetch_add(1, Ordering::SeqCst);
                let record = this.record.clone();
                let options = options.clone();
                tokio::spawn(async move {
                    let _ = connection(Box::new(stream), options, record).await;
                });
            }
        });
        driver
    }

    /// The same over TLS on `addr` (loopback), as a shim's next hop: an
    /// upstream that speaks gRPC over mTLS itself.
    pub async fn serve_tls(
        addr: std::net::SocketAddr,
        config: rustls::ServerConfig,
        options: DriverOptions,
    ) -> FrameDriver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let driver = FrameDriver { record: Arc::default(), accepted: Arc::default() };
        let this = driver.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                this.accepted.fetch_add(1, Ordering::SeqCst);
                let (record, options, acceptor) = (this.record.clone(), options.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        let _ = connection(Box::new(tls), options, record).await;
                    }
                });
            }
        });
        driver
    }

    pub fn record<T>(&self, read: impl FnOnce(&Record) -> T) -> T {
        read(&self.record.lock().unwrap())
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

#[allow(clippy::large_enum_variant)] // at most 64 queued
enum Out {
    Frame(Frame),
    Raw(Bytes),
}

struct Answering {
    body: Bytes,
    /// Bytes of the answer still to send (`Stream`).
    left: u64,
    headers_sent: bool,
}

struct Conn {
    options: DriverOptions,
    record: Arc<Mutex<Record>>,
    out: VecDeque<Out>,
    bodies: HashMap<u32, BytesMut>,
    open: usize,
    answering: VecDeque<(u32, Answering)>,
    conn_window: i64,
    windows: HashMap<u32, i64>,
    peer_initial: i64,
    settings_sent: usize,
    acks: usize,
    max_frame: usize,
}

async fn connection(mut io: BoxIo, options: DriverOptions, record: Arc<Mutex<Record>>) -> io::Result<()> {
    let mut preface = [0u8; 24];
    io.read_exact(&mut preface).await?;
    if preface != PREFACE {
        return Ok(());
    }
    let mut codec: Codec<BoxIo, Bytes> = Codec::new(io);
    let mut conn = Conn {
        options,
        record,
        out: VecDeque::new(),
        bodies: HashMap::new(),
        open: 0,
        answering: VecDeque::new(),
        conn_window: 65_535,
        windows: HashMap::new(),
        peer_initial: 65_535,
        settings_sent: 1,
        acks: 0,
        max_frame: 16_384,
    };
    let mut settings = Settings::default();
    settings.set_max_concurrent_streams(conn.options.max_streams);
    conn.out.push_back(Out::Frame(settings.into()));
    if let Some(payload) = conn.options.ping {
        conn.out.push_back(Out::Frame(Ping::new(payload).into()));
    }
    let (delayed_tx, mut delayed) = mpsc::unbounded_channel::<u32>();
    let mut raw_at = 0usize;
    poll_fn(|cx| loop {
        let mut busy = false;
        while conn.out.len() < 64 {
            match Pin::new(&mut codec).poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    conn.on_frame(frame, &delayed_tx);
                    busy = true;
                }
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(Some(id)) = delayed.poll_recv(cx) {
            conn.start_answer(id);
            busy = true;
        }
        conn.produce();
        // Frames through the codec; raw bytes once it is flushed.
        while let Some(item) = conn.out.front() {
            match item {
                Out::Frame(_) => match codec.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let Some(Out::Frame(frame)) = conn.out.pop_front() else { unreachable!() };
                        codec.buffer(frame).map_err(|e| io::Error::other(format!("{e:?}")))?;
                        busy = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                },
                Out::Raw(bytes) => {
                    match codec.flush(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                    match Pin::new(codec.get_mut()).poll_write(cx, &bytes[raw_at..]) {
                        Poll::Ready(Ok(n)) => {
                            raw_at += n;
                            if raw_at == bytes.len() {
                                raw_at = 0;
                                conn.out.pop_front();
                            }
                            busy = true;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                }
            }
        }
        match codec.flush(cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let _ = Pin::new(codec.get_mut()).poll_flush(cx);
            }
            Poll::Pending => {}
        }
        if !busy {
            return Poll::Pending;
        }
    })
    .await
}

impl Conn {
    fn on_frame(&mut self, frame: Frame, delayed: &mpsc::UnboundedSender<u32>) {
        let mut record = self.record.lock().unwrap();
        match frame {
            Frame::Settings(s) if s.is_ack() => {
                record.acks += 1;
                self.acks += 1;
                if self.acks > self.settings_sent {
                    record.unasked_acks += 1;
                }
            }
            Frame::Settings(s) => {
                record.settings += 1;
                if let Some(size) = s.initial_window_size() {
                    let delta = i64::from(size) - self.peer_initial;
                    self.peer_initial = i64::from(size);
                    self.windows.values_mut().for_each(|w| *w += delta);
                }
                if let Some(size) = s.max_frame_size() {
                    self.max_frame = size as usize;
                }
                self.out.push_back(Out::Frame(Settings::ack().into()));
            }
            Frame::Ping(p) if p.is_ack() => record.pongs.push(*p.payload()),
            Frame::Ping(p) => {
                record.pings += 1;
                self.out.push_back(Out::Frame(Ping::pong(*p.payload()).into()));
            }
            Frame::Headers(h) => {
                let id = u32::from(h.stream_id());
                if self.bodies.contains_key(&id) || self.windows.contains_key(&id) {
                    return; // trailers
                }
                record.streams += 1;
                self.open += 1;
                record.max_open = record.max_open.max(self.open);
                self.bodies.insert(id, BytesMut::new());
                self.windows.insert(id, self.peer_initial);
                if h.is_end_stream() {
                    drop(record);
                    self.request_done(id, delayed);
                }
            }
            Frame::Data(d) => {
                let id = u32::from(d.stream_id());
                let len = d.payload().len() as u32;
                let end = d.is_end_stream();
                if let Some(body) = self.bodies.get_mut(&id) {
                    body.extend_from_slice(d.payload());
                }
                if len > 0 {
                    self.out.push_back(Out::Frame(WindowUpdate::new(StreamId::zero(), len).into()));
                    if !end {
                        self.out.push_back(Out::Frame(WindowUpdate::new(d.stream_id(), len).into()));
                    }
                }
                if end {
                    drop(record);
                    self.request_done(id, delayed);
                }
            }
            Frame::Reset(r) => {
                record.resets += 1;
                let id = u32::from(r.stream_id());
                if self.windows.remove(&id).is_some() {
                    self.open -= 1;
                }
                self.bodies.remove(&id);
                self.answering.retain(|(s, _)| *s != id);
            }
            Frame::WindowUpdate(w) => {
                let id = u32::from(w.stream_id());
                let add = i64::from(w.size_increment());
                if id == 0 {
                    self.conn_window += add;
                } else if let Some(window) = self.windows.get_mut(&id) {
                    *window += add;
                }
            }
            Frame::GoAway(_) | Frame::Priority(_) | Frame::PushPromise(_) => {}
        }
    }

    fn request_done(&mut self, id: u32, delayed: &mpsc::UnboundedSender<u32>) {
        if self.options.delay.is_zero() {
            self.start_answer(id);
        } else {
            let (delay, tx) = (self.options.delay, delayed.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(id);
            });
        }
    }

    fn start_answer(&mut self, id: u32) {
        let Some(body) = self.bodies.remove(&id) else { return };
        let body = body.freeze();
        self.record.lock().unwrap().bodies.push(body.clone());
        let left = match self.options.reply {
            Reply::Stream { total } => total,
            _ => body.len() as u64,
        };
        self.answering.push_back((id, Answering { body, left, headers_sent: false }));
    }

    /// Writes what the windows allow of the answers under way.
    fn produce(&mut self) {
        while self.out.len() < 32 {
            let Some((id, answer)) = self.answering.front_mut() else { return };
            let id = *id;
            if !answer.headers_sent {
                answer.headers_sent = true;
                let mut fields = HeaderMap::new();
                fields.insert("content-type", HeaderValue::from_static("application/grpc"));
                let headers = Headers::new(StreamId::from(id), Pseudo::response(StatusCode::OK), fields);
                self.out.push_back(Out::Frame(headers.into()));
                continue;
            }
            if answer.left == 0 {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let mut end = Headers::trailers(StreamId::from(id), trailers);
                end.set_end_stream();
                self.out.push_back(Out::Frame(end.into()));
                self.answering.pop_front();
                if self.windows.remove(&id).is_some() {
                    self.open -= 1;
                }
                self.record.lock().unwrap().answered += 1;
                continue;
            }
            let window = self.conn_window.min(*self.windows.get(&id).unwrap_or(&0));
            let (chunk, pad) = match self.options.reply {
                Reply::Padded { chunk, pad } => (chunk, pad),
                _ => (16_384.min(self.max_frame), 0),
            };
            let overhead = if pad > 0 { i64::from(pad) + 1 } else { 0 };
            let take = (answer.left as i64).min(chunk as i64).min(window - overhead);
            if take <= 0 {
                // No room: the next answer may have some (round robin).
                let stuck = self.answering.pop_front().unwrap();
                let all_stuck = self
                    .answering
                    .iter()
                    .all(|(s, _)| self.conn_window.min(*self.windows.get(s).unwrap_or(&0)) <= overhead);
                self.answering.push_back(stuck);
                if all_stuck {
                    return;
                }
                continue;
            }
            let payload = match self.options.reply {
                Reply::Stream { .. } => {
                    let message = vec![b'x'; take as usize];
                    Bytes::from(message)
                }
                _ => {
                    let at = answer.body.len() - answer.left as usize;
                    answer.body.slice(at..at + take as usize)
                }
            };
            answer.left -= take as u64;
            self.conn_window -= take + overhead;
            *self.windows.get_mut(&id).unwrap() -= take + overhead;
            self.record.lock().unwrap().sent += take as u64;
            if pad > 0 {
                self.out.push_back(Out::Raw(Bytes::from(padded_data(id, &payload, pad, false))));
            } else {
                self.out.push_back(Out::Frame(h2::frame::Data::new(StreamId::from(id), payload).into()));
            }
        }
    }
}

/// A port on loopback that nothing listens on (bound, then released).
pub fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The resident set of process `pid`, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Whether `frame` is a GOAWAY with `reason`.
pub fn is_goaway(frame: &Frame, reason: Reason) -> bool {
    matches!(frame, Frame::GoAway(g) if g.reason() == reason)
}

/// Shortens `Duration::from_secs`.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Anything readable and writable as a `BoxIo`.
pub fn boxed(io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static) -> BoxIo {
    Box::new(io)
}
