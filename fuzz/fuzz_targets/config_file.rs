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

#[path = "common/scratch.rs"]
mod scratch;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;
use std::sync::OnceLock;

use clap::error::ErrorKind;
use clap::CommandFactory;
use libfuzzer_sys::fuzz_target;
use openshell_driver_bridge::cli::file::file_to_flags;
use openshell_driver_bridge::cli::args::{parse_from, Cli, ParseError};

const NOT_IN_FILE: &[&str] = &["help", "version", "config", "print-config"];

fn cli() -> &'static clap::Command {
    static CLI: OnceLock<clap::Command> = OnceLock::new();
    CLI.get_or_init(Cli::command)
}

fn parse(role: &str, path: &Path) -> Result<Option<String>, ParseError> {
    let args: Vec<OsString> =
        ["openshell-driver-bridge", role, "--config"].into_iter().map(OsString::from).chain([path.into()]).collect();
    parse_from(args).map(|parsed| parsed.effective)
}

/// `name = value` of every setting, without the `# source` comments.
fn settings(effective: &str) -> Vec<String> {
    effective
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit_once("  # ").map_or(l, |(setting, _)| setting).to_owned())
        .collect()
}

fn check_role(role: &str, text: &str, path: &Path) {
    let command = cli().find_subcommand(role).expect("role");
    let direct = file_to_flags(command, "fuzz.toml", text, &[]);
    match &direct {
        Ok(flags) => {
            let mut seen = BTreeSet::new();
            for (name, argv) in flags {
                assert!(!NOT_IN_FILE.contains(&name.as_str()), "{role}: the file set --{name}");
                assert!(
                    command.get_arguments().any(|a| a.get_long() == Some(name.as_str())),
                    "{role}: --{name} is not a flag of the role"
                );
                assert!(seen.insert(name.clone()), "{role}: the file sets --{name} twice: {text:?}");
                let flag = OsString::from(format!("--{name}"));
                assert!(argv.is_empty() || argv[0] == flag, "{role}: {argv:?} does not start with {flag:?}");
            }
        }
        Err(message) => {
            assert!(!message.contains(['\n', '\r']), "{role}: refusal is not one line: {message:?}");
            let names_file = message.starts_with("--config fuzz.toml: ") || message.starts_with("fuzz.toml:");
            assert!(names_file, "{role}: refusal does not name the file: {message:?}");
            if let Some(rest) = message.strip_prefix("fuzz.toml:") {
                let line: usize = rest.split(':').next().and_then(|n| n.parse().ok()).expect("a line number");
                assert!(line >= 1 && line <= text.lines().count().max(1), "{role}: line {line} is not in the file");
            }
        }
    }

    let effective = match parse(role, path) {
        Ok(effective) => {
            assert!(direct.is_ok(), "{role}: parse_from accepted what file_to_flags refused: {direct:?}");
            effective.expect("a role renders its effective configuration")
        }
        Err(ParseError::File(message)) => {
            assert!(direct.is_err(), "{role}: parse_from refused what file_to_flags accepted: {message}");
            assert!(!message.contains(['\n', '\r']), "{role}: refusal is not one line: {message:?}");
            assert!(message.contains(&path.display().to_string()), "{role}: refusal does not name the file");
            return;
        }
        Err(ParseError::Clap(e)) => {
            assert!(direct.is_ok(), "{role}: file_to_flags refused ({direct:?}) yet clap ran");
            assert!(
                !matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::UnknownArgument),
                "{role}: a value the file check accepted fails the command line: {}",
                e.render()
            );
            return;
        }
    };

    // What --print-config shows must itself be a config file meaning the same.
    if let Err(e) = effective.parse::<toml::Table>() {
        panic!("{role}: the effective configuration is not valid TOML ({e}):\n{effective}");
    }
    std::fs::write(path, &effective).expect("write");
    match parse(role, path) {
        Ok(again) => {
            let again = again.expect("effective");
            assert_eq!(settings(&again), settings(&effective), "{role}: round trip changed settings");
        }
        Err(ParseError::File(message)) => panic!("{role}: its own effective configuration is refused: {message}"),
        Err(ParseError::Clap(e)) => panic!("{role}: its own effective configuration is refused: {}", e.render()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = &scratch::file("bridge.toml");
    for role in ["shim", "relay"] {
        std::fs::write(path, text).expect("write");
        check_role(role, text, path);
    }
});
