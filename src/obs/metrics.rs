//! What the bridge counts, and the Prometheus exposition of it.
//!
//! Counters are plain atomics or small maps behind a mutex taken once per
//! call; label sets are bounded (methods of the contract, status codes,
//! fixed refusal reasons) so a hostile client cannot grow them. Nothing
//! here ever holds message content. The exposition is written by the
//! `prometheus-client` crate, which escapes label values: a method name
//! from the wire may hold `"`, `\` or a newline and the scrape still parses.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Method names beyond this many distinct ones are counted as "other".
const MAX_METHODS: usize = 64;

/// Method names longer than this are counted as "other": no real method
/// name comes near it, and a label value of any length would be kept.
const MAX_METHOD_LABEL: usize = 128;

/// The next hop as `/metrics` shows it: a plain value that the admin
/// endpoint reads from whatever keeps the connection to the next hop, so
/// metrics never reach into the link themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HopState {
    /// The next hop's name(s) for the `peer` label, e.g. `upstream 10.0.0.5:7443`.
    pub peer: String,
    /// The target connected to now, if any.
    pub connected_to: Option<String>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// Connections made so far (reconnects included).
    pub connects: u64,
    /// Connected now.
    pub up: bool,
}

/// The text format a scraper gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// Prometheus text format 0.0.4: what the bridge always served, and
    /// what a scraper gets unless it asks for OpenMetrics.
    Prometheus,
    /// OpenMetrics 1.0 text (`# EOF` at the end; counters' `# TYPE` names
    /// lack `_total`; `le` values are written `1.0`).
    OpenMetrics,
}

impl Exposition {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` (as Prometheus servers do), else 0.0.4.
    pub fn from_accept(accept: Option<&str>) -> Exposition {
        match accept {
            Some(accept) if accept.to_ascii_lowercase().contains("application/openmetrics-text") => {
                Exposition::OpenMetrics
            }
            _ => Exposition::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

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
    pub callback: crate::callback::metrics::CallbackMetrics,
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
        }
    }

    /// Where the TLS reloader tells the expiry of the certificates in use.
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

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls counted so far for `method` with status `code`.
    pub fn calls(&self, method: &str, code: &str) -> u64 {
        lock(&self.methods).get(method).and_then(|stats| stats.codes.get(code)).copied().unwrap_or(0)
    }

    /// The exposition of this role and its next hop `hop`, in `format`.
    pub fn render(self: &Arc<Self>, hop: &HopState, format: Exposition, out: &mut String) {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape { metrics: self.clone(), hop: hop.clone() }));
        // Writing into a String fails only if an encoder refuses a value,
        // which none of ours is.
        let _ = match format {
            Exposition::Prometheus => prometheus_client::encoding::prometheus_text::encode(out, &registry),
            Exposition::OpenMetrics => prometheus_client::encoding::text::encode(out, &registry),
        };
    }
}

/// One scrape: the counters as they stand and the next hop's state.
struct Scrape {
    metrics: Arc<Metrics>,
    hop: HopState,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").field("role", &self.metrics.role).field("hop", &self.hop).finish()
    }
}

/// Counter names are given without `_total`: the encoder adds it to the
/// samples (and, in the 0.0.4 format, to `# HELP` and `# TYPE` too, as before).
impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = &self.metrics;
        let role = metrics.role;
        {
            let methods = lock(&metrics.methods);
            let mut names: Vec<&String> = methods.keys().collect();
            names.sort();
            let mut family = encoder.encode_descriptor(
                "openshell_bridge_calls",
                "Calls relayed or answered, by method and gRPC status.",
                None,
                MetricType::Counter,
            )?;
            for method in &names {
                for (code, n) in &methods[*method].codes {
                    let labels = [("role", role), ("method", method.as_str()), ("code", code)];
                    family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(n, None)?;
                }
            }
            let mut family = encoder.encode_descriptor(
                "openshell_bridge_call_duration_seconds",
                "Call duration from request to end of response.",
                None,
                MetricType::Histogram,
            )?;
            for method in &names {
                let histogram = &methods[*method].latency;
                let mut buckets = [(0.0, 0); BUCKETS.len()];
                for (i, bound) in BUCKETS.iter().enumerate() {
                    buckets[i] = (*bound, histogram.counts[i]);
                }
                let labels = [("role", role), ("method", method.as_str())];
                family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    histogram.sum,
                    histogram.total,
                    &buckets,
                    None,
                )?;
            }
        }
        let role_only = [("role", role)];
        gauge(
            &mut encoder,
            "openshell_bridge_open_calls",
            "Calls and streams in flight (open watches included).",
            &role_only,
            metrics.in_flight(),
        )?;
        counter(
            &mut encoder,
            "openshell_bridge_response_bytes",
            "Response body bytes relayed to clients.",
            &role_only,
            metrics.response_bytes.load(Ordering::Relaxed),
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "openshell_bridge_refused",
                "Calls and connections refused, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (why, n) in lock(&metrics.refused).iter() {
                let labels = [("role", role), ("reason", why.label())];
                family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "openshell_bridge_tls_handshake_failures",
                "Failed TLS handshakes, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in lock(&metrics.handshake_failures).iter() {
                let labels = [("role", role), ("reason", *reason)];
                family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "openshell_bridge_client_connections",
                "Client connections being served (each has a next-hop connection of its own while the next hop answers).",
                None,
                MetricType::Gauge,
            )?;
            family.encode_family(&[("role", role)])?.encode_gauge(&metrics.connections())?;
        }
        gauge(
            &mut encoder,
            "openshell_bridge_link_up",
            "1 while at least one connection to the next hop is open.",
            &[("role", role), ("peer", self.hop.peer.as_str())],
            i64::from(self.hop.up),
        )?;
        counter(
            &mut encoder,
            "openshell_bridge_link_connects",
            "Connections made to the next hop (reconnects included).",
            &role_only,
            self.hop.connects,
        )?;
        let mut family = encoder.encode_descriptor(
            "openshell_bridge_certificate_expiry_timestamp_seconds",
            "Expiry of the certificates in use (Unix time).",
            None,
            MetricType::Gauge,
        )?;
        for (file, not_after) in lock(&metrics.certificates).iter() {
            family.encode_family(&[("role", role), ("file", file.as_str())])?.encode_gauge(not_after)?;
        }
        metrics.callback.encode(role, &mut encoder)?;
        Ok(())
    }
}

/// A counter family with one sample.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &impl EncodeLabelSet,
    value: u64,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_family(labels)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// A gauge family with one sample.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &impl EncodeLabelSet,
    value: i64,
) -> Result<(), std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_family(labels)?.encode_gauge(&value)
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

    fn rendered(metrics: &Arc<Metrics>, format: Exposition) -> String {
        let hop = HopState {
            peer: "upstream 10.0.0.5:7443".into(),
            connected_to: Some("upstream 10.0.0.5:7443".into()),
            connects: 3,
            up: true,
            ..HopState::default()
        };
        let mut out = String::new();
        metrics.render(&hop, format, &mut out);
        out
    }

    /// Checks every line of a text exposition: `# HELP`/`# TYPE`/`# EOF`
    /// or a sample `name{key="value",...} number` whose label values hold
    /// only the escapes `\\`, `\"` and `\n`. Returns the samples' label
    /// values, unescaped.
    fn parse_exposition(text: &str) -> Vec<Vec<(String, String)>> {
        assert!(text.ends_with('\n'), "exposition must end with a newline");
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                assert!(
                    comment.starts_with("HELP openshell_bridge_")
                        || comment.starts_with("TYPE openshell_bridge_")
                        || comment == "EOF",
                    "stray comment line {line:?}"
                );
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value in {line:?}"));
            let name = &line[..name_end];
            assert!(
                name.starts_with("openshell_bridge_") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad metric name in {line:?}"
            );
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(after) = rest.strip_prefix('{') {
                rest = after;
                loop {
                    let eq = rest.find("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
                    let key = &rest[..eq];
                    assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line:?}");
                    let mut value = String::new();
                    let mut chars = rest[eq + 2..].char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((i, '"')) => break i,
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, c @ ('\\' | '"'))) => value.push(c),
                                other => panic!("bad escape {other:?} in {line:?}"),
                            },
                            Some((_, c)) => value.push(c),
                            None => panic!("unterminated label value in {line:?}"),
                        }
                    };
                    labels.push((key.to_owned(), value));
                    rest = &rest[eq + 2 + end + 1..];
                    if let Some(after) = rest.strip_prefix(',') {
                        rest = after;
                    } else {
                        rest = rest.strip_prefix('}').unwrap_or_else(|| panic!("no closing brace in {line:?}"));
                        break;
                    }
                }
            }
            let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad value in {line:?}");
            samples.push(labels);
        }
        samples
    }

    #[test]
    fn a_label_value_with_quotes_backslashes_and_newlines_renders_as_valid_exposition() {
        let metrics = Arc::new(Metrics::new("shim"));
        let hostile = "Bad\"name\\x\nopenshell_bridge_link_up{role=\"shim\"} 0";
        metrics.call_started();
        metrics.call_finished(hostile, "UNIMPLEMENTED", Duration::from_millis(2), 0);
        metrics.certificate("/etc/certs/a\"b\\c\nd.pem", 1_900_000_000);
        for format in [Exposition::Prometheus, Exposition::OpenMetrics] {
            let text = rendered(&metrics, format);
            assert!(
                text.contains(
                    r#"method="Bad\"name\\x\nopenshell_bridge_link_up{role=\"shim\"} 0",code="UNIMPLEMENTED"} 1"#
                ),
                "{text}"
            );
            assert!(text.contains(r#"file="/etc/certs/a\"b\\c\nd.pem"} 1900000000"#), "{text}");
            let samples = parse_exposition(&text);
            let methods: Vec<&str> =
                samples.iter().flatten().filter(|(k, _)| k == "method").map(|(_, v)| v.as_str()).collect();
            assert!(!methods.is_empty() && methods.iter().all(|m| *m == hostile), "{methods:?}");
            // The forged sample inside the label is not a sample of its own.
            assert_eq!(text.lines().filter(|l| l.starts_with("openshell_bridge_link_up")).count(), 1, "{text}");
        }
    }

    #[test]
    fn prometheus_text_keeps_the_names_and_form_of_before() {
        let metrics = Arc::new(Metrics::new("relay"));
        metrics.call_started();
        metrics.call_finished("GetSandbox", "NOT_FOUND", Duration::from_micros(300), 7);
        metrics.refused(Refusal::Path);
        let text = rendered(&metrics, Exposition::Prometheus);
        for expected in [
            "# HELP openshell_bridge_calls_total Calls relayed or answered, by method and gRPC status.\n# TYPE openshell_bridge_calls_total counter\n",
            "openshell_bridge_calls_total{role=\"relay\",method=\"GetSandbox\",code=\"NOT_FOUND\"} 1\n",
            "# TYPE openshell_bridge_call_duration_seconds histogram\n",
            "openshell_bridge_call_duration_seconds_bucket{role=\"relay\",method=\"GetSandbox\",le=\"0.0005\"} 1\n",
            "openshell_bridge_call_duration_seconds_bucket{role=\"relay\",method=\"GetSandbox\",le=\"1\"} 1\n",
            "openshell_bridge_call_duration_seconds_bucket{role=\"relay\",method=\"GetSandbox\",le=\"+Inf\"} 1\n",
            "openshell_bridge_call_duration_seconds_count{role=\"relay\",method=\"GetSandbox\"} 1\n",
            "openshell_bridge_open_calls{role=\"relay\"} 0\n",
            "# TYPE openshell_bridge_response_bytes_total counter\nopenshell_bridge_response_bytes_total{role=\"relay\"} 7\n",
            "openshell_bridge_refused_total{role=\"relay\",reason=\"path\"} 1\n",
            "# TYPE openshell_bridge_tls_handshake_failures_total counter\n",
            "openshell_bridge_client_connections{role=\"relay\"} 0\n",
            "openshell_bridge_link_up{role=\"relay\",peer=\"upstream 10.0.0.5:7443\"} 1\n",
            "openshell_bridge_link_connects_total{role=\"relay\"} 3\n",
            "# TYPE openshell_bridge_certificate_expiry_timestamp_seconds gauge\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        parse_exposition(&text);
        let open = rendered(&metrics, Exposition::OpenMetrics);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE openshell_bridge_calls counter\n"), "{open}");
        assert!(
            open.contains("openshell_bridge_calls_total{role=\"relay\",method=\"GetSandbox\",code=\"NOT_FOUND\"} 1\n"),
            "{open}"
        );
        parse_exposition(&open);
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        assert_eq!(Exposition::from_accept(None), Exposition::Prometheus);
        assert_eq!(Exposition::from_accept(Some("text/plain")), Exposition::Prometheus);
        let prometheus_server = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Exposition::from_accept(Some(prometheus_server)), Exposition::OpenMetrics);
        assert!(Exposition::OpenMetrics.content_type().starts_with("application/openmetrics-text"));
        assert!(Exposition::Prometheus.content_type().starts_with("text/plain; version=0.0.4"));
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
