//! Everything TLS: loading certificates and keys (`material`), reading and
//! matching peer identities (`identity`), and building the rustls client and
//! server configurations both hops use (`config`), and the revocation
//! lists they check peers against (`crl`).
//!
//! Kept apart from the listeners and connectors so that every hop loads,
//! checks and names certificates the same way.

pub mod config;
pub mod crl;
pub mod error;
pub mod identity;
pub mod material;
pub mod reload;
