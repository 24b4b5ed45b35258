//! Certificates: a chain in PEM, trust anchors (refusing a leaf passed as a
//! CA), and what a certificate says about itself (identity, subject,
//! validity period).

use std::path::Path;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::X509Version;

use super::key::warn_if_key_is_exposed;
use super::pem::{malformed_pem, no_certificate, read_material, PemSummary};
use super::{MaterialError, MaterialErrorKind};
use crate::tls::identity::PeerIdentity;

/// Loads every certificate in a PEM file, leaf first as written; at least one.
pub fn load_certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let file = read_material(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&file.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed_pem(flag, path, &e))?;
    let summary = PemSummary::scan(&file.bytes);
    if certs.is_empty() {
        return Err(no_certificate(flag, path, &file.bytes, &summary));
    }
    for (index, cert) in certs.iter().enumerate() {
        parse_x509(cert).map_err(|problem| {
            let which = ordinal(index, certs.len(), "certificate");
            MaterialError::new(
                MaterialErrorKind::BadCertificate,
                flag,
                path,
                format!("{which} is not a valid X.509 certificate ({problem}); re-export it from the issuing CA"),
            )
        })?;
    }
    warn_if_key_is_exposed(flag, path, &file, &summary);
    Ok(certs)
}

/// Loads trust anchors: every certificate in the file becomes a root.
///
/// A file holding only end-entity certificates issued by someone else (the
/// classic mistake: `server.pem` passed where `ca.pem` belongs) is refused,
/// because it could never verify a peer and the handshake error would only
/// say "unknown issuer". Self-signed certificates are accepted, since
/// pinning one that way is legitimate.
pub fn load_roots(flag: &str, path: &Path) -> Result<RootCertStore, MaterialError> {
    let certs = load_certs(flag, path)?;
    let mut roots = RootCertStore::empty();
    let mut leaf_subjects = Vec::new();
    for (index, cert) in certs.iter().enumerate() {
        if let Ok(parsed) = parse_x509(cert) {
            if is_issued_end_entity(&parsed) {
                leaf_subjects.push(parsed.subject().to_string());
            }
        }
        roots.add(cert.clone()).map_err(|e| {
            let which = ordinal(index, certs.len(), "certificate");
            MaterialError::new(
                MaterialErrorKind::BadCertificate,
                flag,
                path,
                format!("{which} cannot be used as a trust anchor ({e}); pass the CA certificate in PEM form"),
            )
        })?;
    }
    if leaf_subjects.len() == certs.len() {
        return Err(MaterialError::new(
            MaterialErrorKind::NotCa,
            flag,
            path,
            format!(
                "holds no CA certificate, only the end-entity certificate of {}; pass the certificate of the CA that issued the peer's certificate (ca.pem from certs init)",
                leaf_subjects.join(", ")
            ),
        ));
    }
    Ok(roots)
}

/// What an operator (and the doctor) wants to know about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The names the certificate presents.
    pub identity: PeerIdentity,
    /// The subject distinguished name, as in `CN=openshell-gateway`.
    pub subject: String,
    /// Start of the validity period.
    pub not_before: OffsetDateTime,
    /// End of the validity period.
    pub not_after: OffsetDateTime,
}

/// Reads identity, subject and validity period from a DER certificate.
///
/// Errors are labelled `certificate:`; use [`MaterialError::at`] to name the
/// file, or [`load_cert_info`] to load and inspect in one step.
pub fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, MaterialError> {
    let bad = |problem: String| MaterialError {
        kind: MaterialErrorKind::BadCertificate,
        origin: "certificate".to_owned(),
        message: format!("not a valid X.509 certificate ({problem})"),
    };
    let cert = parse_x509(der).map_err(bad)?;
    let identity = PeerIdentity::from_x509(&cert).map_err(|e| bad(e.to_string()))?;
    let validity = cert.validity();
    Ok(CertInfo {
        identity,
        subject: cert.subject().to_string(),
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
    })
}

/// Loads a certificate file and describes its leaf (first) certificate.
pub fn load_cert_info(flag: &str, path: &Path) -> Result<CertInfo, MaterialError> {
    let certs = load_certs(flag, path)?;
    let leaf = certs
        .first()
        .ok_or_else(|| MaterialError::new(MaterialErrorKind::NoCertificate, flag, path, "holds no certificate"))?;
    cert_info(leaf).map_err(|e| e.at(flag, path))
}

/// "the certificate" when alone, else "certificate #2 of 3".
fn ordinal(index: usize, total: usize, noun: &str) -> String {
    if total == 1 {
        format!("the {noun}")
    } else {
        format!("{noun} #{} of {total}", index + 1)
    }
}

fn parse_x509<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, String> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok((rest, _)) if !rest.is_empty() => Err("unexpected bytes after the certificate".to_owned()),
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(e.to_string()),
    }
}

/// An end-entity certificate issued by someone else: explicitly `CA:FALSE`,
/// or a v3 certificate without basic constraints whose key usage or
/// extended key usage marks it as a leaf. Version 1 roots carry no
/// extensions at all, so absence alone proves nothing.
fn is_issued_end_entity(cert: &X509Certificate<'_>) -> bool {
    if cert.issuer().as_raw() == cert.subject().as_raw() {
        return false;
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) => !bc.value.ca,
        Ok(None) => {
            let has_eku = matches!(cert.extended_key_usage(), Ok(Some(_)));
            let cannot_sign_certs = matches!(cert.key_usage(), Ok(Some(ku)) if !ku.value.key_cert_sign());
            cert.version() == X509Version::V3 && (has_eku || cannot_sign_certs)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::material::fixtures::*;

    use crate::tls::material::*;
    use rcgen::{KeyPair, SanType};

    #[test]
    fn loads_certificate_chain_in_order() {
        let fx = Fixture::new();
        let (ca, leaf) = ca_and_leaf();
        let path = fx.write("chain.pem", format!("{}{}", leaf.cert_pem, ca.cert_pem), 0o644);
        let certs = load_certs("--cert", &path).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(cert_info(&certs[0]).unwrap().subject, "CN=leaf.example");
    }

    #[test]
    fn unparseable_certificate_is_reported() {
        let fx = Fixture::new();
        let bogus = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let path = fx.write("bogus.pem", bogus, 0o644);
        let (kind, msg) = err_text(load_certs("--cert", &path));
        assert_eq!(kind, MaterialErrorKind::BadCertificate);
        assert!(msg.contains("the certificate is not a valid X.509 certificate"), "{msg}");
    }

    #[test]
    fn roots_load_from_ca_and_self_signed_certificates() {
        let fx = Fixture::new();
        let (ca, _) = ca_and_leaf();
        let path = fx.write("ca.pem", &ca.cert_pem, 0o644);
        assert_eq!(load_roots("--ca", &path).unwrap().len(), 1);
        let pinned = fx.write("pinned.pem", self_signed("pinned").cert_pem, 0o644);
        assert_eq!(load_roots("--ca", &pinned).unwrap().len(), 1);
    }

    #[test]
    fn roots_refuse_a_leaf_certificate() {
        let fx = Fixture::new();
        let (_, leaf) = ca_and_leaf();
        let path = fx.write("server.pem", &leaf.cert_pem, 0o644);
        let (kind, msg) = err_text(load_roots("--ca", &path));
        assert_eq!(kind, MaterialErrorKind::NotCa);
        assert!(msg.contains("CN=leaf.example"), "{msg}");
        assert!(msg.contains("pass the certificate of the CA"), "{msg}");
    }

    #[test]
    fn roots_refuse_a_key_file() {
        let fx = Fixture::new();
        let path = fx.write("ca-key.pem", self_signed("x").key_pem, 0o600);
        let (kind, msg) = err_text(load_roots("--ca", &path));
        assert_eq!(kind, MaterialErrorKind::NoCertificate);
        assert!(msg.contains("private key file; pass a certificate here"), "{msg}");
    }

    #[test]
    fn cert_info_reads_identity_and_validity() {
        let key = KeyPair::generate().unwrap();
        let mut p = params("gw");
        p.subject_alt_names.push(SanType::URI("spiffe://corp/gw".try_into().unwrap()));
        p.not_before = rcgen::date_time_ymd(2030, 1, 2);
        p.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let cert = p.self_signed(&key).unwrap();
        let info = cert_info(cert.der()).unwrap();
        assert_eq!(info.subject, "CN=gw");
        assert_eq!(info.identity.to_string(), "uri:spiffe://corp/gw");
        assert_eq!(info.identity.dns, ["gw"]);
        assert_eq!(info.not_before, rcgen::date_time_ymd(2030, 1, 2));
        assert_eq!(info.not_after, rcgen::date_time_ymd(2031, 1, 2));

        let err = cert_info(&CertificateDer::from(vec![1, 2, 3])).unwrap_err();
        assert!(err.to_string().starts_with("certificate: not a valid X.509"), "{err}");
        let relabelled = err.at("--cert", Path::new("/x.pem"));
        assert!(relabelled.to_string().starts_with("--cert /x.pem: "), "{relabelled}");
    }

    #[test]
    fn load_cert_info_uses_the_leaf() {
        let fx = Fixture::new();
        let (ca, leaf) = ca_and_leaf();
        let path = fx.write("chain.pem", format!("{}{}", leaf.cert_pem, ca.cert_pem), 0o644);
        assert_eq!(load_cert_info("--cert", &path).unwrap().subject, "CN=leaf.example");
    }
}
