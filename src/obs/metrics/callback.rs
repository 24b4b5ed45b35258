//! The callback path's counters, shown under `/metrics` beside the role's
//! others (only by a role that serves callbacks), and its readiness.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Why a callback connection (or link) was refused: a fixed set, so the
/// label cannot grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Relay: no shim serves callbacks right now.
    NoShim,
    /// `--callback-max-connections` are open.
    ConnectionLimit,
    /// The gateway (`--callback-target`) refused or did not answer.
    GatewayUnreachable,
    /// Relay: a callback link from an identity that is not the callback identity.
    Identity,
    /// Relay: a callback link while no `--callback-listen` is set.
    NotServed,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoShim => "no_shim",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::GatewayUnreachable => "gateway_unreachable",
            Refusal::Identity => "identity",
            Refusal::NotServed => "not_served",
        }
    }
}

/// Which way bytes went.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// From the sandbox towards the gateway.
    ToGateway,
    /// From the gateway back to the sandbox.
    ToSandbox,
}

#[derive(Default)]
pub struct CallbackMetrics {
    /// The role serves callbacks: only then are these shown.
    enabled: AtomicBool,
    /// The shim's readiness depends on its callback link.
    required: AtomicBool,
    open: AtomicI64,
    total: AtomicU64,
    to_gateway: AtomicU64,
    to_sandbox: AtomicU64,
    links: AtomicI64,
    refused: Mutex<BTreeMap<Refusal, u64>>,
    last_error: Mutex<Option<String>>,
    /// Why no link is up, as whatever keeps the link sees it.
    why_down: OnceLock<WhyDown>,
}

type WhyDown = Box<dyn Fn() -> String + Send + Sync>;

/// Counts a callback connection as open while it lives.
pub struct OpenConnection<'a>(&'a CallbackMetrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl CallbackMetrics {
    /// The role serves callbacks; `required`: it is not ready without a
    /// link; `why_down` tells why no link is up.
    pub fn enable(&self, required: bool, why_down: WhyDown) {
        self.enabled.store(true, Ordering::Relaxed);
        self.required.store(required, Ordering::Relaxed);
        let _ = self.why_down.set(why_down);
    }

    pub fn opened(&self) -> OpenConnection<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    pub fn bytes(&self, direction: Direction, n: usize) {
        let counter = match direction {
            Direction::ToGateway => &self.to_gateway,
            Direction::ToSandbox => &self.to_sandbox,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn refused(&self, why: Refusal) {
        *lock(&self.refused).entry(why).or_insert(0) += 1;
    }

    pub fn link_up(&self) {
        self.links.fetch_add(1, Ordering::Relaxed);
    }

    /// A link ended with `cause`.
    pub fn link_down(&self, cause: &str) {
        self.links.fetch_sub(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(cause.to_owned());
    }

    pub fn links(&self) -> i64 {
        self.links.load(Ordering::Relaxed)
    }

    pub fn open_connections(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn refusals(&self, why: Refusal) -> u64 {
        lock(&self.refused).get(&why).copied().unwrap_or(0)
    }

    /// For `/readyz`: `Err(why)` when the role needs a callback link and
    /// has none; otherwise a short note on the callback path (if served).
    pub fn readiness(&self) -> Result<Option<String>, String> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let links = self.links();
        if links > 0 {
            return Ok(Some(format!("callback link up ({} connection(s) open)", self.open_connections())));
        }
        let why = match (lock(&self.last_error).clone(), self.why_down.get()) {
            (_, Some(why_down)) => why_down(),
            (Some(last), None) => last,
            (None, None) => "still connecting".into(),
        };
        if self.required.load(Ordering::Relaxed) {
            Err(format!("callback link to the relay is down: {why}"))
        } else {
            Ok(Some("no shim serves callbacks yet (callback connections are closed on arrival)".into()))
        }
    }

    /// Writes the callback families for `role`, if the role serves callbacks.
    pub fn encode(&self, role: &str, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        let role_only = [("role", role)];
        encoder
            .encode_descriptor(
                "openshell_bridge_callback_connections",
                "Callback connections (sandbox to gateway) open now.",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&role_only)?
            .encode_gauge(&self.open_connections())?;
        encoder
            // Not `openshell_bridge_callback_connections_total`: in OpenMetrics
            // that counter's family would share its name with the gauge
            // above, and a scrape holding both is refused whole.
            .encode_descriptor(
                "openshell_bridge_callback_connections_carried",
                "Callback connections carried (sandbox to gateway) since start.",
                None,
                MetricType::Counter,
            )?
            .encode_family(&role_only)?
            .encode_counter::<NoLabelSet, _, u64>(&self.total.load(Ordering::Relaxed), None)?;
        let mut family = encoder.encode_descriptor(
            "openshell_bridge_callback_bytes",
            "Callback bytes carried, by direction.",
            None,
            MetricType::Counter,
        )?;
        for (direction, counter) in [("to_gateway", &self.to_gateway), ("to_sandbox", &self.to_sandbox)] {
            family
                .encode_family(&[("role", role), ("direction", direction)])?
                .encode_counter::<NoLabelSet, _, u64>(&counter.load(Ordering::Relaxed), None)?;
        }
        let mut family = encoder.encode_descriptor(
            "openshell_bridge_callback_refused",
            "Callback connections and links refused, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (why, n) in lock(&self.refused).iter() {
            family
                .encode_family(&[("role", role), ("reason", why.label())])?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        encoder
            .encode_descriptor(
                "openshell_bridge_callback_link_up",
                "Callback links up (relay: shims serving callbacks; shim: its link to the relay).",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&role_only)?
            .encode_gauge(&self.links())?;
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::obs::metrics::exposition::{Exposition, HopState};
    use crate::obs::metrics::Metrics;

    #[test]
    fn callback_families_are_shown_only_when_served_and_never_twice() {
        let metrics = Arc::new(Metrics::new("relay"));
        let mut quiet = String::new();
        metrics.render(&HopState::default(), Exposition::OpenMetrics, &mut quiet);
        assert!(!quiet.contains("callback"), "{quiet}");

        metrics.callback.enable(false, Box::new(|| "no shim".into()));
        let _open = metrics.callback.opened();
        metrics.callback.bytes(Direction::ToGateway, 10);
        metrics.callback.refused(Refusal::NoShim);
        for format in [Exposition::Prometheus, Exposition::OpenMetrics] {
            let mut out = String::new();
            metrics.render(&HopState::default(), format, &mut out);
            let types: Vec<&str> = out.lines().filter(|l| l.starts_with("# TYPE ")).collect();
            let mut names: Vec<&str> = types.iter().filter_map(|l| l.split(' ').nth(2)).collect();
            let count = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), count, "a family name twice in {format:?}:\n{out}");
            for sample in [
                "openshell_bridge_callback_connections{role=\"relay\"} 1",
                "openshell_bridge_callback_connections_carried_total{role=\"relay\"} 1",
                "openshell_bridge_callback_bytes_total{role=\"relay\",direction=\"to_gateway\"} 10",
                "openshell_bridge_callback_refused_total{role=\"relay\",reason=\"no_shim\"} 1",
            ] {
                assert!(out.contains(sample), "{sample} missing in {format:?}:\n{out}");
            }
        }
        // A relay without a shim is still ready (it must stay in its Service).
        assert!(matches!(metrics.callback.readiness(), Ok(Some(note)) if note.contains("no shim")));
        let shim = Metrics::new("shim");
        shim.callback.enable(true, Box::new(|| "upstream relay:7443: connection refused".into()));
        assert_eq!(
            shim.callback.readiness(),
            Err("callback link to the relay is down: upstream relay:7443: connection refused".into())
        );
        shim.callback.link_up();
        assert!(shim.callback.readiness().is_ok());
    }
}
