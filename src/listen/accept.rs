//! The accept loop both listeners share: what to do when `accept` fails.
//!
//! Out of file descriptors (`EMFILE`, `ENFILE`), a listener cannot take the
//! next connection, and the peer would wait in the kernel's backlog for as
//! long as the shortage lasts. So each listener keeps one spare descriptor
//! (an open `/dev/null`): when `accept` reports the shortage, the spare is
//! closed, the waiting connection is accepted and closed at once (counted as
//! a `descriptor_limit` refusal), and the spare is opened again. When even
//! that is not possible, and on every other error, the loop backs off
//! (50 ms, doubling up to 1 s). The log says so once per interval, with how
//! many more there were (see [`crate::obs::fold`]).

use std::fs::File;
use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::obs::fold::Fold;
use crate::obs::metrics::{Metrics, Refusal};

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const LAST_BACKOFF: Duration = Duration::from_secs(1);
/// How often a repeated accept problem is written to the log.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A listening socket that hands out connections (TCP or Unix).
pub trait Listener {
    type Stream;
    type Addr;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>>;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>> {
        tokio::net::TcpListener::poll_accept(self, cx)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>> {
        tokio::net::UnixListener::poll_accept(self, cx)
    }
}

/// A listener with its spare descriptor, backoff and folded log.
pub struct Acceptor<L> {
    listener: L,
    /// Names the listener in the log (`relay 0.0.0.0:7443`, `socket /run/...`).
    name: String,
    spare: Mutex<Option<File>>,
    backoff: Mutex<Duration>,
    fold: Fold,
    metrics: Option<Arc<Metrics>>,
}

/// What closing the spare descriptor to take one connection gave.
enum Shed {
    /// A waiting connection was accepted and closed.
    Refused,
    /// Nobody was waiting after all.
    NoneWaiting,
    /// No spare to give, or the freed descriptor went elsewhere.
    Impossible,
}

impl<L: Listener> Acceptor<L> {
    pub fn new(listener: L, name: impl Into<String>) -> Acceptor<L> {
        Acceptor {
            listener,
            name: name.into(),
            spare: Mutex::new(open_spare()),
            backoff: Mutex::new(FIRST_BACKOFF),
            fold: Fold::new(LOG_EVERY),
            metrics: None,
        }
    }

    /// Counts the connections refused for want of descriptors in `metrics`.
    pub fn count_refusals_in(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    pub fn listener(&self) -> &L {
        &self.listener
    }

    /// The next connection. Errors are handled here (see the module
    /// comment); this returns only with a connection.
    pub async fn accept(&self) -> (L::Stream, L::Addr) {
        loop {
            let error = match poll_fn(|cx| self.listener.poll_accept(cx)).await {
                Ok(accepted) => {
                    *lock(&self.backoff) = FIRST_BACKOFF;
                    let mut spare = lock(&self.spare);
                    if spare.is_none() {
                        *spare = open_spare();
                    }
                    return accepted;
                }
                Err(error) => error,
            };
            if out_of_descriptors(&error) {
                match self.shed() {
                    Shed::Refused | Shed::NoneWaiting => continue,
                    Shed::Impossible => {}
                }
            }
            let wait = {
                let mut backoff = lock(&self.backoff);
                let wait = *backoff;
                *backoff = (wait * 2).min(LAST_BACKOFF);
                wait
            };
            let kind = if out_of_descriptors(&error) { "out of descriptors" } else { "accept error" };
            if let Some(repeated) = self.fold.hit(kind) {
                tracing::warn!(
                    listener = %self.name,
                    error = %error,
                    repeated,
                    retry_in_ms = wait.as_millis() as u64,
                    "accept failed; retrying{}",
                    if out_of_descriptors(&error) { " (out of file descriptors: raise LimitNOFILE / ulimit -n or lower --max-connections)" } else { "" }
                );
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Frees the spare descriptor to take the waiting connection and close
    /// it, so that the peer learns at once instead of waiting in the backlog.
    fn shed(&self) -> Shed {
        let mut spare = lock(&self.spare);
        if spare.take().is_none() {
            return Shed::Impossible;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let outcome = match self.listener.poll_accept(&mut cx) {
            Poll::Ready(Ok((stream, _))) => {
                drop(stream);
                Shed::Refused
            }
            Poll::Pending => Shed::NoneWaiting,
            Poll::Ready(Err(_)) => Shed::Impossible,
        };
        *spare = open_spare();
        drop(spare);
        if let Shed::Refused = outcome {
            if let Some(metrics) = &self.metrics {
                metrics.refused(Refusal::DescriptorLimit);
            }
            if let Some(repeated) = self.fold.hit("shed") {
                tracing::warn!(
                    listener = %self.name,
                    repeated,
                    "refused a connection: out of file descriptors, closed it at once (raise LimitNOFILE / ulimit -n or lower --max-connections)"
                );
            }
        }
        outcome
    }
}

fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
