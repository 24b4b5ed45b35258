//! Everything TLS: loading certificates and keys (`material`), reading and
//! matching peer identities (`identity`), and building the rustls client and
//! server configurations both hops use (`config`).
//!
//! Kept apart from the listeners and connectors so that every hop loads,
//! checks and names certificates the same way.

pub mod config;
pub mod identity;
pub mod material;
pub mod reload;
