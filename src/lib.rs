//! openshell-driver-bridge: stretches an OpenShell compute-driver socket
//! across networks over mutually authenticated TLS.
//!
//! The two roles are one pipeline built from different parts:
//!
//! ```text
//! listener (UDS | mTLS) -> policy -> forwarder -> connector (mTLS | UDS | TCP loopback)
//! ```

pub mod proto {
    //! The contract's generated types, used where the bridge itself speaks
    //! it (demo driver, doctor, tests); never on the forwarding path.
    pub mod compute {
        tonic::include_proto!("openshell.compute.v1");
    }
    pub mod options {
        tonic::include_proto!("openshell.options.v1");
    }
}
