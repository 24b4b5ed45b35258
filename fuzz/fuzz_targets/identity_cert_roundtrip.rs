//! Certificates built (with rcgen) from fuzzer-chosen names: what
//! `PeerIdentity::from_der` reads back must be exactly the DNS SANs, URI
//! SANs and CN that were put in, in order, and other SAN kinds (IP, e-mail)
//! must never show up as a DNS or URI name.
//!
//! This drives the identity reader with well-formed certificates whose
//! names are hostile (long, non-ASCII CN, look-alike prefixes), which the
//! raw-DER target rarely reaches through a valid signature structure.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use openshell_driver_bridge::tls::identity::{IdentityPattern, PeerIdentity};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

#[derive(Debug, Arbitrary)]
struct Names {
    dns: Vec<String>,
    uris: Vec<String>,
    cn: Option<String>,
    ip: Option<[u8; 4]>,
    email: Option<String>,
}

fn key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::generate().expect("key"))
}

fuzz_target!(|names: Names| {
    // rcgen encodes SANs as IA5String (ASCII); keep what it can encode.
    let ascii = |v: &[String]| -> Vec<String> { v.iter().filter(|s| s.is_ascii()).take(8).cloned().collect() };
    let dns = ascii(&names.dns);
    let uris = ascii(&names.uris);
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = &names.cn {
        params.distinguished_name.push(DnType::CommonName, cn.as_str());
    }
    // SAN order in the certificate: email, DNS..., IP, URI... interleaved
    // kinds must not disturb the order within a kind.
    if let Some(email) = names.email.as_ref().filter(|e| e.is_ascii()) {
        params.subject_alt_names.push(SanType::Rfc822Name(email.clone().try_into().unwrap()));
    }
    for (i, d) in dns.iter().enumerate() {
        params.subject_alt_names.push(SanType::DnsName(d.clone().try_into().unwrap()));
        if i == 0 {
            if let Some(ip) = names.ip {
                params.subject_alt_names.push(SanType::IpAddress(ip.into()));
            }
        }
    }
    for u in &uris {
        params.subject_alt_names.push(SanType::URI(u.clone().try_into().unwrap()));
    }
    let Ok(cert) = params.self_signed(key()) else { return };

    let identity = PeerIdentity::from_der(cert.der())
        .unwrap_or_else(|e| panic!("rcgen certificate for {names:?} is unreadable: {e}"));
    assert_eq!(identity.dns, dns, "DNS SANs read back differently");
    assert_eq!(identity.uris, uris, "URI SANs read back differently");
    assert_eq!(identity.cn, names.cn, "CN read back differently");

    for name in identity.names() {
        if let Ok(pattern) = name.parse::<IdentityPattern>() {
            assert!(pattern.matches(&identity), "{name:?} does not match its own certificate");
        }
    }
});
