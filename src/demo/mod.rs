//! A self-contained reference compute driver that keeps its sandboxes in
//! memory. It gives the bridge something real to relay to when no cluster is
//! at hand: demos, end-to-end tests, and checking a gateway against the
//! contract without provisioning anything.

pub mod driver;
pub mod gateway;
pub mod run;
pub mod smoke;

use std::path::Path;

use crate::listen::uds::PrivateSocket;
use crate::shutdown::Shutdown;
use driver::{DemoDriver, DemoOptions};

/// Serves a new reference driver on a private socket at `socket`.
pub fn serve_driver(
    socket: &Path,
    options: DemoOptions,
    shutdown: Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    serve(socket, DemoDriver::with_options(options), shutdown)
}

/// Serves `driver` on a private socket at `socket` until the shutdown
/// stops it; the socket file is removed when serving ends.
pub fn serve(socket: &Path, driver: DemoDriver, shutdown: Shutdown) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = PrivateSocket::bind(socket, &[])?;
    tracing::info!(socket = %socket.display(), "demo driver serving");
    let server = tonic::transport::Server::builder()
        .add_service(driver.into_server())
        .serve_with_incoming_shutdown(listener.into_incoming(), shutdown.draining().clone().cancelled_owned());
    let stopping = shutdown.stopping().clone();
    Ok(tokio::spawn(async move {
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "demo driver stopped with an error");
                }
            }
            _ = stopping.cancelled() => {}
        }
    }))
}
