//! The standard gRPC health service (`grpc.health.v1.Health/Check`),
//! answered by the bridge itself (the frame relay decides when): SERVING
//! while the next hop answers, NOT_SERVING otherwise. Probes and
//! `grpc_health_probe` work against the shim's socket without reaching the
//! driver.

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::grpc::contract::SERVICE;
use crate::grpc::status::{BridgeStatus, Code};

pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

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
