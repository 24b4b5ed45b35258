//! gRPC statuses that the bridge itself originates.
//!
//! When the bridge refuses or fails a call it answers with a gRPC
//! "Trailers-Only" response: HTTP 200, `content-type: application/grpc`,
//! and `grpc-status`/`grpc-message` in the only HEADERS frame. Every message
//! names the hop and the cause, so an operator can tell "my side" from
//! "their side".

use http::{HeaderMap, HeaderValue};

/// gRPC status codes the bridge uses (a subset of the gRPC spec), numbered
/// as gRPC numbers them; names come from `tonic::Code`.
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
    /// The code as a `grpc-status` value.
    pub fn as_str(self) -> &'static str {
        // Indexed by the code's number, which the enum keeps equal to gRPC's.
        const NUMBERS: [&str; 17] =
            ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];
        NUMBERS[self as usize]
    }

    /// `UNAVAILABLE`, `DEADLINE_EXCEEDED`, ...
    pub fn name(self) -> &'static str {
        code_name(self.into())
    }
}

impl From<Code> for tonic::Code {
    fn from(code: Code) -> tonic::Code {
        tonic::Code::from_i32(code as i32)
    }
}

/// The canonical name of a gRPC status code (`OK`, `DEADLINE_EXCEEDED`), as
/// the gRPC spec and every gRPC library spell it: `tonic::Code`'s variant
/// in upper snake case (a test holds the two together).
pub const fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The name of a numeric `grpc-status` value (`"14"` is `UNAVAILABLE`).
/// A value that is no status code reads as `UNKNOWN`, as a gRPC client
/// reads it; so the names are a fixed set. Allocates nothing.
pub fn status_name(value: &str) -> &'static str {
    code_name(tonic::Code::from_bytes(value.as_bytes()))
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

    /// `FailedPrecondition` -> `FAILED_PRECONDITION`.
    fn upper_snake(camel: &str) -> String {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    #[test]
    fn status_names_are_tonics_codes_in_upper_snake_case() {
        for n in 0..=16 {
            let code = tonic::Code::from_i32(n);
            assert_eq!(code as i32, n);
            assert_eq!(code_name(code), upper_snake(&format!("{code:?}")), "{n}");
            assert_eq!(status_name(&n.to_string()), code_name(code));
        }
        assert_eq!(status_name("14"), "UNAVAILABLE");
        assert_eq!(status_name("4"), "DEADLINE_EXCEEDED");
        for bad in ["17", "-1", "", "01", "1 ", "UNAVAILABLE", "99999999999"] {
            assert_eq!(status_name(bad), "UNKNOWN", "{bad:?}");
        }
    }

    #[test]
    fn the_bridges_codes_are_grpcs() {
        use Code::*;
        for code in [
            Cancelled,
            Unknown,
            DeadlineExceeded,
            NotFound,
            PermissionDenied,
            ResourceExhausted,
            Unimplemented,
            Internal,
            Unavailable,
        ] {
            let theirs = tonic::Code::from(code);
            assert_eq!(theirs as i32, code as i32);
            assert_eq!(code.as_str(), (code as i32).to_string());
            assert_eq!(code.name(), code_name(theirs));
        }
    }

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
