//! Reaching a driver (or the demo driver) on its Unix socket.

use std::path::Path;

use tokio::net::UnixStream;

use super::{BoxIo, ConnectError};
use crate::connect::quiet_unix::QuietUnixStream;
use crate::describe::describe_io_error;

pub async fn connect(path: &Path) -> Result<BoxIo, ConnectError> {
    match UnixStream::connect(path).await.and_then(QuietUnixStream::new) {
        Ok(stream) => Ok(Box::new(stream)),
        Err(e) => Err(ConnectError(describe_io_error(&e))),
    }
}
