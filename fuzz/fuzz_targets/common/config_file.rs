//! The check of the `config_file` fuzz target, shared with `tests/fuzz_regressions.rs`
//! so its regression inputs run under `cargo test` (the target's properties
//! are described in `fuzz_targets/config_file.rs`).

#[path = "scratch.rs"]
mod scratch;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;
use std::sync::OnceLock;

use clap::error::ErrorKind;
use clap::CommandFactory;
use openshell_driver_bridge::cli::args::{parse_from, Cli, ParseError};
use openshell_driver_bridge::cli::file::file_to_flags;

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

/// Checks the target's properties on one input (panics when one breaks).
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = &scratch::file("bridge.toml");
    for role in ["shim", "relay"] {
        std::fs::write(path, text).expect("write");
        check_role(role, text, path);
    }
}
