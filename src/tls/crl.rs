//! Certificate revocation lists (`--crl FILE`, repeatable; PEM or DER).
//!
//! A CRL applies to the certificates of its issuer (a CA of `--ca`, or an
//! intermediate the peer presents); only the peer's own (end-entity)
//! certificate is checked, and a certificate whose issuer has no CRL loaded
//! is accepted. Signatures are checked by webpki at each handshake; here
//! the files are read, described and judged for freshness, with errors
//! that name the flag and the file.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::tls::error::TlsConfigError;

/// The flag every message names.
pub const FLAG: &str = "--crl";

/// Larger than any sane CRL of a private CA.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A CRL whose nextUpdate is this close is reported.
const NEXT_UPDATE_WARNING: time::Duration = time::Duration::days(1);

/// One CRL as loaded from a file.
#[derive(Clone, Debug)]
pub struct Crl {
    pub file: PathBuf,
    pub der: CertificateRevocationListDer<'static>,
    /// The issuer's distinguished name, as in `CN=bridge test CA`.
    pub issuer: String,
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
    /// The CRL number (big-endian bytes), when present.
    pub number: Option<Vec<u8>>,
    /// Certificates listed as revoked.
    pub revoked: usize,
}

impl Crl {
    /// `issuer CN=..., 2 revoked, next update 2026-12-01 10:00:00 UTC` for logs.
    pub fn describe(&self) -> String {
        let next = match self.next_update {
            Some(at) => format!("next update {}", utc(at)),
            None => "no next update".to_owned(),
        };
        format!("issuer {}, {} revoked, {next}", self.issuer, self.revoked)
    }

    /// The nextUpdate has passed: the issuer should have published a newer list.
    pub fn is_stale(&self, now: OffsetDateTime) -> bool {
        self.next_update.is_some_and(|at| at <= now)
    }
}

fn error(path: &Path, message: impl std::fmt::Display) -> TlsConfigError {
    TlsConfigError(format!("{FLAG} {}: {message}", path.display()))
}

/// Loads every CRL of every file (a PEM file may hold several).
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Crl>, TlsConfigError> {
    let mut all = Vec::new();
    for path in paths {
        all.extend(load(path)?);
    }
    Ok(all)
}

/// Loads the CRLs of one file: PEM (`-----BEGIN X509 CRL-----`) or DER.
pub fn load(path: &Path) -> Result<Vec<Crl>, TlsConfigError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| error(path, format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| error(path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(error(path, format!("larger than {} MiB; not a CRL", MAX_FILE_BYTES >> 20)));
    }
    let ders: Vec<CertificateRevocationListDer<'static>> = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let ders = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| error(path, format!("not a valid PEM file ({e})")))?;
        if ders.is_empty() {
            return Err(error(
                path,
                "holds no CRL (no `-----BEGIN X509 CRL-----` block); pass the certificate revocation list your CA publishes",
            ));
        }
        ders
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    let count = ders.len();
    ders.into_iter()
        .enumerate()
        .map(|(index, der)| {
            describe(path, der).map_err(|problem| {
                let which = if count == 1 { "the file".to_owned() } else { format!("CRL {} of {count}", index + 1) };
                error(path, format!("{which} does not parse as a certificate revocation list ({problem}); give a CRL in PEM or DER form, as `openssl crl -in FILE -noout -text` reads it"))
            })
        })
        .collect()
}

fn describe(path: &Path, der: CertificateRevocationListDer<'static>) -> Result<Crl, String> {
    let (rest, parsed) = CertificateRevocationList::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after its end", rest.len()));
    }
    let crl = Crl {
        file: path.to_path_buf(),
        issuer: parsed.issuer().to_string(),
        this_update: parsed.last_update().to_datetime(),
        next_update: parsed.next_update().map(|t| t.to_datetime()),
        number: parsed.crl_number().map(|n| n.to_bytes_be()),
        revoked: parsed.iter_revoked_certificates().count(),
        der: der.clone(),
    };
    Ok(crl)
}

/// `2026-12-01 10:00:00 UTC`, as certificate dates are written.
pub fn utc(at: OffsetDateTime) -> String {
    super::material::Utc(at).to_string()
}

/// Logs a CRL whose nextUpdate has passed or is near (at start and reload).
pub fn warn_on_next_update(crl: &Crl, now: OffsetDateTime) {
    let file = crl.file.display().to_string();
    match crl.next_update {
        Some(at) if at <= now => tracing::warn!(
            file,
            issuer = %crl.issuer,
            next_update = %utc(at),
            "{FLAG} {file}: the CRL's nextUpdate has passed; fetch the issuer's current CRL (certificates revoked since are not known)"
        ),
        Some(at) if at - now <= NEXT_UPDATE_WARNING => tracing::warn!(
            file,
            issuer = %crl.issuer,
            next_update = %utc(at),
            "{FLAG} {file}: the CRL's nextUpdate is within a day; make sure a newer CRL is fetched in time"
        ),
        _ => {}
    }
}

/// A reload may not put an older list in place of a newer one: a CRL whose
/// nextUpdate has passed, or whose CRL number is lower than the one in use
/// for the same issuer, is refused (the previous stays).
pub fn refuse_stale(current: &[Crl], new: &[Crl], now: OffsetDateTime) -> Result<(), TlsConfigError> {
    for crl in new {
        if let Some(at) = crl.next_update.filter(|_| crl.is_stale(now)) {
            return Err(error(
                &crl.file,
                format!(
                    "new CRL of {} is stale (its nextUpdate {} has passed); fetch the issuer's current CRL",
                    crl.issuer,
                    utc(at)
                ),
            ));
        }
        let older = current.iter().find(|old| {
            old.issuer == crl.issuer && matches!((&old.number, &crl.number), (Some(o), Some(n)) if newer(o, n))
        });
        if let Some(old) = older {
            return Err(error(
                &crl.file,
                format!(
                    "new CRL of {} is older than the one in use (CRL number {} < {}); not rolled back",
                    crl.issuer,
                    hex(crl.number.as_deref().unwrap_or_default()),
                    hex(old.number.as_deref().unwrap_or_default())
                ),
            ));
        }
    }
    Ok(())
}

/// `old` is a larger big-endian number than `new`.
fn newer(old: &[u8], new: &[u8]) -> bool {
    let trim = |b: &[u8]| -> Vec<u8> { b.iter().copied().skip_while(|&x| x == 0).collect() };
    let (old, new) = (trim(old), trim(new));
    (old.len(), &old) > (new.len(), &new)
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "0".into();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_numbers_compare_as_numbers() {
        assert!(newer(&[2], &[1]));
        assert!(!newer(&[1], &[2]));
        assert!(newer(&[1, 0], &[0xff]));
        assert!(!newer(&[0, 1], &[1]));
    }

    #[test]
    fn garbage_is_not_a_crl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.crl");
        std::fs::write(&path, b"this is not a crl").unwrap();
        let err = load(&path).unwrap_err().0;
        assert!(err.starts_with("--crl ") && err.contains("bad.crl") && err.contains("does not parse"), "{err}");
        std::fs::write(&path, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let err = load(&path).unwrap_err().0;
        assert!(err.contains("holds no CRL"), "{err}");
    }
}
