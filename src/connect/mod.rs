//! Connectors: how a link reaches its peer (mTLS over TCP, a Unix socket, or
//! plain TCP on loopback). A connector yields a byte stream; the link puts
//! HTTP/2 on top of it.

pub mod address;
pub mod dialer;
pub mod open;
pub mod proxy;
pub mod quiet_unix;
pub mod severable;
pub mod tcp;
pub mod tls;
pub mod uds;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// A connected byte stream of any kind.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub type BoxIo = Box<dyn Io>;

/// Why a connection attempt failed, in words for an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectError(pub String);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One way to reach a peer.
pub enum Connector {
    Tls(tls::TlsConnector),
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Connector {
    /// A connection, each address and step given at most `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<BoxIo, ConnectError> {
        // Through a proxy, each step (TCP to the proxy, its answer to
        // CONNECT, the TLS handshake) has its own limit and names the proxy
        // when it runs out; one limit over all of them would name nothing.
        if let Connector::Tls(tls) = self {
            if tls.proxy.is_some() {
                return tls.connect(timeout).await;
            }
        }
        let attempt = async {
            match self {
                Connector::Tls(tls) => return tls.connect(timeout).await,
                Connector::Unix(path) => uds::connect(path).await,
                Connector::Tcp(addr) => tcp::connect_tcp(*addr).await.map(|s| Box::new(s) as BoxIo),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError(format!("no connection within {} ms", timeout.as_millis()))),
        }
    }
}
