//! Reaching an upstream over mutually authenticated TLS.
//!
//! The client configuration is read from a swappable cell at every connect,
//! so rotated certificates apply to the next connection while the current
//! one carries on.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector as RustlsConnector;

use super::{connect_tcp, BoxIo, ConnectError};

pub struct TlsConnector {
    /// `host:port` as the operator wrote it; resolved at every attempt so a
    /// DNS change is followed.
    pub address: String,
    /// The name the server's certificate must carry.
    pub server_name: ServerName<'static>,
    pub config: Arc<ArcSwap<rustls::ClientConfig>>,
}

impl TlsConnector {
    pub async fn connect(&self) -> Result<BoxIo, ConnectError> {
        let addrs: Vec<_> = tokio::net::lookup_host(&self.address)
            .await
            .map_err(|e| ConnectError(format!("cannot resolve {}: {e}", self.address)))?
            .collect();
        let mut last = ConnectError(format!("{} resolved to no address", self.address));
        for addr in addrs {
            match connect_tcp(addr).await {
                Ok(tcp) => {
                    let connector = RustlsConnector::from(self.config.load_full());
                    return match connector.connect(self.server_name.clone(), tcp).await {
                        Ok(stream) => Ok(Box::new(stream)),
                        Err(e) => Err(ConnectError(format!("TLS handshake failed: {}", describe_tls_io_error(&e)))),
                    };
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// rustls reports handshake failures as an `io::Error` wrapping a
/// `rustls::Error`; show the rustls text, which names the certificate
/// problem or the alert the peer sent.
pub fn describe_tls_io_error(error: &std::io::Error) -> String {
    if let Some(inner) = error.get_ref() {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return crate::tls::config::describe_tls_error(tls);
        }
        return inner.to_string();
    }
    super::describe_io_error(error)
}
