//! Leaf certificates: what one should say (`LeafSpec`, with builders for a
//! server, a client, and anything a hostile peer might present), the issued
//! certificate and key (`Leaf`), and a self-signed leaf trusted by nobody.

use std::fmt;
use std::net::IpAddr;

use rcgen::{CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use time::{Duration, OffsetDateTime};

use super::{check_common_name, distinguished_name, generate_error, generate_key, PkiError, BACKDATE};

const LEAF_LIFETIME: Duration = Duration::days(365);

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
    pub(super) fn subject(&self) -> String {
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

    pub(super) fn params(&self) -> Result<CertificateParams, PkiError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::fixtures::*;
    use crate::pki::{Ca, DEFAULT_SERVER_NAMES};
    use crate::tls::material::{self, Validity};
    use std::path::Path;
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, Connection, RootCertStore, ServerConfig};

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
