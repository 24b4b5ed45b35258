//! Listeners: where calls come in. The shim listens on a private Unix
//! socket and vets peers by credentials; the relay listens on TCP and vets
//! peers by mutual TLS. Both hand each connection, with who is calling, to
//! the same pipeline. The relay's callback listener (`callback.rs`) hands
//! sandboxes' connections to the callback hub instead.

pub mod accept;
pub mod callback;
pub mod fds;
pub mod handshakes;
pub mod limit;
pub mod tls;
pub mod uds;
