//! `relay::DriverTarget::from_url`: `--driver-url http://IP:PORT`.
//!
//! Properties:
//! - never panics;
//! - an accepted URL is `http` and gives a TCP address (never a socket path);
//! - `http://{addr}` parses back to the same target;
//! - `is_local()` holds only for 127.0.0.0/8 and ::1 (the relay refuses a
//!   non-local plaintext driver hop unless told otherwise; spellings such as
//!   `[::ffff:127.0.0.1]` must land on the refusing side, never the other);
//! - a refusal is one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openshell_driver_bridge::role::relay::DriverTarget;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let target = match DriverTarget::from_url(text) {
        Ok(target) => target,
        Err(message) => {
            assert!(!message.contains(['\n', '\r']), "refusal is not one line: {message:?}");
            return;
        }
    };
    let DriverTarget::Tcp(addr) = &target else { panic!("{text:?} became {target:?}") };
    assert!(text.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://")), "{text:?}: accepted without http://");
    let loopback = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets()[0] == 127,
        std::net::IpAddr::V6(ip) => ip == std::net::Ipv6Addr::LOCALHOST,
    };
    assert_eq!(target.is_local(), loopback, "{text:?} -> {addr}");
    let again = DriverTarget::from_url(&format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{text:?} -> {addr}: does not parse back: {e}"));
    assert_eq!(again, target);
    assert_eq!(target.label(), format!("driver {addr}"));
});
