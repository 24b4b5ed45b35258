//! Private keys: one unencrypted key the ring provider can sign with, and
//! its file permissions (`pair.rs` matches it with its certificate).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::PrivateKeyDer;

use super::pem::{encrypted_key, malformed_pem, no_key, read_material, MaterialFile, PemSummary};
use super::{origin, MaterialError, MaterialErrorKind};

/// The flag that relaxes the key permission check; named in the refusal.
pub const ALLOW_LOOSE_KEY_PERMISSIONS_FLAG: &str = "--allow-loose-key-permissions";

/// Loads one unencrypted private key (PKCS#8, PKCS#1 or SEC1 PEM) that the
/// ring provider can sign with.
///
/// A key file readable by group or others is refused unless
/// `allow_loose_permissions`, in which case it is loaded with a warning.
pub fn load_key(
    flag: &str,
    path: &Path,
    allow_loose_permissions: bool,
) -> Result<PrivateKeyDer<'static>, MaterialError> {
    let file = read_material(flag, path)?;
    let summary = PemSummary::scan(&file.bytes);
    if summary.is_encrypted() {
        return Err(encrypted_key(flag, path));
    }
    let mut keys = PrivateKeyDer::pem_slice_iter(&file.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed_pem(flag, path, &e))?;
    let key = match keys.len() {
        0 => return Err(no_key(flag, path, &file.bytes, &summary)),
        1 => keys.remove(0),
        n => {
            return Err(MaterialError::new(
                MaterialErrorKind::MultipleKeys,
                flag,
                path,
                format!("holds {n} private keys; keep exactly one, the key that belongs to the certificate"),
            ))
        }
    };
    check_key_permissions(flag, path, &file, allow_loose_permissions)?;
    ring_signing_key(flag, path, &key)?;
    Ok(key)
}

pub(super) fn ring_signing_key(
    flag: &str,
    path: &Path,
    key: &PrivateKeyDer<'_>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, MaterialError> {
    rustls::crypto::ring::default_provider().key_provider.load_private_key(key.clone_key()).map_err(|e| {
        MaterialError::new(
            MaterialErrorKind::UnsupportedKey,
            flag,
            path,
            format!("unsupported key type ({e}); use an ECDSA P-256 or P-384, Ed25519 or RSA (2048 bits or more) key"),
        )
    })
}

#[cfg(unix)]
fn check_key_permissions(flag: &str, path: &Path, file: &MaterialFile, allow_loose: bool) -> Result<(), MaterialError> {
    use std::os::unix::fs::PermissionsExt;

    let mode = file.metadata.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let access = if mode & 0o044 != 0 { "readable" } else { "writable or executable" };
    let problem = format!("private key is {access} by group or others (mode {mode:04o})");
    if allow_loose {
        tracing::warn!(
            "{}: {problem}; loading it anyway because {ALLOW_LOOSE_KEY_PERMISSIONS_FLAG} is set",
            origin(flag, path)
        );
        return Ok(());
    }
    Err(MaterialError::new(
        MaterialErrorKind::LoosePermissions,
        flag,
        path,
        format!("{problem}; run chmod 600 {}, or pass {ALLOW_LOOSE_KEY_PERMISSIONS_FLAG}", path.display()),
    ))
}

#[cfg(not(unix))]
fn check_key_permissions(
    _flag: &str,
    _path: &Path,
    _file: &MaterialFile,
    _allow_loose: bool,
) -> Result<(), MaterialError> {
    Ok(())
}

/// A certificate file that also carries a private key leaks it when the
/// file is world-readable like certificates usually are; say so.
pub(super) fn warn_if_key_is_exposed(flag: &str, path: &Path, file: &MaterialFile, summary: &PemSummary) {
    if !summary.has_private_key() {
        return;
    }
    if let Err(e) = check_key_permissions(flag, path, file, false) {
        tracing::warn!("{e} (this certificate file also contains a private key)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::material::fixtures::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    use crate::tls::material::*;
    use rcgen::KeyPair;

    #[test]
    fn loads_pkcs8_pkcs1_and_sec1_keys() {
        let fx = Fixture::new();
        let pkcs8 = fx.write("p8.pem", self_signed("x").key_pem, 0o600);
        assert!(matches!(load_key("--key", &pkcs8, false).unwrap(), PrivateKeyDer::Pkcs8(_)));
        let pkcs1 = fx.write("p1.pem", TEST_RSA_PKCS1, 0o600);
        assert!(matches!(load_key("--key", &pkcs1, false).unwrap(), PrivateKeyDer::Pkcs1(_)));
        let sec1 = fx.write("sec1.pem", TEST_EC_SEC1, 0o600);
        assert!(matches!(load_key("--key", &sec1, false).unwrap(), PrivateKeyDer::Sec1(_)));
    }

    #[test]
    fn key_file_may_also_hold_the_certificate() {
        let fx = Fixture::new();
        let g = self_signed("x");
        let both = fx.write("both.pem", format!("{}{}", g.cert_pem, g.key_pem), 0o600);
        assert!(load_key("--key", &both, false).is_ok());
        assert!(load_certified_key("--cert", &both, "--key", &both, false).is_ok());
    }

    #[test]
    fn unsupported_key_type_is_refused() {
        let fx = Fixture::new();
        // A PKCS#8 structure ring does not understand.
        let junk = "-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n";
        let path = fx.write("junk.pem", junk, 0o600);
        let (kind, msg) = err_text(load_key("--key", &path, false));
        assert_eq!(kind, MaterialErrorKind::UnsupportedKey);
        assert!(msg.contains("unsupported key type"), "{msg}");
    }

    #[test]
    fn two_keys_in_one_file_are_refused() {
        let fx = Fixture::new();
        let keys = format!("{}{}", self_signed("a").key_pem, self_signed("b").key_pem);
        let path = fx.write("two.pem", keys, 0o600);
        let (kind, msg) = err_text(load_key("--key", &path, false));
        assert_eq!(kind, MaterialErrorKind::MultipleKeys);
        assert!(msg.contains("holds 2 private keys"), "{msg}");
    }

    #[test]
    fn loose_key_permissions_are_refused() {
        let fx = Fixture::new();
        let path = fx.write("client-key.pem", self_signed("x").key_pem, 0o644);
        let (kind, msg) = err_text(load_key("--key", &path, false));
        assert_eq!(kind, MaterialErrorKind::LoosePermissions);
        let p = path.display();
        assert_eq!(
            msg,
            format!("--key {p}: private key is readable by group or others (mode 0644); run chmod 600 {p}, or pass --allow-loose-key-permissions")
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).unwrap();
        let (_, msg) = err_text(load_key("--key", &path, false));
        assert!(msg.contains("writable or executable by group or others (mode 0620)"), "{msg}");
    }

    #[test]
    fn loose_key_permissions_can_be_allowed() {
        let fx = Fixture::new();
        let path = fx.write("client-key.pem", self_signed("x").key_pem, 0o640);
        assert!(load_key("--key", &path, true).is_ok());
        let path = fx.write("strict-key.pem", self_signed("x").key_pem, 0o400);
        assert!(load_key("--key", &path, false).is_ok());
    }

    #[test]
    fn certified_key_loads_matching_pair() {
        let fx = Fixture::new();
        let (ca, leaf) = ca_and_leaf();
        let cert = fx.write("leaf.pem", format!("{}{}", leaf.cert_pem, ca.cert_pem), 0o644);
        let key = fx.write("leaf-key.pem", &leaf.key_pem, 0o600);
        let certified = load_certified_key("--cert", &cert, "--key", &key, false).unwrap();
        assert_eq!(certified.cert.len(), 2);
        assert!(certified.keys_match().is_ok());
    }

    #[test]
    fn rsa_certified_key_loads() {
        let fx = Fixture::new();
        let key_pair =
            KeyPair::from_pkcs8_der_and_sign_algo(&pkcs1_to_pkcs8(TEST_RSA_PKCS1), &rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = params("rsa.example").self_signed(&key_pair).unwrap();
        let cert_path = fx.write("rsa.pem", cert.pem(), 0o644);
        let key_path = fx.write("rsa-key.pem", TEST_RSA_PKCS1, 0o600);
        assert!(load_certified_key("--cert", &cert_path, "--key", &key_path, false).is_ok());
    }

    /// Wraps PKCS#1 DER in a PKCS#8 envelope so rcgen can sign with it.
    fn pkcs1_to_pkcs8(pkcs1_pem: &str) -> rustls::pki_types::PrivatePkcs8KeyDer<'static> {
        let PrivateKeyDer::Pkcs1(pkcs1) = PrivateKeyDer::from_pem_slice(pkcs1_pem.as_bytes()).unwrap() else {
            panic!("fixture is not PKCS#1");
        };
        // version 0, AlgorithmIdentifier { rsaEncryption, NULL }
        let mut body = vec![0x02, 0x01, 0x00];
        body.extend_from_slice(&[
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
        ]);
        body.extend(der_tlv(0x04, pkcs1.secret_pkcs1_der()));
        der_tlv(0x30, &body).into()
    }

    fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }

    #[test]
    fn mismatched_key_names_both_files() {
        let fx = Fixture::new();
        let cert = fx.write("a.pem", self_signed("a.example").cert_pem, 0o644);
        let key = fx.write("b-key.pem", self_signed("b.example").key_pem, 0o600);
        let (kind, msg) = err_text(load_certified_key("--cert", &cert, "--key", &key, false));
        assert_eq!(kind, MaterialErrorKind::KeyMismatch);
        assert!(msg.starts_with(&format!("--key {}:", key.display())), "{msg}");
        assert!(msg.contains(&format!("--cert {}", cert.display())), "{msg}");
        assert!(msg.contains("CN=a.example"), "{msg}");
    }

    #[test]
    fn chain_in_wrong_order_is_explained() {
        let fx = Fixture::new();
        let (ca, leaf) = ca_and_leaf();
        let cert = fx.write("chain.pem", format!("{}{}", ca.cert_pem, leaf.cert_pem), 0o644);
        let key = fx.write("leaf-key.pem", &leaf.key_pem, 0o600);
        let (kind, msg) = err_text(load_certified_key("--cert", &cert, "--key", &key, false));
        assert_eq!(kind, MaterialErrorKind::KeyMismatch);
        assert!(msg.contains("certificate #2"), "{msg}");
        assert!(msg.contains("put the leaf certificate first"), "{msg}");
    }

    #[test]
    fn certified_key_propagates_permission_refusal() {
        let fx = Fixture::new();
        let g = self_signed("x");
        let cert = fx.write("c.pem", &g.cert_pem, 0o644);
        let key = fx.write("k.pem", &g.key_pem, 0o604);
        let (kind, _) = err_text(load_certified_key("--cert", &cert, "--key", &key, false));
        assert_eq!(kind, MaterialErrorKind::LoosePermissions);
        assert!(load_certified_key("--cert", &cert, "--key", &key, true).is_ok());
    }
}
