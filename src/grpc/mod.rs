//! gRPC as the bridge itself speaks it: the statuses it originates, the
//! health service it answers, and a client for the contract (doctor,
//! demo, tests).

pub mod client;
pub mod contract;
pub mod health;
pub mod status;
