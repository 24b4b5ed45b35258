//! Draining and the graceful goodbye to a client: no new calls, watches
//! end now, other calls may finish until the bridge stops.

use bytes::Bytes;
use h2::frame::{GoAway, Ping, Reason, StreamId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::FrameRelay;
use crate::grpc::status::{BridgeStatus, Code};

/// How long a graceful goodbye waits for the client's answer to its PING.
const GOODBYE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl<C> FrameRelay<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) fn begin_drain(&mut self) {
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

    pub(super) fn finish_goodbye(&mut self) {
        self.goodbye = None;
        self.said_goodbye = true;
        self.goaway_to_client(self.last_stream, Reason::NO_ERROR, Bytes::new());
        self.maybe_close();
    }

    /// A GOAWAY to the client; never naming a later stream than one sent
    /// before (the client would take that as a protocol error).
    pub(super) fn goaway_to_client(&mut self, last: StreamId, reason: Reason, debug: Bytes) {
        let last = self.client_goaway.map_or(last, |sent| sent.min(last));
        self.client_goaway = Some(last);
        self.to_client.push_back(GoAway::with_debug_data(last, reason, debug).into());
    }

    /// The connection ends now: every call still open ends with `status`
    /// (cancelled at the next hop), the final GOAWAY goes out, and the
    /// connection closes once that is written. When the drain time is up
    /// the status is `UNAVAILABLE` naming the shutdown (the process waits
    /// for the write only briefly); when a reload cuts the connection, it
    /// names the revoked certificate or the identity no longer admitted.
    pub(super) fn stop(&mut self, status: BridgeStatus) {
        let ids: Vec<StreamId> = self.calls.keys().copied().collect();
        for id in ids {
            self.end_call(id, status.clone(), true);
        }
        self.goodbye = None;
        self.said_goodbye = true;
        self.goaway_to_client(self.last_stream, Reason::NO_ERROR, Bytes::new());
        self.closing = true;
    }

    /// After the final GOAWAY, the connection ends when its calls have.
    pub(super) fn maybe_close(&mut self) {
        if self.said_goodbye && self.calls.is_empty() && self.health.is_empty() && self.health_wait.is_empty() {
            self.closing = true;
        }
    }

    /// The goodbye's time is up without the client's answer.
    pub(super) fn goodbye_due(&mut self, now: Instant) -> bool {
        if self.goodbye.is_some_and(|(_, until)| until <= now) {
            self.finish_goodbye();
            return true;
        }
        false
    }
}
