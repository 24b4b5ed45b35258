//! Answers of the bridge's own: a refusal or failure as a gRPC
//! Trailers-Only response, and the standard health check
//! (`grpc.health.v1.Health/Check`), SERVING while this connection's next
//! hop answers. A check that arrives while the next hop is still being
//! dialled waits for it, briefly, so a probe on a fresh connection does
//! not read "not serving" for a hop that is about to answer.

use std::time::Duration;

use h2::frame::{Data, Pseudo, Reason, Reset, StreamId};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::calls::rebuilt;
use super::FrameRelay;
use crate::grpc::status::BridgeStatus;

/// A health check's request body, at most.
pub const HEALTH_BODY_LIMIT: usize = 4096;

/// How long a health check waits for the next hop's first answer.
const HEALTH_WAIT: Duration = Duration::from_secs(2);

impl<C> FrameRelay<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// A Trailers-Only answer of the bridge's own to a stream never forwarded.
    pub(super) fn answer(&mut self, id: StreamId, status: &BridgeStatus, client_done: bool) {
        let mut fields = status.to_header_map();
        fields.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        self.to_client.push_back(rebuilt(id, Pseudo::response(StatusCode::OK), fields, true));
        if !client_done {
            self.to_client.push_back(Reset::new(id, Reason::NO_ERROR).into());
        }
    }

    /// A whole health check request: answered now, or once the next hop
    /// first answers (at most `HEALTH_WAIT` from now).
    pub(super) fn answer_health(&mut self, id: StreamId, body: &[u8]) {
        if let Err(status) = crate::grpc::health::asked_for_us(body) {
            return self.answer(id, &status, true);
        }
        if self.is_down() && !self.upstream.is_idle() {
            self.health_wait.insert((Instant::now() + HEALTH_WAIT, u32::from(id)));
            return;
        }
        self.answer_health_now(id);
    }

    /// SERVING or NOT_SERVING, as this connection's next hop stands now.
    pub(super) fn answer_health_now(&mut self, id: StreamId) {
        self.health_wait.retain(|(_, w)| *w != u32::from(id));
        let mut head = HeaderMap::new();
        head.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        self.to_client.push_back(rebuilt(id, Pseudo::response(StatusCode::OK), head, false));
        let serving = self.is_up();
        if !serving {
            tracing::info!(peer = %self.label, reason = %self.dialer.last_error(), "health check: NOT_SERVING");
        }
        let message = crate::grpc::health::answer(serving);
        // Our own bytes in the client's window: the upstream is not told
        // of the room the client gives back for them.
        self.client_recv -= message.len() as i64;
        self.to_client.push_back(Data::new(id, message).into());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        self.to_client.push_back(rebuilt(id, Pseudo::default(), trailers, true));
    }

    /// Answers every health check that waited.
    pub(super) fn answer_waiting_health(&mut self) {
        let waiting: Vec<StreamId> = self.health_wait.iter().map(|&(_, id)| StreamId::from(id)).collect();
        for id in waiting {
            self.answer_health_now(id);
        }
    }
}
