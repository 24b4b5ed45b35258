//! `demo`: the whole chain on one machine with throw-away certificates.
//!
//! demo-driver, relay and shim run in this process, each exactly as its own
//! subcommand would run it, wired over real sockets and loopback mTLS.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::admit::policy::{Access, Rule};
use crate::cli::args::DemoArgs;
use crate::role::relay::{DriverTarget, RelayConfig};
use crate::role::shim::{ShimConfig, Upstream};
use crate::role::RoleSettings;
use crate::shutdown::{on_signals, Shutdown};
use crate::tls::config::TlsFiles;

const DRAIN: Duration = Duration::from_secs(5);

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (dir, _cleanup) = match args.dir {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new().prefix("openshell-bridge-demo-").tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    std::fs::create_dir_all(&dir)?;
    let certs = dir.join("certs");
    let pki = crate::pki::init(&certs, &[], &[], true)?;
    let driver_socket = dir.join("driver").join("driver.sock");
    let shim_socket = dir.join("shim").join("compute-driver.sock");

    let shutdown = Shutdown::new();
    let driver_task = crate::demo::serve_driver(&driver_socket, Default::default(), shutdown.clone())?;
    let relay = crate::role::relay::start(
        RelayConfig {
            listen: "127.0.0.1:0".parse()?,
            driver: DriverTarget::Unix(driver_socket.clone()),
            unsafe_driver_target: false,
            tls: tls_files(&pki.ca, &pki.server_cert, &pki.server_key),
            rules: vec![Rule {
                pattern: "dns:openshell-gateway".parse().map_err(anyhow::Error::msg)?,
                access: Access::Full,
            }],
            any_client: None,
            settings: RoleSettings { drain_timeout: DRAIN, ..RoleSettings::default() },
        },
        shutdown.clone(),
    )
    .await?;
    let upstream = Upstream { host: "127.0.0.1".into(), port: relay.local_addr.port() };
    let shim = crate::role::shim::start(
        ShimConfig {
            socket: shim_socket.clone(),
            upstreams: vec![upstream.clone()],
            server_name: Some("localhost".into()),
            expect_server: vec![],
            tls: tls_files(&pki.ca, &pki.client_cert, &pki.client_key),
            allow_uids: vec![],
            // Everything is on this machine: no proxy from the environment.
            proxy: crate::connect::proxy::ProxySetting::Off,
            settings: RoleSettings { drain_timeout: DRAIN, ..RoleSettings::default() },
        },
        shutdown.clone(),
    )?;

    print_summary(&dir, &shim_socket, &upstream, &driver_socket);

    let code = if args.smoke {
        let steps = crate::demo::smoke::run(&shim_socket).await;
        for step in &steps {
            match &step.outcome {
                Ok(detail) => println!("  ok    {:<32} {:>5} ms  {detail}", step.name, step.elapsed.as_millis()),
                Err(error) => println!("  FAIL  {:<32} {:>5} ms  {error}", step.name, step.elapsed.as_millis()),
            }
        }
        let passed = crate::demo::smoke::passed(&steps);
        println!("smoke: {}", if passed { "every step behaved" } else { "FAILED" });
        shutdown.begin(Duration::from_millis(500));
        if passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    } else {
        println!("Running; Ctrl-C to stop.");
        tokio::spawn(on_signals(shutdown.clone(), DRAIN));
        shutdown.draining().cancelled().await;
        ExitCode::SUCCESS
    };
    let _ = shim.task.await;
    let _ = relay.task.await;
    shutdown.drained().await;
    shutdown.stop_now();
    let _ = driver_task.await;
    Ok(code)
}

fn tls_files(ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> TlsFiles {
    TlsFiles { reload_interval: std::time::Duration::from_millis(200), ..TlsFiles::new(ca, cert, key) }
}

fn print_summary(
    dir: &std::path::Path,
    shim_socket: &std::path::Path,
    upstream: &Upstream,
    driver_socket: &std::path::Path,
) {
    let socket: PathBuf = shim_socket.to_path_buf();
    println!();
    println!("openshell-driver-bridge demo ({})", dir.display());
    println!("  gateway --UDS--> shim ==mTLS 1.3==> relay --UDS--> demo-driver");
    println!("  shim socket   {}", socket.display());
    println!(
        "  relay         https://{} (server cert: localhost; client allowed: dns:openshell-gateway)",
        upstream.authority()
    );
    println!("  demo driver   {}", driver_socket.display());
    println!("  certificates  {}", dir.join("certs").display());
    println!();
    println!("Point an OpenShell gateway at the shim (as the same user):");
    println!("  --drivers demo --compute-driver-socket={}", socket.display());
    println!("  (or OPENSHELL_COMPUTE_DRIVER_SOCKET={})", socket.display());
    println!();
}
