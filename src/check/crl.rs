//! The doctor's view of `--crl` files: each must parse as a certificate
//! revocation list; what each says (issuer, how many revoked, when the
//! next is due) is shown, and a nextUpdate already passed is named.

use std::path::Path;

use time::OffsetDateTime;

use crate::tls::crl;

/// `ca.crl (CRL of CN=…, 1 revoked, next update …)`, or the problem and
/// its remedy.
pub fn describe(path: &Path, now: OffsetDateTime) -> Result<String, (String, String)> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match crl::load(path) {
        Ok(crls) => {
            let parts: Vec<String> = crls
                .iter()
                .map(|c| {
                    let stale = if c.is_stale(now) { " (nextUpdate passed: fetch the current CRL)" } else { "" };
                    format!("CRL of {}{stale}", c.describe())
                })
                .collect();
            Ok(format!("{name} ({})", parts.join("; ")))
        }
        Err(e) => Err((e.0, "give the CRL your CA publishes, in PEM or DER form".to_owned())),
    }
}
