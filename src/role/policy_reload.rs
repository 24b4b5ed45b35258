//! The relay's access policy re-read without a restart: with `--config
//! FILE`, a change of the file (checked every `--reload-interval`) or
//! SIGHUP re-reads `allow-client`, `allow-client-read-only` and
//! `allow-any-client`. A file that does not validate is refused (file,
//! line and key named) and the running policy kept. A valid one is put in
//! force for every call from then on; connections whose identity it no
//! longer admits are cut (their calls end `PERMISSION_DENIED` naming the
//! identity), an identity moved to read-only keeps its connection and is
//! refused its next mutating call, and other connections are untouched.
//! Only the policy is re-read: other settings changed in the file take a
//! restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admit::policy::Policy;
use crate::admit::Forwarder;
use crate::shutdown::Shutdown;

/// Where the policy comes from, and how to read it again.
#[derive(Clone)]
pub struct PolicySource {
    /// The `--config` file (watched).
    pub file: PathBuf,
    /// Reads the policy again as the command line, environment and file
    /// now give it; an error already names the file, line and key.
    pub load: Arc<dyn Fn() -> Result<Policy, String> + Send + Sync>,
}

impl std::fmt::Debug for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySource").field("file", &self.file).finish_non_exhaustive()
    }
}

/// Keeps `forwarder`'s policy current with `source` until draining.
pub fn keep_current(source: PolicySource, forwarder: Forwarder, interval: Duration, shutdown: Shutdown) {
    let files = vec![source.file.clone()];
    crate::watch::on_change("access policy", files, interval, shutdown, move |why| reload(&source, &forwarder, why));
}

/// Reads the policy once more and puts it in force, or keeps the running one.
pub fn reload(source: &PolicySource, forwarder: &Forwarder, trigger: &str) {
    let file = source.file.display().to_string();
    let policy = match (source.load)() {
        Ok(policy) => policy,
        Err(error) => {
            forwarder.metrics().policy_reloaded("refused");
            tracing::error!(file, trigger, %error, "new access policy refused; keeping the running policy");
            return;
        }
    };
    let changes = forwarder.policy().changes(&policy);
    let cut = forwarder.replace_policy(policy);
    forwarder.metrics().policy_reloaded("ok");
    let list = |names: &[String]| if names.is_empty() { "none".to_owned() } else { names.join(", ") };
    tracing::info!(
        file,
        trigger,
        added = %list(&changes.added),
        removed = %list(&changes.removed),
        moved = %list(&changes.moved),
        closed_connections = cut.len(),
        "access policy reloaded"
    );
    for connection in cut {
        tracing::warn!(
            remote = %connection.peer,
            client = %connection.identity,
            "client identity no longer allowed by the reloaded policy; its connection is closed (its calls end PERMISSION_DENIED)"
        );
    }
}
