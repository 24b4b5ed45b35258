//! The calls a relay carries: their bookkeeping, their timers, the queue
//! of calls waiting for the next hop, and how a call ends when the bridge
//! ends it.

use std::collections::BTreeSet;
use std::time::Duration;

use h2::frame::{Frame, Pseudo, Reason, Reset, StreamId};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::windows::{data_len, frame_stream, is_request};
use super::FrameRelay;
use crate::admit::call_log::CallLog;
use crate::grpc::status::status_name;
use crate::grpc::status::{BridgeStatus, Code};

/// A call the bridge forwards.
pub struct Call {
    pub log: CallLog,
    pub streaming: bool,
    pub deadline: Option<(Instant, Duration)>,
    /// Frames of a call that waits for the next hop (its HEADERS first);
    /// `None` once it was sent.
    pub waiting: Option<Vec<Frame>>,
    /// The upstream's response HEADERS went to the client.
    pub answered: bool,
    /// The client ended its request (END_STREAM seen).
    pub client_done: bool,
    /// The upstream ended its response.
    pub upstream_done: bool,
    /// Recorded in the metrics and the log.
    pub finished: bool,
    /// Taken back before its request HEADERS left the bridge: the next hop
    /// never heard of it (so must not hear of its end either).
    pub withdrawn: bool,
    pub status: Option<HeaderValue>,
    pub bytes: u64,
}

impl Call {
    pub fn finish(&mut self, code: &'static str) {
        if !self.finished {
            self.finished = true;
            self.log.ended(code, self.bytes);
        }
    }
}

/// The stream of the earliest timer in `timers` if it is due at `now`,
/// taken out of the set.
pub fn pop_due(timers: &mut BTreeSet<(Instant, u32)>, now: Instant) -> Option<StreamId> {
    let &(at, id) = timers.first()?;
    if at > now {
        return None;
    }
    timers.pop_first();
    Some(StreamId::from(id))
}

/// A header block for the other side: a fresh frame, so no flag (padding,
/// priority) of the received one is carried without its fields.
pub fn rebuilt(id: StreamId, pseudo: Pseudo, fields: HeaderMap, end: bool) -> Frame {
    let mut headers = h2::frame::Headers::new(id, pseudo, fields);
    if end {
        headers.set_end_stream();
    }
    headers.into()
}

impl<C> FrameRelay<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// Whether a new call must wait: no next hop to take it, calls before
    /// it waiting, or no stream free on the next hop.
    pub(super) fn must_queue(&self) -> bool {
        !self.is_up() || !self.queued.is_empty() || self.calls.len() - self.queued.len() >= self.up_max_streams
    }

    /// A frame of queued call `id` (it waits with it).
    pub(super) fn queue_frame(&mut self, id: StreamId, frame: Frame) {
        if let Some(frames) = self.calls.get_mut(&id).and_then(|c| c.waiting.as_mut()) {
            self.queued_bytes += data_len(&frame);
            frames.push(frame);
        }
    }

    /// Sends the queued calls, in order, while the next hop is up and has
    /// streams free.
    pub(super) fn release_queued(&mut self) {
        // The common case at the end of every call: nothing waits (and so
        // no wait bound is set, and no queued byte is held back).
        if self.queued.is_empty() {
            return;
        }
        while self.is_up() && self.calls.len() - self.queued.len() < self.up_max_streams {
            let Some(id) = self.queued.pop_first() else {
                break;
            };
            let Some(frames) = self.calls.get_mut(&id).and_then(|c| c.waiting.take()) else {
                continue;
            };
            for frame in frames {
                self.queued_bytes -= data_len(&frame);
                let frame = match frame {
                    Frame::Headers(headers) if headers.is_end_headers() => {
                        let end = headers.is_end_stream();
                        let (mut pseudo, fields) = headers.into_parts();
                        if pseudo.path.is_some() {
                            // The hop's names, as of the connection it goes on.
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
        if self.queued.is_empty() {
            self.wait_until.clear();
        }
        self.grant_client();
    }

    /// Takes call `id` out of the relay, with its timers and any frames of
    /// it still held or queued. A call whose request HEADERS have not left
    /// the bridge is withdrawn: its frames queued for the next hop go too,
    /// their window given back.
    pub(super) fn remove_call(&mut self, id: StreamId) -> Option<Call> {
        let mut call = self.calls.remove(&id)?;
        // A call the next hop answered has surely left; only one it has not
        // may still be in the queues (the common end of a call skips this).
        if call.waiting.is_none()
            && !call.answered
            && (self.held_up.holds_request(id) || self.to_upstream.iter_mut().any(|f| is_request(f, id)))
        {
            call.withdrawn = true;
            let mut returned = 0;
            self.to_upstream.retain(|f| {
                let mine = frame_stream(f) == Some(id);
                if mine {
                    returned += data_len(f);
                }
                !mine
            });
            self.up_send += returned;
        }
        if let Some((at, _)) = call.deadline {
            self.deadlines.remove(&(at, u32::from(id)));
        }
        if let Some(frames) = &call.waiting {
            self.queued.remove(&id);
            self.queued_bytes -= frames.iter().map(data_len).sum::<i64>();
            self.wait_until.retain(|(_, w)| *w != u32::from(id));
        }
        if self.held_up.drop_stream(id) {
            self.release_held_up();
        }
        if self.held_down.drop_stream(id) {
            self.release_held_down();
            self.grant_upstream();
        }
        self.grant_client();
        Some(call)
    }

    /// The upstream ended stream `id`'s response.
    pub(super) fn upstream_ended(&mut self, id: StreamId) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.upstream_done = true;
            let code = call.status.as_ref().and_then(|v| v.to_str().ok()).map(status_name).unwrap_or("NONE");
            call.finish(code);
            if let Some((at, _)) = call.deadline.take() {
                self.deadlines.remove(&(at, u32::from(id)));
            }
        }
        self.forget_if_done(id);
    }

    pub(super) fn forget_if_done(&mut self, id: StreamId) {
        if self.calls.get(&id).is_some_and(|c| c.client_done && c.upstream_done) {
            self.remove_call(id);
            self.release_queued();
        }
        self.maybe_close();
    }

    /// Ends a forwarded call with `status` to the client (and a cancel to
    /// the upstream when `cancel_upstream`); its later frames are dropped.
    pub(super) fn end_call(&mut self, id: StreamId, status: BridgeStatus, cancel_upstream: bool) {
        let Some(mut call) = self.remove_call(id) else {
            return;
        };
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
        if cancel_upstream && !call.upstream_done && call.waiting.is_none() && !call.withdrawn {
            self.send_upstream(Reset::new(id, Reason::CANCEL).into());
        }
        if !call.finished {
            call.finished = true;
            call.log.finished_with(&status);
        }
        self.release_queued();
        self.maybe_close();
    }

    /// Ends every call the next hop's connection carried with UNAVAILABLE
    /// naming the hop and `cause`.
    pub(super) fn end_sent_calls(&mut self, cause: &str) {
        let ids: Vec<StreamId> = self.calls.iter().filter(|(_, c)| c.waiting.is_none()).map(|(id, _)| *id).collect();
        for id in ids {
            let why = format!("{}: stream broken: {cause}", self.label);
            self.end_call(id, BridgeStatus::new(Code::Unavailable, why), false);
        }
    }

    /// Deadlines, wait bounds, health checks and a departing next hop whose
    /// time is up. `true` when something happened.
    pub(super) fn expire_timers(&mut self, now: Instant) -> bool {
        let mut busy = false;
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
            if self.queued.contains(&id) {
                let wait = self.dialer.settings().connect_wait.as_millis();
                let why = if self.is_up() {
                    format!(
                        "{}: no stream free after waiting {wait} ms (its limit is {})",
                        self.label, self.up_max_streams
                    )
                } else {
                    format!("{} unreachable after waiting {wait} ms: {}", self.label, self.dialer.last_error())
                };
                self.end_call(id, BridgeStatus::new(Code::Unavailable, why), false);
                busy = true;
            }
        }
        while let Some(id) = pop_due(&mut self.health_wait, now) {
            self.answer_health_now(id);
            busy = true;
        }
        busy |= self.goodbye_due(now);
        if let Some(until) = self.upstream.going_until() {
            let open = self.calls.len() > self.queued.len();
            if !open || until <= now {
                self.replace_upstream("it is going away");
                busy = true;
            }
        }
        busy
    }
}
