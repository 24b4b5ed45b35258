//! The one body type that crosses the bridge in both directions.
//!
//! Frames are passed along as they arrive: no buffering, no decoding, so the
//! memory a call holds is bounded by HTTP/2 flow control, not message size.
//! On the response side the body also turns trouble into a proper gRPC
//! ending: a broken upstream stream becomes `UNAVAILABLE` trailers naming the
//! hop, an expired deadline becomes `DEADLINE_EXCEEDED`, a shutdown ends a
//! stream with `UNAVAILABLE`, instead of a reset without status.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::RecvStream;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::link::Hop;
use crate::status::{BridgeStatus, Code};

/// Observes a call's response stream: bytes carried and how it ended.
pub trait CallObserver: Send + Sync + 'static {
    /// Called once when the response ends or is dropped; `status` is the
    /// `grpc-status` value seen, or `None` when the stream ended without one
    /// (for example when the client went away).
    fn finished(&self, status: Option<&str>, bytes: u64);
}

/// A response body in flight through the bridge.
pub struct RelayBody {
    /// The upstream stream, read straight from h2.
    inner: Option<Upstream>,
    /// A message the bridge answers with itself (health checks).
    data: Option<Bytes>,
    /// Trailers the bridge decided to end the stream with.
    ending: Option<HeaderMap>,
    guard: Option<Box<StreamGuard>>,
}

/// What a response body watches besides its upstream.
struct StreamGuard {
    /// Names the hop (and why its connection ended) in the message of a
    /// broken stream.
    hop: Hop,
    deadline: Option<(Pin<Box<Sleep>>, std::time::Duration)>,
    stop: Option<(Pin<Box<WaitForCancellationFutureOwned>>, Arc<str>)>,
    observer: Option<Box<dyn CallObserver>>,
    bytes: u64,
    status: Option<String>,
}

impl RelayBody {
    /// A body with no frames (Trailers-Only answers of the bridge's own).
    pub fn empty() -> Self {
        RelayBody { inner: None, data: None, ending: None, guard: None }
    }

    /// One data frame then `trailers`: an answer the bridge gives itself.
    pub fn complete(data: Bytes, trailers: HeaderMap) -> Self {
        RelayBody { inner: None, data: Some(data), ending: Some(trailers), guard: None }
    }

    /// A response body from `hop` that ends with a gRPC status, never a bare
    /// reset, when its upstream breaks.
    /// `header_status` is the `grpc-status` of a Trailers-Only response.
    pub fn response(upstream: RecvStream, hop: Hop, header_status: Option<String>) -> Self {
        RelayBody {
            inner: Some(Upstream { stream: upstream, data_done: false }),
            data: None,
            ending: None,
            guard: Some(Box::new(StreamGuard {
                hop,
                deadline: None,
                stop: None,
                observer: None,
                bytes: 0,
                status: header_status,
            })),
        }
    }

    /// Ends the stream with `DEADLINE_EXCEEDED` at `at` (and cancels the
    /// upstream stream by dropping it).
    pub fn with_deadline(mut self, at: Instant, budget: std::time::Duration) -> Self {
        if let Some(guard) = self.guard.as_mut() {
            guard.deadline = Some((Box::pin(tokio::time::sleep_until(at)), budget));
        }
        self
    }

    /// Ends the stream with `UNAVAILABLE` and `why` once `stop` fires.
    pub fn with_stop(mut self, stop: WaitForCancellationFutureOwned, why: Arc<str>) -> Self {
        if let Some(guard) = self.guard.as_mut() {
            guard.stop = Some((Box::pin(stop), why));
        }
        self
    }

    pub fn with_observer(mut self, observer: Box<dyn CallObserver>) -> Self {
        if let Some(guard) = self.guard.as_mut() {
            guard.observer = Some(observer);
        }
        self
    }

    /// Stops reading upstream and ends the stream with `status`.
    fn end_with(&mut self, status: BridgeStatus) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        self.inner = None;
        if let Some(guard) = self.guard.as_mut() {
            guard.status = Some(status.code.as_str().to_owned());
        }
        Poll::Ready(Some(Ok(Frame::trailers(status.to_header_map()))))
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = this.ending.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(guard) = this.guard.as_mut() {
            if let Some((sleep, budget)) = guard.deadline.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    let message =
                        format!("deadline of {} ms expired while the call was in the bridge", budget.as_millis());
                    return this.end_with(BridgeStatus::new(Code::DeadlineExceeded, message));
                }
            }
            if let Some((stop, why)) = guard.stop.as_mut() {
                if stop.as_mut().poll(cx).is_ready() {
                    let why = why.to_string();
                    return this.end_with(BridgeStatus::new(Code::Unavailable, why));
                }
            }
        }
        match inner.poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(guard) = this.guard.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        guard.bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref() {
                        guard.status = grpc_status_of(trailers);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => match this.guard.as_ref() {
                Some(guard) => {
                    let message = format!("{}: stream broken: {}", guard.hop.label, guard.hop.why_broken(&error));
                    this.end_with(BridgeStatus::new(Code::Unavailable, message))
                }
                None => {
                    this.inner = None;
                    Poll::Ready(Some(Err(error)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match (&self.inner, &self.ending) {
            (None, None) => self.data.is_none(),
            // An upstream that already ended (a Trailers-Only response) must stay
            // Trailers-Only here: gRPC clients other than tonic insist on it.
            (Some(inner), None) => inner.stream.is_end_stream(),
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, &self.ending) {
            (None, None) => SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64)),
            _ => SizeHint::default(),
        }
    }
}

/// An upstream h2 stream read as frames: its data chunks, then its
/// trailers. Each chunk's flow-control credit goes back to the sender as the
/// chunk is handed on, so the memory a call holds stays bounded by the
/// windows.
struct Upstream {
    stream: RecvStream,
    /// The data frames are done; the trailers come next.
    data_done: bool,
}

impl Upstream {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match self.stream.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    // An error here means the stream is gone, which the next
                    // poll reports.
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => self.data_done = true,
            }
        }
        match self.stream.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error))),
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(observer) = self.observer.take() {
            observer.finished(self.status.as_deref(), self.bytes);
        }
    }
}

/// The `grpc-status` of a header or trailer block, if any.
pub fn grpc_status_of(headers: &HeaderMap) -> Option<String> {
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers.get(GRPC_STATUS).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// hyper's errors print as "error reading a body from connection"; the
/// underlying cause (reset, GOAWAY, keepalive timeout) is what an operator
/// needs.
pub fn describe_hyper_error(error: &hyper::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        match cause.downcast_ref::<std::io::Error>() {
            Some(io) => {
                text.push_str(&describe_io_cause(io));
                break;
            }
            None => text.push_str(&cause.to_string()),
        }
        source = cause.source();
    }
    text
}

/// An h2 error in an operator's words: the transport's cause when there is
/// one ("peer closed the connection abruptly", a TLS alert), else h2's own
/// sentence ("stream error received: refused stream ...").
pub fn describe_h2_error(error: &h2::Error) -> String {
    match error.get_io() {
        Some(io) => describe_io_cause(io),
        None => error.to_string(),
    }
}

fn describe_io_cause(io: &std::io::Error) -> String {
    // rustls words an abrupt close with a link to its manual.
    if io.kind() == std::io::ErrorKind::UnexpectedEof {
        return "peer closed the connection abruptly".into();
    }
    match io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(tls) => crate::tls::config::describe_tls_error(tls),
        None => crate::connect::describe_io_error(io),
    }
}
