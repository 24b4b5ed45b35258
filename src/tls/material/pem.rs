//! Reading a material file and saying what is in it: the bytes (bounded,
//! with the metadata of the handle read), a summary of its PEM blocks, and
//! the wording for a file that is not PEM, holds no certificate or no key,
//! holds an encrypted key, or is malformed.

use std::fs::{self, File};
use std::io::{self, Read as _};
use std::path::Path;

use rustls::pki_types::pem;

use super::{MaterialError, MaterialErrorKind};

/// Larger than any sane certificate bundle (a full public root bundle is
/// about 220 KiB); stops `--cert /dev/zero` from eating memory.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// PEM labels that mean "this is a private key", in any format.
const PRIVATE_KEY_LABELS: &[&str] = &[
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "OPENSSH PRIVATE KEY",
    "DSA PRIVATE KEY",
];

/// A file's bytes and the metadata of the very handle they were read from,
/// so the permission check looks at what was actually read.
pub(super) struct MaterialFile {
    pub(super) bytes: Vec<u8>,
    pub(super) metadata: fs::Metadata,
}

pub(super) fn read_material(flag: &str, path: &Path) -> Result<MaterialFile, MaterialError> {
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
pub(super) struct PemSummary {
    labels: Vec<String>,
    /// A legacy OpenSSL `Proc-Type: 4,ENCRYPTED` header.
    legacy_encrypted: bool,
}

impl PemSummary {
    pub(super) fn scan(bytes: &[u8]) -> PemSummary {
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

    pub(super) fn has_private_key(&self) -> bool {
        PRIVATE_KEY_LABELS.iter().any(|l| self.has(l))
    }

    pub(super) fn is_encrypted(&self) -> bool {
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

pub(super) fn no_certificate(flag: &str, path: &Path, bytes: &[u8], summary: &PemSummary) -> MaterialError {
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

pub(super) fn no_key(flag: &str, path: &Path, bytes: &[u8], summary: &PemSummary) -> MaterialError {
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

pub(super) fn encrypted_key(flag: &str, path: &Path) -> MaterialError {
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
pub(super) fn malformed_pem(flag: &str, path: &Path, e: &pem::Error) -> MaterialError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::material::fixtures::*;

    use crate::tls::material::*;
    use rcgen::KeyPair;

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
}
