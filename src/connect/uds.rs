//! Reaching a driver (or the demo driver) on its Unix socket.

use std::path::Path;

use tokio::net::UnixStream;

use super::{describe_io_error, BoxIo, ConnectError};

pub async fn connect(path: &Path) -> Result<BoxIo, ConnectError> {
    match UnixStream::connect(path).await {
        Ok(stream) => Ok(Box::new(stream)),
        Err(e) => Err(ConnectError(describe_io_error(&e))),
    }
}
