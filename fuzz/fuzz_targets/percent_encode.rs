//! `status::percent_encode`: every `grpc-message` the bridge originates,
//! which quotes peer-controlled text (paths, header values, names).
//!
//! Properties:
//! - output is printable ASCII only (a valid header value, one line);
//! - every `%` starts a `%XX` escape with two upper-case hex digits;
//! - decoding it gives back the input's UTF-8 bytes exactly;
//! - printable ASCII other than `%` is kept as is (the spec's rule), so the
//!   output is never longer than 3 bytes per input byte;
//! - a `BridgeStatus` carrying the text always has its `grpc-message`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openshell_driver_bridge::grpc::status::{percent_encode, BridgeStatus, Code};

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode(encoded: &str) -> Vec<u8> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
            else {
                panic!("bad escape at {i} in {encoded:?}");
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let encoded = percent_encode(&text);
    assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)), "not printable ASCII: {encoded:?}");
    assert_eq!(decode(&encoded), text.as_bytes(), "does not decode back");
    assert!(encoded.len() <= 3 * text.len());
    let kept = text.bytes().filter(|b| (0x20..=0x7e).contains(b) && *b != b'%').count();
    assert_eq!(encoded.len(), kept + 3 * (text.len() - kept), "escaped more than needed");
    let headers = BridgeStatus::new(Code::Unavailable, text.as_ref()).to_header_map();
    assert_eq!(headers["grpc-message"].as_bytes(), encoded.as_bytes());
});
