//! The relay's access policy, read again from the process's own command
//! line, environment and `--config` file exactly as at start (same
//! precedence, same validation), for a reload on SIGHUP or a file change.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use crate::admit::policy::Policy;
use crate::cli::args::{parse_from, CheckRole, Command, ParseError};
use crate::role::policy_reload::PolicySource;

/// A source that re-parses `argv` (the relay's arguments as started) with
/// the `--config` file at `file`.
pub fn source(argv: Vec<OsString>, file: PathBuf) -> PolicySource {
    PolicySource { file, load: Arc::new(move || load(argv.clone())) }
}

fn load(argv: Vec<OsString>) -> Result<Policy, String> {
    let parsed = parse_from(argv).map_err(|e| match e {
        ParseError::File(message) => message,
        ParseError::Clap(error) => {
            let text = error.render().to_string();
            text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim_start_matches("error: ").to_owned()
        }
    })?;
    let args = match parsed.cli.command {
        Command::Relay(args) => args,
        Command::Check(check) => match check.role {
            Some(CheckRole::Relay(args)) => args,
            _ => return Err("not a relay command line".into()),
        },
        _ => return Err("not a relay command line".into()),
    };
    let config = args.to_config()?;
    Ok(Policy::Clients { rules: config.rules, any_client: config.any_client })
}
