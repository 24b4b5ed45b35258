//! A certificate chain with its private key: loaded together, and the key
//! checked against the leaf (with the wording for a key that matches
//! another certificate of the chain).

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;

use super::certs::{cert_info, load_certs};
use super::key::{load_key, ring_signing_key};
use super::{origin, MaterialError, MaterialErrorKind};

/// Loads a certificate chain and its private key, and checks that the key
/// belongs to the leaf (the first certificate).
pub fn load_certified_key(
    cert_flag: &str,
    cert_path: &Path,
    key_flag: &str,
    key_path: &Path,
    allow_loose_permissions: bool,
) -> Result<Arc<CertifiedKey>, MaterialError> {
    let certs = load_certs(cert_flag, cert_path)?;
    let key = load_key(key_flag, key_path, allow_loose_permissions)?;
    let signing_key = ring_signing_key(key_flag, key_path, &key)?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        // A key that cannot report its public half is trusted as rustls
        // itself does; ring keys always can.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err(key_mismatch(cert_flag, cert_path, key_flag, key_path, &certified))
        }
        Err(e) => Err(MaterialError::new(
            MaterialErrorKind::BadCertificate,
            cert_flag,
            cert_path,
            format!("the leaf certificate cannot be used ({e}); re-export it from the issuing CA"),
        )),
    }
}

fn key_mismatch(
    cert_flag: &str,
    cert_path: &Path,
    key_flag: &str,
    key_path: &Path,
    certified: &CertifiedKey,
) -> MaterialError {
    let cert_origin = origin(cert_flag, cert_path);
    let misplaced = certified
        .cert
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, cert)| CertifiedKey::new(vec![(*cert).clone()], Arc::clone(&certified.key)).keys_match().is_ok())
        .map(|(index, _)| index);
    let message = match misplaced {
        Some(index) => format!(
            "the private key belongs to certificate #{} in {cert_origin}, not the first one; put the leaf certificate first in that file",
            index + 1
        ),
        None => {
            let subject = certified
                .cert
                .first()
                .and_then(|c| cert_info(c).ok())
                .map(|info| format!(" ({})", info.subject))
                .unwrap_or_default();
            format!(
                "private key does not match the certificate in {cert_origin}{subject}; pass the key that was generated with that certificate"
            )
        }
    };
    MaterialError::new(MaterialErrorKind::KeyMismatch, key_flag, key_path, message)
}
