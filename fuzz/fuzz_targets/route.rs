//! `forward::route`: which contract method a request path names. The path
//! comes from any caller on the socket (shim) or any admitted client
//! (relay), and a method it lets through is then authorized by name.
//!
//! Properties:
//! - never panics;
//! - accepts a path only when it is exactly `/openshell.compute.v1.ComputeDriver/M`
//!   with M non-empty and without a further `/` (so no `/Svc/Read/../Write`
//!   or `/Svc/ListSandboxes/x` reaches the policy as something else), and
//!   returns that M;
//! - every refusal is UNIMPLEMENTED, its message one line of printable ASCII
//!   (it is logged and sent as `grpc-message`), and it turns into a
//!   Trailers-Only response with `grpc-status: 12` and a `grpc-message`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openshell_driver_bridge::admit::route::route;
use openshell_driver_bridge::grpc::contract::SERVICE_PREFIX;
use openshell_driver_bridge::grpc::status::Code;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    match route(path) {
        Ok(method) => {
            assert!(!method.is_empty(), "{path:?}: empty method accepted");
            assert!(!method.contains('/'), "{path:?}: accepted a second '/' after the method");
            assert_eq!(format!("{SERVICE_PREFIX}{method}"), path, "{path:?}: method {method:?} is not the path's tail");
        }
        Err(status) => {
            let well_formed = path.strip_prefix(SERVICE_PREFIX).is_some_and(|m| !m.is_empty() && !m.contains('/'));
            assert!(!well_formed, "{path:?} names a method but was refused");
            assert_eq!(status.code, Code::Unimplemented);
            assert!(
                status.message.bytes().all(|b| (0x20..=0x7e).contains(&b)),
                "refusal is not printable ASCII: {:?}",
                status.message
            );
            let headers = status.to_header_map();
            assert_eq!(headers["grpc-status"], "12");
            assert!(headers.contains_key("grpc-message"), "{path:?}: grpc-message dropped");
        }
    }
});
