//! Certificate chains as the doctor shows them: each certificate by its
//! subject, leaf first, down to the CA of `--ca` it ends at; and, when a
//! chain stops short of `--ca`, the missing intermediate named by the
//! issuer the last certificate points to.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

/// Subject and issuer DNs of a certificate.
fn names(der: &CertificateDer<'_>) -> Option<(String, String)> {
    X509Certificate::from_der(der.as_ref()).ok().map(|(_, c)| (c.subject().to_string(), c.issuer().to_string()))
}

/// `CN=leaf <- CN=intermediate <- CN=root (in --ca)`: the chain as sent,
/// then the CA of `ca` it ends at, if any.
pub fn describe(chain: &[CertificateDer<'_>], ca: &[CertificateDer<'_>]) -> String {
    let mut parts: Vec<String> = chain
        .iter()
        .map(|der| names(der).map(|(subject, _)| subject).unwrap_or_else(|| "(unreadable)".into()))
        .collect();
    let last_issuer = chain.last().and_then(names).map(|(_, issuer)| issuer);
    if let Some(issuer) = last_issuer {
        let self_signed = chain.last().and_then(names).is_some_and(|(s, i)| s == i);
        if !self_signed {
            if ca.iter().filter_map(names).any(|(subject, _)| subject == issuer) {
                parts.push(format!("{issuer} (in --ca)"));
            } else {
                parts.push(format!("{issuer} (missing)"));
            }
        }
    }
    parts.join(" <- ")
}

/// The issuer a chain needs next and neither the chain nor `ca` holds: a
/// missing intermediate (or a CA that is not in `--ca`). `None` when the
/// chain reaches a certificate of `ca` or ends self-signed.
pub fn missing_issuer(chain: &[CertificateDer<'_>], ca: &[CertificateDer<'_>]) -> Option<String> {
    let (subject, issuer) = chain.last().and_then(names)?;
    if subject == issuer {
        return None;
    }
    let known = ca.iter().chain(chain.iter()).filter_map(names).any(|(s, _)| s == issuer);
    (!known).then_some(issuer)
}

/// What a missing issuer means, for a hint: one certificate in the chain
/// means an intermediate CA is most likely not sent.
pub fn missing_hint(whose: &str, issuer: &str, sent: usize) -> String {
    if sent <= 1 {
        format!(
            "{whose} certificate was issued by {issuer}, which is neither in --ca nor sent with it: a missing intermediate CA; put the intermediate after the leaf in that side's --cert (--ca needs only the root)"
        )
    } else {
        format!(
            "{whose} chain ends at {issuer}, which is not in --ca: an intermediate is missing from that --cert, or --ca lacks the root that issued it"
        )
    }
}

/// The chain a TLS server presents at `authority`, read with a verifier
/// that records it and then refuses (no data is ever sent).
pub async fn presented_by(
    authority: &str,
    name: ServerName<'static>,
    timeout: Duration,
) -> Option<Vec<CertificateDer<'static>>> {
    let recorder = Arc::new(Recorder::default());
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::config::provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![crate::tls::config::ALPN_H2.to_vec()];
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(authority).await.ok()?;
        let _ = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await;
        Some(())
    };
    tokio::time::timeout(timeout, attempt).await.ok()??;
    let chain = recorder.chain.lock().ok()?.clone();
    (!chain.is_empty()).then_some(chain)
}

#[derive(Debug, Default)]
struct Recorder {
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            *chain = std::iter::once(end_entity).chain(intermediates).map(|c| c.clone().into_owned()).collect();
        }
        // Only recorded, never trusted.
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::tls::config::provider().signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, LeafSpec};

    fn der(pem: &str) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_leaf_of_an_intermediate_sent_alone_misses_the_intermediate() {
        let root = Ca::root("test root").unwrap();
        let intermediate = root.intermediate("test intermediate").unwrap();
        let leaf = der(&intermediate.issue(&LeafSpec::client("gw")).unwrap().cert_pem);
        let ca = [root.cert_der()];
        assert_eq!(missing_issuer(std::slice::from_ref(&leaf), &ca).as_deref(), Some("CN=test intermediate"));
        let whole = [leaf.clone(), intermediate.cert_der()];
        assert_eq!(missing_issuer(&whole, &ca), None);
        assert_eq!(describe(&whole, &ca), "CN=gw <- CN=test intermediate <- CN=test root (in --ca)");
        assert_eq!(describe(std::slice::from_ref(&leaf), &ca), "CN=gw <- CN=test intermediate (missing)");
    }
}
