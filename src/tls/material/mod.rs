//! Loading certificates and private keys from PEM files, with errors an
//! operator can act on.
//!
//! Certificate trouble is the most common way a TLS deployment fails, and the
//! handshake error that follows it ("unknown issuer", "decrypt error") rarely
//! points at the file that is wrong. So every failure here names the flag,
//! the path and the problem on one line, and says what to do about it:
//!
//! ```text
//! --key /etc/bridge/client-key.pem: private key is readable by group or others (mode 0644); run chmod 600 /etc/bridge/client-key.pem, or pass --allow-loose-key-permissions
//! ```
//!
//! Nothing read from a key file is ever echoed back: messages name PEM block
//! labels, counts and modes, never contents.
//!
//! This file holds the error every loader returns; the loaders live by
//! what they load: `pem.rs` (reading a file, and the wording for what is
//! in it), `certs.rs` (chains, trust anchors, what a certificate says),
//! `key.rs` (private keys, their permissions, key and certificate
//! matching) and `validity.rs` (a certificate against the clock).

mod certs;
#[cfg(test)]
mod fixtures;
mod key;
mod pair;
mod pem;
mod validity;

use std::path::Path;

pub use self::certs::{cert_info, load_cert_info, load_certs, load_roots, CertInfo};
pub use self::key::{load_key, ALLOW_LOOSE_KEY_PERMISSIONS_FLAG};
pub use self::pair::load_certified_key;
pub use self::validity::{check_validity, require_valid, warn_on_expiry, Utc, Validity};

/// What went wrong, for callers that react differently to different
/// problems (for example a reload that keeps the old material).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaterialErrorKind {
    /// The file does not exist.
    NotFound,
    /// The file exists but cannot be read (permissions, directory, size).
    Unreadable,
    /// The file is empty, binary, or malformed PEM.
    NotPem,
    /// PEM, but without a CERTIFICATE block.
    NoCertificate,
    /// A CERTIFICATE block that is not a valid X.509 certificate.
    BadCertificate,
    /// A trust-anchor file that holds only end-entity certificates.
    NotCa,
    /// PEM, but without a private key block.
    NoKey,
    /// More than one private key in one file.
    MultipleKeys,
    /// A passphrase-protected key.
    EncryptedKey,
    /// A key the ring provider cannot use.
    UnsupportedKey,
    /// A private key readable (or writable) by group or others.
    LoosePermissions,
    /// The private key does not belong to the certificate.
    KeyMismatch,
    /// The certificate's validity period has ended.
    Expired,
    /// The certificate's validity period has not started.
    NotYetValid,
}

/// A certificate or key problem, displayed as one actionable line:
/// `FLAG PATH: problem; what to do`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct MaterialError {
    kind: MaterialErrorKind,
    origin: String,
    message: String,
}

impl MaterialError {
    fn new(kind: MaterialErrorKind, flag: &str, path: &Path, message: impl Into<String>) -> Self {
        MaterialError { kind, origin: origin(flag, path), message: message.into() }
    }

    /// The category of the problem.
    pub fn kind(&self) -> MaterialErrorKind {
        self.kind
    }

    /// The problem and remedy, without the `FLAG PATH:` prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Re-labels an error (for example one from [`cert_info`], which only
    /// sees bytes) with the flag and path the bytes came from.
    pub fn at(mut self, flag: &str, path: &Path) -> Self {
        self.origin = origin(flag, path);
        self
    }
}

fn origin(flag: &str, path: &Path) -> String {
    if flag.is_empty() {
        path.display().to_string()
    } else {
        format!("{flag} {}", path.display())
    }
}
