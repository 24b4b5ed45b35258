//! Certificate rotation without restart.
//!
//! A reloader watches the files behind a TLS configuration (polling their
//! metadata, which also follows Kubernetes' symlink swaps) and listens for
//! SIGHUP. On either it builds a whole new configuration; only if that
//! succeeds is it swapped in. New connections then use the new material;
//! established connections, and the calls and watches on them, keep theirs.
//! A broken file (half written, wrong key, expired) is refused with a log
//! line and the previous material stays in use. The `--crl` files are
//! watched the same way; a stale new CRL is refused like a broken file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::shutdown::Shutdown;
use crate::tls::config::{record_expiry, ExpirySink, TlsConfigError, TlsFiles};
use crate::tls::crl;
use crate::tls::material::CertInfo;

/// What a reloader tells others: when certificates expire, when each CRL
/// should be superseded, and that new material is in force.
#[derive(Clone)]
pub struct ReloadHooks {
    /// The expiry of each certificate file in use.
    pub expiry: Arc<ExpirySink>,
    /// The nextUpdate of each `--crl` file in use.
    pub crl_next_update: Arc<ExpirySink>,
    /// Runs after new material is swapped in (the relay checks its open
    /// connections against the new CRLs here).
    pub swapped: Arc<dyn Fn(&TlsFiles) + Send + Sync>,
}

impl ReloadHooks {
    pub fn new(expiry: Arc<ExpirySink>, crl_next_update: Arc<ExpirySink>) -> ReloadHooks {
        ReloadHooks { expiry, crl_next_update, swapped: Arc::new(|_| {}) }
    }
}

/// Keeps `cell` (built from `files` by `build`) current, telling `hooks`
/// when the certificates expire and the CRLs are due now and after every
/// reload; returns this side's certificate details for the start-up
/// summary. A reload whose CRL is stale (nextUpdate passed, or an older
/// CRL number than the one in use) is refused as a whole.
pub fn keep_current<T, F>(
    label: &'static str,
    files: &TlsFiles,
    cell: Arc<ArcSwap<T>>,
    build: F,
    hooks: ReloadHooks,
    shutdown: Shutdown,
) -> Option<CertInfo>
where
    T: Send + Sync + 'static,
    F: Fn(&TlsFiles) -> Result<T, TlsConfigError> + Send + Sync + 'static,
{
    let certificate = record_expiry(files, &*hooks.expiry);
    let in_use = crl::load_all(&files.crls).unwrap_or_default();
    record_crls(&in_use, &*hooks.crl_next_update, "start");
    let in_use = std::sync::Mutex::new(in_use);
    let owned = files.clone();
    let after = files.clone();
    let swapped = hooks.swapped.clone();
    spawn(
        label,
        files.paths(),
        files.reload_interval,
        cell,
        move || {
            let crls = crl::load_all(&owned.crls)?;
            let mut current = in_use.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            crl::refuse_stale(&current, &crls, time::OffsetDateTime::now_utc())?;
            let config = build(&owned)?;
            record_expiry(&owned, &*hooks.expiry);
            record_crls(&crls, &*hooks.crl_next_update, "reload");
            *current = crls;
            Ok(config)
        },
        move || swapped(&after),
        shutdown,
    );
    certificate
}

/// Logs each CRL in use, warns of a nextUpdate passed or near, and tells
/// `sink` when each is due.
fn record_crls(crls: &[crl::Crl], sink: &ExpirySink, when: &str) {
    let now = time::OffsetDateTime::now_utc();
    for crl in crls {
        tracing::info!(file = %crl.file.display(), when, "CRL in use: {}", crl.describe());
        crl::warn_on_next_update(crl, now);
        if let Some(at) = crl.next_update {
            sink(&crl.file.display().to_string(), at.unix_timestamp());
        }
    }
}

/// Keeps `cell` current with `files`, rebuilding through `build`.
fn spawn<T, F>(
    label: &'static str,
    files: Vec<PathBuf>,
    interval: Duration,
    cell: Arc<ArcSwap<T>>,
    build: F,
    after: impl Fn() + Send + 'static,
    shutdown: Shutdown,
) where
    T: Send + Sync + 'static,
    F: Fn() -> Result<T, TlsConfigError> + Send + Sync + 'static,
{
    crate::watch::on_change(label, files, interval, shutdown, move |why| match build() {
        Ok(config) => {
            cell.store(Arc::new(config));
            tracing::info!(material = label, trigger = why, "TLS material reloaded; new connections use it");
            after();
        }
        Err(e) => {
            tracing::error!(material = label, trigger = why, error = %e, "new TLS material refused; keeping the previous");
        }
    });
}
