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

use super::proxy::{ProxyHop, ProxyUrl};
use super::severable::LiveUpstreams;
use super::tcp::connect_tcp;
use super::{BoxIo, ConnectError, Io};
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
    pub proxy: Option<ProxyHop>,
}

impl TlsConnector {
    /// Resolves the address and tries each of its addresses in turn, each
    /// with `timeout` for TCP and again for the TLS handshake: an address
    /// that swallows packets does not use up the time of the others.
    /// Through a proxy, the proxy resolves the upstream's name, and each
    /// step (TCP and TLS to the proxy, CONNECT, the mTLS handshake through
    /// the tunnel) has `timeout` of its own.
    pub async fn connect(&self, timeout: Duration) -> Result<BoxIo, ConnectError> {
        if let Some(proxy) = &self.proxy {
            let tunnel = super::proxy::tunnel(proxy, &self.address, timeout).await?;
            let through = format!("{} through proxy {}", self.address, proxy.url);
            return self.handshake(tunnel, through, Some(&proxy.url), timeout).await;
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
            match tokio::time::timeout(timeout, connect_tcp(*addr)).await {
                Ok(Ok(tcp)) => return self.handshake(tcp, addr.to_string(), None, timeout).await,
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: no connection within {} ms", timeout.as_millis())),
            }
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

    /// The mTLS handshake on `io` (reaching `peer`, directly or through
    /// `proxy`), the connection registered where a reload can sever it.
    async fn handshake<T: Io>(
        &self,
        io: T,
        peer: String,
        proxy: Option<&ProxyUrl>,
        timeout: Duration,
    ) -> Result<BoxIo, ConnectError> {
        let connector = RustlsConnector::from(self.config.load_full());
        let stream = match tokio::time::timeout(timeout, connector.connect(self.server_name.clone(), io)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let through = proxy.map(|p| format!(" through proxy {p}")).unwrap_or_default();
                return Err(ConnectError(format!("TLS handshake{through} failed: {}", describe_tls_io_error(&e))));
            }
            Err(_) => {
                return Err(ConnectError(format!(
                    "TLS handshake with {peer}: no answer within {} ms",
                    timeout.as_millis()
                )))
            }
        };
        Ok(match &self.live {
            Some(live) => {
                let chain = stream.get_ref().1.peer_certificates().unwrap_or_default().to_vec();
                let chain = chain.into_iter().map(|c| c.into_owned()).collect();
                Box::new(live.wrap(stream, chain, self.server_name.clone(), peer))
            }
            None => Box::new(stream),
        })
    }
}
