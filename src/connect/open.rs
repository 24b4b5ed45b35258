//! Opening HTTP/2 on a fresh connection to the next hop: the client
//! preface, the bridge's SETTINGS, and the peer's SETTINGS awaited, so a
//! peer that takes the connection and hangs up is told apart from one
//! that answers.

use bytes::Bytes;
use h2::frame::{self, Frame};
use h2::Codec;
use tokio::io::AsyncWriteExt;

use super::BoxIo;
use crate::describe::{describe_io_error, describe_io_kind};

/// The HTTP/2 client preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sends the preface and a SETTINGS of defaults (the client's own follow
/// when it sends them), then waits for the peer's SETTINGS.
pub async fn http2_open(mut io: BoxIo) -> Result<(Codec<BoxIo, Bytes>, frame::Settings), String> {
    io.write_all(PREFACE).await.map_err(|e| describe_io_error(&e))?;
    let mut codec: Codec<BoxIo, Bytes> = Codec::new(io);
    codec.buffer(frame::Settings::default().into()).map_err(|e| format!("{e:?}"))?;
    std::future::poll_fn(|cx| codec.flush(cx)).await.map_err(|e| describe_io_error(&e))?;
    match futures_util::StreamExt::next(&mut codec).await {
        Some(Ok(Frame::Settings(settings))) if !settings.is_ack() => Ok((codec, settings)),
        Some(Ok(_)) => Err("it did not open with SETTINGS: not an HTTP/2 server".to_string()),
        Some(Err(h2::proto::Error::Io(kind, message))) => Err(describe_io_kind(kind, message)),
        Some(Err(error)) => Err(format!("{error:?}")),
        None => Err("it closed the connection before answering (a peer that refuses our client certificate after the TLS 1.3 handshake does this; see its log)".to_string()),
    }
}
