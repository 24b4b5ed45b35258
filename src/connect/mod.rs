//! Connectors: how a link reaches its peer (mTLS over TCP, a Unix socket, or
//! plain TCP on loopback). A connector yields a byte stream; the link puts
//! HTTP/2 on top of it.

pub mod dialer;
pub mod tls;
pub mod uds;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

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
        let attempt = async {
            match self {
                Connector::Tls(tls) => return tls.connect(timeout).await,
                Connector::Unix(path) => uds::connect(path).await,
                Connector::Tcp(addr) => connect_tcp(*addr).await.map(|s| Box::new(s) as BoxIo),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError(format!("no connection within {} ms", timeout.as_millis()))),
        }
    }
}

/// TCP with Nagle off (gRPC frames are small and latency-bound) and
/// keepalive on, so the kernel also notices a peer that vanished.
pub async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| ConnectError(describe_io_error(&e)))?;
    tune_tcp(&stream);
    Ok(stream)
}

/// Applies the socket options every TCP hop of the bridge wants.
pub fn tune_tcp(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let keepalive =
        socket2::TcpKeepalive::new().with_time(Duration::from_secs(10)).with_interval(Duration::from_secs(5));
    let _ = sock.set_tcp_keepalive(&keepalive);
}

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
            match text.find(" (os error") {
                Some(cut) => text[..cut].to_lowercase(),
                None => text,
            }
        }
    }
}
