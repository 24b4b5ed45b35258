//! `shim::Upstream::from_str`: `--upstream https://HOST:PORT` (flag,
//! environment variable or config file), split on commas.
//!
//! Properties:
//! - never panics;
//! - an accepted upstream has a non-empty host without brackets and came
//!   from an `https` URL;
//! - `authority()` brackets exactly the IPv6 hosts, and
//!   `https://{authority()}` parses back to the same upstream (so logs and
//!   the `:authority` the bridge derives name what the operator wrote).
#![no_main]

use libfuzzer_sys::fuzz_target;
use openshell_driver_bridge::role::shim::Upstream;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let upstream = match text.parse::<Upstream>() {
        Ok(upstream) => upstream,
        Err(message) => {
            assert!(!message.contains(['\n', '\r']), "refusal is not one line: {message:?}");
            return;
        }
    };
    assert!(text.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")), "{text:?}: accepted without https://");
    assert!(!upstream.host.is_empty(), "{text:?}: accepted with an empty host: {upstream:?}");
    assert!(!upstream.host.contains(['[', ']']), "{text:?}: brackets kept in host {:?}", upstream.host);
    let authority = upstream.authority();
    assert_eq!(authority.starts_with('['), upstream.host.contains(':'), "{text:?}: authority {authority:?}");
    let again: Upstream = format!("https://{authority}")
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} -> {upstream:?}: its authority {authority:?} does not parse: {e}"));
    assert_eq!(again, upstream, "{text:?}: authority {authority:?} round trip");
});
