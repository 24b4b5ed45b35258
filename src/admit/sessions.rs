//! The relay's live client connections, and how one is cut.
//!
//! Every authenticated TLS client connection is registered here with its
//! identity and the certificate chain it authenticated with (the leaf's
//! serial and issuer for the log). When a reload revokes that certificate
//! (a new `--crl`) or the access policy no longer admits that identity, the
//! connection is cut: the frame relay sees the [`Cut`] fire, ends every
//! open call with the status it carries (watches included), says GOAWAY
//! and closes. Other connections are not touched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use tokio_util::sync::CancellationToken;

use crate::admit::policy::{Caller, Policy};
use crate::grpc::status::{BridgeStatus, Code};
use crate::tls::identity::PeerIdentity;

/// The signal that ends one connection, and why.
#[derive(Clone, Debug, Default)]
pub struct Cut {
    token: CancellationToken,
    status: Arc<OnceLock<BridgeStatus>>,
}

impl Cut {
    pub fn new() -> Cut {
        Cut::default()
    }

    /// Ends the connection with `status` for its open calls; the first
    /// reason given wins. Whether this call cut it.
    pub fn cut(&self, status: BridgeStatus) -> bool {
        let first = self.status.set(status).is_ok();
        self.token.cancel();
        first
    }

    /// Fires when the connection is cut.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why the connection was cut, once it was.
    pub fn status(&self) -> Option<&BridgeStatus> {
        self.status.get()
    }
}

/// One registered connection.
struct Entry {
    identity: Arc<PeerIdentity>,
    /// End entity first, then the intermediates the client presented.
    chain: Vec<CertificateDer<'static>>,
    serial: String,
    issuer: String,
    peer: String,
    cut: Cut,
}

/// The registry of one listener's client connections.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

/// A registered connection; dropping it unregisters.
pub struct Session {
    inner: Arc<Inner>,
    id: u64,
    cut: Cut,
}

impl Session {
    pub fn cut(&self) -> &Cut {
        &self.cut
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        lock(&self.inner.entries).remove(&self.id);
    }
}

/// A connection that was cut, for the caller's log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutConnection {
    pub peer: String,
    pub identity: String,
    pub serial: String,
    pub issuer: String,
}

impl Sessions {
    /// Registers a connection authenticated as `identity` with `chain`.
    pub fn open(&self, identity: Arc<PeerIdentity>, chain: Vec<CertificateDer<'static>>, peer: String) -> Session {
        let (serial, issuer) = chain.first().map(leaf_serial_and_issuer).unwrap_or_default();
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let cut = Cut::new();
        lock(&self.inner.entries).insert(id, Entry { identity, chain, serial, issuer, peer, cut: cut.clone() });
        Session { inner: self.inner.clone(), id, cut }
    }

    /// Connections registered now.
    pub fn len(&self) -> usize {
        lock(&self.inner.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every connection's certificate again with `verifier` (built
    /// from the reloaded CA and CRLs) and cuts those now revoked: their
    /// calls end `UNAVAILABLE` naming the revocation. Other verification
    /// errors (a CA rotated away, say) leave connections as they are, as a
    /// certificate rotation does.
    pub fn cut_revoked(&self, verifier: &dyn ClientCertVerifier, role: &str) -> Vec<CutConnection> {
        let now = UnixTime::now();
        self.cut_where(|entry| {
            let (leaf, intermediates) = entry.chain.split_first()?;
            match verifier.verify_client_cert(leaf, intermediates, now) {
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => Some(BridgeStatus::new(
                    Code::Unavailable,
                    format!(
                        "{role}: client certificate revoked (serial {}, issuer {}); connection closed",
                        entry.serial, entry.issuer
                    ),
                )),
                _ => None,
            }
        })
    }

    /// Cuts the connections whose identity `policy` no longer admits:
    /// their calls end `PERMISSION_DENIED` naming the identity. An identity
    /// still admitted (read-only or not) keeps its connection; each call is
    /// authorized against the policy in force anyway.
    pub fn cut_unadmitted(&self, policy: &Policy, role: &str) -> Vec<CutConnection> {
        self.cut_where(|entry| {
            let caller = Caller::Tls(entry.identity.clone());
            (!policy.admits(&caller)).then(|| {
                BridgeStatus::new(
                    Code::PermissionDenied,
                    format!(
                        "{role}: client identity {} is no longer allowed (access policy reloaded); connection closed",
                        entry.identity
                    ),
                )
            })
        })
    }

    fn cut_where(&self, why: impl Fn(&Entry) -> Option<BridgeStatus>) -> Vec<CutConnection> {
        let entries = lock(&self.inner.entries);
        let mut cut = Vec::new();
        for entry in entries.values() {
            if entry.cut.status().is_some() {
                continue;
            }
            if let Some(status) = why(entry) {
                entry.cut.cut(status);
                cut.push(CutConnection {
                    peer: entry.peer.clone(),
                    identity: entry.identity.to_string(),
                    serial: entry.serial.clone(),
                    issuer: entry.issuer.clone(),
                });
            }
        }
        cut
    }
}

/// The leaf's serial (hex, colon-separated as `openssl` prints it) and
/// issuer DN.
fn leaf_serial_and_issuer(der: &CertificateDer<'_>) -> (String, String) {
    use x509_parser::prelude::FromDer;
    match x509_parser::certificate::X509Certificate::from_der(der.as_ref()) {
        Ok((_, cert)) => (cert.raw_serial_as_string(), cert.issuer().to_string()),
        Err(_) => ("(unreadable)".into(), "(unreadable)".into()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
