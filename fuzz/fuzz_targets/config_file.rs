//! The TOML configuration file (`--config FILE`): `cli::file::file_to_flags`
//! on the file's text, and `config::parse_from` on a command line naming the
//! file (which merges it and runs clap), for the `shim` and `relay` roles.
//!
//! Properties:
//! - neither panics, whatever the text;
//! - a refusal is one line naming the file, and for a key its line number,
//!   and `parse_from` refuses a file exactly when `file_to_flags` does;
//! - what the file sets are long flags of the role (never `config`, `help`,
//!   `version`, `print-config`), each at most once (`connect_wait` and
//!   `connect-wait` are the same setting);
//! - every value the file passes its flag's own check also passes the real
//!   command-line parse (no "invalid value" from clap after the file was
//!   accepted);
//! - when the command line parses, the effective configuration it renders
//!   (what `--print-config` prints) is valid TOML, and read back as a config
//!   file gives the same settings again (round trip).
//!
//! The text is written to a file in a private temporary directory (see
//! `common/scratch.rs`); nothing else is read or written. Environment variables
//! `OPENSHELL_BRIDGE_*` must be unset while fuzzing.
#![no_main]

#[path = "common/config_file.rs"]
mod check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check::check(data));
