//! Runs a parsed command: starts the role, waits for a signal, drains.

use std::process::ExitCode;

use crate::cli::args::{CertsCommand, Command, Parsed};
use crate::shutdown::{on_signals, Shutdown};

pub async fn run(parsed: Parsed) -> anyhow::Result<ExitCode> {
    let print_config = match &parsed.cli.command {
        Command::Shim(args) => args.file.print_config,
        Command::Relay(args) => args.file.print_config,
        _ => false,
    };
    if print_config {
        // Validate first: a configuration that would not start is an error, not a listing.
        match &parsed.cli.command {
            Command::Shim(args) => drop(args.to_config().map_err(anyhow::Error::msg)?),
            Command::Relay(args) => drop(args.to_config().map_err(anyhow::Error::msg)?),
            _ => {}
        }
        print!("{}", parsed.effective.unwrap_or_default());
        if let Command::Shim(args) = &parsed.cli.command {
            let config = args.to_config().map_err(anyhow::Error::msg)?;
            println!("# proxy: {}", crate::role::shim::describe_routes(&config)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    match parsed.cli.command {
        Command::Shim(args) => {
            let config = args.to_config().map_err(anyhow::Error::msg)?;
            let drain = config.settings.drain_timeout;
            let shutdown = Shutdown::new();
            let shim = crate::role::shim::start(config, shutdown.clone())?;
            serve_until_signal(shutdown, drain, shim.task).await
        }
        Command::Relay(args) => {
            let mut config = args.to_config().map_err(anyhow::Error::msg)?;
            if let Some(file) = args.file.config.clone() {
                // The policy is re-read from this very command line and file.
                config.policy_source = Some(crate::cli::policy::source(std::env::args_os().collect(), file));
            }
            let drain = config.settings.drain_timeout;
            let shutdown = Shutdown::new();
            let relay = crate::role::relay::start(config, shutdown.clone()).await?;
            serve_until_signal(shutdown, drain, relay.task).await
        }
        Command::DemoDriver(args) => {
            let shutdown = Shutdown::new();
            let options = crate::demo::driver::DemoOptions {
                name: args.name,
                provision_delay: args.provision_delay,
                ..Default::default()
            };
            let task = crate::demo::serve_driver(&args.socket, options, shutdown.clone())?;
            serve_until_signal(shutdown, std::time::Duration::from_secs(5), task).await
        }
        Command::Certs(CertsCommand::Init(args)) if args.intermediate => {
            let paths = crate::pki::intermediate::init_with_intermediate(
                &args.out,
                &args.server_names,
                &args.client_names,
                args.force,
            )?;
            println!("wrote a development PKI with an intermediate CA to {}:", args.out.display());
            for (what, path) in paths.listing() {
                println!("  {what:<22} {}", path.display());
            }
            println!("Pass ca.pem (the root only) as --ca on both sides; server.pem and client.pem carry their intermediate.");
            println!("These are for development and trials only; use your own PKI (e.g. cert-manager) in production.");
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCommand::Init(args)) => {
            let paths = crate::pki::init(&args.out, &args.server_names, &args.client_names, args.force)?;
            println!("wrote development certificates to {}:", args.out.display());
            for (what, path) in paths.listing() {
                println!("  {what:<22} {}", path.display());
            }
            println!("These are for development and trials only; use your own PKI (e.g. cert-manager) in production.");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => crate::demo::run::run(args).await,
        Command::Check(args) => crate::check::run(args).await,
    }
}

/// Serves until SIGTERM/SIGINT, then drains and exits 0.
async fn serve_until_signal(
    shutdown: Shutdown,
    drain: std::time::Duration,
    task: tokio::task::JoinHandle<()>,
) -> anyhow::Result<ExitCode> {
    tokio::spawn(on_signals(shutdown.clone(), drain));
    let _ = task.await;
    shutdown.drained().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
