//! Certificate revocation lists signed by a development CA: for drills and
//! tests of `--crl` (a production CA publishes its own).

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use super::{generate_error, Ca, PkiError};

impl Ca {
    /// A CRL of this CA, number `number`, listing `revoked` (certificates
    /// it issued) as revoked since now, due for an update at `next_update`.
    /// PEM.
    pub fn crl(
        &self,
        revoked: &[&CertificateDer<'_>],
        number: u64,
        next_update: OffsetDateTime,
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .map(|der| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial_of(der)),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(generate_error(&self.common_name))?;
        crl.pem().map_err(generate_error(&self.common_name))
    }
}

/// The serial number of a certificate, as its DER encodes it (an
/// unreadable certificate has serial 0, which no issued one has).
pub fn serial_of(der: &CertificateDer<'_>) -> Vec<u8> {
    match x509_parser::certificate::X509Certificate::from_der(der.as_ref()) {
        Ok((_, cert)) => cert.raw_serial().to_vec(),
        Err(_) => vec![0],
    }
}
