//! The dialer: the one way either role reaches its next hop.
//!
//! Every client connection gets a next-hop connection of its own from
//! here. The dialer tries its targets in order, the one that last worked
//! first; gives each address its own connect timeout (a blackholed first
//! address does not hide the others); runs the connection's *opening* (for
//! the driver link: HTTP/2 as client, waiting for the peer's SETTINGS, see
//! [`super::open`]; for the shim's callback link: HTTP/2 as server, see
//! `crate::callback::shim`), so a peer that takes the connection and hangs
//! up counts as unreachable here; and backs off with jitter between
//! rounds. A peer that ends fresh connections before any call completed
//! (a TLS 1.3 server refusing our certificate, a driver that resets us)
//! earns strikes: no new connection before a pause that doubles with each
//! strike, shared by every connection of the role, so no redial can spin.
//!
//! It also publishes the hop's state (connections open, the last error)
//! for `/readyz`, the metrics and the bridge's own health answer.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::frame::{self, BytesStr};
use h2::Codec;
use http::uri::{Authority, Scheme};
use tokio::time::Instant;

use super::{BoxIo, Connector};
use crate::obs::fold::Fold;

/// One peer the dialer can reach.
pub struct Target {
    pub connector: Connector,
    /// `:authority` and scheme of requests sent to this peer.
    pub scheme: Scheme,
    pub authority: Authority,
    /// How errors name this peer, e.g. `upstream relay.example:7443`.
    pub label: String,
    /// Whether this hop crosses a network: only then is it pinged. A
    /// driver behind a Unix socket or loopback shows its death as end of
    /// file, and gRPC servers punish pings they did not ask for.
    pub network: bool,
}

/// Timing of connection management.
#[derive(Clone, Debug)]
pub struct DialSettings {
    /// How long a call waits for the next hop to come up.
    pub connect_wait: Duration,
    /// One connection attempt per address (TCP, then TLS, then the peer's
    /// HTTP/2 SETTINGS), at most.
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// HTTP/2 PING interval on a network hop; a ping unanswered for
    /// `keepalive_timeout` ends the connection and fails its streams.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
}

impl Default for DialSettings {
    fn default() -> Self {
        DialSettings {
            connect_wait: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive_interval: Some(Duration::from_secs(5)),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}

/// The next hop as one connection to it sees it.
pub struct Hop {
    pub scheme: BytesStr,
    pub authority: BytesStr,
    /// e.g. `upstream relay.example:7443`.
    pub label: Arc<str>,
    /// Ping interval and timeout, on a network hop.
    pub keepalive: Option<(Duration, Duration)>,
}

/// A connection that answered HTTP/2: the codec (preface and the bridge's
/// SETTINGS sent), the peer's SETTINGS, and its hop. Counted as open for
/// as long as `live` lives.
pub struct Opened {
    pub codec: Codec<BoxIo, Bytes>,
    pub settings: frame::Settings,
    pub hop: Hop,
    pub live: Live,
}

/// A connection whose opening succeeded: what the opening gave, which
/// target it reached, and its liveness (counted as open while `live` lives).
pub struct Reached<T> {
    pub opened: T,
    /// e.g. `upstream relay.example:7443`.
    pub label: Arc<str>,
    /// Ping interval and timeout, on a network hop.
    pub keepalive: Option<(Duration, Duration)>,
    pub live: Live,
    target: usize,
}

/// What the hop looks like from outside, for health and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopStatus {
    /// The target last connected to, while a connection to it is open.
    pub connected_to: Option<String>,
    pub last_error: Option<String>,
    /// Connections opened since start.
    pub connects: u64,
    /// Connections open now.
    pub open: usize,
}

/// A cheap handle; clones share the state.
#[derive(Clone)]
pub struct Dialer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Names the far side in messages ("upstream", "driver").
    role: &'static str,
    targets: Vec<Target>,
    labels: Vec<Arc<str>>,
    settings: DialSettings,
    state: Mutex<State>,
    /// "cannot connect" lines, folded per cause.
    failures: Fold,
    /// "connection lost" lines, folded per cause.
    losses: Fold,
}

#[derive(Default)]
struct State {
    preferred: usize,
    last_error: Option<String>,
    connects: u64,
    open: usize,
    /// Connections in a row that ended before a call completed on them.
    strikes: u32,
    /// No new connection before this instant.
    not_before: Option<Instant>,
    /// When a readiness probe last reached the hop, and which target.
    probed: Option<(Instant, String)>,
}

/// How long a probe that reached the hop stands before the next one dials
/// (a failed one is not kept: the hop may be back at the next probe).
const PROBE_FRESH: Duration = Duration::from_secs(5);

impl Dialer {
    pub fn new(role: &'static str, targets: Vec<Target>, settings: DialSettings) -> Dialer {
        assert!(!targets.is_empty(), "a dialer needs at least one target");
        Dialer {
            inner: Arc::new(Inner {
                role,
                labels: targets.iter().map(|t| Arc::from(t.label.as_str())).collect(),
                targets,
                settings,
                state: Mutex::new(State::default()),
                failures: Fold::new(Duration::from_secs(10)),
                losses: Fold::new(Duration::from_secs(10)),
            }),
        }
    }

    pub fn settings(&self) -> &DialSettings {
        &self.inner.settings
    }

    /// Labels of every target, in order.
    pub fn labels(&self) -> Vec<String> {
        self.inner.labels.iter().map(|l| l.to_string()).collect()
    }

    /// The targets in words: one label, or "upstreams a, b".
    pub fn describe_targets(&self) -> String {
        match self.inner.labels.as_slice() {
            [one] => one.to_string(),
            labels => {
                format!("{}s {}", self.inner.role, labels.iter().map(|l| l.as_ref()).collect::<Vec<_>>().join(", "))
            }
        }
    }

    pub fn status(&self) -> HopStatus {
        let state = self.inner.lock();
        HopStatus {
            connected_to: (state.open > 0).then(|| self.inner.targets[state.preferred].label.clone()),
            last_error: state.last_error.clone(),
            connects: state.connects,
            open: state.open,
        }
    }

    /// Why the next hop cannot be had, as last seen.
    pub fn last_error(&self) -> String {
        self.inner.lock().last_error.clone().unwrap_or_else(|| "still connecting".into())
    }

    /// Opens a connection with HTTP/2 as client (the driver link), trying
    /// every target once (after any strike pause); the error names each
    /// target's failure.
    pub async fn open(&self) -> Result<Opened, String> {
        let reached = self.open_with(super::open::http2_open).await?;
        Ok(self.as_opened(reached))
    }

    /// Opens a connection, retrying with backoff and jitter until one
    /// answers; `failed` counts the rounds that did not.
    pub async fn open_with_backoff(&self, failed: &AtomicU32) -> Opened {
        let reached = self.open_with_backoff_using(super::open::http2_open, failed).await;
        self.as_opened(reached)
    }

    /// Connects to the targets in order (after any strike pause) and runs
    /// `opening` on the connected stream, bounded by the connect timeout;
    /// an opening that fails is a strike. The error names each target's
    /// failure.
    pub async fn open_with<T, F, Fut>(&self, opening: F) -> Result<Reached<T>, String>
    where
        F: Fn(BoxIo) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let (start, not_before) = {
            let state = self.inner.lock();
            (state.preferred, state.not_before)
        };
        if let Some(at) = not_before {
            tokio::time::sleep_until(at).await;
        }
        let mut errors = Vec::new();
        for offset in 0..self.inner.targets.len() {
            let index = (start + offset) % self.inner.targets.len();
            match self.open_target(index, &opening).await {
                Ok(reached) => return Ok(reached),
                Err(why) => errors.push(format!("{}: {why}", self.inner.targets[index].label)),
            }
        }
        let why = errors.join("; ");
        if let Some(repeated) = self.inner.failures.hit(&why) {
            tracing::warn!(role = self.inner.role, error = %why, repeated, "cannot connect");
        }
        self.inner.lock().last_error = Some(why.clone());
        Err(why)
    }

    /// [`Self::open_with`], retrying with backoff and jitter until a
    /// connection opens; `failed` counts the rounds that did not.
    pub async fn open_with_backoff_using<T, F, Fut>(&self, opening: F, failed: &AtomicU32) -> Reached<T>
    where
        F: Fn(BoxIo) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let settings = &self.inner.settings;
        let mut backoff = settings.backoff_initial;
        loop {
            if let Ok(reached) = self.open_with(&opening).await {
                return reached;
            }
            failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(settings.backoff_max);
        }
    }

    /// An HTTP/2 client connection as the frame relay takes it.
    fn as_opened(&self, reached: Reached<(Codec<BoxIo, Bytes>, frame::Settings)>) -> Opened {
        let target = &self.inner.targets[reached.target];
        let text = |value: &str| BytesStr::try_from(Bytes::copy_from_slice(value.as_bytes())).expect("valid UTF-8");
        let (codec, settings) = reached.opened;
        let hop = Hop {
            scheme: text(target.scheme.as_str()),
            authority: text(target.authority.as_str()),
            label: reached.label,
            keepalive: reached.keepalive,
        };
        Opened { codec, settings, hop, live: reached.live }
    }

    /// Whether the next hop can be reached: yes while a connection to it is
    /// open; otherwise a connection is opened and closed again (a success
    /// stands for a few seconds), waiting at most `wait`.
    pub async fn probe(&self, wait: Duration) -> Result<String, String> {
        {
            let state = self.inner.lock();
            if state.open > 0 {
                return Ok(self.inner.targets[state.preferred].label.clone());
            }
            if let Some((at, label)) = &state.probed {
                if at.elapsed() < PROBE_FRESH {
                    return Ok(label.clone());
                }
            }
        }
        let found = match tokio::time::timeout(wait, self.open()).await {
            Ok(Ok(opened)) => Ok(opened.hop.label.to_string()),
            Ok(Err(why)) => Err(why),
            Err(_) => Err(format!("{}: no answer within {} ms", self.describe_targets(), wait.as_millis())),
        };
        if let Ok(label) = &found {
            self.inner.lock().probed = Some((Instant::now(), label.clone()));
        }
        found
    }

    async fn open_target<T, F, Fut>(&self, index: usize, opening: &F) -> Result<Reached<T>, String>
    where
        F: Fn(BoxIo) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let inner = &self.inner;
        let target = &inner.targets[index];
        let timeout = inner.settings.connect_timeout;
        let io = target.connector.connect(timeout).await.map_err(|e| e.to_string())?;
        let opened = match tokio::time::timeout(timeout, opening(io)).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(why)) => {
                self.strike();
                return Err(why);
            }
            Err(_) => {
                self.strike();
                return Err(format!("no HTTP/2 answer within {} ms", timeout.as_millis()));
            }
        };
        let keepalive = inner
            .settings
            .keepalive_interval
            .filter(|_| target.network)
            .map(|every| (every, inner.settings.keepalive_timeout));
        {
            let mut state = inner.lock();
            state.preferred = index;
            state.connects += 1;
            state.open += 1;
            state.last_error = None;
            state.probed = None;
        }
        Ok(Reached {
            opened,
            label: inner.labels[index].clone(),
            keepalive,
            live: Live { inner: inner.clone(), answered: false },
            target: index,
        })
    }

    /// A connection ended before its peer answered anything: no new one
    /// before a pause that doubles with each such connection in a row.
    fn strike(&self) {
        self.inner.lock().strike(&self.inner.settings);
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn strike(&mut self, settings: &DialSettings) {
        self.strikes = self.strikes.saturating_add(1);
        let pause = (settings.backoff_initial * 2u32.saturating_pow(self.strikes.min(8))).min(settings.backoff_max);
        self.not_before = Some(Instant::now() + jitter(pause));
    }
}

/// Counts a connection as open while it lives, and tells the dialer how it
/// ended.
pub struct Live {
    inner: Arc<Inner>,
    answered: bool,
}

impl Live {
    /// A call was answered on this connection: the peer works, strikes end.
    pub fn answered(&mut self) {
        if !self.answered {
            self.answered = true;
            let mut state = self.inner.lock();
            state.strikes = 0;
            state.not_before = None;
        }
    }

    /// The peer `label` ended the connection (or went silent) with
    /// `cause`; one it ended before any call was answered is a strike.
    pub fn lost(&self, label: &str, cause: &str) {
        let kind = format!("{label}: {cause}");
        if let Some(repeated) = self.inner.losses.hit(&kind) {
            tracing::warn!(peer = %label, error = %cause, repeated, "next hop connection lost; dialling again");
        }
        let mut state = self.inner.lock();
        state.last_error = Some(format!("{label}: connection lost: {cause}"));
        if !self.answered {
            state.strike(&self.inner.settings);
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.inner.lock().open -= 1;
    }
}

/// Full jitter on the upper half: spreads reconnects of many bridges
/// without ever retrying sooner than half the backoff.
pub fn jitter(backoff: Duration) -> Duration {
    let half = backoff / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_the_upper_half() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(200));
            assert!(j >= Duration::from_millis(100) && j <= Duration::from_millis(200), "{j:?}");
        }
    }

    #[test]
    fn strikes_double_the_pause_up_to_the_cap() {
        let settings = DialSettings {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..DialSettings::default()
        };
        let mut state = State::default();
        let mut pauses = Vec::new();
        for _ in 0..6 {
            let before = Instant::now();
            state.strike(&settings);
            pauses.push(state.not_before.unwrap() - before);
        }
        // 200 ms, 400 ms, 800 ms, then the 1 s cap (each jittered to its upper half).
        assert!(pauses[0] >= Duration::from_millis(100) && pauses[0] <= Duration::from_millis(201));
        assert!(pauses[2] >= Duration::from_millis(400));
        assert!(pauses[5] <= Duration::from_millis(1001));
    }
}
