//! Unix streams that sleep through their peer's reads.
//!
//! Linux wakes every epoll waiter registered for writability on a Unix
//! socket each time the peer reads from it, whether or not a writer was
//! waiting. tokio registers every socket for both directions, so a shim
//! (or relay) next to its client (or driver) woke once more per call, for
//! nothing, on a machine where every wake-up competes with the gateway and
//! the driver for the same cores.
//!
//! [`QuietUnixStream`] registers the socket for readability only and writes
//! directly; only when the socket is full does it register a duplicate of
//! the descriptor for writability, dropped again after the next write that
//! fits.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustix::net::SendFlags;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

pub struct QuietUnixStream {
    stream: AsyncFd<std::os::unix::net::UnixStream>,
    /// Registered for writability while a write waits for room.
    writable: Option<AsyncFd<OwnedFd>>,
}

impl QuietUnixStream {
    pub fn new(stream: tokio::net::UnixStream) -> io::Result<Self> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(true)?;
        Ok(QuietUnixStream { stream: register(stream, Interest::READABLE)?, writable: None })
    }

    fn send(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            match rustix::net::send(self.stream.get_ref(), data, SendFlags::NOSIGNAL) {
                Err(rustix::io::Errno::INTR) => continue,
                result => return result.map_err(io::Error::from),
            }
        }
    }
}

/// Registers a descriptor the `AsyncFd` will own.
fn register<T: std::os::fd::AsRawFd>(owned: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` is an owning type (a std `UnixStream` or an `OwnedFd`)
    // moved into the `AsyncFd`: its descriptor stays open, and is the one
    // `as_raw_fd` returns, until the `AsyncFd` has deregistered it on drop.
    unsafe { AsyncFd::register_with_interest(owned, interest) }.map_err(io::Error::from)
}

impl AsyncRead for QuietUnixStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let wanted = unfilled.len();
            match guard.try_io(|stream| stream.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // A short read drained the socket (as tokio assumes for
                    // its own sockets): the next read waits for the next
                    // edge instead of asking the kernel only to hear EAGAIN.
                    if n > 0 && n < wanted {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for QuietUnixStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let Some(writable) = this.writable.as_ref() else {
                match this.send(data) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let duplicate = this.stream.get_ref().as_fd().try_clone_to_owned()?;
                        this.writable = Some(register(duplicate, Interest::WRITABLE)?);
                        continue;
                    }
                    result => return Poll::Ready(result),
                }
            };
            let mut guard = ready!(writable.poll_write_ready(cx))?;
            let outcome = guard.try_io(|_| this.send(data));
            drop(guard);
            if let Ok(result) = outcome {
                this.writable = None;
                return Poll::Ready(result);
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.get_ref().shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn carries_bytes_both_ways_and_waits_for_room_when_full() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (mut a, mut b) = (QuietUnixStream::new(a).unwrap(), QuietUnixStream::new(b).unwrap());
        a.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");

        // Far more than the socket buffers hold: the writer must wait for
        // the reader, and every byte arrives in order.
        let total = 8 * 1024 * 1024;
        let writer = tokio::spawn(async move {
            let chunk: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
            for _ in 0..total / chunk.len() {
                a.write_all(&chunk).await.unwrap();
            }
            a.shutdown().await.unwrap();
            a
        });
        let mut received = Vec::new();
        b.read_to_end(&mut received).await.unwrap();
        assert_eq!(received.len(), total);
        assert!(received.iter().enumerate().all(|(i, byte)| *byte == (i % 256) as u8));
        let a = writer.await.unwrap();
        assert!(a.writable.is_none(), "the write registration is dropped once writes fit again");
    }

    /// The error only: Rust programs (this test binary included) ignore
    /// SIGPIPE, so `MSG_NOSIGNAL` itself cannot be observed here; it keeps
    /// the library safe in a host program that does not.
    #[tokio::test]
    async fn a_write_to_a_closed_peer_fails_with_broken_pipe() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut a = QuietUnixStream::new(a).unwrap();
        drop(b);
        let error = a.write_all(b"anyone?").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }
}
