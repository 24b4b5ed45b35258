//! Observability: metrics, the admin endpoint, log output, and the two
//! rules for log lines (names from the wire escaped, repeats folded).

pub mod admin;
pub mod escape;
pub mod fold;
pub mod logging;
pub mod metrics;
