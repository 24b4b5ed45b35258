//! Limits a server library would enforce, which are the bridge's to
//! enforce because it works below h2's stream layer: a budget for streams
//! a client resets (rapid reset, CVE-2023-44487), and padding.
//!
//! The header-block limits (CONTINUATION floods, oversized headers) and
//! the frame checks (even stream ids, DATA on stream 0, a zero window
//! increment, bad SETTINGS) are h2's codec's, which both sides run.

use bytes::Bytes;
use h2::frame::{Data, Reason, StreamId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::FrameRelay;

/// Streams a client may reset before their answer, in a burst.
const RESET_BURST: f64 = 100.0;
/// ... and per second, sustained.
const RESETS_PER_SECOND: f64 = 10.0;

/// A token bucket of stream resets per client connection. A gateway
/// cancels a call now and then; a client resetting streams as fast as it
/// opens them makes the next hop start and abandon work for free.
pub struct ResetBudget {
    tokens: f64,
    at: Instant,
}

impl ResetBudget {
    pub fn new(now: Instant) -> ResetBudget {
        ResetBudget { tokens: RESET_BURST, at: now }
    }

    /// Takes one reset; `false` when the budget is spent.
    pub fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * RESETS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(RESET_BURST);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The bytes of a DATA frame's padding (its pad-length octet included),
/// which count against flow control but are not carried. h2 strips the
/// padding and keeps its length private; its `Debug` shows it
/// (`pad_len: N`), and a test pins that for the pinned h2 version.
pub fn padding(data: &Data<Bytes>) -> i64 {
    if !data.is_padded() {
        return 0;
    }
    let shown = format!("{data:?}");
    let pad_len = shown
        .split("pad_len: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse::<i64>().ok())
        .unwrap_or(0);
    pad_len + 1
}

impl<C> FrameRelay<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// Ends the client's connection for breaking the protocol: GOAWAY with
    /// `reason` naming the last stream, its calls recorded, then closed.
    pub(super) fn client_protocol_error(&mut self, reason: Reason, why: &'static str) {
        tracing::warn!(client = %self.caller, ?reason, why, "client broke the HTTP/2 protocol; connection closed");
        self.goaway_to_client(self.last_stream, reason, Bytes::from_static(why.as_bytes()));
        let ids: Vec<StreamId> = self.calls.keys().copied().collect();
        for id in ids {
            if let Some(mut call) = self.remove_call(id) {
                if call.waiting.is_none() && !call.withdrawn && !call.upstream_done {
                    self.send_upstream(h2::frame::Reset::new(id, Reason::CANCEL).into());
                }
                call.finish("NONE");
            }
        }
        self.closing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use h2::frame::Frame;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn the_reset_budget_allows_a_burst_then_refills_slowly() {
        let start = Instant::now();
        let mut budget = ResetBudget::new(start);
        for _ in 0..RESET_BURST as usize {
            assert!(budget.take(start));
        }
        assert!(!budget.take(start), "burst spent");
        assert!(budget.take(start + Duration::from_millis(150)), "one more after a tenth of a second");
        assert!(!budget.take(start + Duration::from_millis(150)));
    }

    /// What the relay relies on in h2's codec (pinned with `=` in
    /// Cargo.toml): a padded DATA frame comes out with its padding stripped
    /// and the pad length readable. An h2 upgrade that changes this fails
    /// here, not in production.
    #[tokio::test]
    async fn h2_shows_the_padding_of_a_padded_data_frame() {
        let (mut ours, theirs) = tokio::io::duplex(1024);
        let mut codec: h2::Codec<_, Bytes> = h2::Codec::new(theirs);
        // DATA, flags PADDED (0x8), stream 1: pad length 5, "hello", 5 zeros.
        let mut frame = vec![0, 0, 11, 0, 0x8, 0, 0, 0, 1, 5];
        frame.extend_from_slice(b"hello");
        frame.extend_from_slice(&[0; 5]);
        ours.write_all(&frame).await.unwrap();
        let Some(Ok(Frame::Data(data))) = codec.next().await else {
            panic!("not a DATA frame");
        };
        assert_eq!(data.payload().as_ref(), b"hello");
        assert_eq!(padding(&data), 6, "five bytes of padding and the pad-length octet");
        assert_eq!(padding(&Data::new(StreamId::from(1), Bytes::from_static(b"x"))), 0);
    }
}
