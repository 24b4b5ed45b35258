//! `DemoDriver`: an in-memory implementation of the compute-driver contract.
//!
//! It behaves like a real backend as seen from a gateway: creation is
//! asynchronous (Ready=False while "provisioning", Ready=True after a delay),
//! Stop/Start are idempotent, deletion is observed through the watch stream,
//! and every watcher gets a snapshot of current sandboxes followed by live
//! events. Nothing is actually run; it exists so the bridge can be exercised
//! end to end without a cluster.
//!
//! This file holds the driver itself and what it shares; `options.rs` its
//! tunables, `service.rs` the gRPC methods, `state.rs` the sandboxes it
//! keeps and the checks on them, `lifecycle.rs` a sandbox's phases and the
//! delayed transitions between them, `watch.rs` the event fan-out to
//! watchers.

mod lifecycle;
mod options;
mod service;
mod state;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::proto::compute::compute_driver_server::ComputeDriverServer;
use crate::proto::compute::WatchSandboxesEvent;

pub use self::options::DemoOptions;
use self::state::State;
use self::watch::EVENT_BUFFER;

/// Large `ListSandboxes` answers must pass, and the gateway's own 4 MiB
/// limit is the one that should bite first, not ours.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The in-memory driver. Clones share the same sandboxes and watchers.
#[derive(Clone)]
pub struct DemoDriver {
    inner: Arc<Inner>,
}

struct Inner {
    opts: DemoOptions,
    state: Mutex<State>,
    /// Live events. Every send happens while `state` is locked, so a watcher
    /// that subscribes and snapshots under the same lock sees each change
    /// exactly once: either in its snapshot or as a live event.
    events: broadcast::Sender<WatchSandboxesEvent>,
    /// Calls received per method, for tests that must prove a call was not
    /// repeated.
    calls: Mutex<HashMap<&'static str, u64>>,
}

impl Default for DemoDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl DemoDriver {
    /// A driver with default options.
    pub fn new() -> Self {
        Self::with_options(DemoOptions::default())
    }

    /// A driver with the given options.
    pub fn with_options(opts: DemoOptions) -> Self {
        Self::build(opts, EVENT_BUFFER)
    }

    fn build(opts: DemoOptions, event_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(event_buffer);
        Self { inner: Arc::new(Inner { opts, state: Mutex::new(State::default()), events, calls: Mutex::default() }) }
    }

    /// Wraps the driver in a tonic service ready to be served.
    pub fn into_server(self) -> ComputeDriverServer<DemoDriver> {
        ComputeDriverServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Number of sandboxes currently known, including ones being deleted.
    pub fn sandbox_count(&self) -> usize {
        self.lock().sandboxes.len()
    }

    /// How many `method` calls reached this driver.
    pub fn calls(&self, method: &str) -> u64 {
        self.inner.calls.lock().expect("demo driver call counts poisoned").get(method).copied().unwrap_or(0)
    }

    /// How many watch streams are open right now.
    pub fn watchers(&self) -> usize {
        self.inner.events.receiver_count()
    }

    fn count_call(&self, method: &'static str) {
        *self.inner.calls.lock().expect("demo driver call counts poisoned").entry(method).or_insert(0) += 1;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().expect("demo driver state poisoned")
    }
}
