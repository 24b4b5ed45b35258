//! Shutdown as a first-class value.
//!
//! Two phases: *draining* (stop accepting, end long-lived watch streams with
//! `UNAVAILABLE` so gateways re-open them elsewhere, let other calls finish)
//! and *stopping* (the drain time is over: end everything now).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    draining: CancellationToken,
    stopping: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires when draining begins.
    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    /// Fires when the drain time is over (or on a second signal).
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// Tracks connection tasks so the drain can wait for them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Begins draining; after `drain_timeout` the stop follows by itself.
    pub fn begin(&self, drain_timeout: Duration) {
        if self.draining.is_cancelled() {
            return;
        }
        self.draining.cancel();
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain_timeout).await;
            stopping.cancel();
        });
    }

    /// Ends everything now.
    pub fn stop_now(&self) {
        self.draining.cancel();
        self.stopping.cancel();
    }

    /// Waits until every tracked connection has finished, or the stop.
    pub async fn drained(&self) {
        self.tasks.close();
        tokio::select! {
            _ = self.tasks.wait() => {}
            _ = self.stopping.cancelled() => {
                // Give tasks a moment to write their final frames.
                let _ = tokio::time::timeout(Duration::from_millis(200), self.tasks.wait()).await;
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT, then begins draining; a second signal stops
/// at once.
pub async fn on_signals(shutdown: Shutdown, drain_timeout: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; SIGTERM will kill the process without draining");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        drain_ms = drain_timeout.as_millis() as u64,
        "signal received: draining (send it again to stop at once)"
    );
    shutdown.begin(drain_timeout);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = shutdown.stopping().cancelled() => return,
    }
    tracing::warn!("second signal: stopping now");
    shutdown.stop_now();
}
