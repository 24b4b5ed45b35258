//! gRPC statuses that the bridge itself originates.
//!
//! When the bridge refuses or fails a call it answers with a gRPC
//! "Trailers-Only" response: HTTP 200, `content-type: application/grpc`,
//! and `grpc-status`/`grpc-message` in the only HEADERS frame. Every message
//! names the hop and the cause, so an operator can tell "my side" from
//! "their side".

use http::{HeaderMap, HeaderValue};

/// gRPC status codes the bridge uses (a subset of the gRPC spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Cancelled = 1,
    Unknown = 2,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Cancelled => "1",
            Code::Unknown => "2",
            Code::DeadlineExceeded => "4",
            Code::NotFound => "5",
            Code::PermissionDenied => "7",
            Code::ResourceExhausted => "8",
            Code::Unimplemented => "12",
            Code::Internal => "13",
            Code::Unavailable => "14",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
        }
    }
}

/// A status the bridge answers with instead of the peer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeStatus {
    pub code: Code,
    pub message: String,
}

impl BridgeStatus {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        BridgeStatus { code, message: message.into() }
    }

    /// `grpc-status` and `grpc-message` as trailer (or header) fields.
    pub fn to_header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(3);
        self.write_into(&mut map);
        map
    }

    fn write_into(&self, map: &mut HeaderMap) {
        map.insert("grpc-status", HeaderValue::from_static(self.code.as_str()));
        if let Ok(value) = HeaderValue::from_str(&percent_encode(&self.message)) {
            map.insert("grpc-message", value);
        }
    }
}

impl std::fmt::Display for BridgeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec asks: printable
/// ASCII except `%` stays, everything else becomes `%XX` of its UTF-8 bytes.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("a b%c"), "a b%25c");
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn a_status_is_carried_in_grpc_status_and_grpc_message() {
        let fields = BridgeStatus::new(Code::Unavailable, "upstream x: down").to_header_map();
        assert_eq!(fields["grpc-status"], "14");
        assert_eq!(fields["grpc-message"], "upstream x: down");
    }
}
