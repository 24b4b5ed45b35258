//! What the bridge counts, and the Prometheus text it renders.
//!
//! Counters are plain atomics or small maps behind a mutex taken once per
//! call; label sets are bounded (methods of the contract, status codes,
//! fixed refusal reasons) so a hostile client cannot grow them. Nothing
//! here ever holds message content.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::link::Link;

/// Method names beyond this many distinct ones are counted as "other".
const MAX_METHODS: usize = 64;

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
pub struct Serving(Arc<Metrics>, usize);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.connections[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The counters of one role.
pub struct Metrics {
    role: &'static str,
    /// Per method: calls by status, and the latency histogram. One lock per
    /// call, looked up by `&str` without allocating.
    methods: Mutex<HashMap<String, MethodStats>>,
    in_flight: AtomicI64,
    /// Client connections being served: on the direct path, on the waiting path.
    connections: [AtomicI64; 2],
    response_bytes: AtomicU64,
    refused: Mutex<BTreeMap<Refusal, u64>>,
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    certificates: Mutex<BTreeMap<String, i64>>,
}

impl Metrics {
    pub fn new(role: &'static str) -> Metrics {
        Metrics {
            role,
            methods: Mutex::default(),
            in_flight: AtomicI64::new(0),
            connections: [AtomicI64::new(0), AtomicI64::new(0)],
            response_bytes: AtomicU64::new(0),
            refused: Mutex::default(),
            handshake_failures: Mutex::default(),
            certificates: Mutex::default(),
        }
    }

    /// A client connection is served on the direct path (`direct`) or the
    /// waiting path, for as long as the returned guard lives.
    pub fn serving(self: &Arc<Self>, direct: bool) -> Serving {
        let slot = usize::from(!direct);
        self.connections[slot].fetch_add(1, Ordering::Relaxed);
        Serving(self.clone(), slot)
    }

    /// Client connections now served on the direct path and the waiting path.
    pub fn connections(&self) -> (i64, i64) {
        (self.connections[0].load(Ordering::Relaxed), self.connections[1].load(Ordering::Relaxed))
    }

    pub fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A call ended with `code` (a gRPC status name) after `elapsed`.
    pub fn call_finished(&self, method: &str, code: &'static str, elapsed: Duration, bytes: u64) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.response_bytes.fetch_add(bytes, Ordering::Relaxed);
        let mut methods = lock(&self.methods);
        if !methods.contains_key(method) {
            let name = if methods.len() < MAX_METHODS { method } else { "other" };
            methods.entry(name.to_owned()).or_default();
        }
        let stats = match methods.get_mut(method) {
            Some(stats) => stats,
            None => methods.entry("other".to_owned()).or_default(),
        };
        *stats.codes.entry(code).or_insert(0) += 1;
        stats.latency.observe(elapsed.as_secs_f64());
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

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls counted so far for `method` with status `code`.
    pub fn calls(&self, method: &str, code: &str) -> u64 {
        lock(&self.methods).get(method).and_then(|stats| stats.codes.get(code)).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition of this role and its `link`.
    pub fn render(&self, link: &Link, out: &mut String) {
        let role = self.role;
        let methods = lock(&self.methods);
        let mut names: Vec<&String> = methods.keys().collect();
        names.sort();
        header(out, "openshell_bridge_calls_total", "counter", "Calls relayed or answered, by method and gRPC status.");
        for method in &names {
            for (code, n) in &methods[*method].codes {
                let _ = writeln!(
                    out,
                    "openshell_bridge_calls_total{{role=\"{role}\",method=\"{method}\",code=\"{code}\"}} {n}"
                );
            }
        }
        header(
            out,
            "openshell_bridge_call_duration_seconds",
            "histogram",
            "Call duration from request to end of response.",
        );
        for method in &names {
            let histogram = &methods[*method].latency;
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += histogram.counts[i];
                let _ = writeln!(
                    out,
                    "openshell_bridge_call_duration_seconds_bucket{{role=\"{role}\",method=\"{method}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "openshell_bridge_call_duration_seconds_bucket{{role=\"{role}\",method=\"{method}\",le=\"+Inf\"}} {}",
                histogram.total
            );
            let _ = writeln!(
                out,
                "openshell_bridge_call_duration_seconds_sum{{role=\"{role}\",method=\"{method}\"}} {}",
                histogram.sum
            );
            let _ = writeln!(
                out,
                "openshell_bridge_call_duration_seconds_count{{role=\"{role}\",method=\"{method}\"}} {}",
                histogram.total
            );
        }
        header(out, "openshell_bridge_open_calls", "gauge", "Calls and streams in flight (open watches included).");
        let _ = writeln!(out, "openshell_bridge_open_calls{{role=\"{role}\"}} {}", self.in_flight());
        header(out, "openshell_bridge_response_bytes_total", "counter", "Response body bytes relayed to clients.");
        let _ = writeln!(
            out,
            "openshell_bridge_response_bytes_total{{role=\"{role}\"}} {}",
            self.response_bytes.load(Ordering::Relaxed)
        );
        header(out, "openshell_bridge_refused_total", "counter", "Calls and connections refused, by reason.");
        for (why, n) in lock(&self.refused).iter() {
            let _ = writeln!(out, "openshell_bridge_refused_total{{role=\"{role}\",reason=\"{}\"}} {n}", why.label());
        }
        header(out, "openshell_bridge_tls_handshake_failures_total", "counter", "Failed TLS handshakes, by reason.");
        for (reason, n) in lock(&self.handshake_failures).iter() {
            let _ = writeln!(
                out,
                "openshell_bridge_tls_handshake_failures_total{{role=\"{role}\",reason=\"{reason}\"}} {n}"
            );
        }
        header(
            out,
            "openshell_bridge_client_connections",
            "gauge",
            "Client connections being served, by path: direct (frames onto a next-hop connection of their own) or waiting (made while the next hop was unreachable; calls wait for the link).",
        );
        let (direct, waiting) = self.connections();
        let _ = writeln!(out, "openshell_bridge_client_connections{{role=\"{role}\",path=\"direct\"}} {direct}");
        let _ = writeln!(out, "openshell_bridge_client_connections{{role=\"{role}\",path=\"waiting\"}} {waiting}");
        let status = link.status();
        header(
            out,
            "openshell_bridge_link_up",
            "gauge",
            "1 while the waiting path's link to the next hop is connected (readiness probes use it too).",
        );
        let _ = writeln!(
            out,
            "openshell_bridge_link_up{{role=\"{role}\",peer=\"{}\"}} {}",
            escape(&link.labels().join(",")),
            u8::from(status.connected_to.is_some())
        );
        header(
            out,
            "openshell_bridge_link_connects_total",
            "counter",
            "Connections made to the next hop (reconnects included).",
        );
        let _ = writeln!(out, "openshell_bridge_link_connects_total{{role=\"{role}\"}} {}", status.connects);
        header(
            out,
            "openshell_bridge_certificate_expiry_timestamp_seconds",
            "gauge",
            "Expiry of the certificates in use (Unix time).",
        );
        for (file, not_after) in lock(&self.certificates).iter() {
            let _ = writeln!(
                out,
                "openshell_bridge_certificate_expiry_timestamp_seconds{{role=\"{role}\",file=\"{}\"}} {not_after}",
                escape(file)
            );
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().expect("metrics lock poisoned")
}

/// Label values: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A short, bounded label for why a TLS handshake failed.
pub fn handshake_reason(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    match tls {
        E::NoCertificatesPresented => "no_certificate",
        E::InvalidCertificate(C::UnknownIssuer) => "unknown_ca",
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "expired",
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => "not_yet_valid",
        E::InvalidCertificate(_) => "bad_certificate",
        E::PeerIncompatible(_) | E::AlertReceived(rustls::AlertDescription::ProtocolVersion) => "incompatible",
        E::InvalidMessage(_) => "not_tls",
        _ => "other",
    }
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
