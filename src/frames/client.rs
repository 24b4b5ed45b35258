//! The client's side of a relay: each frame the client sends, admitted,
//! rewritten for the next hop, queued, answered here or refused.

use bytes::{Bytes, BytesMut};
use h2::frame::{Data, Frame, Headers, Reason, Reset, WindowUpdate};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::calls::{rebuilt, Call};
use super::local::HEALTH_BODY_LIMIT;
use super::FrameRelay;
use crate::admit::call_log::CallLog;
use crate::admit::route::strip_hop_by_hop;
use crate::admit::Admission;
use crate::grpc::status::{BridgeStatus, Code};

impl<C> FrameRelay<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) fn on_client_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Headers(headers) => self.client_headers(headers),
            Frame::Data(data) => self.client_data(data),
            Frame::Reset(reset) => {
                let id = reset.stream_id();
                self.health.remove(&id);
                if let Some(mut call) = self.remove_call(id) {
                    call.finish("NONE");
                    if call.waiting.is_none() && !call.withdrawn {
                        self.send_upstream(reset.into());
                    }
                    if !call.upstream_done && !self.resets.take(Instant::now()) {
                        tracing::warn!(client = %self.caller, "client reset streams faster than the budget allows (rapid reset); connection closed");
                        self.client_protocol_error(Reason::ENHANCE_YOUR_CALM, "too many stream resets");
                    }
                    self.release_queued();
                }
            }
            Frame::Settings(settings) => self.client_settings(settings),
            Frame::Ping(ping) => self.client_ping(ping),
            Frame::WindowUpdate(update) => self.client_window_update(update),
            // The client is leaving; the connection ends when it closes.
            Frame::GoAway(_) | Frame::Priority(_) => {}
            Frame::PushPromise(_) => self.client_protocol_error(Reason::PROTOCOL_ERROR, "a client may not push"),
        }
    }

    fn client_headers(&mut self, headers: Headers) {
        let id = headers.stream_id();
        let end = headers.is_end_stream();
        if let Some(call) = self.calls.get_mut(&id) {
            // The request's trailers.
            call.client_done = true;
            let queued = call.waiting.is_some();
            let (_, mut fields) = headers.into_parts();
            strip_hop_by_hop(&mut fields);
            let frame = rebuilt(id, h2::frame::Pseudo::default(), fields, true);
            if queued {
                self.queue_frame(id, frame);
            } else {
                self.send_upstream(frame);
            }
            self.forget_if_done(id);
            return;
        }
        if self.health.contains_key(&id) || id <= self.last_stream {
            return;
        }
        if !id.is_client_initiated() {
            return self.client_protocol_error(Reason::PROTOCOL_ERROR, "even stream id from a client");
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
        // `:authority` is the client's business (gRPC stacks send a dummy or
        // a percent-encoded socket path); the next hop gets its own names.
        pseudo.authority = Some(self.authority.clone());
        pseudo.scheme = Some(self.scheme.clone());
        let now = Instant::now();
        let deadline = admitted.budget.map(|budget| (now + budget, budget));
        if let Some((at, _)) = deadline {
            self.deadlines.insert((at, u32::from(id)));
        }
        let headers = rebuilt(id, pseudo, fields, end);
        let queue = self.must_queue();
        if queue {
            if self.queued.is_empty() && self.upstream.backing_off() {
                // Fresh demand after every earlier call gave up: an attempt
                // now, not the backoff grown meanwhile (a strike's pause
                // still holds, in the dialer).
                self.upstream = super::upstream::Upstream::dialling(&self.dialer, true);
            }
            self.queued.insert(id);
            self.wait_until.insert((now + self.dialer.settings().connect_wait, u32::from(id)));
        }
        let call = Call {
            log: CallLog::new(&self.forwarder, admitted.method, self.caller.clone()),
            streaming: admitted.streaming,
            deadline,
            waiting: queue.then(Vec::new),
            answered: false,
            client_done: end,
            upstream_done: false,
            finished: false,
            withdrawn: false,
            status: None,
            bytes: 0,
        };
        self.calls.insert(id, call);
        if queue {
            self.queue_frame(id, headers);
        } else {
            self.send_upstream(headers);
        }
    }

    fn client_data(&mut self, data: Data<Bytes>) {
        let id = data.stream_id();
        let end = data.is_end_stream();
        let len = data.payload().len();
        let padding = super::defences::padding(&data);
        self.client_send -= len as i64 + padding;
        if let Some(call) = self.calls.get_mut(&id) {
            call.client_done |= end;
            let queued = call.waiting.is_some();
            let mut out = Data::new(id, data.into_payload());
            out.set_end_stream(end);
            if padding > 0 && !end {
                // The padding is not carried, so the next hop never hands
                // it back: the bridge does, for the stream (the connection's
                // share comes with the grant below).
                self.to_client.push_back(WindowUpdate::new(id, padding as u32).into());
            }
            if queued {
                self.queue_frame(id, out.into());
            } else {
                self.send_upstream(out.into());
            }
            if padding > 0 {
                self.grant_client();
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

    pub(super) fn client_error(&mut self, error: h2::proto::Error) {
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
                if !self.resets.take(Instant::now()) {
                    self.client_protocol_error(Reason::ENHANCE_YOUR_CALM, "too many malformed streams");
                }
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
}
