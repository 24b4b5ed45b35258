//! The standard gRPC health service (`grpc.health.v1.Health/Check`),
//! answered by the bridge itself: SERVING while the next hop can be
//! reached, NOT_SERVING otherwise. Probes and `grpc_health_probe` work
//! against the shim's socket without reaching the driver.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;

use crate::body::RelayBody;
use crate::link::Link;
use crate::policy::SERVICE;
use crate::status::{BridgeStatus, Code};

pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// Health checks wait this long for the link before saying NOT_SERVING.
const PROBE_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, PartialEq, Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, Message)]
struct HealthCheckResponse {
    /// 1 = SERVING, 2 = NOT_SERVING.
    #[prost(int32, tag = "1")]
    status: i32,
}

pub async fn check(request: Request<Incoming>, link: &Link) -> Response<RelayBody> {
    let body = match tokio::time::timeout(PROBE_WAIT, http_body_util::Limited::new(request.into_body(), 4096).collect())
        .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => return BridgeStatus::new(Code::Internal, "health check request unreadable or too large").into_response(),
    };
    if let Err(status) = asked_for_us(&body) {
        return status.into_response();
    }
    let serving = match link.probe(PROBE_WAIT).await {
        Ok(_) => true,
        Err(e) => {
            tracing::info!(reason = %e.message, "health check: NOT_SERVING");
            false
        }
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = Response::new(RelayBody::complete(answer(serving), trailers));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// Checks a request body (one gRPC message, or none): it must ask for the
/// whole server or for the contract's service.
pub fn asked_for_us(body: &[u8]) -> Result<(), BridgeStatus> {
    let service = match body.get(5..).map(HealthCheckRequest::decode) {
        Some(Ok(request)) => request.service,
        _ if body.is_empty() => String::new(),
        _ => return Err(BridgeStatus::new(Code::Internal, "health check request is not a HealthCheckRequest")),
    };
    if !service.is_empty() && service != SERVICE {
        return Err(BridgeStatus::new(
            Code::NotFound,
            format!("unknown service {service:?}; this bridge serves {SERVICE}"),
        ));
    }
    Ok(())
}

/// The answer's one message, framed for gRPC.
pub fn answer(serving: bool) -> Bytes {
    let message = HealthCheckResponse { status: if serving { 1 } else { 2 } }.encode_to_vec();
    let mut framed = BytesMut::with_capacity(message.len() + 5);
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed.freeze()
}
