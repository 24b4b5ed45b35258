//! Reaching an upstream over mutually authenticated TLS.
//!
//! The client configuration is read from a swappable cell at every connect,
//! so rotated certificates apply to the next connection while the current
//! one carries on.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector as RustlsConnector;

use super::proxy::ProxyUrl;
use super::severable::LiveUpstreams;
use super::tcp::connect_tcp;
use super::{BoxIo, ConnectError};
use crate::describe::describe_tls_io_error;

pub struct TlsConnector {
    /// `host:port` as the operator wrote it; resolved at every attempt so a
    /// DNS change is followed.
    pub address: String,
    /// The name the server's certificate must carry.
    pub server_name: ServerName<'static>,
    pub config: Arc<ArcSwap<rustls::ClientConfig>>,
    /// Where open connections are registered, so that a reload revoking
    /// the server's certificate can sever them (the shim's upstreams).
    pub live: Option<LiveUpstreams>,
    /// The HTTP CONNECT proxy to tunnel through, if any.
    pub proxy: Option<Arc<ProxyUrl>>,
}

impl TlsConnector {
    /// Resolves the address and tries each of its addresses in turn, each
    /// with `timeout` for TCP and again for the TLS handshake: an address
    /// that swallows packets does not use up the time of the others.
    pub async fn connect(&self, timeout: Duration) -> Result<BoxIo, ConnectError> {
        if let Some(proxy) = &self.proxy {
            // The proxy resolves the upstream's name; TLS runs end to end.
            let tunnel = super::proxy::tunnel(proxy, &self.address, timeout).await?;
            let connector = RustlsConnector::from(self.config.load_full());
            return match tokio::time::timeout(timeout, connector.connect(self.server_name.clone(), tunnel)).await {
                Ok(Ok(stream)) => Ok(Box::new(stream)),
                Ok(Err(e)) => Err(ConnectError(format!(
                    "TLS handshake through proxy {proxy} failed: {}",
                    describe_tls_io_error(&e)
                ))),
                Err(_) => Err(ConnectError(format!(
                    "TLS handshake through proxy {proxy}: no answer within {} ms",
                    timeout.as_millis()
                ))),
            };
        }
        let addrs: Vec<_> = tokio::time::timeout(timeout, tokio::net::lookup_host(&self.address))
            .await
            .map_err(|_| {
                ConnectError(format!("cannot resolve {}: no answer within {} ms", self.address, timeout.as_millis()))
            })?
            .map_err(|e| ConnectError(format!("cannot resolve {}: {e}", self.address)))?
            .collect();
        let mut errors = Vec::new();
        for addr in &addrs {
            let tcp = match tokio::time::timeout(timeout, connect_tcp(*addr)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    errors.push(format!("{addr}: {e}"));
                    continue;
                }
                Err(_) => {
                    errors.push(format!("{addr}: no connection within {} ms", timeout.as_millis()));
                    continue;
                }
            };
            let connector = RustlsConnector::from(self.config.load_full());
            return match tokio::time::timeout(timeout, connector.connect(self.server_name.clone(), tcp)).await {
                Ok(Ok(stream)) => match &self.live {
                    Some(live) => {
                        let chain = stream.get_ref().1.peer_certificates().unwrap_or_default().to_vec();
                        let chain = chain.into_iter().map(|c| c.into_owned()).collect();
                        Ok(Box::new(live.wrap(stream, chain, self.server_name.clone(), addr.to_string())))
                    }
                    None => Ok(Box::new(stream)),
                },
                Ok(Err(e)) => Err(ConnectError(format!("TLS handshake failed: {}", describe_tls_io_error(&e)))),
                Err(_) => {
                    Err(ConnectError(format!("TLS handshake with {addr}: no answer within {} ms", timeout.as_millis())))
                }
            };
        }
        match (addrs.len(), errors.len()) {
            (0, _) => Err(ConnectError(format!("{} resolved to no address", self.address))),
            // One address: its error alone, as before.
            (1, _) => Err(ConnectError(
                errors
                    .pop()
                    .map(|e| e.split_once(": ").map_or(e.clone(), |(_, why)| why.to_owned()))
                    .unwrap_or_default(),
            )),
            _ => Err(ConnectError(errors.join("; "))),
        }
    }
}
