//! `IdentityPattern::from_str`, `Display` and `matches`: the allow-list
//! grammar an operator (or a config file, or an environment variable)
//! writes, and the decision it drives.
//!
//! Properties:
//! - parsing never panics;
//! - an accepted pattern prints in canonical form (`dns:`, `uri:`, `cn:`)
//!   and that text parses back to the same pattern (Display/FromStr round
//!   trip), and prints the same again;
//! - what was accepted obeys the documented grammar: non-empty, at most
//!   1024 bytes, no whitespace or control character (a CN may hold single
//!   inner spaces), DNS names only
//!   `[A-Za-z0-9._-]`, no `*` except the trailing `/*` of a URI prefix,
//!   a URI value starts with a scheme;
//! - matching: a pattern never matches an empty identity; `dns:` ignores
//!   ASCII case only; `uri:` is exact; `uri:P/*` matches `P/...` but not `P`
//!   itself nor `P-evil`; `cn:` matches the CN only, never a SAN;
//! - a refusal is one line of bounded length (the message promises "one
//!   readable line even for a pasted blob").
#![no_main]

#[path = "common/identity_pattern.rs"]
mod check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check::check(data));
