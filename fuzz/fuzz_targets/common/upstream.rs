//! The check of the `upstream` fuzz target, shared with `tests/fuzz_regressions.rs`
//! so its regression inputs run under `cargo test` (the target's properties
//! are described in `fuzz_targets/upstream.rs`).

use openshell_driver_bridge::role::shim::Upstream;

/// Checks the target's properties on one input (panics when one breaks).
pub fn check(data: &[u8]) {
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
}
