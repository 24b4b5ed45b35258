//! PING, per hop. A PING belongs to its connection: each side's PINGs are
//! answered by the bridge and never forwarded (gRPC servers count pings
//! they did not ask for and send GOAWAY `too_many_pings` after two). The
//! bridge pings only a network hop, whose silence no end of file would
//! show; a Unix-socket peer that dies closes its socket.

use std::time::Duration;

use h2::frame::Ping;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::FrameRelay;

/// The bridge's own keepalive pings to one side. The payload is drawn at
/// random per connection, so that two bridges in a row never take each
/// other's answers for their own.
pub struct Pinger {
    every: Duration,
    timeout: Duration,
    payload: [u8; 8],
    next: Instant,
    sent: Option<Instant>,
    /// The bridge stopped reading this side since the last ping went out
    /// (the other side could not take more), so an answer may sit unread.
    stalled: bool,
}

impl Pinger {
    pub fn new((every, timeout): (Duration, Duration), now: Instant) -> Pinger {
        Pinger { every, timeout, payload: rand::random(), next: now + every, sent: None, stalled: false }
    }

    /// A ping to send now, if one is due; `Err(timeout)` when the last one
    /// went unanswered that long while the bridge kept reading.
    pub fn due(&mut self, now: Instant) -> Result<Option<Ping>, Duration> {
        match self.sent {
            Some(sent) if now >= sent + self.timeout => {
                if self.stalled {
                    // Not the peer's silence: the answer was not read. Judge
                    // again from now.
                    self.stalled = false;
                    self.sent = Some(now);
                    return Ok(None);
                }
                Err(self.timeout)
            }
            None if now >= self.next => {
                self.sent = Some(now);
                self.stalled = false;
                Ok(Some(Ping::new(self.payload)))
            }
            _ => Ok(None),
        }
    }

    /// The bridge held back reading this side.
    pub fn stalled(&mut self) {
        if self.sent.is_some() {
            self.stalled = true;
        }
    }

    /// When `due` has something to say next.
    pub fn wake(&self) -> Instant {
        match self.sent {
            Some(sent) => sent + self.timeout,
            None => self.next,
        }
    }

    /// Whether `ping` answers ours.
    pub fn answered(&mut self, ping: &Ping) -> bool {
        if self.sent.is_none() || !ping.is_ack() || *ping.payload() != self.payload {
            return false;
        }
        self.sent = None;
        self.stalled = false;
        self.next = Instant::now() + self.every;
        true
    }
}

impl<C> FrameRelay<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// A PING from the client: answered here; an answer is ours or nobody's.
    pub(super) fn client_ping(&mut self, ping: Ping) {
        if !ping.is_ack() {
            self.to_client.push_back(Ping::pong(ping.into_payload()).into());
        } else if self.goodbye.is_some_and(|(payload, _)| *ping.payload() == payload) {
            self.finish_goodbye();
        } else if let Some(pinger) = &mut self.client_pings {
            pinger.answered(&ping);
        }
    }

    /// A PING from the next hop: answered here.
    pub(super) fn upstream_ping(&mut self, ping: Ping) {
        if !ping.is_ack() {
            self.to_upstream.push_back(Ping::pong(ping.into_payload()).into());
        } else if let Some(pinger) = &mut self.upstream_pings {
            pinger.answered(&ping);
        }
    }

    /// Sends the pings that are due; a side silent past its timeout is cut
    /// off, naming the hop. `true` when something happened.
    pub(super) fn keepalive(&mut self, now: Instant) -> bool {
        let mut busy = false;
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
        busy
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
    fn silence_is_not_judged_while_the_bridge_was_not_reading_the_answer() {
        let start = Instant::now();
        let (every, timeout) = (Duration::from_secs(10), Duration::from_secs(5));
        let mut pinger = Pinger::new((every, timeout), start);
        pinger.due(start + every).unwrap().expect("a ping");
        pinger.stalled();
        let late = start + every + timeout;
        assert_eq!(pinger.due(late), Ok(None), "stalled: judged again from now");
        assert_eq!(pinger.wake(), late + timeout);
        assert_eq!(pinger.due(late + timeout), Err(timeout), "read again and still silent");
    }
}
