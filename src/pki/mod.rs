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

mod crl;
pub mod intermediate;

pub use crl::serial_of;

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

/// File names inside a development PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key: whoever holds it can mint identities.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The relay's (server's) certificate.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The relay's (server's) private key.
pub const SERVER_KEY_FILE: &str = "server-key.pem";
/// The shim's (client's) certificate.
pub const CLIENT_CERT_FILE: &str = "client.pem";
/// The shim's (client's) private key.
pub const CLIENT_KEY_FILE: &str = "client-key.pem";

/// Server names used when none are given: every way a local client dials.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];
/// Client name used when none is given: the gateway's shim.
pub const DEFAULT_CLIENT_NAMES: &[&str] = &["openshell-gateway"];
/// Subject of the development CA, saying plainly what it is.
pub const DEV_CA_NAME: &str = "openshell-driver-bridge development CA";

/// Certificates start an hour in the past so a peer whose clock runs a
/// little behind does not see them as not yet valid.
const BACKDATE: Duration = Duration::hours(1);
const CA_LIFETIME: Duration = Duration::days(3650);
const LEAF_LIFETIME: Duration = Duration::days(365);

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

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PkiError + 'a {
    move |source| PkiError::Io { action, path: path.to_owned(), source }
}

/// A certificate authority held in memory: its self-signed certificate and
/// its signing key.
pub struct Ca {
    common_name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
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

/// What a leaf certificate should say. Build one with [`LeafSpec::server`]
/// or [`LeafSpec::client`] and adjust it with the `with_*` methods; the
/// fields are public so tests can make anything at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafSpec {
    /// Subject CN; left out of the certificate when empty.
    pub common_name: String,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// URI subject alternative names (for example SPIFFE IDs).
    pub uris: Vec<String>,
    /// IP address subject alternative names.
    pub ips: Vec<IpAddr>,
    /// Extended key usage serverAuth.
    pub server: bool,
    /// Extended key usage clientAuth.
    pub client: bool,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A server certificate: names that parse as IP addresses become IP
    /// SANs, the rest DNS SANs; CN is the first name; EKU serverAuth; valid
    /// for a year from an hour ago.
    pub fn server(names: &[&str]) -> LeafSpec {
        let (ips, dns): (Vec<&str>, Vec<&str>) = names.iter().partition(|n| n.parse::<IpAddr>().is_ok());
        LeafSpec {
            common_name: names.first().map(|n| n.to_string()).unwrap_or_default(),
            dns: dns.into_iter().map(str::to_owned).collect(),
            ips: ips.into_iter().filter_map(|ip| ip.parse().ok()).collect(),
            server: true,
            ..LeafSpec::empty()
        }
    }

    /// A client certificate: CN and DNS SAN `name`, EKU clientAuth, valid
    /// for a year from an hour ago.
    pub fn client(name: &str) -> LeafSpec {
        LeafSpec { common_name: name.to_owned(), dns: vec![name.to_owned()], client: true, ..LeafSpec::empty() }
    }

    /// No names, no usages, the default validity: the base for the others.
    fn empty() -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            common_name: String::new(),
            dns: Vec::new(),
            uris: Vec::new(),
            ips: Vec::new(),
            server: false,
            client: false,
            not_before: now - BACKDATE,
            not_after: now + LEAF_LIFETIME,
        }
    }

    /// Adds a URI SAN, such as `spiffe://corp/edge/gw`.
    pub fn with_uri(mut self, uri: &str) -> LeafSpec {
        self.uris.push(uri.to_owned());
        self
    }

    /// Adds a DNS SAN.
    pub fn with_dns(mut self, name: &str) -> LeafSpec {
        self.dns.push(name.to_owned());
        self
    }

    /// Adds an IP address SAN.
    pub fn with_ip(mut self, ip: IpAddr) -> LeafSpec {
        self.ips.push(ip);
        self
    }

    /// Replaces the CN (an empty string leaves it out).
    pub fn with_common_name(mut self, common_name: &str) -> LeafSpec {
        self.common_name = common_name.to_owned();
        self
    }

    /// Sets the validity period, for expired or not-yet-valid certificates.
    pub fn valid_between(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> LeafSpec {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Allows client authentication too (both EKUs when it was a server).
    pub fn with_client_auth(mut self) -> LeafSpec {
        self.client = true;
        self
    }

    /// Allows server authentication too (both EKUs when it was a client).
    pub fn with_server_auth(mut self) -> LeafSpec {
        self.server = true;
        self
    }

    /// A short name for errors: the CN, else the first SAN.
    fn subject(&self) -> String {
        if !self.common_name.is_empty() {
            return self.common_name.clone();
        }
        self.dns
            .first()
            .or(self.uris.first())
            .cloned()
            .or_else(|| self.ips.first().map(IpAddr::to_string))
            .unwrap_or_else(|| "(no name)".to_owned())
    }

    fn params(&self) -> Result<CertificateParams, PkiError> {
        if self.common_name.is_empty() && self.dns.is_empty() && self.uris.is_empty() && self.ips.is_empty() {
            return Err(PkiError::NoName);
        }
        if self.not_after <= self.not_before {
            return Err(PkiError::InvalidValidity { subject: self.subject() });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if !self.common_name.is_empty() {
            params.distinguished_name = distinguished_name(check_common_name(&self.common_name)?);
        }
        params.subject_alt_names = self.subject_alt_names()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = self.extended_key_usages();
        params.use_authority_key_identifier_extension = true;
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        Ok(params)
    }

    fn subject_alt_names(&self) -> Result<Vec<SanType>, PkiError> {
        let dns = self.dns.iter().map(|name| Ok(SanType::DnsName(ia5("DNS name", name)?)));
        let uris = self.uris.iter().map(|uri| Ok(SanType::URI(ia5("URI", uri)?)));
        let ips = self.ips.iter().map(|ip| Ok(SanType::IpAddress(*ip)));
        dns.chain(uris).chain(ips).collect()
    }

    fn extended_key_usages(&self) -> Vec<ExtendedKeyUsagePurpose> {
        let mut usages = Vec::new();
        if self.server {
            usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if self.client {
            usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        usages
    }
}

/// A SAN value must be non-empty printable ASCII without spaces; rcgen
/// would accept some of what this refuses and produce a certificate no
/// pattern can match.
fn ia5(kind: &'static str, value: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    let invalid = |reason| PkiError::InvalidName { kind, name: value.to_owned(), reason };
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("it contains whitespace or control characters"));
    }
    rcgen::string::Ia5String::try_from(value).map_err(|_| invalid("only ASCII is allowed"))
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

/// An issued certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The certificate (leaf only, no chain).
    pub cert_pem: String,
    /// The private key, PKCS#8.
    pub key_pem: String,
}

/// Never prints the key.
impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf").field("cert_pem", &self.cert_pem).field("key_pem", &"[elided]").finish()
    }
}

/// A self-signed leaf, trusted by nobody: for tests of hostile peers.
pub fn self_signed(spec: &LeafSpec) -> Result<Leaf, PkiError> {
    let params = spec.params()?;
    let subject = spec.subject();
    let key = generate_key(&subject)?;
    let cert = params.self_signed(&key).map_err(generate_error(&subject))?;
    Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Writes `pem` to `path` atomically: a temporary file in the same
/// directory, synced, then renamed over the target, so a reader (such as a
/// bridge reloading its certificates) sees the old file or the new one,
/// never a torn write. Mode 0600 when `private`, else 0644, regardless of
/// the umask.
pub fn write_pem(path: &Path, pem: &str, private: bool) -> io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} does not name a file", path.display()))
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(".{}.{:016x}.tmp", file_name.to_string_lossy(), rand::random::<u64>()));
    let mode = if private { 0o600 } else { 0o644 };
    let written = write_new_file(&tmp, pem.as_bytes(), mode).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir);
    Ok(())
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    // create_new refuses to follow a planted symlink; the mode applies from
    // the first byte, so a key is never briefly readable by others.
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Makes the rename durable. Failure only weakens crash safety, so it is
/// not an error.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// Where `init` puts each file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevPkiPaths {
    /// The output directory.
    pub dir: PathBuf,
    /// `ca.pem`: the trust anchor both sides pass as `--ca`.
    pub ca: PathBuf,
    /// `ca-key.pem`: keep it away from the bridges.
    pub ca_key: PathBuf,
    /// `server.pem`: the relay's certificate.
    pub server_cert: PathBuf,
    /// `server-key.pem`: the relay's key.
    pub server_key: PathBuf,
    /// `client.pem`: the shim's certificate.
    pub client_cert: PathBuf,
    /// `client-key.pem`: the shim's key.
    pub client_key: PathBuf,
}

impl DevPkiPaths {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> DevPkiPaths {
        DevPkiPaths {
            dir: dir.to_owned(),
            ca: dir.join(CA_CERT_FILE),
            ca_key: dir.join(CA_KEY_FILE),
            server_cert: dir.join(SERVER_CERT_FILE),
            server_key: dir.join(SERVER_KEY_FILE),
            client_cert: dir.join(CLIENT_CERT_FILE),
            client_key: dir.join(CLIENT_KEY_FILE),
        }
    }

    /// Each file with a label for people, in the order `certs init`
    /// prints them.
    pub fn listing(&self) -> [(&'static str, &Path); 6] {
        [
            ("CA certificate", &self.ca),
            ("CA private key", &self.ca_key),
            ("server certificate", &self.server_cert),
            ("server private key", &self.server_key),
            ("client certificate", &self.client_cert),
            ("client private key", &self.client_key),
        ]
    }

    /// All six files, CA first.
    pub fn files(&self) -> [&Path; 6] {
        [&self.ca, &self.ca_key, &self.server_cert, &self.server_key, &self.client_cert, &self.client_key]
    }
}

/// Creates a development PKI in `out`: a CA, a server certificate for
/// `server_names` and a client certificate for `client_names` (defaults
/// [`DEFAULT_SERVER_NAMES`] and [`DEFAULT_CLIENT_NAMES`] when empty; the
/// first client name is the CN, all are DNS SANs).
///
/// `out` is created with mode 0700 if missing. Existing files are replaced
/// only when `force`. Everything is generated before anything is written,
/// so a failure leaves no half-made set.
pub fn init(
    out: &Path,
    server_names: &[String],
    client_names: &[String],
    force: bool,
) -> Result<DevPkiPaths, PkiError> {
    let paths = DevPkiPaths::in_dir(out);
    ensure_private_dir(out)?;
    if !force {
        refuse_overwrite(&paths)?;
    }
    // A distinct name per run: two development CAs of the same name make
    // "signature does not verify" errors instead of a plain "unknown CA".
    let ca = Ca::new(&format!("{DEV_CA_NAME} {:08x}", rand::random::<u32>()))?;
    let server = ca.issue(&server_spec(server_names))?;
    let client = ca.issue(&client_spec(client_names))?;
    // Each key is written before its certificate: a bridge that reloads
    // when the certificate changes then finds the matching key already
    // there.
    let writes: [(&Path, &str, bool); 6] = [
        (&paths.ca_key, &ca.key_pem(), true),
        (&paths.ca, &ca.cert_pem(), false),
        (&paths.server_key, &server.key_pem, true),
        (&paths.server_cert, &server.cert_pem, false),
        (&paths.client_key, &client.key_pem, true),
        (&paths.client_cert, &client.cert_pem, false),
    ];
    for (path, pem, private) in writes {
        write_pem(path, pem, private).map_err(io_error("write", path))?;
    }
    Ok(paths)
}

fn server_spec(names: &[String]) -> LeafSpec {
    let names: Vec<&str> =
        if names.is_empty() { DEFAULT_SERVER_NAMES.to_vec() } else { names.iter().map(String::as_str).collect() };
    LeafSpec::server(&names)
}

fn client_spec(names: &[String]) -> LeafSpec {
    let names: Vec<&str> =
        if names.is_empty() { DEFAULT_CLIENT_NAMES.to_vec() } else { names.iter().map(String::as_str).collect() };
    let (first, rest) = names.split_first().unwrap_or((&DEFAULT_CLIENT_NAMES[0], &[]));
    rest.iter().fold(LeafSpec::client(first), |spec, name| spec.with_dns(name))
}

fn ensure_private_dir(out: &Path) -> Result<(), PkiError> {
    match fs::metadata(out) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(PkiError::NotADirectory { path: out.to_owned() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(0o700).create(out).map_err(io_error("create directory", out))?;
            // The umask may have narrowed the mode further; make it exact.
            fs::set_permissions(out, fs::Permissions::from_mode(0o700)).map_err(io_error("set permissions on", out))
        }
        Err(e) => Err(io_error("inspect", out)(e)),
    }
}

fn refuse_overwrite(paths: &DevPkiPaths) -> Result<(), PkiError> {
    let names: Vec<String> = paths
        .files()
        .iter()
        .filter(|path| fs::symlink_metadata(path).is_ok())
        .filter_map(|path| path.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        Ok(())
    } else {
        Err(PkiError::Exists { dir: paths.dir.clone(), names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::material::{self, Validity};
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, Connection, RootCertStore, ServerConfig};
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn ip_sans(der: &CertificateDer<'_>) -> Vec<Vec<u8>> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::IPAddress(bytes) => Some(bytes.to_vec()),
                _ => None,
            })
            .collect()
    }

    fn eku(der: &CertificateDer<'_>) -> (bool, bool) {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let eku = cert.extended_key_usage().unwrap().map(|e| e.value.clone());
        eku.map(|e| (e.server_auth, e.client_auth)).unwrap_or((false, false))
    }

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

    #[test]
    fn server_spec_splits_dns_and_ip_names() {
        let spec = LeafSpec::server(&["localhost", "127.0.0.1", "::1", "relay.example"]);
        assert_eq!(spec.common_name, "localhost");
        assert_eq!(spec.dns, ["localhost", "relay.example"]);
        assert_eq!(spec.ips, ["127.0.0.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]);
        assert!(spec.server && !spec.client);
        let ca = Ca::new("ca").unwrap();
        let leaf = ca.issue(&spec).unwrap();
        let der = der(&leaf.cert_pem);
        assert_eq!(eku(&der), (true, false));
        let info = material::cert_info(&der).unwrap();
        assert_eq!(info.identity.dns, ["localhost", "relay.example"]);
        let mut loopback6 = vec![0; 15];
        loopback6.push(1);
        assert_eq!(ip_sans(&der), [vec![127, 0, 0, 1], loopback6]);
        assert!(!format!("{leaf:?}").contains("PRIVATE"));
    }

    #[test]
    fn client_spec_and_builders() {
        let ca = Ca::new("ca").unwrap();
        let spec = LeafSpec::client("gw").with_uri("spiffe://corp/edge/gw").with_server_auth();
        let der = der(&ca.issue(&spec).unwrap().cert_pem);
        assert_eq!(eku(&der), (true, true));
        let identity = material::cert_info(&der).unwrap().identity;
        assert_eq!(identity.cn.as_deref(), Some("gw"));
        assert_eq!(identity.dns, ["gw"]);
        assert_eq!(identity.uris, ["spiffe://corp/edge/gw"]);

        let both = LeafSpec::server(&["relay"]).with_client_auth();
        assert_eq!(eku(&der_of(&ca, &both)), (true, true));
    }

    fn der_of(ca: &Ca, spec: &LeafSpec) -> CertificateDer<'static> {
        der(&ca.issue(spec).unwrap().cert_pem)
    }

    #[test]
    fn specs_are_validated() {
        let ca = Ca::new("ca").unwrap();
        let nameless = LeafSpec::server(&[]);
        assert!(matches!(ca.issue(&nameless), Err(PkiError::NoName)));
        let bad_dns = LeafSpec::client("has space");
        let err = ca.issue(&bad_dns).unwrap_err().to_string();
        assert!(err.contains("invalid DNS name \"has space\""), "{err}");
        let bad_uri = LeafSpec::client("gw").with_uri("spiffe://ü");
        assert!(ca.issue(&bad_uri).unwrap_err().to_string().contains("only ASCII"));
        let now = OffsetDateTime::now_utc();
        let backwards = LeafSpec::client("gw").valid_between(now, now - Duration::days(1));
        assert!(matches!(ca.issue(&backwards), Err(PkiError::InvalidValidity { .. })));
        let uri_only = LeafSpec {
            common_name: String::new(),
            dns: Vec::new(),
            ..LeafSpec::client("x").with_uri("spiffe://corp/x")
        };
        let identity = material::cert_info(&der_of(&ca, &uri_only)).unwrap().identity;
        assert_eq!(identity.to_string(), "uri:spiffe://corp/x");
        assert_eq!(identity.cn, None);
    }

    #[test]
    fn write_pem_sets_modes_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let cert = dir.path().join("c.pem");
        write_pem(&key, "secret", true).unwrap();
        write_pem(&cert, "public", false).unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        write_pem(&key, "secret 2", true).unwrap();
        assert_eq!(fs::read_to_string(&key).unwrap(), "secret 2");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(write_pem(&dir.path().join("missing/k.pem"), "x", true).is_err());
        assert!(write_pem(Path::new("/"), "x", true).is_err());
    }

    #[test]
    fn init_writes_a_loadable_private_pki() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("certs/dev");
        let paths = init(&out, &[], &[], false).unwrap();
        assert_eq!(paths, DevPkiPaths::in_dir(&out));
        assert_eq!(mode(&out), 0o700);
        for key in [&paths.ca_key, &paths.server_key, &paths.client_key] {
            assert_eq!(mode(key), 0o600, "{}", key.display());
        }
        for cert in [&paths.ca, &paths.server_cert, &paths.client_cert] {
            assert_eq!(mode(cert), 0o644, "{}", cert.display());
        }
        assert_eq!(material::load_roots("--ca", &paths.ca).unwrap().len(), 1);
        material::load_certified_key("--cert", &paths.server_cert, "--key", &paths.server_key, false).unwrap();
        material::load_certified_key("--cert", &paths.client_cert, "--key", &paths.client_key, false).unwrap();
        material::load_key("--ca-key", &paths.ca_key, false).unwrap();

        let client = material::load_cert_info("--cert", &paths.client_cert).unwrap();
        assert_eq!(client.identity.to_string(), "dns:openshell-gateway");
        assert_eq!(client.identity.cn.as_deref(), Some("openshell-gateway"));
        let server = material::load_cert_info("--cert", &paths.server_cert).unwrap();
        assert_eq!(server.identity.dns, ["localhost"]);
        assert!(matches!(
            material::check_validity("--cert", &paths.server_cert, &server, OffsetDateTime::now_utc()),
            Validity::Ok { days_left: 364 | 365 }
        ));
    }

    #[test]
    fn init_uses_given_names() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let servers = vec!["relay.example".to_owned(), "10.1.2.3".to_owned()];
        let clients = vec!["gw-a".to_owned(), "gw-a.corp".to_owned()];
        let paths = init(tmp.path(), &servers, &clients, false).unwrap();
        let client = material::load_cert_info("--cert", &paths.client_cert).unwrap();
        assert_eq!(client.identity.dns, ["gw-a", "gw-a.corp"]);
        assert_eq!(client.identity.cn.as_deref(), Some("gw-a"));
        let server = material::load_cert_info("--cert", &paths.server_cert).unwrap();
        assert_eq!(server.identity.dns, ["relay.example"]);
        let server_der = der(&fs::read_to_string(&paths.server_cert).unwrap());
        assert_eq!(ip_sans(&server_der), [[10, 1, 2, 3].to_vec()]);
        // An existing directory keeps its mode; it is not ours to change.
        assert_eq!(mode(tmp.path()), 0o755);
    }

    #[test]
    fn init_refuses_to_overwrite_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let first = init(tmp.path(), &[], &[], false).unwrap();
        let before = fs::read_to_string(&first.ca).unwrap();
        let err = init(tmp.path(), &[], &[], false).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite existing files"), "{err}");
        assert!(err.contains("ca.pem, ca-key.pem, server.pem"), "{err}");
        assert!(err.contains("--force"), "{err}");
        assert_eq!(fs::read_to_string(&first.ca).unwrap(), before);
        init(tmp.path(), &[], &[], true).unwrap();
        assert_ne!(fs::read_to_string(&first.ca).unwrap(), before);
    }

    #[test]
    fn init_refuses_a_file_as_output_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(matches!(init(&file, &[], &[], false), Err(PkiError::NotADirectory { .. })));
    }

    #[test]
    fn past_validity_shows_as_expired() {
        let ca = Ca::new("ca").unwrap();
        let now = OffsetDateTime::now_utc();
        let spec = LeafSpec::client("old").valid_between(now - Duration::days(30), now - Duration::days(1));
        let info = material::cert_info(&der_of(&ca, &spec)).unwrap();
        let validity = material::check_validity("--cert", Path::new("old.pem"), &info, now);
        assert_eq!(validity, Validity::Expired);
    }

    /// Drives a TLS 1.3 handshake between two in-memory endpoints.
    fn handshake(client: ClientConfig, server: ServerConfig, name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut client = Connection::from(rustls::ClientConnection::new(Arc::new(client), name)?);
        let mut server = Connection::from(rustls::ServerConnection::new(Arc::new(server))?);
        for _ in 0..10 {
            transfer(&mut client, &mut server)?;
            transfer(&mut server, &mut client)?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    fn transfer(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut slice = buf.as_slice();
        while !slice.is_empty() {
            to.read_tls(&mut slice).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der()).unwrap();
        Arc::new(roots)
    }

    fn client_config(ca: &Ca, leaf: &Leaf) -> ClientConfig {
        use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(ca))
            .with_client_auth_cert(
                vec![der(&leaf.cert_pem)],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap()
    }

    fn server_config(ca: &Ca, leaf: &Leaf) -> ServerConfig {
        use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider.clone()).build().unwrap();
        ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![der(&leaf.cert_pem)],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap()
    }

    #[test]
    fn issued_certificates_complete_a_mutual_tls_handshake() {
        let ca = Ca::new("ca").unwrap();
        let server = ca.issue(&LeafSpec::server(DEFAULT_SERVER_NAMES)).unwrap();
        let client = ca.issue(&LeafSpec::client("openshell-gateway")).unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            handshake(client_config(&ca, &client), server_config(&ca, &server), name)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let wrong_name = handshake(client_config(&ca, &client), server_config(&ca, &server), "other");
        assert!(wrong_name.is_err());
    }

    #[test]
    fn hostile_certificates_fail_the_handshake() {
        let ca = Ca::new("ca").unwrap();
        let server = ca.issue(&LeafSpec::server(&["localhost"])).unwrap();
        let client = ca.issue(&LeafSpec::client("gw")).unwrap();

        let stranger = self_signed(&LeafSpec::client("gw")).unwrap();
        assert!(handshake(client_config(&ca, &stranger), server_config(&ca, &server), "localhost").is_err());

        let other_ca = Ca::new("other").unwrap();
        let foreign = other_ca.issue(&LeafSpec::client("gw")).unwrap();
        assert!(handshake(client_config(&ca, &foreign), server_config(&ca, &server), "localhost").is_err());

        // A client certificate cannot serve, a server certificate cannot
        // authenticate a client: extended key usage is enforced.
        let client_as_server = ca.issue(&LeafSpec::client("localhost")).unwrap();
        assert!(handshake(client_config(&ca, &client), server_config(&ca, &client_as_server), "localhost").is_err());
        let server_as_client = ca.issue(&LeafSpec::server(&["gw"])).unwrap();
        assert!(handshake(client_config(&ca, &server_as_client), server_config(&ca, &server), "localhost").is_err());

        let now = OffsetDateTime::now_utc();
        let expired =
            ca.issue(&LeafSpec::client("gw").valid_between(now - Duration::days(30), now - Duration::days(1))).unwrap();
        assert!(handshake(client_config(&ca, &expired), server_config(&ca, &server), "localhost").is_err());
    }
}
