//! `demo`: the whole chain on one machine with throw-away certificates.
//!
//! demo-driver, relay and shim run in this process, each exactly as its own
//! subcommand would run it, wired over real sockets and loopback mTLS.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::admit::policy::{Access, Rule};
use crate::callback::relay::RelayCallback;
use crate::callback::shim::ShimCallback;
use crate::callback::CallbackSettings;
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
    // The gateway's own endpoint, where sandboxes call back: a stand-in.
    let gateway_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway_addr = gateway_listener.local_addr()?;
    crate::demo::gateway::serve(
        gateway_listener,
        crate::demo::gateway::server_tls(&pki.server_cert, &pki.server_key)?,
        shutdown.clone(),
    );
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
            policy_source: None,
            callback: Some(RelayCallback {
                listen: "127.0.0.1:0".parse()?,
                client: "dns:openshell-gateway".parse().map_err(anyhow::Error::msg)?,
                settings: CallbackSettings::default(),
            }),
        },
        shutdown.clone(),
    )
    .await?;
    let callback_addr = relay.callback_addr.ok_or_else(|| anyhow::anyhow!("the relay has no callback listener"))?;
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
            proxy_ca: None,
            settings: RoleSettings { drain_timeout: DRAIN, ..RoleSettings::default() },
            callback: Some(ShimCallback { target: gateway_addr.to_string(), settings: CallbackSettings::default() }),
        },
        shutdown.clone(),
    )?;

    print_summary(&dir, &shim_socket, &upstream, &driver_socket);
    println!("The way back (sandboxes calling the gateway):");
    println!(
        "  sandbox --TCP--> relay {callback_addr} ==callback link==> shim --TCP--> gateway stand-in {gateway_addr}"
    );
    println!("  (a TLS gRPC server with the demo's server certificate, name localhost:");
    println!("   a sandbox would use OPENSHELL_ENDPOINT=https://localhost:{})", callback_addr.port());
    println!();

    let code = if args.smoke {
        let steps = crate::demo::smoke::run(&shim_socket).await;
        let callback = callback_step(&shim, callback_addr, &pki.ca).await;
        for step in steps.iter().chain([&callback]) {
            match &step.outcome {
                Ok(detail) => println!("  ok    {:<32} {:>5} ms  {detail}", step.name, step.elapsed.as_millis()),
                Err(error) => println!("  FAIL  {:<32} {:>5} ms  {error}", step.name, step.elapsed.as_millis()),
            }
        }
        let passed = crate::demo::smoke::passed(&steps) && callback.outcome.is_ok();
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

/// A sandbox's call through the way back: TLS to the gateway stand-in
/// through the relay's callback listener, verified as `localhost`.
async fn callback_step(
    shim: &crate::role::shim::RunningShim,
    callback: std::net::SocketAddr,
    ca: &std::path::Path,
) -> crate::demo::smoke::Step {
    let started = std::time::Instant::now();
    let metrics = shim.forwarder.metrics().clone();
    for _ in 0..100 {
        if metrics.callback.links() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcome = crate::demo::gateway::call(callback, ca, "localhost")
        .await
        .map(|name| format!("{name} answered through {callback} (TLS end to end, verified as localhost)"));
    crate::demo::smoke::Step { name: "callback: GetCapabilities", outcome, elapsed: started.elapsed() }
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
