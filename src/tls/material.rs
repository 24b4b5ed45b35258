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

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Version;

use super::identity::PeerIdentity;

/// Larger than any sane certificate bundle (a full public root bundle is
/// about 220 KiB); stops `--cert /dev/zero` from eating memory.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A certificate this close to expiry is reported, so rotation trouble is
/// noticed before the outage.
const EXPIRY_WARNING_DAYS: i64 = 7;

/// The flag that relaxes the key permission check; named in the refusal.
pub const ALLOW_LOOSE_KEY_PERMISSIONS_FLAG: &str = "--allow-loose-key-permissions";

/// PEM labels that mean "this is a private key", in any format.
const PRIVATE_KEY_LABELS: &[&str] = &[
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "OPENSSH PRIVATE KEY",
    "DSA PRIVATE KEY",
];

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

/// Where `now` falls in a certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Valid, with more than a week to go.
    Ok {
        /// Whole days until `not_after`.
        days_left: i64,
    },
    /// Valid, but expiring within a week.
    ExpiresSoon {
        /// Whole days until `not_after` (0 means less than a day).
        days_left: i64,
    },
    /// `now` is past `not_after`.
    Expired,
    /// `now` is before `not_before` (often a wrong clock on this host).
    NotYetValid,
}

/// Classifies `now` against the certificate's validity period. Pure: the
/// caller decides whether to warn or refuse (see [`require_valid`] and
/// [`warn_on_expiry`]).
pub fn check_validity(flag: &str, path: &Path, info: &CertInfo, now: OffsetDateTime) -> Validity {
    let validity = classify_validity(info, now);
    tracing::debug!(flag, path = %path.display(), subject = %info.subject, ?validity, "certificate validity");
    validity
}

fn classify_validity(info: &CertInfo, now: OffsetDateTime) -> Validity {
    if now < info.not_before {
        return Validity::NotYetValid;
    }
    if now > info.not_after {
        return Validity::Expired;
    }
    let days_left = (info.not_after - now).whole_days();
    if days_left < EXPIRY_WARNING_DAYS {
        Validity::ExpiresSoon { days_left }
    } else {
        Validity::Ok { days_left }
    }
}

/// Like [`check_validity`], but an expired or not-yet-valid certificate is
/// an error that says what to do.
pub fn require_valid(flag: &str, path: &Path, info: &CertInfo, now: OffsetDateTime) -> Result<Validity, MaterialError> {
    match check_validity(flag, path, info, now) {
        Validity::Expired => Err(MaterialError::new(
            MaterialErrorKind::Expired,
            flag,
            path,
            format!(
                "certificate {} expired at {}; renew it (development certificates: openshell-driver-bridge certs init --force)",
                info.subject,
                Utc(info.not_after)
            ),
        )),
        Validity::NotYetValid => Err(MaterialError::new(
            MaterialErrorKind::NotYetValid,
            flag,
            path,
            format!(
                "certificate {} is not valid before {} (now {}); check this host's clock",
                info.subject,
                Utc(info.not_before),
                Utc(now)
            ),
        )),
        ok => Ok(ok),
    }
}

/// Checks validity against the current time and logs a warning when the
/// certificate expires within a week. Returns the verdict; the caller
/// decides whether an expired certificate is fatal.
pub fn warn_on_expiry(flag: &str, path: &Path, info: &CertInfo) -> Validity {
    let validity = check_validity(flag, path, info, OffsetDateTime::now_utc());
    if let Validity::ExpiresSoon { days_left } = validity {
        tracing::warn!(
            "{}: certificate {} expires at {} ({days_left} whole days left); renew it soon",
            origin(flag, path),
            info.subject,
            Utc(info.not_after)
        );
    }
    validity
}

/// Formats a timestamp as `2025-01-31 12:00:00 UTC` without depending on
/// the `time` crate's formatting feature.
struct Utc(OffsetDateTime);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0.to_offset(time::UtcOffset::UTC);
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

/// A file's bytes and the metadata of the very handle they were read from,
/// so the permission check looks at what was actually read.
struct MaterialFile {
    bytes: Vec<u8>,
    metadata: fs::Metadata,
}

fn read_material(flag: &str, path: &Path) -> Result<MaterialFile, MaterialError> {
    let file = File::open(path).map_err(|e| open_error(flag, path, &e))?;
    let metadata = file.metadata().map_err(|e| read_error(flag, path, &e))?;
    if metadata.is_dir() {
        return Err(MaterialError::new(
            MaterialErrorKind::Unreadable,
            flag,
            path,
            "is a directory; pass the PEM file itself",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| read_error(flag, path, &e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(MaterialError::new(
            MaterialErrorKind::Unreadable,
            flag,
            path,
            format!(
                "is larger than {} MiB, which no certificate or key file is; check the path",
                MAX_FILE_BYTES / (1024 * 1024)
            ),
        ));
    }
    Ok(MaterialFile { bytes, metadata })
}

fn open_error(flag: &str, path: &Path, e: &io::Error) -> MaterialError {
    match e.kind() {
        io::ErrorKind::NotFound => MaterialError::new(
            MaterialErrorKind::NotFound,
            flag,
            path,
            "file not found; check the path (development certificates: openshell-driver-bridge certs init)",
        ),
        _ => read_error(flag, path, e),
    }
}

fn read_error(flag: &str, path: &Path, e: &io::Error) -> MaterialError {
    let message = match e.kind() {
        io::ErrorKind::PermissionDenied => {
            "permission denied; make the file and its directories readable by the user the bridge runs as".to_owned()
        }
        _ => format!("cannot read the file ({e}); check the path"),
    };
    MaterialError::new(MaterialErrorKind::Unreadable, flag, path, message)
}

/// The PEM block labels in a file, scanned independently of the decoder so
/// errors can say what *was* found (the decoder skips what it does not
/// know, such as `ENCRYPTED PRIVATE KEY`).
struct PemSummary {
    labels: Vec<String>,
    /// A legacy OpenSSL `Proc-Type: 4,ENCRYPTED` header.
    legacy_encrypted: bool,
}

impl PemSummary {
    fn scan(bytes: &[u8]) -> PemSummary {
        let text = String::from_utf8_lossy(bytes);
        let mut summary = PemSummary { labels: Vec::new(), legacy_encrypted: false };
        for line in text.lines().map(str::trim) {
            if let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|rest| rest.strip_suffix("-----")) {
                // Echoed in errors: keep them one printable line.
                summary.labels.push(label.chars().take(64).flat_map(char::escape_debug).collect());
            } else if line.starts_with("Proc-Type:") && line.contains("ENCRYPTED") {
                summary.legacy_encrypted = true;
            }
        }
        summary
    }

    fn has(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l == label)
    }

    fn has_private_key(&self) -> bool {
        PRIVATE_KEY_LABELS.iter().any(|l| self.has(l))
    }

    fn is_encrypted(&self) -> bool {
        self.legacy_encrypted || self.has("ENCRYPTED PRIVATE KEY")
    }

    /// "a PRIVATE KEY block" or "X509 CRL and PUBLIC KEY blocks".
    fn describe(&self) -> String {
        let mut distinct: Vec<&str> = Vec::new();
        for label in &self.labels {
            if !distinct.contains(&label.as_str()) {
                distinct.push(label);
            }
        }
        match distinct.as_slice() {
            [] => "no PEM blocks".to_owned(),
            [one] => format!("a {one} block"),
            [rest @ .., last] => format!("{} and {last} blocks", rest.join(", ")),
        }
    }
}

/// Explains a file with no usable PEM block of the wanted kind when it is
/// not PEM at all: empty, binary DER, or something else.
fn not_pem_problem(bytes: &[u8], expected: &str, der_fix: &str) -> Option<String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Some(format!("the file is empty; expected PEM text starting with -----BEGIN {expected}-----"));
    }
    // A DER SEQUENCE starts with 0x30; PEM is text and never does unless it
    // starts with the digit '0', which no PEM file does.
    if bytes.first() == Some(&0x30) {
        return Some(format!("this looks like binary DER, not PEM; convert it with {der_fix}"));
    }
    None
}

fn no_certificate(flag: &str, path: &Path, bytes: &[u8], summary: &PemSummary) -> MaterialError {
    let p = path.display();
    let der_fix = format!("openssl x509 -inform der -in {p} -out {p}.pem");
    if let Some(problem) = not_pem_problem(bytes, "CERTIFICATE", &der_fix) {
        return MaterialError::new(MaterialErrorKind::NotPem, flag, path, problem);
    }
    if summary.labels.is_empty() {
        return MaterialError::new(
            MaterialErrorKind::NotPem,
            flag,
            path,
            "no PEM block found; expected -----BEGIN CERTIFICATE-----",
        );
    }
    let found = summary.describe();
    let hint = if summary.has_private_key() {
        match partner_flag(flag, "cert", "key") {
            Some(key_flag) => format!("did you swap {flag} and {key_flag}?"),
            None => "this is a private key file; pass a certificate here".to_owned(),
        }
    } else if summary.has("CERTIFICATE REQUEST") {
        "a certificate request is not a certificate; have it signed by your CA".to_owned()
    } else {
        "pass a PEM file with -----BEGIN CERTIFICATE----- blocks".to_owned()
    };
    MaterialError::new(
        MaterialErrorKind::NoCertificate,
        flag,
        path,
        format!("no CERTIFICATE block; found {found}; {hint}"),
    )
}

fn no_key(flag: &str, path: &Path, bytes: &[u8], summary: &PemSummary) -> MaterialError {
    let p = path.display();
    let der_fix = format!("openssl pkey -inform der -in {p} -out {p}.pem");
    if let Some(problem) = not_pem_problem(bytes, "PRIVATE KEY", &der_fix) {
        return MaterialError::new(MaterialErrorKind::NotPem, flag, path, problem);
    }
    let (kind, problem) = if summary.has("OPENSSH PRIVATE KEY") {
        (
            MaterialErrorKind::UnsupportedKey,
            format!(
                "OpenSSH key format is not supported; convert the key to PKCS#8 with ssh-keygen -p -m PKCS8 -f {p}"
            ),
        )
    } else if summary.has("DSA PRIVATE KEY") {
        (
            MaterialErrorKind::UnsupportedKey,
            "unsupported key type (DSA); use an ECDSA P-256 or P-384, Ed25519 or RSA key".to_owned(),
        )
    } else if summary.has("CERTIFICATE") {
        let hint = match partner_flag(flag, "key", "cert") {
            Some(cert_flag) => format!("did you swap {cert_flag} and {flag}?"),
            None => "pass the private key file here".to_owned(),
        };
        (MaterialErrorKind::NoKey, format!("holds only certificates, no private key; {hint}"))
    } else if summary.labels.is_empty() {
        (MaterialErrorKind::NotPem, "no PEM block found; expected -----BEGIN PRIVATE KEY-----".to_owned())
    } else {
        (
            MaterialErrorKind::NoKey,
            format!(
                "no private key block; found {}; pass an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key",
                summary.describe()
            ),
        )
    };
    MaterialError::new(kind, flag, path, problem)
}

fn encrypted_key(flag: &str, path: &Path) -> MaterialError {
    let p = path.display();
    MaterialError::new(
        MaterialErrorKind::EncryptedKey,
        flag,
        path,
        format!(
            "encrypted keys are not supported; decrypt it with openssl pkey -in {p} -out {p}.decrypted, chmod 600 the result and pass that file"
        ),
    )
}

/// Never includes the decoder's own text: for a key it could describe
/// secret bytes.
fn malformed_pem(flag: &str, path: &Path, e: &pem::Error) -> MaterialError {
    let problem = match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no -----END line (truncated file?)",
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a PEM block contains invalid base64 (corrupted or edited file?)",
        pem::Error::SectionTooLarge => "a PEM block is too large",
        _ => "the PEM text cannot be decoded",
    };
    MaterialError::new(MaterialErrorKind::NotPem, flag, path, format!("malformed PEM: {problem}; re-export the file"))
}

/// `--client-cert` -> `--client-key`, so a swap hint names the real flags.
fn partner_flag(flag: &str, from: &str, to: &str) -> Option<String> {
    flag.strip_suffix(from).map(|stem| format!("{stem}{to}"))
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

fn ring_signing_key(
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
fn warn_if_key_is_exposed(flag: &str, path: &Path, file: &MaterialFile, summary: &PemSummary) {
    if !summary.has_private_key() {
        return;
    }
    if let Err(e) = check_key_permissions(flag, path, file, false) {
        tracing::warn!("{e} (this certificate file also contains a private key)");
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use rcgen::{CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
    use tempfile::TempDir;

    /// A 2048-bit RSA key in PKCS#1 form, generated only for these tests
    /// (ring cannot generate RSA keys). It protects nothing.
    const TEST_RSA_PKCS1: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEpQIBAAKCAQEAtIi9lR4YtCKALwJG1oEnXQOqEDmxbRpnsnDfX5OOCk7f6udH\n\
fFozVGNn/v7QAbBNmblEhdGg9KnE9DK6kmz3KZ3efaLIi6VOHZ4HaLbPsZwti7Hi\n\
6dJC9M8IfklJGQlxIwBAwdFQRtnYSee+O4027UInckluxYvjGTfQCvlQzyGd1KUK\n\
z5kl5cRQniufaTRgSgdxRHGiTu6UaK1DOopqe2SPfHRrNhS5OViSY1hEdUnQA1Qn\n\
8sdu/PA6wYScDlbz/GIbcAj9ZlJrPqCYLeXlVPJs8IqImKjwpnrCo6/auq2NTT7B\n\
xRIaCDe7M7zP2XhRy87follu+bZ+m53cE5PI1wIDAQABAoIBAAVdBpzWfw9i8wHy\n\
hF49CglWYYgH3sCKB0ii19AEFzUxMK/O3S3RlDLOnTlTIqTaMwP9IA8Fsk1yebpz\n\
g110RUeEPCbpXiHf8Fkq57dxruvs4uGCkGY36+tP90WhMb2/rQ/IIyRe7o6cTDOt\n\
4dXtFROpYnifu928kSufn9ujmoX8weiHr5m6UVPZ4p9IRprkEI4ELUt+wLMGvr1k\n\
3AD2yrYJrU3gViuur6v95RcsPCLTq9Kl4j/ZSyjI8seBhbL9qJMgSaRGA1rSBBnK\n\
fm5PzJU5/4FuXDOTemkifVgXSKhIaxTMFNofy1rBzECrhl5HwW/tI9+K6Ll3j/T/\n\
Low8u/ECgYEA1+QIzYeccSFUr76L8zUiG+czGUfJRfTIVAcIEsrs4ZyYjPGK4gwp\n\
x++6vTB2X85/8imIqJLb4ZerrE04oAIJkOojo8/1JNvWv40yer3TTvNoVcqX/DJZ\n\
VzGXihcy4d8Wj+EZ7zXOzdIF7u0Q1jVDVUuBRwRx/DiI8C/KVWF/YtkCgYEA1hMc\n\
0FuWzGmNacJylp44/xVJ+zO+SwZ3iiA4AUGfawu2qhzGjgay4jWOcDW7dYoE0VFa\n\
TZPI+IuD/TxgVnEaj0dAE1xG6SE/MsC8Uamh61EHCSeK/LIWiXdmHcf3z8KZC7nU\n\
ZnPUQxEYjTvJr4KH282r5ZOtTAx7E4qTSkoJ2y8CgYEAh/sCrGoxWHR1AekT/1FF\n\
NawPXGoB1YVTtNFk/WlBgO2AjK4LG0wr+Nn/lfBzbu8DWcVdZUhzJInCwNk2xFnk\n\
Kpm/bwuqTdgGUEqgM/1inkTkP71Gs7wG18vNtlXcX7aDYIaZLjmHE86onBBH3ZRY\n\
392aBOBA52u4nQiM+fBaKykCgYEAtERF6EKn+pwLw/pE6gZ0soCn2svYu27HrN2y\n\
q4QqDUdA24D9xk1nx0sYFe95WuINaoIaC+edvYYmcFGuQjxeBDcYgvUalWg0wrVA\n\
H3g77F9AEHpm9KG2jq2npP5l9GLG4/PpIxj4rj0wMoYdMRk29GX+EYXI0ZhU78Cq\n\
hU1RfWsCgYEAp/jVWUFkmbut0PnTAMoWAFbuCdT1OcLGVTt8cdZN3QXKaMJbD57I\n\
UYuHv+OCdkPPAx9dkURxDcOe8YWcACubOq3DMUK4WT+gIzmBSBgxf23/7y/MEBks\n\
zkTny00MaiJckgzkF5XopKNLoibwCX4BvySANETgrR37RcueWt1jPg8=\n\
-----END RSA PRIVATE KEY-----\n\
";
    /// A P-256 key in SEC1 form, generated only for these tests.
    const TEST_EC_SEC1: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIPbIJEZyFyOieZNsVG6S2y4xN/1ry8l2ooWfikfH+LCHoAoGCCqGSM49\n\
AwEHoUQDQgAEETvq8neaEnwSdjtlATg4Ve1aXM0TAuJ+UCsK4r2JehHjuEvgYJ/p\n\
/kz/mTVzoIy6Kykh1DMCx6AmhoYGowJxNg==\n\
-----END EC PRIVATE KEY-----\n\
";

    struct Fixture {
        dir: TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture { dir: tempfile::tempdir().unwrap() }
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>, mode: u32) -> PathBuf {
            let path = self.dir.path().join(name);
            fs::write(&path, contents).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    struct Generated {
        cert_pem: String,
        key_pem: String,
    }

    fn params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::new(vec![cn.to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
    }

    fn self_signed(cn: &str) -> Generated {
        let key = KeyPair::generate().unwrap();
        let cert = params(cn).self_signed(&key).unwrap();
        Generated { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A CA and a leaf it issued, as PEM: (ca, leaf).
    fn ca_and_leaf() -> (Generated, Generated) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = params("test CA");
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = params("leaf.example");
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        (
            Generated { cert_pem: ca_cert.pem(), key_pem: ca_key.serialize_pem() },
            Generated { cert_pem: leaf.pem(), key_pem: leaf_key.serialize_pem() },
        )
    }

    fn err_text<T: fmt::Debug>(result: Result<T, MaterialError>) -> (MaterialErrorKind, String) {
        let err = result.unwrap_err();
        (err.kind(), err.to_string())
    }

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
    fn missing_file_names_flag_and_path() {
        let fx = Fixture::new();
        let path = fx.dir.path().join("nope.pem");
        let (kind, msg) = err_text(load_certs("--cert", &path));
        assert_eq!(kind, MaterialErrorKind::NotFound);
        assert!(msg.starts_with(&format!("--cert {}: file not found", path.display())), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn directory_is_refused() {
        let fx = Fixture::new();
        let (kind, msg) = err_text(load_certs("--cert", fx.dir.path()));
        assert_eq!(kind, MaterialErrorKind::Unreadable);
        assert!(msg.contains("is a directory"), "{msg}");
    }

    #[test]
    fn unreadable_file_is_explained() {
        let fx = Fixture::new();
        let path = fx.write("locked.pem", self_signed("x").cert_pem, 0o000);
        // Root reads anything; the check is meaningful only for other users.
        if File::open(&path).is_ok() {
            return;
        }
        let (kind, msg) = err_text(load_certs("--cert", &path));
        assert_eq!(kind, MaterialErrorKind::Unreadable);
        assert!(msg.contains("permission denied"), "{msg}");
    }

    #[test]
    fn empty_file_and_garbage_are_not_pem() {
        let fx = Fixture::new();
        let empty = fx.write("empty.pem", "", 0o644);
        let (kind, msg) = err_text(load_certs("--cert", &empty));
        assert_eq!(kind, MaterialErrorKind::NotPem);
        assert!(msg.contains("the file is empty"), "{msg}");

        let text = fx.write("text.pem", "hello world\n", 0o644);
        let (kind, msg) = err_text(load_certs("--cert", &text));
        assert_eq!(kind, MaterialErrorKind::NotPem);
        assert!(msg.contains("no PEM block found"), "{msg}");
    }

    #[test]
    fn der_file_gets_a_conversion_hint() {
        let fx = Fixture::new();
        let key = KeyPair::generate().unwrap();
        let der = params("x").self_signed(&key).unwrap().der().to_vec();
        let path = fx.write("cert.der", der, 0o644);
        let (kind, msg) = err_text(load_certs("--cert", &path));
        assert_eq!(kind, MaterialErrorKind::NotPem);
        assert!(msg.contains("binary DER") && msg.contains("openssl x509 -inform der"), "{msg}");
    }

    #[test]
    fn swapped_cert_and_key_are_recognised_both_ways() {
        let fx = Fixture::new();
        let generated = self_signed("x");
        let key_as_cert = fx.write("key.pem", &generated.key_pem, 0o600);
        let (kind, msg) = err_text(load_certs("--cert", &key_as_cert));
        assert_eq!(kind, MaterialErrorKind::NoCertificate);
        assert!(msg.contains("found a PRIVATE KEY block; did you swap --cert and --key?"), "{msg}");

        let cert_as_key = fx.write("cert.pem", &generated.cert_pem, 0o600);
        let (kind, msg) = err_text(load_key("--client-key", &cert_as_key, false));
        assert_eq!(kind, MaterialErrorKind::NoKey);
        assert!(msg.contains("holds only certificates"), "{msg}");
        assert!(msg.contains("did you swap --client-cert and --client-key?"), "{msg}");
    }

    #[test]
    fn malformed_and_truncated_pem() {
        let fx = Fixture::new();
        let pem = self_signed("x").cert_pem;
        let truncated = fx.write("t.pem", &pem[..pem.len() / 2], 0o644);
        let (kind, msg) = err_text(load_certs("--cert", &truncated));
        assert_eq!(kind, MaterialErrorKind::NotPem);
        assert!(msg.contains("no -----END line"), "{msg}");

        let corrupted = pem.replacen("MII", "M!I", 1);
        let corrupted = fx.write("c.pem", corrupted, 0o644);
        let (_, msg) = err_text(load_certs("--cert", &corrupted));
        assert!(msg.contains("invalid base64"), "{msg}");
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
    fn csr_is_not_a_certificate() {
        let fx = Fixture::new();
        let key = KeyPair::generate().unwrap();
        let csr = params("x").serialize_request(&key).unwrap().pem().unwrap();
        let path = fx.write("req.pem", csr, 0o644);
        let (_, msg) = err_text(load_certs("--cert", &path));
        assert!(msg.contains("CERTIFICATE REQUEST"), "{msg}");
        assert!(msg.contains("have it signed"), "{msg}");
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
    fn encrypted_keys_are_refused() {
        let fx = Fixture::new();
        let pkcs8 = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let path = fx.write("enc.pem", pkcs8, 0o600);
        let (kind, msg) = err_text(load_key("--key", &path, false));
        assert_eq!(kind, MaterialErrorKind::EncryptedKey);
        assert!(msg.contains("encrypted keys are not supported; decrypt it with openssl pkey"), "{msg}");

        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,0123456789ABCDEF0123456789ABCDEF\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let path = fx.write("legacy.pem", legacy, 0o600);
        let (kind, _) = err_text(load_key("--key", &path, false));
        assert_eq!(kind, MaterialErrorKind::EncryptedKey);
    }

    #[test]
    fn other_key_formats_get_specific_advice() {
        let fx = Fixture::new();
        let ssh = fx.write(
            "id_ed25519",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            0o600,
        );
        let (kind, msg) = err_text(load_key("--key", &ssh, false));
        assert_eq!(kind, MaterialErrorKind::UnsupportedKey);
        assert!(msg.contains("ssh-keygen -p -m PKCS8"), "{msg}");

        let public = fx.write("pub.pem", KeyPair::generate().unwrap().public_key_pem(), 0o600);
        let (kind, msg) = err_text(load_key("--key", &public, false));
        assert_eq!(kind, MaterialErrorKind::NoKey);
        assert!(msg.contains("found a PUBLIC KEY block"), "{msg}");
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

    fn info_between(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertInfo {
        CertInfo { identity: PeerIdentity::default(), subject: "CN=t".to_owned(), not_before, not_after }
    }

    #[test]
    fn validity_classification() {
        let now = rcgen::date_time_ymd(2030, 6, 1);
        let days = time::Duration::days;
        let p = Path::new("/c.pem");
        let check = |nb, na| check_validity("--cert", p, &info_between(nb, na), now);
        assert_eq!(check(now - days(1), now + days(30)), Validity::Ok { days_left: 30 });
        assert_eq!(check(now - days(1), now + days(7)), Validity::Ok { days_left: 7 });
        assert_eq!(check(now - days(1), now + days(6)), Validity::ExpiresSoon { days_left: 6 });
        assert_eq!(check(now - days(1), now + time::Duration::hours(3)), Validity::ExpiresSoon { days_left: 0 });
        assert_eq!(check(now - days(10), now - days(1)), Validity::Expired);
        assert_eq!(check(now + days(1), now + days(10)), Validity::NotYetValid);
    }

    #[test]
    fn require_valid_explains_expired_and_future_certificates() {
        let now = rcgen::date_time_ymd(2030, 6, 1);
        let days = time::Duration::days;
        let p = Path::new("/c.pem");
        let expired = info_between(now - days(10), rcgen::date_time_ymd(2030, 5, 31));
        let err = require_valid("--cert", p, &expired, now).unwrap_err();
        assert_eq!(err.kind(), MaterialErrorKind::Expired);
        assert_eq!(
            err.to_string(),
            "--cert /c.pem: certificate CN=t expired at 2030-05-31 00:00:00 UTC; renew it (development certificates: openshell-driver-bridge certs init --force)"
        );
        let future = info_between(now + days(1), now + days(10));
        let err = require_valid("--cert", p, &future, now).unwrap_err();
        assert_eq!(err.kind(), MaterialErrorKind::NotYetValid);
        assert!(err.to_string().contains("check this host's clock"), "{err}");
        let fine = info_between(now - days(1), now + days(100));
        assert_eq!(require_valid("--cert", p, &fine, now).unwrap(), Validity::Ok { days_left: 100 });
    }

    #[test]
    fn warn_on_expiry_uses_the_current_time() {
        let now = OffsetDateTime::now_utc();
        let soon = info_between(now - time::Duration::days(1), now + time::Duration::days(2));
        assert!(matches!(
            warn_on_expiry("--cert", Path::new("/c.pem"), &soon),
            Validity::ExpiresSoon { days_left: 1 | 2 }
        ));
    }
}
