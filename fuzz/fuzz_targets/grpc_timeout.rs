//! `forward::parse_grpc_timeout` and `forward::grpc_timeout`: the
//! `grpc-timeout` header every caller may send.
//!
//! Properties:
//! - never panics (no overflow for the largest 8-digit hour value);
//! - accepts exactly `^[0-9]{1,8}[HMSmun]$` (the gRPC spec's TimeoutValue
//!   and TimeoutUnit), nothing else;
//! - each unit scales correctly: `N<unit>` is N hours/minutes/seconds/
//!   milliseconds/microseconds/nanoseconds, and leading zeros change nothing;
//! - the header-map form agrees with the byte form, and its refusal is
//!   INTERNAL with a one-line, printable-ASCII message.
#![no_main]

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use openshell_driver_bridge::admit::route::{grpc_timeout, parse_grpc_timeout};
use openshell_driver_bridge::grpc::status::Code;

fn expected(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u128, |n, d| n * 10 + u128::from(d - b'0'));
    let nanos: u128 = match unit {
        b'H' => n * 3_600_000_000_000,
        b'M' => n * 60_000_000_000,
        b'S' => n * 1_000_000_000,
        b'm' => n * 1_000_000,
        b'u' => n * 1_000,
        b'n' => n,
        _ => return None,
    };
    Some(Duration::new((nanos / 1_000_000_000) as u64, (nanos % 1_000_000_000) as u32))
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse_grpc_timeout(data);
    assert_eq!(parsed, expected(data), "grpc-timeout {:?}", String::from_utf8_lossy(data));

    if let Some(d) = parsed {
        // Leading zeros and the same amount in a finer unit agree.
        let (unit, digits) = data.split_last().unwrap();
        if digits.len() < 8 {
            let mut padded = vec![b'0'];
            padded.extend_from_slice(data);
            assert_eq!(parse_grpc_timeout(&padded), Some(d));
        }
        let finer = match unit {
            b'H' => Some((b'M', 60)),
            b'M' => Some((b'S', 60)),
            b'S' | b'm' | b'u' => Some((
                if *unit == b'S' {
                    b'm'
                } else if *unit == b'm' {
                    b'u'
                } else {
                    b'n'
                },
                1000,
            )),
            _ => None,
        };
        if let Some((finer_unit, factor)) = finer {
            let amount: u64 = std::str::from_utf8(digits).unwrap().parse().unwrap();
            let text = format!("{}{}", amount * factor, finer_unit as char);
            if text.len() <= 9 {
                assert_eq!(parse_grpc_timeout(text.as_bytes()), Some(d), "{text} != {d:?}");
            }
        }
    }

    // The same bytes as a header, when they can be one.
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut headers = HeaderMap::new();
    headers.insert("grpc-timeout", value);
    match grpc_timeout(&headers) {
        Ok(found) => assert_eq!(found, parsed),
        Err(status) => {
            assert!(parsed.is_none(), "header refused although the value parses");
            assert_eq!(status.code, Code::Internal);
            assert!(
                status.message.bytes().all(|b| (0x20..=0x7e).contains(&b)),
                "refusal is not printable ASCII: {:?}",
                status.message
            );
        }
    }
    assert_eq!(grpc_timeout(&HeaderMap::new()), Ok(None));
});
