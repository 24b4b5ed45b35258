//! The frame relay (relay role) with arbitrary HTTP/2 from both sides: a
//! client's bytes after a valid preface, over mTLS, and a driver's bytes
//! after its opening SETTINGS, split by the input's first two bytes. See
//! `common/frame_relay.rs` for the harness and the properties (no panic in
//! any task; the client's connection and every driver connection end once
//! the client has left). `tests/fuzz_regressions.rs` replays
//! `regressions/frame_relay/` and `seeds/frame_relay/` under `cargo test`.
#![no_main]

#[path = "common/frame_relay.rs"]
mod frame_relay;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| frame_relay::run(data));
