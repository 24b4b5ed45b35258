//! TLS client and server configurations for the two hops.
//!
//! TLS 1.3 only unless the operator opts into 1.2; certificates on both
//! sides, always. Configurations are built whole from files and swapped in
//! as a unit, so a reload is atomic: a connection sees either the old
//! material or the new, never a mix.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};

use crate::tls::crl;
use crate::tls::identity::{IdentityPattern, PeerIdentity};
use crate::tls::material;

/// Where one side's TLS material lives, and how strict to be about it.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub allow_loose_key_permissions: bool,
    /// Also accept TLS 1.2 (modern AEAD suites only).
    pub tls12: bool,
    /// How often the files are checked for a change (SIGHUP reloads at once).
    pub reload_interval: std::time::Duration,
    /// Certificate revocation lists (`--crl`) the peer's certificate is checked against.
    pub crls: Vec<PathBuf>,
}

impl TlsFiles {
    /// The files with the command line's defaults: key permissions checked,
    /// TLS 1.3 only, checked for change every 5 s.
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            allow_loose_key_permissions: false,
            tls12: false,
            reload_interval: std::time::Duration::from_secs(5),
            crls: Vec::new(),
        }
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.ca.clone(), self.cert.clone(), self.key.clone()];
        paths.extend(self.crls.iter().cloned());
        paths
    }
}

pub use crate::tls::error::TlsConfigError;

/// The driver contract's protocol: gRPC over HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The callback link's protocol (sandboxes calling back to the gateway,
/// carried over a connection the shim opens): its own id, so neither side
/// can take a callback link for the driver contract or the other way round.
pub const ALPN_CALLBACK: &[u8] = b"openshell-callback/1";

/// `config` offering only `protocol` (the shim's callback link uses its
/// driver link's configuration with the callback protocol).
pub fn with_alpn(config: &rustls::ClientConfig, protocol: &[u8]) -> rustls::ClientConfig {
    let mut config = config.clone();
    config.alpn_protocols = vec![protocol.to_vec()];
    config
}

/// The crypto provider: ring, whose default suites are all AEAD with
/// forward secrecy (TLS 1.3 AES-GCM/ChaCha20, TLS 1.2 ECDHE + AES-GCM/ChaCha20).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS13_AND_12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(tls12: bool) -> &'static [&'static SupportedProtocolVersion] {
    if tls12 {
        TLS13_AND_12
    } else {
        TLS13_ONLY
    }
}

/// The shim's side: present `cert`, trust servers that chain to `ca`, and
/// optionally require the server to carry one of `expect_server`.
pub fn client_config(
    files: &TlsFiles,
    expect_server: &[IdentityPattern],
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let identity = load_identity(files)?;
    let provider = provider();
    let webpki = server_verifier(files)?;
    let verifier: Arc<dyn ServerCertVerifier> = if expect_server.is_empty() {
        webpki
    } else {
        Arc::new(ExpectServer { inner: webpki, expected: expect_server.to_vec() })
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(files.tls12))
        .map_err(|e| TlsConfigError(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(FixedCert(identity)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// TLS to an `https://` proxy (not to the upstream: that is `client_config`,
/// end to end through the tunnel): the proxy's certificate must chain to
/// `--proxy-ca` when given, else to the system's roots (the platform's
/// store, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set). No client
/// certificate; TLS 1.2 is accepted, as corporate proxies often stop there.
pub fn proxy_client_config(proxy_ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, TlsConfigError> {
    let roots = match proxy_ca {
        Some(path) => material::load_roots("--proxy-ca", path)?,
        None => system_roots()?,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(true))
        .map_err(|e| TlsConfigError(format!("TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The system's trust anchors, for an `https://` proxy given no `--proxy-ca`.
fn system_roots() -> Result<rustls::RootCertStore, TlsConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = match found.errors.first() {
            Some(e) => format!(" ({e})"),
            None => String::new(),
        };
        return Err(TlsConfigError(format!(
            "an https:// proxy is verified against the system's CA certificates, and none could be loaded{why}: give the proxy's CA with --proxy-ca FILE (or install the system's CA certificates, or point SSL_CERT_FILE at a bundle)"
        )));
    }
    Ok(roots)
}

/// The relay's side: present `cert`, require a client certificate that
/// chains to `ca`. Which identities may call what is policy's business,
/// decided after the handshake.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsConfigError> {
    let identity = load_identity(files)?;
    let provider = provider();
    let verifier = client_verifier(files)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(files.tls12))
        .map_err(|e| TlsConfigError(format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(FixedCert(identity)));
    // Both protocols are offered; the listener dispatches on the one
    // negotiated (a client that offers none speaks the driver contract).
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_CALLBACK.to_vec()];
    Ok(config)
}

/// How the relay verifies client certificates: chained to `--ca` (through
/// intermediates the client presents), and not revoked by a `--crl` of
/// their issuer. Also what live connections are checked against after a
/// reload.
pub fn client_verifier(files: &TlsFiles) -> Result<Arc<dyn ClientCertVerifier>, TlsConfigError> {
    let roots = Arc::new(material::load_roots("--ca", &files.ca)?);
    let crls = crl::load_all(&files.crls)?;
    let build = |crls: Vec<CertificateRevocationListDer<'static>>| {
        let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
        if !crls.is_empty() {
            builder = builder.with_crls(crls).only_check_end_entity_revocation().allow_unknown_revocation_status();
        }
        builder.build()
    };
    build(crls.iter().map(|c| c.der.clone()).collect())
        .map_err(|e| verifier_error(files, &crls, e, |one| build(one).err()))
}

/// How the shim verifies the relay's certificate: chained to `--ca`, valid
/// for the name, and not revoked by a `--crl` of its issuer.
pub fn server_verifier(files: &TlsFiles) -> Result<Arc<WebPkiServerVerifier>, TlsConfigError> {
    let roots = Arc::new(material::load_roots("--ca", &files.ca)?);
    let crls = crl::load_all(&files.crls)?;
    let build = |crls: Vec<CertificateRevocationListDer<'static>>| {
        let mut builder = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider());
        if !crls.is_empty() {
            builder = builder.with_crls(crls).only_check_end_entity_revocation().allow_unknown_revocation_status();
        }
        builder.build()
    };
    build(crls.iter().map(|c| c.der.clone()).collect())
        .map_err(|e| verifier_error(files, &crls, e, |one| build(one).err()))
}

/// Names the file of a CRL webpki refuses (tried one by one), else `--ca`.
fn verifier_error(
    files: &TlsFiles,
    crls: &[crl::Crl],
    error: rustls::server::VerifierBuilderError,
    alone: impl Fn(Vec<CertificateRevocationListDer<'static>>) -> Option<rustls::server::VerifierBuilderError>,
) -> TlsConfigError {
    if let rustls::server::VerifierBuilderError::InvalidCrl(_) = error {
        for one in crls {
            if let Some(e) = alone(vec![one.der.clone()]) {
                return TlsConfigError(format!(
                    "{} {}: not a usable certificate revocation list ({e})",
                    crl::FLAG,
                    one.file.display()
                ));
            }
        }
    }
    TlsConfigError(format!("--ca {}: {error}", files.ca.display()))
}

/// Loads this side's certificate and key: they must match, and the
/// certificate must be valid now (a warning when it expires within a week).
fn load_identity(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsConfigError> {
    let identity =
        material::load_certified_key("--cert", &files.cert, "--key", &files.key, files.allow_loose_key_permissions)?;
    let leaf = identity
        .cert
        .first()
        .ok_or_else(|| TlsConfigError(format!("--cert {}: no certificate", files.cert.display())))?;
    let info = material::cert_info(leaf).map_err(|e| e.at("--cert", &files.cert))?;
    material::require_valid("--cert", &files.cert, &info, time::OffsetDateTime::now_utc())?;
    material::warn_on_expiry("--cert", &files.cert, &info);
    Ok(identity)
}

/// Where the expiry of each certificate file in use is told: the file and
/// its `notAfter` (Unix time).
pub type ExpirySink = dyn Fn(&str, i64) + Send + Sync;

/// Tells `expiry` when this side's certificate and CA expire, and returns
/// the certificate's details for the start-up summary.
pub fn record_expiry(files: &TlsFiles, expiry: &ExpirySink) -> Option<material::CertInfo> {
    if let Ok(ca) = material::load_cert_info("--ca", &files.ca) {
        expiry(&files.ca.display().to_string(), ca.not_after.unix_timestamp());
    }
    let cert = material::load_cert_info("--cert", &files.cert).ok()?;
    expiry(&files.cert.display().to_string(), cert.not_after.unix_timestamp());
    Some(cert)
}

/// `identity (expires YYYY-MM-DD)` for logs.
pub fn describe_certificate(info: Option<&material::CertInfo>) -> String {
    match info {
        Some(info) => {
            let date = info.not_after.date();
            format!("{} (expires {date})", info.identity)
        }
        None => "(unreadable)".into(),
    }
}

/// Presents one certificate; reload swaps the whole config instead.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Verifies the server as usual, then also requires one of the expected
/// identities (`--expect-server`), e.g. a pinned SPIFFE ID.
#[derive(Debug)]
struct ExpectServer {
    inner: Arc<WebPkiServerVerifier>,
    expected: Vec<IdentityPattern>,
}

impl ServerCertVerifier for ExpectServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let identity = PeerIdentity::from_der(end_entity.as_ref())
            .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
        if self.expected.iter().any(|p| p.matches(&identity)) {
            Ok(verified)
        } else {
            let wanted: Vec<String> = self.expected.iter().map(|p| p.to_string()).collect();
            Err(rustls::Error::General(format!(
                "server identity {identity} is not the expected {}",
                wanted.join(" or ")
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
