//! What a request's head says, read once per call: which method of the
//! contract its path names (or the refusal for one outside it), its
//! deadline (`grpc-timeout`), and which of its headers belong to the hop.

use std::time::Duration;

use http::header::HeaderName;
use http::HeaderMap;

use crate::grpc::contract::{SERVICE, SERVICE_PREFIX};
use crate::grpc::status::{BridgeStatus, Code};

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
pub(crate) fn printable(text: &str) -> crate::obs::escape::ForLog<'_> {
    crate::obs::escape::for_log(text, crate::obs::escape::LIMIT)
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
