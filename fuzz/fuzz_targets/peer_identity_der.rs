//! `PeerIdentity::from_der` and `tls::material::cert_info`: reading the
//! names out of a certificate a peer sent during the handshake (the relay
//! reads every client's; the shim every upstream's).
//!
//! Properties:
//! - neither panics on any bytes;
//! - both accept exactly the same inputs and read the same identity;
//! - every name of an identity that is itself a valid pattern (as an
//!   operator pastes it from `names()` or the refusal message) matches that
//!   identity, and the `Display` of the identity is one of its names.
//!
//! Seeds: DER certificates made by `scripts/fuzz` with openssl.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openshell_driver_bridge::tls::identity::{IdentityPattern, PeerIdentity};
use openshell_driver_bridge::tls::material::cert_info;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    let read = PeerIdentity::from_der(data);
    let info = cert_info(&CertificateDer::from(data));
    let identity = match (read, info) {
        (Ok(identity), Ok(info)) => {
            assert_eq!(identity, info.identity, "from_der and cert_info disagree");
            assert!(info.not_before.year() > -10_000 && info.not_after.year() < 10_000);
            identity
        }
        (Err(_), Err(_)) => return,
        (read, info) => panic!("from_der and cert_info disagree on acceptance: {read:?} vs {info:?}"),
    };

    let names: Vec<String> = identity.names().collect();
    assert_eq!(names.len(), identity.dns.len() + identity.uris.len() + usize::from(identity.cn.is_some()));
    let shown = identity.to_string();
    if identity.is_empty() {
        assert_eq!(shown, "(no identity)");
    } else {
        assert!(names.contains(&shown), "Display {shown:?} is not one of the names {names:?}");
    }
    for name in &names {
        if let Ok(pattern) = name.parse::<IdentityPattern>() {
            assert!(pattern.matches(&identity), "{name:?} parses as {pattern:?} but does not match {identity:?}");
        }
    }
});
