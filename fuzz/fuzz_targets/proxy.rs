//! The proxy's parsers: the CONNECT answer (status line and headers), the
//! `--proxy` URL and the `no_proxy` matcher. See `common/proxy.rs` for the
//! harness and the properties; `tests/fuzz_regressions.rs` replays
//! `seeds/proxy/` under `cargo test`.
#![no_main]

#[path = "common/proxy.rs"]
mod proxy;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxy::run(data));
