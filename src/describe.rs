//! How the bridge words the errors of the layers below it (sockets,
//! TLS) for an operator: what happened, in words, and where it helps what
//! to do. One place, so every message names a problem the same way.

/// `connection refused` rather than `Connection refused (os error 111)`.
pub fn describe_io_error(error: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused => "connection refused".into(),
        NotFound => "no such socket".into(),
        PermissionDenied => "permission denied".into(),
        ConnectionReset => "connection reset".into(),
        TimedOut => "timed out".into(),
        _ => {
            let text = error.to_string();
            // rustls's wording carries a link to its manual; say what it means here.
            if text.contains("close_notify") {
                return "the peer closed the connection without a TLS close_notify (the peer, or a proxy or firewall on the path, dropped it)".into();
            }
            match text.find(" (os error") {
                Some(cut) => text[..cut].to_lowercase(),
                None => text,
            }
        }
    }
}

/// An I/O error as h2 reports it: its kind, and the error's text if any.
pub fn describe_io_kind(kind: std::io::ErrorKind, message: Option<String>) -> String {
    match message {
        Some(text) => describe_io_error(&std::io::Error::new(kind, text)),
        None => describe_io_error(&std::io::Error::from(kind)),
    }
}

/// rustls reports handshake failures as an `io::Error` wrapping a
/// `rustls::Error`; show the rustls text, which names the certificate
/// problem or the alert the peer sent.
pub fn describe_tls_io_error(error: &std::io::Error) -> String {
    if let Some(inner) = error.get_ref() {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return describe_tls_error(tls);
        }
        return inner.to_string();
    }
    describe_io_error(error)
}

/// Words a rustls error for an operator: which certificate problem, or
/// which alert the peer sent (and what that alert usually means here).
pub fn describe_tls_error(error: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, Error as E};
    match error {
        E::AlertReceived(A::CertificateRequired) => {
            "peer requires a client certificate (alert certificate_required)".into()
        }
        E::AlertReceived(A::UnknownCA) => {
            "peer does not trust our certificate: it was not issued by the peer's CA (alert unknown_ca)".into()
        }
        E::AlertReceived(A::CertificateRevoked) => {
            "peer rejected our certificate as revoked: a CRL the peer loaded lists it (alert certificate_revoked)".into()
        }
        E::AlertReceived(A::CertificateExpired) => {
            "peer rejected our certificate as expired (alert certificate_expired)".into()
        }
        E::AlertReceived(A::BadCertificate) => "peer rejected our certificate (alert bad_certificate)".into(),
        E::AlertReceived(A::DecryptError) => {
            "peer rejected our certificate: its signature does not verify against the peer's CA, which is another CA than ours, perhaps of the same name (alert decrypt_error)".into()
        }
        E::AlertReceived(A::AccessDenied) => "peer denied access to our certificate's identity (alert access_denied)".into(),
        E::AlertReceived(A::ProtocolVersion) => {
            "peer does not speak our TLS version (alert protocol_version); TLS 1.2 needs --tls12 on both sides".into()
        }
        E::AlertReceived(A::HandshakeFailure) => {
            "peer refused the handshake (alert handshake_failure): no common TLS version or cipher suite".into()
        }
        E::InvalidCertificate(cert_error) => format!("peer certificate rejected: {}", describe_cert_error(cert_error)),
        other => other.to_string(),
    }
}

fn describe_cert_error(error: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match error {
        C::UnknownIssuer => {
            "not issued by a trusted CA (check --ca; a certificate issued by an intermediate CA must be sent with that intermediate after it in --cert)".into()
        }
        C::Revoked => "revoked (listed in a --crl of its issuer)".into(),
        C::BadSignature => {
            "not issued by a trusted CA: its signature does not verify against --ca (another CA of the same name?)"
                .into()
        }
        C::Expired | C::ExpiredContext { .. } => format!("expired ({error})"),
        C::NotValidYet | C::NotValidYetContext { .. } => format!("not valid yet ({error})"),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            format!("{error} (set --server-name to a name the certificate carries)")
        }
        other => other.to_string(),
    }
}

/// A short, bounded label for why a TLS handshake failed.
pub fn handshake_reason(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    match tls {
        E::NoCertificatesPresented => "no_certificate",
        E::InvalidCertificate(C::UnknownIssuer) => "unknown_ca",
        E::InvalidCertificate(C::Revoked) => "revoked",
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "expired",
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => "not_yet_valid",
        E::InvalidCertificate(_) => "bad_certificate",
        E::PeerIncompatible(_) | E::AlertReceived(rustls::AlertDescription::ProtocolVersion) => "incompatible",
        E::InvalidMessage(_) => "not_tls",
        _ => "other",
    }
}
