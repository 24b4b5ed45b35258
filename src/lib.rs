//! openshell-driver-bridge: stretches an OpenShell compute-driver socket
//! across networks over mutually authenticated TLS.
//!
//! The two roles are one pipeline built from different parts:
//!
//! ```text
//! listener (UDS | mTLS) -> admission (policy, path, deadline) -> frame relay -> dialer -> connector (mTLS | UDS | TCP)
//! ```
//!
//! `shim` and `relay` are library functions; `main.rs` only parses the
//! command line and calls them, so tests drive the same code.

pub mod admin;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod connect;
pub mod demo;
pub mod escape;
pub mod fold;
pub mod forward;
pub mod frames;
pub mod health;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod quiet_unix;
pub mod relay;
pub mod settings;
pub mod shim;
pub mod shutdown;
pub mod status;
pub mod tls;

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
