//! openshell-driver-bridge: stretches an OpenShell compute-driver socket
//! across networks over mutually authenticated TLS.
//!
//! The two roles are one pipeline built from different parts:
//!
//! ```text
//! listener (UDS | mTLS) -> admission (policy, path, deadline) -> frame relay -> dialer -> connector (mTLS | UDS | TCP)
//! ```
//!
//! `role::shim` and `role::relay` are library functions; `main.rs` only parses the
//! command line and calls them, so tests drive the same code.

pub mod admit;
pub mod callback;
pub mod check;
pub mod cli;
pub mod connect;
pub mod demo;
pub mod describe;
pub mod frames;
pub mod grpc;
pub mod listen;
pub mod obs;
pub mod pipeline;
pub mod pki;
pub mod role;
pub mod run;
pub mod shutdown;
pub mod tls;
pub mod watch;

pub mod proto {
    //! The contract's generated types, used where the bridge itself speaks
    //! it (demo driver, doctor, tests); never on the forwarding path.
    #[allow(clippy::large_enum_variant)]
    pub mod compute {
        tonic::include_proto!("openshell.compute.v1");
    }
    pub mod options {
        tonic::include_proto!("openshell.options.v1");
    }
}
