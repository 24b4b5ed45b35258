//! Test helpers shared by the PKI tests: reading back what a certificate
//! says (DER, IP SANs, extended key usage).

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{Ca, LeafSpec};

pub(super) fn der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

pub(super) fn ip_sans(der: &CertificateDer<'_>) -> Vec<Vec<u8>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::IPAddress(bytes) => Some(bytes.to_vec()),
            _ => None,
        })
        .collect()
}

pub(super) fn eku(der: &CertificateDer<'_>) -> (bool, bool) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let eku = cert.extended_key_usage().unwrap().map(|e| e.value.clone());
    eku.map(|e| (e.server_auth, e.client_auth)).unwrap_or((false, false))
}

pub(super) fn der_of(ca: &Ca, spec: &LeafSpec) -> CertificateDer<'static> {
    der(&ca.issue(spec).unwrap().cert_pem)
}
