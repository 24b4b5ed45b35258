//! `openshell-driver-bridge`: parse the command line, set up logging, run
//! the chosen role. All logic lives in the library.

use std::process::ExitCode;

use clap::Parser;
use openshell_driver_bridge::config::{Cli, Command};
use openshell_driver_bridge::{cli, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let demo = matches!(cli.command, Command::Demo(_));
    if let Err(e) = logging::init(&cli.log, demo) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
