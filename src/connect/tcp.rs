//! TCP as every network hop of the bridge wants it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::ConnectError;
use crate::describe::describe_io_error;

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
