//! Upstream TLS connections that a reload can sever: each is registered
//! with the server certificate chain it was verified with, and when a
//! reloaded `--crl` revokes that certificate the connection fails its next
//! read or write with the reason. The frame relay then treats it as a lost
//! next hop (calls on it end `UNAVAILABLE` naming the cause, the next
//! connection is dialled, and a revoked relay is refused at its handshake).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

struct Entry {
    chain: Vec<CertificateDer<'static>>,
    server_name: ServerName<'static>,
    address: String,
    cut: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

/// The open upstream connections of one connector.
#[derive(Clone, Default)]
pub struct LiveUpstreams {
    entries: Arc<Mutex<HashMap<u64, Entry>>>,
    next: Arc<AtomicU64>,
}

/// An upstream connection severed by a reload, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Severed {
    pub address: String,
    pub reason: String,
}

impl LiveUpstreams {
    /// Registers `io`, verified with `chain` for `server_name`, for as long
    /// as it lives.
    pub fn wrap<T>(
        &self,
        io: T,
        chain: Vec<CertificateDer<'static>>,
        server_name: ServerName<'static>,
        address: String,
    ) -> Severable<T> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cut = CancellationToken::new();
        let reason = Arc::new(OnceLock::new());
        let entry = Entry { chain, server_name, address, cut: cut.clone(), reason: reason.clone() };
        lock(&self.entries).insert(id, entry);
        Severable {
            inner: io,
            cut: Box::pin(cut.cancelled_owned()),
            reason,
            _registered: Registered { entries: self.entries.clone(), id },
        }
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks each connection's server certificate again with `verifier`
    /// (built from the reloaded CA and CRLs) and severs those revoked.
    pub fn sever_revoked(&self, verifier: &dyn ServerCertVerifier) -> Vec<Severed> {
        let now = UnixTime::now();
        let entries = lock(&self.entries);
        let mut severed = Vec::new();
        for entry in entries.values() {
            let Some((leaf, intermediates)) = entry.chain.split_first() else { continue };
            if entry.cut.is_cancelled() {
                continue;
            }
            if let Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) =
                verifier.verify_server_cert(leaf, intermediates, &entry.server_name, &[], now)
            {
                let (serial, issuer) = serial_and_issuer(leaf);
                let reason = format!("relay certificate revoked (serial {serial}, issuer {issuer}); connection closed");
                let _ = entry.reason.set(reason.clone());
                entry.cut.cancel();
                severed.push(Severed { address: entry.address.clone(), reason });
            }
        }
        severed
    }
}

fn serial_and_issuer(der: &CertificateDer<'_>) -> (String, String) {
    use x509_parser::prelude::FromDer;
    match x509_parser::certificate::X509Certificate::from_der(der.as_ref()) {
        Ok((_, cert)) => (cert.raw_serial_as_string(), cert.issuer().to_string()),
        Err(_) => ("(unreadable)".into(), "(unreadable)".into()),
    }
}

struct Registered {
    entries: Arc<Mutex<HashMap<u64, Entry>>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.entries).remove(&self.id);
    }
}

/// A registered connection: once severed, every read and write fails with
/// the reason.
pub struct Severable<T> {
    inner: T,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    reason: Arc<OnceLock<String>>,
    _registered: Registered,
}

impl<T> Severable<T> {
    fn severed(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.cut.as_mut().poll(cx).is_ready().then(|| {
            let reason = self.reason.get().cloned().unwrap_or_else(|| "connection severed".into());
            io::Error::new(io::ErrorKind::ConnectionAborted, reason)
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Severable<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(error) = self.severed(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Severable<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(error) = self.severed(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
