//! The certificate authority: a self-signed CA held in memory that issues
//! leaves.

use std::fmt;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use super::leaf::{Leaf, LeafSpec};
use super::{check_common_name, distinguished_name, generate_error, generate_key, PkiError, BACKDATE};

pub(super) const CA_LIFETIME: Duration = Duration::days(3650);

/// A certificate authority held in memory: its self-signed certificate and
/// its signing key.
pub struct Ca {
    pub(super) common_name: String,
    pub(super) issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A new CA: ECDSA P-256, `CA:TRUE` with path length 0 (it signs only
    /// leaves), key usage certificate and CRL signing, valid for ten years
    /// from an hour ago.
    pub fn new(common_name: &str) -> Result<Ca, PkiError> {
        let name = check_common_name(common_name)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let key = generate_key(name)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(generate_error(name))?;
        Ok(Ca { common_name: name.to_owned(), issuer })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate for `spec`, with a fresh key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, PkiError> {
        let params = spec.params()?;
        let subject = spec.subject();
        let key = generate_key(&subject)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_error(&subject))?;
        Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Never prints the key.
impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("common_name", &self.common_name).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::material;

    use x509_parser::prelude::{FromDer, X509Certificate};

    #[test]
    fn ca_is_a_constrained_ten_year_ca() {
        let ca = Ca::new("test CA").unwrap();
        let der = ca.cert_der();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        let info = material::cert_info(&der).unwrap();
        assert_eq!(info.subject, "CN=test CA");
        let now = OffsetDateTime::now_utc();
        assert!(info.not_before < now - Duration::minutes(59));
        assert!(info.not_after > now + Duration::days(3649));
        assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        assert!(Ca::new("  ").is_err());
    }
}
