//! Observability: metrics, and the two rules for log lines (names from
//! the wire escaped, repeats folded).

pub mod escape;
pub mod fold;
pub mod metrics;
