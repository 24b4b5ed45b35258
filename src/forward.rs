//! The transparent forwarder: one gRPC call in, the same call out.
//!
//! Requests and responses cross at the HTTP/2 level. Headers, body frames
//! and trailers pass unchanged (compression flags included); only
//! hop-by-hop headers are dropped and `:authority` is rewritten for the next
//! hop. Messages are never decoded, so fields and methods added to the
//! contract after this bridge was built pass just the same. The forwarder
//! answers itself only to refuse (a path outside the service, a caller the
//! policy rejects) or to fail (the next hop unreachable, a deadline spent),
//! always with a gRPC status that names the hop and the cause.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::HeaderMap;

use crate::connect::dialer::Dialer;
use crate::metrics::{Metrics, Refusal};
use crate::policy::{Caller, Policy, SERVICE, SERVICE_PREFIX};
use crate::status::{BridgeStatus, Code};

/// The contract's methods: each takes one request message.
pub const CONTRACT_METHODS: &[&str] = &[
    "GetCapabilities",
    "GetGatewayListenerRequirements",
    "ValidateSandboxCreate",
    "GetSandbox",
    "ListSandboxes",
    "CreateSandbox",
    "StopSandbox",
    "StartSandbox",
    "DeleteSandbox",
    "WatchSandboxes",
    "EnsureWorkspace",
    "DeleteWorkspace",
];

/// Methods whose response is a long-lived stream.
const STREAMING_METHODS: &[&str] = &["WatchSandboxes"];

/// Target of the per-call log line (enable with `RUST_LOG=openshell_bridge::call=debug`).
pub const CALL_LOG_TARGET: &str = "openshell_bridge::call";

/// Shared by every connection of one listener.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<ForwarderInner>,
}

struct ForwarderInner {
    /// Names this bridge in messages: "shim" or "relay".
    role: &'static str,
    dialer: Dialer,
    policy: Policy,
    default_timeout: Option<Duration>,
    metrics: Arc<Metrics>,
    /// Why streams end when the bridge stops, made once.
    shutting_down: Arc<str>,
}

/// Options of a forwarder beyond its link and policy.
#[derive(Clone, Debug, Default)]
pub struct ForwardOptions {
    /// Deadline for unary calls that carry no `grpc-timeout`.
    pub default_timeout: Option<Duration>,
}

impl Forwarder {
    pub fn new(role: &'static str, dialer: Dialer, policy: Policy, options: ForwardOptions) -> Self {
        Forwarder {
            inner: Arc::new(ForwarderInner {
                role,
                dialer,
                policy,
                default_timeout: options.default_timeout,
                metrics: Arc::new(Metrics::new(role)),
                shutting_down: Arc::from(format!("{role} is shutting down")),
            }),
        }
    }

    /// How the next hop is reached.
    pub fn dialer(&self) -> &Dialer {
        &self.inner.dialer
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub(crate) fn role(&self) -> &'static str {
        self.inner.role
    }

    /// Why streams end when the bridge stops.
    pub(crate) fn shutting_down(&self) -> &Arc<str> {
        &self.inner.shutting_down
    }

    /// What a request with `path` and `headers` from `caller` may become:
    /// a health check the bridge answers, a call to forward, or a refusal
    /// (logged and counted here).
    pub(crate) fn admit(&self, path: &str, headers: &HeaderMap, caller: &Caller) -> Result<Admission, BridgeStatus> {
        let role = self.inner.role;
        if path == crate::health::CHECK_PATH && self.inner.policy.admits(caller) {
            return Ok(Admission::Health);
        }
        let method = match route(path) {
            Ok(method) => method,
            Err(status) => {
                tracing::warn!(role, caller = %caller, path = %printable(path), "refused: path outside the contract");
                self.inner.metrics.refused(Refusal::Path);
                return Err(status);
            }
        };
        if let Err(denied) = self.inner.policy.authorize(caller, method) {
            tracing::warn!(role, caller = %caller, method = %printable(method), reason = %denied.0, "refused by policy");
            self.inner.metrics.refused(Refusal::Policy);
            return Err(BridgeStatus::new(Code::PermissionDenied, format!("{role}: {}", denied.0)));
        }
        let streaming = STREAMING_METHODS.contains(&method);
        let budget = grpc_timeout(headers)?.or(if streaming { None } else { self.inner.default_timeout });
        Ok(Admission::Call(Admitted { method: method.to_owned(), streaming, budget }))
    }
}

/// What the forwarder makes of a request.
pub(crate) enum Admission {
    /// `grpc.health.v1.Health/Check`, answered by the bridge.
    Health,
    Call(Admitted),
}

/// A call the forwarder lets through.
pub(crate) struct Admitted {
    pub method: String,
    /// A long-lived response stream (watches end as soon as draining begins).
    pub streaming: bool,
    /// The call's deadline from now, if it has one.
    pub budget: Option<Duration>,
}

/// Which contract method a path names, or the refusal for a path outside it.
pub fn route(path: &str) -> Result<&str, BridgeStatus> {
    match path.strip_prefix(SERVICE_PREFIX) {
        Some(method) if !method.is_empty() && !method.contains('/') => Ok(method),
        _ => Err(BridgeStatus::new(
            Code::Unimplemented,
            format!("path {} is not a method of {SERVICE}; the bridge forwards only that service", printable(path)),
        )),
    }
}

/// Wire text (a path, a header value) for a log line or an error: escaped
/// and bounded.
fn printable(text: &str) -> crate::escape::ForLog<'_> {
    crate::escape::for_log(text, crate::escape::LIMIT)
}

/// Connection-specific headers of RFC 9110 §7.6.1. `te: trailers` is kept:
/// gRPC requires it end to end.
/// Names, not strings: a `&str` key is parsed into a name on every lookup.
const HOP_BY_HOP: [HeaderName; 6] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::HOST,
];

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(te) = headers.get(http::header::TE) {
        if te.as_bytes() != b"trailers" {
            headers.remove(http::header::TE);
        }
    }
}

/// Parses `grpc-timeout` (`1..=8` digits and a unit of H, M, S, m, u, n).
pub fn grpc_timeout(headers: &HeaderMap) -> Result<Option<Duration>, BridgeStatus> {
    let Some(value) = headers.get(GRPC_TIMEOUT) else {
        return Ok(None);
    };
    parse_grpc_timeout(value.as_bytes()).map(Some).ok_or_else(|| {
        BridgeStatus::new(
            Code::Internal,
            format!(
                "malformed grpc-timeout header {:?}: expected 1 to 8 digits and a unit (H, M, S, m, u, n)",
                printable(&String::from_utf8_lossy(value.as_bytes()))
            ),
        )
    })
}

pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

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
        forwarder.inner.metrics.call_started();
        CallLog {
            role: forwarder.inner.role,
            method,
            caller,
            started: std::time::Instant::now(),
            metrics: forwarder.inner.metrics.clone(),
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

/// `OK`, `NOT_FOUND`, ... for a numeric `grpc-status`.
pub use crate::status::status_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_methods_of_the_service() {
        assert_eq!(route("/openshell.compute.v1.ComputeDriver/ListSandboxes").ok(), Some("ListSandboxes"));
        assert_eq!(route("/openshell.compute.v1.ComputeDriver/SomethingNew").ok(), Some("SomethingNew"));
        for path in [
            "/",
            "/openshell.compute.v1.ComputeDriver/",
            "/openshell.compute.v1.ComputeDriver/a/b",
            "/openshell.compute.v1.ComputeDriverX/List",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            let refused = route(path).unwrap_err();
            assert_eq!(refused.code, Code::Unimplemented, "{path}");
        }
    }

    #[test]
    fn the_contract_method_list_matches_the_proto() {
        let proto = include_str!("../proto/compute_driver.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|line| line.trim().strip_prefix("rpc "))
            .filter_map(|rest| rest.split('(').next())
            .map(str::trim)
            .collect();
        assert_eq!(rpcs, CONTRACT_METHODS);
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout(b"200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_grpc_timeout(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in [&b""[..], b"m", b"123456789m", b"12x", b"-1S", b"1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_but_te_trailers_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "close".parse().unwrap());
        headers.insert("te", "trailers".parse().unwrap());
        headers.insert("traceparent", "00-abc-def-01".parse().unwrap());
        headers.insert("x-custom", "1".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert!(headers.get("connection").is_none());
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["traceparent"], "00-abc-def-01");
        assert_eq!(headers["x-custom"], "1");
    }
}
