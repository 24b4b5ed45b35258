//! The frame relay: the one path of both roles. The HTTP/2 frames of one
//! client connection are carried onto a connection of its own to the next
//! hop (the shim's to the relay, the relay's to the driver), from the
//! client's first byte, whether the next hop is up, down or coming back.
//!
//! One task per client connection decodes each frame with h2's codec,
//! decides, and encodes it again for the other side. Flow control and
//! stream states stay the two ends' own, so the bridge buffers nothing
//! beyond the frames in hand and applies backpressure by reading a side
//! only when the other can take more. What is the bridge's own:
//! - the connection: it answers the client's preface with SETTINGS of its
//!   own, answers each side's PINGs itself (never forwarding them) and
//!   pings only a network hop (`keepalive`);
//! - each new stream is admitted by the forwarder (path, policy,
//!   `grpc-timeout`) and its header block rewritten for the next hop
//!   (`client`); health checks are answered here (`local`);
//! - the next hop's state: dialled as the client connects, lost, going
//!   away, dialled again; calls made meanwhile wait, bounded, and go out
//!   in order (`upstream`);
//! - windows where the two ends' differ, and the limits a server library
//!   would enforce: window overflow, rapid reset, padding (`windows`,
//!   `defences`);
//! - deadlines, draining and the graceful goodbye (`calls`, `goodbye`).

mod calls;
mod client;
mod defences;
mod goodbye;
mod keepalive;
mod local;
mod settings;
mod upstream;
mod windows;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use h2::frame::{BytesStr, Frame, StreamId};
use h2::Codec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::admit::policy::Caller;
use crate::admit::sessions::Cut;
use crate::admit::Forwarder;
use crate::connect::dialer::Dialer;
use crate::grpc::status::{BridgeStatus, Code};
use crate::shutdown::Shutdown;

use calls::Call;
use defences::ResetBudget;
use keepalive::Pinger;
use settings::{AckLedger, ClientAck};
use upstream::Upstream;
use windows::Held;

/// Frames queued for one side before the bridge stops reading: one frame
/// read makes at most three to send, so this bounds a connection's memory.
const QUEUE_LIMIT: usize = 64;

/// The limits of a client connection the relay enforces.
pub struct Limits {
    /// Largest header block a client may send (bytes).
    pub max_header_list_size: u32,
    /// Concurrent calls on one connection.
    pub max_concurrent_streams: u32,
    /// Ping interval and timeout toward the client, on a network hop only.
    pub keepalive: Option<(Duration, Duration)>,
}

/// One client connection, relayed.
pub struct FrameRelay<C> {
    client: Codec<C, Bytes>,
    upstream: Upstream,
    to_client: VecDeque<Frame>,
    to_upstream: VecDeque<Frame>,
    calls: HashMap<StreamId, Call>,
    /// Calls waiting for the next hop (its connection, or a free stream on
    /// it), in the order they came.
    queued: BTreeSet<StreamId>,
    /// DATA bytes of the queued calls, held in the bridge.
    queued_bytes: i64,
    /// Until when each queued call may wait.
    wait_until: BTreeSet<(Instant, u32)>,
    /// Health checks being read: their request bodies so far.
    health: HashMap<StreamId, BytesMut>,
    /// Health checks waiting for the next hop's first answer, and until when.
    health_wait: BTreeSet<(Instant, u32)>,
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
    client_settings: h2::frame::Settings,
    /// Whose SETTINGS each side still has to acknowledge.
    acks: AckLedger,
    /// Streams the upstream takes at once (its MAX_CONCURRENT_STREAMS).
    up_max_streams: usize,
    forwarder: Forwarder,
    dialer: Dialer,
    caller: Arc<Caller>,
    authority: BytesStr,
    scheme: BytesStr,
    label: Arc<str>,
    max_streams: usize,
    header_list_limit: u32,
    client_pings: Option<Pinger>,
    upstream_pings: Option<Pinger>,
    resets: ResetBudget,
    draining: Pin<Box<WaitForCancellationFutureOwned>>,
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
    /// This connection cut by a reload (its certificate revoked, its
    /// identity no longer admitted), and why.
    cut: Option<(Pin<Box<WaitForCancellationFutureOwned>>, Cut)>,
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
    /// A relay for a client whose preface was read. The bridge's own
    /// SETTINGS go to the client at once; the next hop is dialled (unless
    /// `dial` is false: then every call is answered here). When `cut`
    /// fires, the connection ends the way a stop does, with its status.
    pub fn new(
        client: C,
        forwarder: Forwarder,
        caller: Caller,
        limits: &Limits,
        shutdown: &Shutdown,
        dial: bool,
        cut: Option<Cut>,
    ) -> Self {
        let mut client = Codec::new(client);
        client.set_max_recv_header_list_size(limits.max_header_list_size as usize);
        let now = Instant::now();
        let dialer = forwarder.dialer().clone();
        let label: Arc<str> = Arc::from(dialer.describe_targets());
        let mut relay = FrameRelay {
            client,
            upstream: Upstream::dialling(&dialer, dial),
            to_client: VecDeque::new(),
            to_upstream: VecDeque::new(),
            calls: HashMap::new(),
            queued: BTreeSet::new(),
            queued_bytes: 0,
            wait_until: BTreeSet::new(),
            health: HashMap::new(),
            health_wait: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            timer: Box::pin(tokio::time::sleep_until(now + Duration::from_secs(3600))),
            last_stream: StreamId::zero(),
            client_send: windows::INITIAL_WINDOW,
            client_recv: windows::INITIAL_WINDOW,
            up_send: windows::INITIAL_WINDOW,
            up_recv: windows::INITIAL_WINDOW,
            held_up: Held::default(),
            held_down: Held::default(),
            client_settings: h2::frame::Settings::default(),
            acks: AckLedger::default(),
            up_max_streams: usize::MAX,
            forwarder,
            dialer,
            caller: Arc::new(caller),
            authority: BytesStr::try_from(Bytes::new()).expect("empty is UTF-8"),
            scheme: BytesStr::try_from(Bytes::new()).expect("empty is UTF-8"),
            label,
            max_streams: limits.max_concurrent_streams as usize,
            header_list_limit: limits.max_header_list_size,
            client_pings: limits.keepalive.map(|keepalive| Pinger::new(keepalive, now)),
            upstream_pings: None,
            resets: ResetBudget::new(now),
            draining: Box::pin(shutdown.draining().clone().cancelled_owned()),
            stopping: Box::pin(shutdown.stopping().clone().cancelled_owned()),
            cut: cut.map(|cut| (Box::pin(cut.token().clone().cancelled_owned()), cut)),
            drain_seen: false,
            goodbye: None,
            said_goodbye: false,
            client_goaway: None,
            closing: false,
            done: false,
        };
        let own = settings::bridge_settings(relay.max_streams as u32, relay.header_list_limit);
        relay.send_client_settings(own, ClientAck::Bridge);
        relay
    }

    /// Relays until the client's connection ends.
    pub async fn run(mut self) {
        std::future::poll_fn(|cx| self.poll_run(cx)).await;
    }

    fn codec(&mut self) -> Option<&mut Codec<crate::connect::BoxIo, Bytes>> {
        self.upstream.codec()
    }

    fn is_up(&self) -> bool {
        matches!(self.upstream, Upstream::Up(..))
    }

    fn is_down(&self) -> bool {
        matches!(self.upstream, Upstream::Down(..))
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
                        self.lose_upstream(&crate::describe::describe_io_error(&e));
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
        if !self.closing && self.stopping.as_mut().poll(cx).is_ready() {
            let status = BridgeStatus::new(Code::Unavailable, self.forwarder.shutting_down().to_string());
            self.stop(status);
            return true;
        }
        if let Some((cut, why)) = self.cut.as_mut().filter(|_| !self.closing) {
            if cut.as_mut().poll(cx).is_ready() {
                let status = why.status().cloned().unwrap_or_else(|| {
                    BridgeStatus::new(Code::Unavailable, format!("{}: connection closed", self.forwarder.role()))
                });
                self.cut = None;
                self.stop(status);
                return true;
            }
        }
        if !self.drain_seen && self.draining.as_mut().poll(cx).is_ready() {
            self.drain_seen = true;
            self.begin_drain();
            busy = true;
        }
        if let Some(opened) = self.upstream.poll_dialled(cx) {
            self.resume(opened);
            busy = true;
        }
        loop {
            let now = Instant::now();
            busy |= self.expire_timers(now);
            if self.done {
                return true;
            }
            busy |= self.keepalive(now);
            if self.done {
                return true;
            }
            let wake = [
                self.client_pings.as_ref().map(Pinger::wake),
                self.upstream_pings.as_ref().filter(|_| !self.is_down()).map(Pinger::wake),
                self.deadlines.first().map(|&(at, _)| at),
                self.wait_until.first().map(|&(at, _)| at),
                self.health_wait.first().map(|&(at, _)| at),
                self.goodbye.map(|(_, until)| until),
                self.upstream.going_until(),
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

    /// Reads are held back because a side cannot take more: neither side's
    /// silence may be judged meanwhile, since its answers are not read.
    fn stalled(&mut self) {
        for pinger in [&mut self.client_pings, &mut self.upstream_pings].into_iter().flatten() {
            pinger.stalled();
        }
    }

    fn read_client(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        while !self.closing && !self.done {
            if !self.room() {
                self.stalled();
                break;
            }
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
        while !self.closing && !self.done {
            if !self.room() {
                self.stalled();
                break;
            }
            let Some(codec) = self.codec() else {
                break;
            };
            match Pin::new(codec).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(frame))) => self.on_upstream_frame(frame),
                Poll::Ready(Some(Err(error))) => self.upstream_error(error),
                Poll::Ready(None) => self.lose_upstream("connection closed by the peer"),
            }
            busy = true;
        }
        busy
    }

    /// Records every call still open as ended with `code`.
    fn finish_all(&mut self, code: &'static str) {
        for call in self.calls.values_mut() {
            call.finish(code);
        }
    }
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
