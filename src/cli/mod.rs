//! The command line: flags (each also an `OPENSHELL_BRIDGE_*` environment
//! variable), configuration files, validation with clear errors, and the
//! log output they ask for.

pub mod args;
pub mod file;
pub mod logging;
pub mod policy;
