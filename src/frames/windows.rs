//! Connection-level flow control across the relay. Normally the two ends'
//! windows match and frames cross as they come; where they differ (a new
//! next-hop connection, bytes the bridge dropped or answered itself), DATA
//! waits in the bridge until the receiver has room, and the bridge grants
//! each sender what the other side can take and the sender does not know
//! of yet. Stream-level windows stay the two ends' own.

use std::collections::VecDeque;

use h2::frame::{Frame, Reason, StreamId, WindowUpdate};
use tokio::io::{AsyncRead, AsyncWrite};

use super::FrameRelay;

/// The window every HTTP/2 connection starts with.
pub const INITIAL_WINDOW: i64 = 65_535;

/// The largest window HTTP/2 allows (RFC 9113 §6.9.1).
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Frames for one side held behind a DATA frame its window cannot take
/// yet, in order, and their DATA bytes.
#[derive(Default)]
pub struct Held {
    frames: VecDeque<Frame>,
    pub bytes: i64,
}

impl Held {
    /// `frame` to send now, taking its DATA bytes from `window`; or `None`
    /// when it is held (behind others, or beyond the window).
    pub fn pass(&mut self, frame: Frame, window: &mut i64) -> Option<Frame> {
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
    pub fn release(&mut self, window: &mut i64) -> Option<Frame> {
        let len = data_len(self.frames.front()?);
        if len > *window {
            return None;
        }
        self.bytes -= len;
        *window -= len;
        self.frames.pop_front()
    }

    /// Whether stream `id`'s request HEADERS are among the held frames.
    pub fn holds_request(&mut self, id: StreamId) -> bool {
        self.frames.iter_mut().any(|f| is_request(f, id))
    }

    /// Drops the frames of stream `id`; whether any DATA bytes went.
    pub fn drop_stream(&mut self, id: StreamId) -> bool {
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

/// The flow-controlled length of a frame as the bridge sends it: a DATA
/// frame's payload (the bridge sends no padding), nothing for the others.
pub fn data_len(frame: &Frame) -> i64 {
    match frame {
        Frame::Data(data) => data.payload().len() as i64,
        _ => 0,
    }
}

/// Whether `frame` is stream `id`'s request HEADERS (not its trailers).
pub fn is_request(frame: &mut Frame, id: StreamId) -> bool {
    match frame {
        Frame::Headers(headers) if headers.stream_id() == id => headers.pseudo_mut().path.is_some(),
        _ => false,
    }
}

/// The stream a frame belongs to, if any.
pub fn frame_stream(frame: &Frame) -> Option<StreamId> {
    match frame {
        Frame::Data(data) => Some(data.stream_id()),
        Frame::Headers(headers) => Some(headers.stream_id()),
        Frame::Reset(reset) => Some(reset.stream_id()),
        Frame::WindowUpdate(update) if !update.stream_id().is_zero() => Some(update.stream_id()),
        _ => None,
    }
}

impl<C> FrameRelay<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// A WINDOW_UPDATE from the client. A connection window past 2^31−1 is
    /// a connection error (FLOW_CONTROL_ERROR), never passed on: the next
    /// hop would end the bridge's connection for it.
    pub(super) fn client_window_update(&mut self, update: WindowUpdate) {
        let id = update.stream_id();
        if id.is_zero() {
            self.client_recv += i64::from(update.size_increment());
            if self.client_recv > MAX_WINDOW {
                return self.client_protocol_error(Reason::FLOW_CONTROL_ERROR, "connection window above 2^31-1");
            }
            self.release_held_down();
            self.grant_upstream();
        } else if let Some(call) = self.calls.get_mut(&id) {
            match &mut call.waiting {
                Some(frames) => frames.push(update.into()),
                None => self.to_upstream.push_back(update.into()),
            }
        }
    }

    /// A WINDOW_UPDATE from the next hop; an overflowing one is the next
    /// hop breaking the protocol, and ends its connection.
    pub(super) fn upstream_window_update(&mut self, update: WindowUpdate) {
        let id = update.stream_id();
        if id.is_zero() {
            self.up_send += i64::from(update.size_increment());
            if self.up_send > MAX_WINDOW {
                return self.lose_upstream("it raised the connection window above 2^31-1 (FLOW_CONTROL_ERROR)");
            }
            self.release_held_up();
            self.grant_client();
        } else if self.calls.get(&id).is_some_and(|c| c.waiting.is_none()) {
            self.send_client(update.into());
        }
    }

    /// A frame for the upstream, in order behind any held ones; DATA waits
    /// while the upstream's window cannot take it, and is cut to its frame
    /// size.
    pub(super) fn send_upstream(&mut self, frame: Frame) {
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
                    let mut piece = h2::frame::Data::new(id, chunk);
                    piece.set_end_stream(end && payload.is_empty());
                    self.to_upstream.push_back(piece.into());
                }
            }
            frame => self.to_upstream.push_back(frame),
        }
    }

    pub(super) fn release_held_up(&mut self) {
        while let Some(frame) = self.held_up.release(&mut self.up_send) {
            self.push_upstream(frame);
        }
    }

    /// A frame of the upstream's for the client, in order behind any held
    /// ones; DATA waits while the client's window cannot take it.
    pub(super) fn send_client(&mut self, frame: Frame) {
        if let Some(frame) = self.held_down.pass(frame, &mut self.client_recv) {
            self.to_client.push_back(frame);
        }
    }

    pub(super) fn release_held_down(&mut self) {
        while let Some(frame) = self.held_down.release(&mut self.client_recv) {
            self.to_client.push_back(frame);
        }
    }

    /// Tells the client it may send what the upstream can take and the
    /// client does not know of yet (bytes the bridge dropped, or room the
    /// upstream gave), less what waits in the bridge.
    pub(super) fn grant_client(&mut self) {
        if self.is_down() {
            return;
        }
        let grant = (self.up_send - self.held_up.bytes - self.queued_bytes - self.client_send)
            .min(MAX_WINDOW - self.client_send);
        if grant > 0 {
            self.to_client.push_back(WindowUpdate::new(StreamId::zero(), grant as u32).into());
            self.client_send += grant;
        }
    }

    /// The same toward the upstream: room the client gave, and bytes of
    /// the upstream's the bridge dropped.
    pub(super) fn grant_upstream(&mut self) {
        if self.is_down() {
            return;
        }
        let grant = (self.client_recv - self.held_down.bytes - self.up_recv).min(MAX_WINDOW - self.up_recv);
        if grant > 0 {
            self.to_upstream.push_back(WindowUpdate::new(StreamId::zero(), grant as u32).into());
            self.up_recv += grant;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use h2::frame::{Data, Reset};

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
