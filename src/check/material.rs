//! The TLS material steps both roles share: `files` (readable), `cert-key`
//! (parsed, matching), `chain` (our certificate verified against our CA as
//! the peer would) and `validity` (against the clock).

use std::io::{self, Read as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use crate::describe::describe_io_error;
use crate::tls::config::{provider, TlsFiles};
use crate::tls::material::{self, CertInfo, MaterialError, Validity};

use super::words::date;
use super::{fail, Outcome, Report};

/// Which end of the mTLS link a role's certificate serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The shim: a client certificate (clientAuth).
    Client,
    /// The relay: a server certificate (serverAuth).
    Server,
}

impl Side {
    fn usage(self) -> &'static str {
        match self {
            Side::Client => "clientAuth",
            Side::Server => "serverAuth",
        }
    }
}

/// This side's TLS material, parsed.
pub(super) struct Material {
    roots: RootCertStore,
    ca: Vec<CertificateDer<'static>>,
    pub(super) chain: Vec<CertificateDer<'static>>,
    key_algorithm: String,
    pub(super) leaf: CertInfo,
}

/// files, cert-key, chain and validity. Returns the material when it is
/// fit for a handshake (parsed, matching, valid now).
pub(super) fn check_material(tls: &TlsFiles, side: Side, report: &mut Report) -> Option<Material> {
    let now = OffsetDateTime::now_utc();
    if !report.record("files", check_files(tls)) {
        report.skip(&["cert-key", "chain", "validity"], "a TLS file is unreadable");
        return None;
    }
    let material = match load_material(tls) {
        Ok(material) => material,
        Err(e) => {
            report.record("cert-key", material_failure(&e));
            report.skip(&["chain", "validity"], "the certificate or key is unusable");
            return None;
        }
    };
    report.record("cert-key", describe_material(&material));
    report.record("chain", check_chain(tls, &material, side, now));
    report.record("validity", check_validity(tls, &material, now)).then_some(material)
}

fn check_files(tls: &TlsFiles) -> Outcome {
    let files = [("--ca", &tls.ca), ("--cert", &tls.cert), ("--key", &tls.key)];
    let mut problems = Vec::new();
    let mut hints: Vec<String> = Vec::new();
    for (flag, path) in files {
        if let Err((problem, hint)) = readable(path) {
            problems.push(format!("{flag} {}: {problem}", path.display()));
            if !hints.contains(&hint) {
                hints.push(hint);
            }
        }
    }
    let mut crls = Vec::new();
    for path in &tls.crls {
        match super::crl::describe(path, OffsetDateTime::now_utc()) {
            Ok(described) => crls.push(described),
            Err((problem, hint)) => {
                problems.push(problem);
                hints.push(hint);
            }
        }
    }
    if problems.is_empty() {
        let mut names: Vec<String> = files.iter().map(|(_, path)| file_name(path)).collect();
        names.extend(crls);
        Outcome::Pass(format!("{} readable", names.join(", ")))
    } else {
        fail(problems.join("; "), hints.join("; "))
    }
}

/// Opens and reads a byte of `path`: the problem and the remedy, if any.
fn readable(path: &Path) -> Result<(), (String, String)> {
    let uid = rustix::process::geteuid().as_raw();
    let describe = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound => (
            "file not found".to_owned(),
            "check the path (development certificates: openshell-driver-bridge certs init)".to_owned(),
        ),
        io::ErrorKind::PermissionDenied => (
            "permission denied".to_owned(),
            format!("make the file and its directories readable by the bridge's user (this is uid {uid})"),
        ),
        _ => (describe_io_error(&e), "check the path".to_owned()),
    };
    let mut file = std::fs::File::open(path).map_err(describe)?;
    let meta = file.metadata().map_err(describe)?;
    if meta.is_dir() {
        return Err(("is a directory".into(), "pass the PEM file itself".into()));
    }
    let mut byte = [0u8; 1];
    file.read(&mut byte).map_err(describe)?;
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn load_material(tls: &TlsFiles) -> Result<Material, MaterialError> {
    let ca = material::load_certs("--ca", &tls.ca)?;
    let roots = material::load_roots("--ca", &tls.ca)?;
    let certified =
        material::load_certified_key("--cert", &tls.cert, "--key", &tls.key, tls.allow_loose_key_permissions)?;
    let leaf = material::load_cert_info("--cert", &tls.cert)?;
    Ok(Material {
        roots,
        ca,
        chain: certified.cert.clone(),
        key_algorithm: format!("{:?}", certified.key.algorithm()),
        leaf,
    })
}

fn describe_material(material: &Material) -> Outcome {
    let intermediates = match material.chain.len() {
        0 | 1 => String::new(),
        2 => " + 1 intermediate".to_owned(),
        n => format!(" + {} intermediates", n - 1),
    };
    let cas = if material.ca.len() == 1 {
        "1 CA certificate".to_owned()
    } else {
        format!("{} CA certificates", material.ca.len())
    };
    Outcome::Pass(format!(
        "cert {}{intermediates} and {} key match; --ca holds {cas}",
        material.leaf.identity, material.key_algorithm
    ))
}

/// A material error split into the problem and the remedy that follows
/// its `; ` (every material message is worded that way).
fn material_failure(error: &MaterialError) -> Outcome {
    let full = error.to_string();
    let message = error.message();
    let origin = full.strip_suffix(message).unwrap_or("");
    match message.split_once("; ") {
        Some((problem, remedy)) => fail(format!("{origin}{problem}"), remedy),
        None => fail(full, "development certificates: openshell-driver-bridge certs init"),
    }
}

/// Verifies our own certificate against our CA as the peer would (with the
/// key usage of our side). Time problems are left to `validity`.
fn check_chain(tls: &TlsFiles, material: &Material, side: Side, now: OffsetDateTime) -> Outcome {
    let Some((leaf, intermediates)) = material.chain.split_first() else {
        return fail("--cert holds no certificate", "pass this side's certificate chain in --cert");
    };
    let mut note = "";
    let mut verdict = verify_own(&material.roots, side, leaf, intermediates, unix_time(now));
    if verdict.as_ref().is_err_and(is_time_error) {
        let inside = material.leaf.not_before + (material.leaf.not_after - material.leaf.not_before) / 2;
        verdict = verify_own(&material.roots, side, leaf, intermediates, unix_time(inside));
        note = " (checked within its validity period; see validity)";
    }
    let subject = &material.leaf.subject;
    let peer = match side {
        Side::Client => "the relay trusts",
        Side::Server => "the shims trust",
    };
    match verdict {
        Ok(()) => {
            let issuer = material.chain.last().and_then(issuer_of).unwrap_or_else(|| "the CA".into());
            Outcome::Pass(format!(
                "issued by {issuer} (in --ca), usable for {}{note}; chain {}",
                side.usage(),
                super::chain::describe(&material.chain, &material.ca)
            ))
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
            if super::chain::missing_issuer(&material.chain, &material.ca).is_some() =>
        {
            let issuer = super::chain::missing_issuer(&material.chain, &material.ca).unwrap_or_default();
            Outcome::Warn(
                format!(
                    "{subject} was not issued by a CA in --ca {}: chain {}; the missing intermediate is {issuer}, neither after the leaf in --cert {} nor in --ca",
                    tls.ca.display(),
                    super::chain::describe(&material.chain, &material.ca),
                    tls.cert.display()
                ),
                format!("if {issuer} is an intermediate CA, append its certificate to --cert (leaf first; the peer's --ca needs only the root); fine only if {peer} {issuer} itself"),
            )
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => Outcome::Warn(
            format!("{subject} was not issued by a CA in --ca {}", tls.ca.display()),
            format!("fine only if {peer} its issuer; usually both sides share one CA"),
        ),
        Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature)) => Outcome::Warn(
            format!("{subject} was signed by another CA of the same name as the one in --ca {}", tls.ca.display()),
            format!("fine only if {peer} its issuer; a CA from another certs init run?"),
        ),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        )) => fail(
            format!("{subject} lacks the {} extended key usage", side.usage()),
            match side {
                Side::Client => "the shim needs a client certificate (certs init writes client.pem)",
                Side::Server => "the relay needs a server certificate (certs init writes server.pem)",
            },
        ),
        Err(e) => fail(
            format!("{subject} does not verify against --ca: {e}"),
            "reissue it from the CA in --ca, with any intermediates after it in --cert",
        ),
    }
}

fn verify_own(
    roots: &RootCertStore,
    side: Side,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let roots = Arc::new(roots.clone());
    let built = |e: rustls::client::VerifierBuilderError| rustls::Error::General(format!("--ca: {e}"));
    match side {
        Side::Client => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build().map_err(built)?;
            verifier.verify_client_cert(leaf, intermediates, now).map(drop)
        }
        Side::Server => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider()).build().map_err(built)?;
            // The chain is verified before the name; a name mismatch means
            // the chain is fine (names are peer-name's business).
            let name = ServerName::try_from("check.invalid").map_err(|e| rustls::Error::General(e.to_string()))?;
            match verifier.verify_server_cert(leaf, intermediates, &name, &[], now) {
                Ok(_) => Ok(()),
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

fn is_time_error(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. }
        )
    )
}

/// Our certificate and the CA certificates against the clock.
fn check_validity(tls: &TlsFiles, material: &Material, now: OffsetDateTime) -> Outcome {
    let mut checked = vec![("cert", "--cert", &tls.cert, material.leaf.clone())];
    // Of the CA file, the certificate that ends first speaks for all.
    let cas: Vec<CertInfo> = material.ca.iter().filter_map(|der| material::cert_info(der).ok()).collect();
    if let Some(first_to_end) = cas.iter().min_by_key(|info| info.not_after) {
        checked.push(("CA", "--ca", &tls.ca, first_to_end.clone()));
    }
    let mut shown = Vec::new();
    let mut soon = Vec::new();
    for (what, flag, path, info) in &checked {
        let days_left = match material::check_validity(flag, path, info, now) {
            Validity::Expired => {
                return fail(
                    format!("{what} {} expired on {}", info.subject, date(info.not_after)),
                    "renew it (development certificates: openshell-driver-bridge certs init --force); the bridge reloads renewed files without a restart",
                )
            }
            Validity::NotYetValid => {
                return fail(
                    format!("{what} {} is not valid before {} (now {})", info.subject, date(info.not_before), date(now)),
                    "check this host's clock (timedatectl), or wait for the certificate's start",
                )
            }
            Validity::ExpiresSoon { days_left } => {
                soon.push(format!("{what} {}", info.subject));
                days_left
            }
            Validity::Ok { days_left } => days_left,
        };
        shown.push(format!("{what} until {} ({days_left} days left)", date(info.not_after)));
    }
    let detail = shown.join(", ");
    if soon.is_empty() {
        Outcome::Pass(detail)
    } else {
        Outcome::Warn(
            detail,
            format!(
                "{} expires within a week: renew it; the bridge reloads renewed files without a restart",
                soon.join(" and ")
            ),
        )
    }
}

/// The IP address SANs of a certificate (PeerIdentity keeps DNS, URI, CN).
pub(super) fn ip_sans(der: &CertificateDer<'_>) -> Vec<IpAddr> {
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        16 => <[u8; 16]>::try_from(bytes).ok().map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

/// The issuer DN of a certificate, as in `CN=bridge test CA`.
fn issuer_of(der: &CertificateDer<'_>) -> Option<String> {
    X509Certificate::from_der(der.as_ref()).ok().map(|(_, cert)| cert.issuer().to_string())
}

fn unix_time(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_errors_split_into_problem_and_hint() {
        let error = material::load_certs("--cert", Path::new("/nonexistent/cert.pem")).expect_err("missing file");
        let Outcome::Fail(detail, hint) = material_failure(&error) else { panic!("not a failure") };
        assert!(detail.starts_with("--cert /nonexistent/cert.pem: file not found"), "{detail}");
        assert!(hint.contains("certs init"), "{hint}");
    }

    #[test]
    fn ip_sans_are_read() {
        assert_eq!(ip_from_bytes(&[127, 0, 0, 1]), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(ip_from_bytes(&[0; 5]), None);
    }
}
