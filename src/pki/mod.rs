//! The development PKI: a throw-away CA and the server and client
//! certificates it issues, for `openshell-driver-bridge certs init`, the
//! all-in-one demo and the tests.
//!
//! It exists so that "it works on a fresh machine" needs no openssl recipe,
//! and so tests can build any certificate a hostile peer might present
//! (expired, self-signed, wrong usage, wrong name) with a few builder calls.
//! Everything is ECDSA P-256: small, fast to generate, accepted by rustls'
//! ring provider. Keys are written with mode 0600 and files are replaced
//! atomically, so a bridge reloading its material never reads half a file.
//!
//! Not a production CA: there is no revocation, no serial tracking, and the
//! CA key sits next to the certificates it signed.
//!
//! This file holds the error and what the CA and the leaves share (names,
//! keys, the backdating); `ca.rs` the CA, `leaf.rs` what a leaf says and
//! how it is made, `files.rs` writing PEM files and the `certs init` set.

mod ca;
mod crl;
mod files;
#[cfg(test)]
mod fixtures;
pub mod intermediate;
mod leaf;

pub use crl::serial_of;

use std::io;
use std::path::PathBuf;

use rcgen::{DistinguishedName, DnType, KeyPair};
use time::Duration;

pub use self::ca::Ca;
pub use self::files::{
    init, write_pem, DevPkiPaths, CA_CERT_FILE, CA_KEY_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE, DEFAULT_CLIENT_NAMES,
    DEFAULT_SERVER_NAMES, DEV_CA_NAME, SERVER_CERT_FILE, SERVER_KEY_FILE,
};
pub use self::leaf::{self_signed, Leaf, LeafSpec};

/// Certificates start an hour in the past so a peer whose clock runs a
/// little behind does not see them as not yet valid.
const BACKDATE: Duration = Duration::hours(1);

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or failed to sign.
    #[error("cannot generate the certificate for {subject}: {source}")]
    Generate {
        /// Who the certificate was for.
        subject: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// A name that cannot go into a certificate.
    #[error("invalid {kind} {name:?}: {reason}")]
    InvalidName {
        /// "DNS name", "URI", "common name", ...
        kind: &'static str,
        /// The offending input.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A certificate spec without a single name.
    #[error("a certificate needs at least one name (common name or subject alternative name)")]
    NoName,
    /// `not_after` is not after `not_before`.
    #[error("certificate for {subject}: the validity period ends before it begins")]
    InvalidValidity {
        /// Who the certificate was for.
        subject: String,
    },
    /// A file or directory operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// "create directory", "write", ...
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The output path exists but is a file.
    #[error("{} exists and is not a directory; choose another output directory", path.display())]
    NotADirectory {
        /// The output path.
        path: PathBuf,
    },
    /// Files would be overwritten and `force` was not given.
    #[error("refusing to overwrite existing files in {}: {}; pass --force to replace them (bridges using the old files must reload)", dir.display(), names.join(", "))]
    Exists {
        /// The output directory.
        dir: PathBuf,
        /// The file names that already exist.
        names: Vec<String>,
    },
}

fn generate_error(subject: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate { subject: subject.to_owned(), source }
}

fn check_common_name(name: &str) -> Result<&str, PkiError> {
    let invalid = |reason| PkiError::InvalidName { kind: "common name", name: name.to_owned(), reason };
    if name.trim().is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    Ok(name)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn generate_key(subject: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate_error(subject))
}
