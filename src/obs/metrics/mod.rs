//! What the bridge counts, and the Prometheus exposition of it.
//!//! Counters are plain atomics or small maps behind a mutex taken once per
//! call; label sets are bounded (methods of the contract, status codes,
//! fixed refusal reasons) so a hostile client cannot grow them. Nothing
//! here ever holds message content.
//!
//! This file holds what is counted, on the hot path; `exposition.rs` turns
//! it into the text a scraper reads.

pub mod callback;
pub mod exposition;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Method names beyond this many distinct ones are counted as "other".
const MAX_METHODS: usize = 64;

/// Method names longer than this are counted as "other": no real method
/// name comes near it, and a label value of any length would be kept.
const MAX_METHOD_LABEL: usize = 128;

/// Latency buckets in seconds: sub-millisecond relays to slow drivers.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Why the bridge refused something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// A path outside the contract's service.
    Path,
    /// The policy denied the identity or the method.
    Policy,
    /// A local peer of a UID not admitted.
    PeerUid,
    /// An HTTP/1.x request on an HTTP/2-only endpoint.
    Http1,
    /// Bytes that are not the HTTP/2 preface (or not TLS on the TLS port).
    NotHttp2,
    /// The listener was at its connection limit.
    ConnectionLimit,
    /// Too many TLS handshakes in progress (in all or from the source).
    HandshakeLimit,
    /// Out of file descriptors: accepted and closed at once.
    DescriptorLimit,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Path => "path",
            Refusal::Policy => "policy",
            Refusal::PeerUid => "peer_uid",
            Refusal::Http1 => "http1",
            Refusal::NotHttp2 => "not_http2",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HandshakeLimit => "handshake_limit",
            Refusal::DescriptorLimit => "descriptor_limit",
        }
    }
}

#[derive(Default)]
struct MethodStats {
    codes: BTreeMap<&'static str, u64>,
    latency: Histogram,
}

impl MethodStats {
    fn record(&mut self, code: &'static str, seconds: f64) {
        *self.codes.entry(code).or_insert(0) += 1;
        self.latency.observe(seconds);
    }
}

#[derive(Default)]
struct Histogram {
    counts: [u64; 16],
    sum: f64,
    total: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let bucket = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum += seconds;
        self.total += 1;
    }
}

/// Counts a client connection while it is served.
pub struct Serving(Arc<Metrics>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The counters of one role.
pub struct Metrics {
    role: &'static str,
    /// Per method: calls by status, and the latency histogram. One lock per
    /// call, looked up by `&str` without allocating.
    methods: Mutex<HashMap<String, MethodStats>>,
    in_flight: AtomicI64,
    /// Client connections being served.
    connections: AtomicI64,
    response_bytes: AtomicU64,
    refused: Mutex<BTreeMap<Refusal, u64>>,
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    certificates: Mutex<BTreeMap<String, i64>>,
    /// The way back (sandboxes calling the gateway), when the role serves it.
    pub callback: callback::CallbackMetrics,
    /// nextUpdate of each CRL file in use.
    crls: Mutex<BTreeMap<String, i64>>,
    /// Access policy reloads by result (`ok`, `refused`).
    policy_reloads: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn new(role: &'static str) -> Metrics {
        Metrics {
            role,
            methods: Mutex::default(),
            in_flight: AtomicI64::new(0),
            connections: AtomicI64::new(0),
            response_bytes: AtomicU64::new(0),
            refused: Mutex::default(),
            handshake_failures: Mutex::default(),
            certificates: Mutex::default(),
            callback: Default::default(),
            crls: Mutex::default(),
            policy_reloads: Mutex::default(),
        }
    }

    /// Where the TLS reloader tells the expiry of the certificates in use.
    /// Where the TLS reloader tells the nextUpdate of the CRLs in use.
    pub fn crl_sink(self: &Arc<Self>) -> impl Fn(&str, i64) + Send + Sync + 'static {
        let metrics = self.clone();
        move |file: &str, next_update: i64| {
            lock(&metrics.crls).insert(file.to_owned(), next_update);
        }
    }

    /// An access policy reload, `ok` or `refused`.
    pub fn policy_reloaded(&self, result: &'static str) {
        *lock(&self.policy_reloads).entry(result).or_insert(0) += 1;
    }

    /// Access policy reloads counted so far with `result`.
    pub fn policy_reloads(&self, result: &str) -> u64 {
        lock(&self.policy_reloads).get(result).copied().unwrap_or(0)
    }

    pub fn expiry_sink(self: &Arc<Self>) -> impl Fn(&str, i64) + Send + Sync + 'static {
        let metrics = self.clone();
        move |file: &str, not_after: i64| metrics.certificate(file, not_after)
    }

    /// A client connection is served, for as long as the returned guard lives.
    pub fn serving(self: &Arc<Self>) -> Serving {
        self.connections.fetch_add(1, Ordering::Relaxed);
        Serving(self.clone())
    }

    /// Client connections now served.
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A call ended with `code` (a gRPC status name) after `elapsed`. One
    /// lock and, for a method seen before, one map lookup; no allocation.
    pub fn call_finished(&self, method: &str, code: &'static str, elapsed: Duration, bytes: u64) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.response_bytes.fetch_add(bytes, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let mut methods = lock(&self.methods);
        if let Some(stats) = methods.get_mut(method) {
            stats.record(code, seconds);
            return;
        }
        // A method not seen before: its own label while there is room and
        // the name is of a sane length, else "other".
        let name = if methods.len() < MAX_METHODS && method.len() <= MAX_METHOD_LABEL { method } else { "other" };
        match methods.get_mut(name) {
            Some(stats) => stats.record(code, seconds),
            None => methods.entry(name.to_owned()).or_default().record(code, seconds),
        }
    }

    pub fn refused(&self, why: Refusal) {
        *lock(&self.refused).entry(why).or_insert(0) += 1;
    }

    /// A failed TLS handshake, by a short reason label.
    pub fn handshake_failed(&self, reason: &'static str) {
        *lock(&self.handshake_failures).entry(reason).or_insert(0) += 1;
    }

    /// The expiry (Unix seconds) of the certificate in `file`.
    pub fn certificate(&self, file: &str, not_after: i64) {
        lock(&self.certificates).insert(file.to_owned(), not_after);
    }

    /// Failed TLS handshakes so far, whatever the reason.
    pub fn handshake_failures(&self) -> u64 {
        lock(&self.handshake_failures).values().sum()
    }

    /// Handshake failures counted so far for `reason`.
    pub fn handshake_failures_for(&self, reason: &str) -> u64 {
        lock(&self.handshake_failures).get(reason).copied().unwrap_or(0)
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls counted so far for `method` with status `code`.
    pub fn calls(&self, method: &str, code: &str) -> u64 {
        lock(&self.methods).get(method).and_then(|stats| stats.codes.get(code)).copied().unwrap_or(0)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().expect("metrics lock poisoned")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        let metrics = Metrics::new("shim");
        for i in 0..(MAX_METHODS + 10) {
            metrics.call_started();
            metrics.call_finished(&format!("Method{i}"), "OK", Duration::from_millis(1), 10);
        }
        assert_eq!(metrics.calls("Method0", "OK"), 1);
        assert_eq!(metrics.calls("other", "OK"), 10);
        assert_eq!(metrics.in_flight(), 0);
        assert_eq!(lock(&metrics.methods).len(), MAX_METHODS + 1);
    }

    #[test]
    fn long_method_names_count_as_other() {
        let metrics = Metrics::new("shim");
        let long = "M".repeat(MAX_METHOD_LABEL + 1);
        metrics.call_started();
        metrics.call_finished(&long, "OK", Duration::from_millis(1), 0);
        assert_eq!(metrics.calls("other", "OK"), 1);
        assert_eq!(metrics.calls(&long, "OK"), 0);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut histogram = Histogram::default();
        for seconds in [0.0001, 0.003, 0.003, 100.0] {
            histogram.observe(seconds);
        }
        assert_eq!(histogram.total, 4);
        assert_eq!(histogram.counts[0], 1);
        assert_eq!(histogram.counts[BUCKETS.iter().position(|b| *b == 0.005).unwrap()], 2);
        assert_eq!(histogram.counts[BUCKETS.len()], 1, "beyond the last bucket counts only in +Inf");
    }
}
