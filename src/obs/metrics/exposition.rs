//! The Prometheus exposition of the counters, written by the
//! `prometheus-client` crate, which escapes label values: a method name
//! from the wire may hold `"`, `\` or a newline and the scrape still parses.
//! Both text formats are served: Prometheus 0.0.4 unless the scraper asks
//! for OpenMetrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{lock, Metrics, BUCKETS};

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

impl Metrics {
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
        let crls = lock(&metrics.crls).clone();
        if !crls.is_empty() {
            let mut family = encoder.encode_descriptor(
                "openshell_bridge_crl_next_update_timestamp_seconds",
                "When each certificate revocation list in use should be superseded (its nextUpdate, Unix time).",
                None,
                MetricType::Gauge,
            )?;
            for (file, next_update) in crls.iter() {
                family.encode_family(&[("role", role), ("file", file.as_str())])?.encode_gauge(next_update)?;
            }
        }
        let reloads = lock(&metrics.policy_reloads).clone();
        if !reloads.is_empty() {
            let mut family = encoder.encode_descriptor(
                "openshell_bridge_policy_reloads",
                "Access policy reloads (SIGHUP or a change of --config) by result.",
                None,
                MetricType::Counter,
            )?;
            for (result, count) in reloads.iter() {
                family
                    .encode_family(&[("role", role), ("result", *result)])?
                    .encode_counter::<NoLabelSet, _, u64>(count, None)?;
            }
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

/// The strict scrape reader the integration tests use too (one copy).
#[cfg(test)]
#[path = "../../../tests/common/exposition.rs"]
mod exposition_check;

#[cfg(test)]
mod tests {
    use super::exposition_check::parse_exposition;
    use super::*;
    use std::time::Duration;

    use crate::obs::metrics::Refusal;

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
}
