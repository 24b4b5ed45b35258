//! The gRPC calls the steps make: a channel through a connector, a
//! compute-driver client, a call bounded by the time limit, and the wording
//! of a status or a transport error.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::connect::Connector;
use crate::grpc::status::code_name;
use crate::proto::compute::compute_driver_client::ComputeDriverClient;
use crate::proto::compute::{GetCapabilitiesRequest, GetCapabilitiesResponse};

use super::words::ms;

/// The largest answer `check` accepts, as the bridge does.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Why a call did not answer.
pub(super) enum CallError {
    Connect(String),
    Status(tonic::Status),
    Timeout,
}

/// A GetCapabilities answer and how long it took.
pub(super) struct Capabilities {
    pub(super) caps: GetCapabilitiesResponse,
    pub(super) rtt: Duration,
    pub(super) connected: Duration,
}

impl Capabilities {
    pub(super) fn describe(&self) -> String {
        format!(
            "driver {} {}, {} round trip (connect {})",
            self.caps.driver_name,
            self.caps.driver_version,
            ms(self.rtt),
            ms(self.connected)
        )
    }
}

/// Connects a channel through `connector` and calls GetCapabilities; both
/// bounded by `timeout`.
pub(super) async fn call_capabilities(
    uri: &str,
    connector: Connector,
    timeout: Duration,
) -> Result<Capabilities, CallError> {
    let started = Instant::now();
    let channel = match tokio::time::timeout(timeout, channel_through(uri, connector, timeout)).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => return Err(CallError::Connect(e)),
        Err(_) => return Err(CallError::Timeout),
    };
    let connected = started.elapsed();
    let mut client = driver_client(channel);
    let (caps, rtt) = timed(timeout, client.get_capabilities(GetCapabilitiesRequest {})).await?;
    Ok(Capabilities { caps, rtt, connected })
}

async fn channel_through(uri: &str, connector: Connector, timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(|e| format!("{uri}: {e}"))?;
    let connector = Arc::new(connector);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move { connector.connect(timeout).await.map(TokioIo::new).map_err(|e| io::Error::other(e.0)) }
        }))
        .await
        .map_err(|e| error_chain(&e))
}

pub(super) fn driver_client(channel: Channel) -> ComputeDriverClient<Channel> {
    ComputeDriverClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Runs one call within `timeout`; the answer and its round-trip time.
pub(super) async fn timed<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<(T, Duration), CallError> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok((response.into_inner(), started.elapsed())),
        Ok(Err(status)) => Err(CallError::Status(status)),
        Err(_) => Err(CallError::Timeout),
    }
}

/// `PERMISSION_DENIED: relay: client identity ...`, with the transport
/// cause appended when the status came from the connection.
pub(super) fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{}: {}", code_name(status.code()), status.message());
    if let Some(source) = status.source() {
        let cause = error_chain(source);
        if !cause.is_empty() && !status.message().contains(&cause) {
            text.push_str(&format!(" ({cause})"));
        }
    }
    text
}

/// An error and its sources, joined by `: `, without repeats.
pub(super) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}
