//! Files watched for change, and SIGHUP: what makes a role read its
//! material again without a restart (certificates, CRLs, the access
//! policy). Files are polled by their metadata, which also follows
//! Kubernetes' symlink swaps.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::shutdown::Shutdown;

/// What identifies a file's version without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64, u64)>>);

fn stamp(files: &[PathBuf]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp(
        files
            .iter()
            .map(|f| {
                std::fs::metadata(f).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()))
            })
            .collect(),
    )
}

/// Calls `changed` with what triggered it (`"SIGHUP"` or `"file change"`)
/// whenever SIGHUP arrives or one of `files` changes (checked every
/// `interval`), until draining begins. `what` names the material in the
/// warning when SIGHUP cannot be listened for.
pub fn on_change(
    what: &'static str,
    files: Vec<PathBuf>,
    interval: Duration,
    shutdown: Shutdown,
    mut changed: impl FnMut(&'static str) + Send + 'static,
) {
    tokio::spawn(async move {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, material = what, "cannot listen for SIGHUP; reloading on file change only");
                None
            }
        };
        let mut seen = stamp(&files);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = ticker.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                _ = shutdown.draining().cancelled() => return,
            };
            let now = stamp(&files);
            if !forced && now == seen {
                continue;
            }
            seen = now;
            changed(if forced { "SIGHUP" } else { "file change" });
        }
    });
}
