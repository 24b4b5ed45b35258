//! A stand-in for the gateway's own endpoint, the one sandboxes call back
//! to: a gRPC server over TLS (the reference driver's service, named
//! `gateway-stand-in`), and the client a sandbox would be: TLS verifying
//! the server by name, then a gRPC call. The demo and the tests put the
//! bridge's way back between the two.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::demo::driver::{DemoDriver, DemoOptions};
use crate::proto::compute::compute_driver_client::ComputeDriverClient;
use crate::proto::compute::GetCapabilitiesRequest;
use crate::shutdown::Shutdown;
use crate::tls::config::provider;

/// The name the stand-in reports as its driver name.
pub const NAME: &str = "gateway-stand-in";

/// TLS 1.3 with `cert` and `key` (PEM), no client certificate: a
/// sandbox proves itself to the gateway by other means.
pub fn server_tls(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the stand-in on `listener` until the drain.
pub fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsConn>>(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let draining = shutdown.draining().clone();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
                },
                _ = draining.cancelled() => return,
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    let _ = tx.send(Ok(TlsConn(tls))).await;
                }
            });
        }
    });
    let driver = DemoDriver::with_options(DemoOptions { name: NAME.into(), ..Default::default() });
    let server = tonic::transport::Server::builder().add_service(driver.into_server()).serve_with_incoming_shutdown(
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|conn| (conn, rx)) }),
        shutdown.stopping().clone().cancelled_owned(),
    );
    tokio::spawn(async move {
        let _ = server.await;
    })
}

/// What a sandbox does: TCP to `addr`, TLS verifying the server as
/// `server_name` against `ca`, then `GetCapabilities`; the name the
/// server reports.
pub async fn call(addr: SocketAddr, ca: &Path, server_name: &str) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots.add(cert.map_err(|e| format!("{}: {e}", ca.display()))?).map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let channel = tonic::transport::Endpoint::from_static("http://gateway.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, name) = (connector.clone(), name.clone());
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect through {addr}: {}", chain(&e)))?;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        ComputeDriverClient::new(channel).get_capabilities(GetCapabilitiesRequest {}),
    )
    .await
    .map_err(|_| "no answer within 10 s".to_string())?
    .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(answer.into_inner().driver_name)
}

/// A server-side TLS connection as tonic's server takes it.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// An error and its sources, in one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    for _ in 0..8 {
        let Some(cause) = source else { break };
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
