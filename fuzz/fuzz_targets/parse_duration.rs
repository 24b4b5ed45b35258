//! `config::parse_duration`: every timer flag and environment variable
//! (`--connect-wait`, `--drain-timeout`, ...).
//!
//! Properties:
//! - never panics (no overflow for the largest u64 in any unit);
//! - accepts exactly `DIGITS[ms|s|m|h]` after trimming whitespace, with the
//!   value the unit says (minutes and hours saturate instead of wrapping);
//! - the accepted value printed back in milliseconds (when it fits) parses
//!   to the same duration;
//! - a refusal is one line.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use openshell_driver_bridge::cli::args::parse_duration;

fn expected(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u128 = digits.parse().ok()?;
    let n: u64 = u64::try_from(n).ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = parse_duration(text);
    assert_eq!(parsed.as_ref().ok(), expected(text).as_ref(), "{text:?}");
    match parsed {
        Ok(d) => {
            if let Ok(ms) = u64::try_from(d.as_millis()) {
                assert_eq!(parse_duration(&format!("{ms}ms")), Ok(d));
            }
        }
        Err(message) => assert!(!message.contains(['\n', '\r']), "refusal is not one line: {message:?}"),
    }
});
