//! `check relay`: the relay's configuration and TLS material, the names
//! shims verify it by, its listen address, then the driver: a connection
//! and `GetCapabilities` over h2c, as the relay forwards it.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UnixStream};

use crate::cli::args::RelayArgs;
use crate::connect::Connector;
use crate::describe::describe_io_error;
use crate::grpc::client::GATEWAY_DUMMY_URI;
use crate::role::relay::{DriverTarget, RelayConfig};

use super::call::{call_capabilities, describe_status, CallError};
use super::listen::check_listen;
use super::material::{check_material, ip_sans, Material, Side};
use super::words::{ms, span};
use super::{fail, Outcome, Report};

const RELAY_STEPS: &[&str] =
    &["files", "cert-key", "chain", "validity", "peer-name", "listen", "driver-connect", "get-capabilities"];

pub(super) async fn check_relay(args: &RelayArgs, timeout: Duration, report: &mut Report) {
    let config = match args.to_config().and_then(|config| local_driver(&config).map(|()| config)) {
        Ok(config) => config,
        Err(e) => {
            report.record("config", fail(e, "fix the flag named above; see openshell-driver-bridge relay --help"));
            report.skip(RELAY_STEPS, "the configuration is invalid");
            return;
        }
    };
    report.record("config", Outcome::Pass(describe_relay(&config)));
    let material = check_material(&config.tls, Side::Server, report);
    match &material {
        Some(material) => report.record("peer-name", relay_names(&config, material)),
        None => report.record("peer-name", Outcome::Skip("our certificate is unusable (see above)".into())),
    };
    report.record("listen", check_listen(config.listen));
    super::callback::check_relay(&config, report);
    let started = Instant::now();
    match connect_driver(&config.driver, timeout).await {
        Ok(()) => {
            let detail = format!("{} connected in {}", target_name(&config.driver), ms(started.elapsed()));
            report.record("driver-connect", Outcome::Pass(detail));
        }
        Err(outcome) => {
            report.record("driver-connect", outcome);
            report.skip(&["get-capabilities"], "no connection to the driver");
            return;
        }
    }
    report.record("get-capabilities", driver_capabilities(&config.driver, timeout).await);
}

/// The relay refuses a non-loopback plaintext driver hop unless asked; so does the doctor.
fn local_driver(config: &RelayConfig) -> Result<(), String> {
    if config.driver.is_local() || config.unsafe_driver_target {
        return Ok(());
    }
    Err(format!(
        "--driver-url {}: not a loopback address; the driver hop is plaintext, so it must stay on this host (pass --unsafe-driver-target to allow it anyway)",
        target_name(&config.driver)
    ))
}

fn describe_relay(config: &RelayConfig) -> String {
    format!("listen {}, driver {}, clients {}", config.listen, target_name(&config.driver), config.describe_clients())
}

fn target_name(driver: &DriverTarget) -> String {
    match driver {
        DriverTarget::Unix(path) => path.display().to_string(),
        DriverTarget::Tcp(addr) => addr.to_string(),
    }
}

/// The relay's `peer-name` step: the names shims can verify it by, and the
/// identities it admits.
fn relay_names(config: &RelayConfig, material: &Material) -> Outcome {
    let Some(leaf) = material.chain.first() else {
        return fail("--cert holds no certificate", "pass the relay's certificate chain in --cert");
    };
    let mut names: Vec<String> = material.leaf.identity.dns.clone();
    names.extend(ip_sans(leaf).iter().map(IpAddr::to_string));
    if names.is_empty() {
        return fail(
            format!("certificate {} carries no DNS or IP name, so no shim can verify it", material.leaf.subject),
            "reissue it with a DNS SAN (development certificates: certs init --server-name NAME)",
        );
    }
    Outcome::Pass(format!(
        "shims must verify us as {} (their --server-name or --upstream host); we admit {}",
        names.join(", "),
        config.describe_clients()
    ))
}

/// Connects to the driver once, for a precise error and hint.
async fn connect_driver(driver: &DriverTarget, timeout: Duration) -> Result<(), Outcome> {
    let attempt = async {
        match driver {
            DriverTarget::Unix(path) => UnixStream::connect(path).await.map(drop),
            DriverTarget::Tcp(addr) => TcpStream::connect(addr).await.map(drop),
        }
    };
    let shown = target_name(driver);
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(fail(format!("{shown}: {}", describe_io_error(&e)), driver_hint(driver, e.kind()))),
        Err(_) => Err(fail(
            format!("{shown}: no connection within {}", span(timeout)),
            "the driver does not accept connections: is it overloaded or stopped?",
        )),
    }
}

fn driver_hint(driver: &DriverTarget, kind: io::ErrorKind) -> String {
    match (driver, kind) {
        (DriverTarget::Unix(path), io::ErrorKind::NotFound) => format!(
            "no socket at {}: is the driver running, and is --driver-socket the path it serves?",
            path.display()
        ),
        (DriverTarget::Unix(_), io::ErrorKind::ConnectionRefused) => {
            "a stale socket: nothing listens on it; start the driver".into()
        }
        (DriverTarget::Unix(_), io::ErrorKind::PermissionDenied) => format!(
            "the driver's socket admits only its own user: run the relay (and check) as the driver's UID (this is uid {})",
            rustix::process::geteuid().as_raw()
        ),
        (DriverTarget::Tcp(addr), io::ErrorKind::ConnectionRefused) => {
            format!("nothing listens on {addr}: is the driver running, and is --driver-url its address?")
        }
        _ => "check --driver-socket or --driver-url".into(),
    }
}

/// GetCapabilities straight to the driver over h2c, as the relay forwards it.
async fn driver_capabilities(driver: &DriverTarget, timeout: Duration) -> Outcome {
    let (uri, connector) = match driver {
        DriverTarget::Unix(path) => (GATEWAY_DUMMY_URI.to_owned(), Connector::Unix(path.clone())),
        DriverTarget::Tcp(addr) => (format!("http://{addr}"), Connector::Tcp(*addr)),
    };
    match call_capabilities(&uri, connector, timeout).await {
        Ok(done) => Outcome::Pass(done.describe()),
        Err(CallError::Connect(e)) => {
            fail(format!("{}: cannot connect: {e}", target_name(driver)), "the driver stopped accepting connections")
        }
        Err(CallError::Status(status)) => {
            let hint = match status.code() {
                tonic::Code::Unimplemented => "the server on this socket is not a compute driver: check the path",
                _ => "the driver answered with an error: see the driver's log",
            };
            fail(describe_status(&status), hint)
        }
        Err(CallError::Timeout) => fail(
            format!("no answer within {}", span(timeout)),
            "the driver accepted the connection but did not answer: is it healthy? see its log",
        ),
    }
}
