//! The one log line and the metrics of each relayed call. Never its body.

use std::sync::Arc;

use crate::admit::policy::Caller;
use crate::admit::route::printable;
use crate::admit::Forwarder;
use crate::grpc::status::BridgeStatus;
use crate::obs::metrics::Metrics;

/// Target of the per-call log line (enable with `RUST_LOG=openshell_bridge::call=debug`).
pub const CALL_LOG_TARGET: &str = "openshell_bridge::call";

/// Writes the one log line of a relayed call when it ends. Never the body.
pub(crate) struct CallLog {
    role: &'static str,
    method: String,
    caller: Arc<Caller>,
    started: std::time::Instant,
    metrics: Arc<Metrics>,
}

impl CallLog {
    pub(crate) fn new(forwarder: &Forwarder, method: String, caller: Arc<Caller>) -> CallLog {
        forwarder.metrics().call_started();
        CallLog {
            role: forwarder.role(),
            method,
            caller,
            started: std::time::Instant::now(),
            metrics: forwarder.metrics().clone(),
        }
    }

    pub(crate) fn finished_with(&self, status: &BridgeStatus) {
        self.metrics.call_finished(&self.method, status.code.name(), self.started.elapsed(), 0);
        tracing::warn!(
            target: CALL_LOG_TARGET,
            role = self.role,
            method = %printable(&self.method),
            caller = %self.caller,
            status = status.code.name(),
            ms = self.started.elapsed().as_millis() as u64,
            error = %status.message,
            "call failed in the bridge"
        );
    }
}

impl CallLog {
    /// The call ended with `code` (a status name) after `bytes` of answer.
    pub(crate) fn ended(&self, code: &'static str, bytes: u64) {
        self.metrics.call_finished(&self.method, code, self.started.elapsed(), bytes);
        tracing::debug!(
            target: CALL_LOG_TARGET,
            role = self.role,
            method = %printable(&self.method),
            caller = %self.caller,
            status = if code == "NONE" { "none (stream cut)" } else { code },
            ms = self.started.elapsed().as_millis() as u64,
            bytes,
            "call"
        );
    }
}
