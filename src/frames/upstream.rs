//! The next hop's side of a relay: its connection's states (being dialled,
//! up, going away), the frames it sends, its loss, and the resumption on a
//! new connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::frame::{Frame, Reason, StreamId};
use h2::Codec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::calls::rebuilt;
use super::keepalive::Pinger;
use super::settings::UpstreamAck;
use super::FrameRelay;
use crate::admit::route::strip_hop_by_hop;
use crate::connect::dialer::{Dialer, Live, Opened};
use crate::connect::BoxIo;
use crate::grpc::status::{BridgeStatus, Code};

/// How long the calls of an upstream that sent a GOAWAY may take to finish
/// before they are cut and the connection is replaced.
const GOING_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The next hop's connection.
pub enum Upstream {
    /// Frames cross.
    Up(Codec<BoxIo, Bytes>, Live),
    /// It sent a GOAWAY: the calls it has may finish until the instant
    /// (watches end at once); new calls wait for the next connection.
    Going(Codec<BoxIo, Bytes>, Live, Instant),
    /// None: the next connection is being dialled (or, for a client whose
    /// calls are all refused, never will be); the attempts that failed.
    Down(Pin<Box<dyn Future<Output = Opened> + Send>>, bool, Arc<AtomicU32>),
}

impl Upstream {
    /// Dialling (with backoff until a connection answers), or idle for good.
    pub fn dialling(dialer: &Dialer, dial: bool) -> Upstream {
        let failed = Arc::new(AtomicU32::new(0));
        if !dial {
            return Upstream::Down(Box::pin(std::future::pending()), false, failed);
        }
        let dialer = dialer.clone();
        let counter = failed.clone();
        Upstream::Down(Box::pin(async move { dialer.open_with_backoff(&counter).await }), true, failed)
    }

    /// The connection, while there is one.
    pub fn codec(&mut self) -> Option<&mut Codec<BoxIo, Bytes>> {
        match self {
            Upstream::Up(codec, _) | Upstream::Going(codec, _, _) => Some(codec),
            Upstream::Down(..) => None,
        }
    }

    fn live(&mut self) -> Option<&mut Live> {
        match self {
            Upstream::Up(_, live) | Upstream::Going(_, live, _) => Some(live),
            Upstream::Down(..) => None,
        }
    }

    /// Never dials: every call of this client is answered by the bridge.
    pub fn is_idle(&self) -> bool {
        matches!(self, Upstream::Down(_, false, _))
    }

    /// Dialling, and some attempt failed already (so it may be sleeping
    /// out a backoff).
    pub fn backing_off(&self) -> bool {
        matches!(self, Upstream::Down(_, true, failed) if failed.load(Ordering::Relaxed) > 0)
    }

    /// A new connection, once the dialling ends.
    pub fn poll_dialled(&mut self, cx: &mut Context<'_>) -> Option<Opened> {
        match self {
            Upstream::Down(dialling, true, _) => match dialling.as_mut().poll(cx) {
                Poll::Ready(opened) => Some(opened),
                Poll::Pending => None,
            },
            _ => None,
        }
    }

    /// Until when a departing connection's calls may finish.
    pub fn going_until(&self) -> Option<Instant> {
        match self {
            Upstream::Going(_, _, until) => Some(*until),
            _ => None,
        }
    }
}

impl<C> FrameRelay<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) fn on_upstream_frame(&mut self, frame: Frame) {
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
                if let Some(live) = self.upstream.live() {
                    live.answered();
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
                let padding = super::defences::padding(&data);
                self.up_recv -= len as i64 + padding;
                let Some(call) = self.calls.get_mut(&id).filter(|c| c.waiting.is_none()) else {
                    self.grant_upstream();
                    return;
                };
                call.bytes += len as u64;
                let mut out = h2::frame::Data::new(id, data.into_payload());
                out.set_end_stream(end);
                if padding > 0 {
                    // Not carried, so the client never hands it back.
                    if !end {
                        self.to_upstream.push_back(h2::frame::WindowUpdate::new(id, padding as u32).into());
                    }
                    self.grant_upstream();
                }
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
                    if let Some(mut call) = self.remove_call(id) {
                        call.finish("UNAVAILABLE");
                    }
                    self.release_queued();
                } else {
                    let why = format!("{}: stream broken: stream reset by the peer ({:?})", self.label, reset.reason());
                    self.end_call(id, BridgeStatus::new(Code::Unavailable, why), false);
                }
            }
            Frame::Settings(settings) => self.upstream_settings(settings),
            Frame::Ping(ping) => self.upstream_ping(ping),
            Frame::WindowUpdate(update) => self.upstream_window_update(update),
            Frame::GoAway(goaway) => self.upstream_going(goaway),
            Frame::Priority(_) | Frame::PushPromise(_) => {}
        }
    }

    pub(super) fn upstream_error(&mut self, error: h2::proto::Error) {
        match error {
            h2::proto::Error::Reset(id, reason, _) => {
                // A header block of the upstream's the bridge could not take.
                if self.calls.contains_key(&id) {
                    let why = format!("{}: sent an answer the bridge cannot read ({reason:?})", self.label);
                    self.end_call(id, BridgeStatus::new(Code::Internal, why), true);
                }
            }
            h2::proto::Error::GoAway(_, reason, _) => self.lose_upstream(&format!("protocol error ({reason:?})")),
            h2::proto::Error::Io(kind, message) => {
                self.lose_upstream(&crate::describe::describe_io_kind(kind, message))
            }
        }
    }

    /// The next hop is going away: streams past its last one were not
    /// processed, watches end now (the gateway re-opens them), other calls
    /// may finish before the connection is replaced; new calls wait.
    fn upstream_going(&mut self, goaway: h2::frame::GoAway) {
        let last = goaway.last_stream_id();
        tracing::info!(peer = %self.label, reason = ?goaway.reason(), "next hop is going away; new calls wait for a new connection");
        let refused: Vec<StreamId> =
            self.calls.iter().filter(|(id, c)| **id > last && c.waiting.is_none()).map(|(id, _)| *id).collect();
        for id in refused {
            let why = format!("{}: going away: the call was not processed", self.label);
            self.end_call(id, BridgeStatus::new(Code::Unavailable, why), false);
        }
        let watches: Vec<StreamId> =
            self.calls.iter().filter(|(_, c)| c.streaming && c.waiting.is_none()).map(|(id, _)| *id).collect();
        for id in watches {
            let why = format!("{}: stream broken: the peer is going away", self.label);
            self.end_call(id, BridgeStatus::new(Code::Unavailable, why), true);
        }
        if let Upstream::Up(..) = self.upstream {
            let idle = Upstream::dialling(&self.dialer, false);
            if let Upstream::Up(codec, live) = std::mem::replace(&mut self.upstream, idle) {
                self.upstream = Upstream::Going(codec, live, Instant::now() + GOING_GRACE);
            }
        }
    }

    /// The upstream connection broke: every call on it ends UNAVAILABLE
    /// naming the hop, and a new connection is dialled. The client's
    /// connection stays; its new calls wait for the next hop (bounded).
    pub(super) fn lose_upstream(&mut self, cause: &str) {
        let Some(live) = self.upstream.live() else {
            return;
        };
        live.lost(&self.label, cause);
        self.end_sent_calls(&format!("connection lost: {cause}"));
        self.replace_upstream(cause);
    }

    /// Drops the upstream connection (its calls already ended) and dials
    /// the next, with backoff, until one answers.
    pub(super) fn replace_upstream(&mut self, cause: &str) {
        self.end_sent_calls(cause);
        for _ in 0..self.acks.upstream_lost() {
            self.to_client.push_back(h2::frame::Settings::ack().into());
        }
        self.to_upstream.clear();
        self.held_up = Default::default();
        self.held_down = Default::default();
        self.upstream_pings = None;
        self.upstream = Upstream::dialling(&self.dialer, true);
    }

    /// A new upstream connection answered: it learns the client's settings
    /// and the room the client has, the client learns its settings, and
    /// the calls that waited go out in order.
    pub(super) fn resume(&mut self, opened: Opened) {
        let Opened { mut codec, settings, hop, live } = opened;
        if self.acks.generation > 0 || !self.queued.is_empty() {
            tracing::info!(peer = %hop.label, waiting = self.queued.len(), "next hop connected");
        }
        if let Some(size) = self.client_settings.header_table_size() {
            codec.set_recv_header_table_size(size as usize);
        }
        if let Some(size) = self.client_settings.max_frame_size() {
            codec.set_max_recv_frame_size(size as usize);
        }
        codec.set_max_recv_header_list_size(self.header_list_limit as usize);
        self.upstream = Upstream::Up(codec, live);
        self.authority = hop.authority;
        self.scheme = hop.scheme;
        self.label = hop.label;
        self.upstream_pings = hop.keepalive.map(|k| Pinger::new(k, Instant::now()));
        self.up_send = super::windows::INITIAL_WINDOW;
        self.up_recv = super::windows::INITIAL_WINDOW;
        self.up_max_streams = usize::MAX;
        self.acks.new_upstream();
        // The client's SETTINGS so far, acknowledged already by the bridge.
        self.acks.sent_upstream(UpstreamAck::Bridge);
        self.to_upstream.push_back(self.client_settings.clone().into());
        // The room the client has beyond a new connection's default.
        self.grant_upstream();
        self.upstream_settings(settings);
        self.answer_waiting_health();
        self.release_queued();
        // The room the new connection gives the client, calls waiting or not.
        self.grant_client();
    }
}
