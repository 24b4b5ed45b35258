//! Certificate rotation without restart.
//!
//! A reloader watches the files behind a TLS configuration (polling their
//! metadata, which also follows Kubernetes' symlink swaps) and listens for
//! SIGHUP. On either it builds a whole new configuration; only if that
//! succeeds is it swapped in. New connections then use the new material;
//! established connections, and the calls and watches on them, keep theirs.
//! A broken file (half written, wrong key, expired) is refused with a log
//! line and the previous material stays in use.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::shutdown::Shutdown;
use crate::tls::config::{record_expiry, ExpirySink, TlsConfigError, TlsFiles};
use crate::tls::material::CertInfo;

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

/// Keeps `cell` (built from `files` by `build`) current, telling `expiry`
/// when the certificates expire now and after every reload; returns
/// this side's certificate details for the start-up summary.
pub fn keep_current<T, F>(
    label: &'static str,
    files: &TlsFiles,
    cell: Arc<ArcSwap<T>>,
    build: F,
    expiry: Arc<ExpirySink>,
    shutdown: Shutdown,
) -> Option<CertInfo>
where
    T: Send + Sync + 'static,
    F: Fn(&TlsFiles) -> Result<T, TlsConfigError> + Send + Sync + 'static,
{
    let certificate = record_expiry(files, &*expiry);
    let owned = files.clone();
    spawn(
        label,
        files.paths(),
        files.reload_interval,
        cell,
        move || {
            let config = build(&owned)?;
            record_expiry(&owned, &*expiry);
            Ok(config)
        },
        shutdown,
    );
    certificate
}

/// Keeps `cell` current with `files`, rebuilding through `build`.
fn spawn<T, F>(
    label: &'static str,
    files: Vec<PathBuf>,
    interval: Duration,
    cell: Arc<ArcSwap<T>>,
    build: F,
    shutdown: Shutdown,
) where
    T: Send + Sync + 'static,
    F: Fn() -> Result<T, TlsConfigError> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload on file change only");
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
            let why = if forced { "SIGHUP" } else { "file change" };
            match build() {
                Ok(config) => {
                    cell.store(Arc::new(config));
                    tracing::info!(material = label, trigger = why, "TLS material reloaded; new connections use it");
                }
                Err(e) => {
                    tracing::error!(material = label, trigger = why, error = %e, "new TLS material refused; keeping the previous");
                }
            }
        }
    });
}
