//! Write coalescing under HTTP/2.
//!
//! hyper's HTTP/2 flushes whenever its connection task runs out of work,
//! and a call's frames come from different tasks: the request HEADERS from
//! the connection, the DATA from the body's pipe task; a response's DATA
//! and its trailers in two turns of the stream task. Written as they come,
//! one small gRPC call costs two writes in each direction on each hop, so
//! two TLS records, two syscalls and often two wake-ups of the peer.
//!
//! [`Coalesce`] holds the bytes of a small flush back for one turn of the
//! scheduler: the first `poll_flush` with little buffered wakes its own task
//! and returns `Pending`, the tasks already woken (the pipe, the stream) add
//! their frames, and the second `poll_flush` writes everything at once. A
//! flush is deferred at most once, and never when a full record's worth is
//! already waiting, so bulk transfers go out as they are produced.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held at most; a write that would exceed it drains the buffer first.
const CAPACITY: usize = 64 * 1024;
/// A flush of fewer bytes than this waits one scheduler turn for company
/// (a TLS record carries 16 KiB).
const DEFER_BELOW: usize = 16 * 1024;

/// An `AsyncWrite` that buffers writes and coalesces small flushes; reads
/// pass through.
pub struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    written: usize,
    /// The pending flush already gave the scheduler its one turn.
    deferred: bool,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Self {
        Coalesce { inner, buf: Vec::new(), written: 0, deferred: false }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        // A burst can grow the buffer; idle connections give the memory back.
        if self.buf.capacity() > CAPACITY {
            self.buf.shrink_to(CAPACITY);
        }
        Poll::Ready(Ok(()))
    }

    /// Room for `len` more bytes: drains first when they would not fit.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() && self.buf.len() + len > CAPACITY {
            std::task::ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_room(cx, data.len()))?;
        if this.buf.is_empty() && data.len() >= CAPACITY {
            // Bulk: nothing to coalesce with, no copy.
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = slices.iter().map(|s| s.len()).sum();
        std::task::ready!(this.poll_room(cx, total))?;
        if this.buf.is_empty() && total >= CAPACITY {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, slices);
        }
        for slice in slices {
            this.buf.extend_from_slice(slice);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.len() > this.written {
            if !this.deferred && this.buf.len() - this.written < DEFER_BELOW {
                this.deferred = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            std::task::ready!(this.poll_drain(cx))?;
        }
        this.deferred = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// Counts the writes that reach the socket.
    struct Counted {
        stream: UnixStream,
        writes: usize,
    }

    impl AsyncWrite for Counted {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Pin::new(&mut self.stream).poll_write(cx, data)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn small_writes_of_one_turn_leave_in_one_write() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut io = Coalesce::new(Counted { stream: a, writes: 0 });
        io.write_all(b"headers").await.unwrap();
        io.write_all(b"data").await.unwrap();
        io.write_all(b"trailers").await.unwrap();
        assert_eq!(io.inner.writes, 0, "nothing leaves before a flush");
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 1);
        let mut got = vec![0; 19];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"headersdatatrailers");
        // A flush with nothing buffered is immediate.
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 1);
    }

    #[tokio::test]
    async fn bulk_writes_pass_through_and_order_is_kept() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut io = Coalesce::new(Counted { stream: a, writes: 0 });
        let mut expected = Vec::new();
        for round in 0..20u8 {
            let small = vec![round; 100];
            let large = vec![round.wrapping_add(100); 3 * CAPACITY / 2];
            io.write_all(&small).await.unwrap();
            io.write_all(&large).await.unwrap();
            expected.extend_from_slice(&small);
            expected.extend_from_slice(&large);
        }
        io.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), expected);
        assert!(io.buf.capacity() <= CAPACITY, "the buffer keeps at most {CAPACITY} bytes");
    }

    #[tokio::test]
    async fn a_full_record_is_flushed_without_waiting() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut io = Coalesce::new(Counted { stream: a, writes: 0 });
        io.write_all(&vec![7; DEFER_BELOW]).await.unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        io.write_all(b"x").await.unwrap();
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending(), "a small flush waits one turn");
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready(), "and only one");
    }
}
