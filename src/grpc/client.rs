//! A gateway's view of a driver socket: a tonic channel over a Unix socket,
//! dialled exactly as the OpenShell gateway does (HTTP/2 prior knowledge,
//! dummy authority). Used by the demo, the doctor and the tests.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::proto::compute::compute_driver_client::ComputeDriverClient;

/// The gateway dials this dummy authority; it carries no meaning.
pub const GATEWAY_DUMMY_URI: &str = "http://[::]:50051";

/// Connects a channel to the socket at `path`.
pub async fn uds_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_static(GATEWAY_DUMMY_URI)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// A compute-driver client on the socket at `path`, accepting messages up
/// to 64 MiB (the bridge passes whatever the driver sends).
pub async fn driver_client(path: &Path) -> Result<ComputeDriverClient<Channel>, tonic::transport::Error> {
    Ok(ComputeDriverClient::new(uds_channel(path).await?)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}
