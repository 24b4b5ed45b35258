//! `openshell-driver-bridge`: parse the command line, set up logging, run
//! the chosen role. All logic lives in the library.

use std::process::ExitCode;

use openshell_driver_bridge::cli::args::{parse_from, Command, ParseError};
use openshell_driver_bridge::cli::logging;
use openshell_driver_bridge::run::run;

fn main() -> ExitCode {
    let parsed = match parse_from(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(ParseError::File(message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let demo = matches!(parsed.cli.command, Command::Demo(_));
    if let Err(e) = logging::init(&parsed.cli.log, demo) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // One thread by default: a relayed call then never hops between worker
    // threads, which measured ~25% less CPU per call (see BENCHMARKS.md).
    let runtime = match parsed.cli.command.worker_threads() {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(parsed)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
