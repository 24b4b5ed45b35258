//! The error of building TLS material into a configuration (certificates,
//! keys, CRLs), already worded for an operator.

use crate::tls::material;

/// An error building a TLS configuration, already worded for an operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsConfigError(pub String);

impl From<material::MaterialError> for TlsConfigError {
    fn from(e: material::MaterialError) -> Self {
        TlsConfigError(e.to_string())
    }
}
