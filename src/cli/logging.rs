//! Log output: text or JSON lines on stderr, filtered by `--log-level` or
//! `RUST_LOG`. Nothing the bridge logs contains a message body.

use tracing_subscriber::EnvFilter;

use crate::admit::call_log::CALL_LOG_TARGET;
use crate::cli::args::LogArgs;

/// Installs the global subscriber. The demo also shows one line per call.
pub fn init(args: &LogArgs, demo: bool) -> Result<(), String> {
    let mut filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG {spec:?}: {e}"))?
        }
        _ => EnvFilter::try_new(&args.log_level)
            .map_err(|e| format!("--log-level {:?}: {e}; use error, warn, info, debug or trace", args.log_level))?,
    };
    if demo {
        if let Ok(directive) = format!("{CALL_LOG_TARGET}=debug").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let result =
        if args.log_format == "json" { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}
