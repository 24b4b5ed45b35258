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

#[path = "common/upstream.rs"]
mod check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check::check(data));
