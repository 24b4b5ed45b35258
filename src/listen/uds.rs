//! A private Unix socket, as strict as a first-party driver's.
//!
//! The gateway trusts its driver socket because of filesystem permissions:
//! only its own UID can reach it. So the socket lives in a directory the
//! bridge owns with mode 0700, the socket itself is 0600, symlinks are
//! refused, anything at the path that is not our own stale socket is left
//! alone and refused, and each peer's `SO_PEERCRED` UID is checked against
//! the bridge's own (or an explicit allow-list).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use std::sync::Arc;

use super::accept::Acceptor;
use super::limit::ConnectionLimit;
use crate::admit::policy::Caller;
use crate::admit::Forwarder;
use crate::connect::quiet_unix::QuietUnixStream;
use crate::obs::metrics::{Metrics, Refusal};
use crate::pipeline::ServerSettings;
use crate::shutdown::Shutdown;

/// Why a socket could not be bound, worded for an operator.
#[derive(Debug, thiserror::Error)]
#[error("--socket {path}: {problem}")]
pub struct SocketError {
    pub path: String,
    pub problem: String,
}

fn refuse(path: &Path, problem: impl Into<String>) -> SocketError {
    SocketError { path: path.display().to_string(), problem: problem.into() }
}

/// A bound private socket; the socket file is removed when it is dropped.
pub struct PrivateSocket {
    /// The listener, with what `accept` failing takes (see [`super::accept`]).
    acceptor: Acceptor<UnixListener>,
    path: PathBuf,
    inode: (u64, u64),
    allowed_uids: Vec<u32>,
    /// Where refused peers are counted, when serving the bridge.
    metrics: Option<Arc<Metrics>>,
}

/// The effective UID of this process.
pub fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

impl PrivateSocket {
    /// Binds `path`, admitting peers of our own UID plus `extra_uids`.
    pub fn bind(path: &Path, extra_uids: &[u32]) -> Result<PrivateSocket, SocketError> {
        let uid = own_uid();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if path.file_name().is_none() {
            return Err(refuse(path, "not a file path; give the path of the socket to create"));
        }
        prepare_parent(path, &parent, uid)?;
        clear_stale_socket(path, uid)?;

        let listener = UnixListener::bind(path).map_err(|e| refuse(path, format!("cannot bind: {e}")))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| refuse(path, format!("cannot set mode 0600: {e}")))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| refuse(path, format!("cannot stat after bind: {e}")))?;
        let mut allowed_uids = vec![uid];
        allowed_uids.extend(extra_uids.iter().copied().filter(|u| *u != uid));
        Ok(PrivateSocket {
            acceptor: Acceptor::new(listener, format!("socket {}", path.display())),
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
            allowed_uids,
            metrics: None,
        })
    }

    /// Counts refused peers in `metrics`.
    pub fn count_refusals_in(mut self, metrics: Arc<Metrics>) -> Self {
        self.acceptor.count_refusals_in(metrics.clone());
        self.metrics = Some(metrics);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn allowed_uids(&self) -> &[u32] {
        &self.allowed_uids
    }

    /// The next admitted peer. Peers of other UIDs are dropped with a warning
    /// and never reach the caller; accept errors are waited out (or, out of
    /// descriptors, the waiting peer is closed at once) so a burst of
    /// connections cannot end the listener.
    pub async fn accept(&self) -> (UnixStream, Caller) {
        loop {
            let (stream, _) = self.acceptor.accept().await;
            match stream.peer_cred() {
                Ok(cred) if self.allowed_uids.contains(&cred.uid()) => {
                    return (stream, Caller::Local { uid: cred.uid(), pid: cred.pid() });
                }
                Ok(cred) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.refused(Refusal::PeerUid);
                    }
                    tracing::warn!(
                    socket = %self.path.display(),
                    peer_uid = cred.uid(),
                    peer_pid = cred.pid().unwrap_or(-1),
                    allowed = ?self.allowed_uids,
                    "refused a peer of another user (admit it with --allow-uid {})",
                    cred.uid()
                    );
                }
                Err(e) => {
                    tracing::warn!(socket = %self.path.display(), error = %e, "refused a peer whose credentials cannot be read")
                }
            }
        }
    }
}

/// Serves the forwarder on `socket` until draining begins; the socket file
/// is removed when this returns.
pub async fn run(socket: PrivateSocket, forwarder: Forwarder, settings: ServerSettings, shutdown: Shutdown) {
    let socket = socket.count_refusals_in(forwarder.metrics().clone());
    let limit = ConnectionLimit::new(settings.max_connections);
    let settings = Arc::new(settings);
    let mut next = 0u64;
    loop {
        let (stream, caller) = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = shutdown.draining().cancelled() => break,
        };
        let Some(permit) = limit.admit("shim", forwarder.metrics()) else {
            continue;
        };
        next += 1;
        let peer = format!("{caller} #{next}");
        tracing::debug!(%peer, "local client connected");
        let stream = match QuietUnixStream::new(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "dropped a local client: cannot register its connection");
                continue;
            }
        };
        let forwarder = forwarder.clone();
        let settings = settings.clone();
        let task_shutdown = shutdown.clone();
        shutdown.tasks().spawn(async move {
            let _permit = permit;
            crate::pipeline::serve_connection(stream, forwarder, caller, &settings, &task_shutdown, &peer).await;
        });
    }
    drop(socket);
}

impl PrivateSocket {
    /// The admitted connections as a stream, for tonic's
    /// `serve_with_incoming` (the demo driver and test drivers).
    pub fn into_incoming(self) -> impl futures_util::Stream<Item = io::Result<UnixStream>> {
        futures_util::stream::unfold(self, |socket| async move {
            let (stream, _) = socket.accept().await;
            Some((Ok(stream), socket))
        })
    }
}

impl Drop for PrivateSocket {
    fn drop(&mut self) {
        // Remove only the socket we created, not one another process put there since.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.inode {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Creates or tightens the socket's directory: ours, not a symlink, 0700.
fn prepare_parent(path: &Path, parent: &Path, uid: u32) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(parent) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(parent)
                .map_err(|e| refuse(path, format!("cannot create directory {}: {e}", parent.display())))?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| refuse(path, format!("cannot set mode 0700 on {}: {e}", parent.display())))?;
            Ok(())
        }
        Err(e) => Err(refuse(path, format!("cannot inspect directory {}: {e}", parent.display()))),
        Ok(meta) if meta.file_type().is_symlink() => Err(refuse(
            path,
            format!(
                "directory {} is a symlink; refusing it (a symlink could redirect the socket); use the real path",
                parent.display()
            ),
        )),
        Ok(meta) if !meta.is_dir() => Err(refuse(path, format!("{} is not a directory", parent.display()))),
        Ok(meta) if meta.uid() != uid => Err(refuse(
            path,
            format!(
                "directory {} belongs to uid {}, not to this process (uid {uid}); put the socket in a directory of its own, e.g. /run/openshell-bridge/",
                parent.display(),
                meta.uid()
            ),
        )),
        Ok(meta) if meta.mode() & 0o1002 != 0 => Err(refuse(
            path,
            format!(
                "directory {} is shared (mode {:o}); put the socket in a directory of its own, e.g. {}/openshell-bridge/",
                parent.display(),
                meta.mode() & 0o7777,
                parent.display()
            ),
        )),
        Ok(meta) => {
            if meta.mode() & 0o777 != 0o700 {
                tracing::info!(directory = %parent.display(), from = format!("{:o}", meta.mode() & 0o777), "setting socket directory mode to 0700");
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| refuse(path, format!("cannot set mode 0700 on {}: {e}", parent.display())))?;
            }
            Ok(())
        }
    }
}

/// Removes our own stale socket; refuses anything else at the path.
fn clear_stale_socket(path: &Path, uid: u32) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(refuse(path, format!("cannot inspect: {e}"))),
        Ok(meta) => meta,
    };
    if meta.file_type().is_symlink() {
        return Err(refuse(path, "is a symlink; refusing to follow or replace it"));
    }
    if !meta.file_type().is_socket() {
        return Err(refuse(
            path,
            "exists and is not a socket; refusing to replace it (remove it yourself or choose another path)",
        ));
    }
    if meta.uid() != uid {
        return Err(refuse(path, format!("is a socket of uid {}, not ours; refusing to replace it", meta.uid())));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(refuse(path, "another process is serving on this socket; stop it or choose another path"));
    }
    tracing::info!(socket = %path.display(), "replacing a stale socket");
    std::fs::remove_file(path).map_err(|e| refuse(path, format!("cannot remove the stale socket: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_private_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/driver.sock");
        let socket = PrivateSocket::bind(&path, &[]).unwrap();
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        let sock_mode = std::fs::symlink_metadata(&path).unwrap().mode() & 0o777;
        assert_eq!((dir_mode, sock_mode), (0o700, 0o600));
        drop(socket);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn refuses_what_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file.sock");
        std::fs::write(&file, b"keep me").unwrap();
        let err = PrivateSocket::bind(&file, &[]).err().unwrap();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).unwrap();
        let err = PrivateSocket::bind(&link, &[]).err().unwrap();
        assert!(err.to_string().contains("symlink"), "{err}");

        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let linked_dir = dir.path().join("linked");
        std::os::unix::fs::symlink(&real, &linked_dir).unwrap();
        let err = PrivateSocket::bind(&linked_dir.join("s.sock"), &[]).err().unwrap();
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[tokio::test]
    async fn replaces_stale_but_not_live_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale); // the file stays: a stale socket
        let live = PrivateSocket::bind(&path, &[]).unwrap();
        let err = PrivateSocket::bind(&path, &[]).err().unwrap();
        assert!(err.to_string().contains("another process"), "{err}");
        drop(live);
    }

    #[tokio::test]
    async fn refuses_shared_directory() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = PrivateSocket::bind(&shared.join("s.sock"), &[]).err().unwrap();
        assert!(err.to_string().contains("shared"), "{err}");
    }
}
