//! The relay: terminates mutual TLS next to the driver, decides whether the
//! client identity may make each call, and forwards to the driver's Unix
//! socket (or a loopback TCP port).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme};
use tokio::net::TcpListener;

use crate::admit::policy::{Access, Policy, Rule};
use crate::admit::Forwarder;
use crate::callback::relay::{Hub, RelayCallback};
use crate::connect::dialer::{Dialer, Target};
use crate::connect::Connector;
use crate::role::policy_reload::PolicySource;
use crate::role::RoleSettings;
use crate::shutdown::Shutdown;
use crate::tls::config::{client_verifier, describe_certificate, server_config, TlsFiles};
use crate::tls::reload::ReloadHooks;

/// Where the real driver listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverTarget {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl DriverTarget {
    /// Parses `--driver-url http://HOST:PORT` (an IP address: the relay
    /// does not resolve names for its driver).
    pub fn from_url(text: &str) -> Result<DriverTarget, String> {
        let uri: http::Uri =
            text.parse().map_err(|e| format!("{text:?} is not a URL ({e}); expected http://127.0.0.1:PORT"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "{text:?}: expected http://IP:PORT (the driver hop is local and plaintext; use --driver-socket for a Unix socket)"
            ));
        }
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr =
            host.parse().map_err(|_| format!("{text:?}: the host must be an IP address such as 127.0.0.1"))?;
        let port = uri.port_u16().ok_or_else(|| format!("{text:?} has no port"))?;
        Ok(DriverTarget::Tcp(SocketAddr::new(ip, port)))
    }

    pub fn is_local(&self) -> bool {
        match self {
            DriverTarget::Unix(_) => true,
            DriverTarget::Tcp(addr) => addr.ip().is_loopback(),
        }
    }

    pub fn label(&self) -> String {
        match self {
            DriverTarget::Unix(path) => format!("driver {}", path.display()),
            DriverTarget::Tcp(addr) => format!("driver {addr}"),
        }
    }
}

/// Everything the relay needs, validated.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub driver: DriverTarget,
    pub unsafe_driver_target: bool,
    pub tls: TlsFiles,
    pub rules: Vec<Rule>,
    pub any_client: Option<Access>,
    pub settings: RoleSettings,
    /// With `--config FILE`: where the access policy is re-read on SIGHUP
    /// or a change of the file.
    pub policy_source: Option<PolicySource>,
    /// Carry sandboxes' connections back to the gateway (`--callback-listen`).
    pub callback: Option<RelayCallback>,
}

impl RelayConfig {
    /// The admitted clients in words, for the start-up line and the doctor.
    pub fn describe_clients(&self) -> String {
        let mut parts: Vec<String> = self
            .rules
            .iter()
            .map(|r| match r.access {
                Access::Full => r.pattern.to_string(),
                Access::ReadOnly => format!("{} (read-only)", r.pattern),
            })
            .collect();
        match self.any_client {
            Some(Access::Full) => parts.push("any client of the CA".into()),
            Some(Access::ReadOnly) => parts.push("any client of the CA (read-only)".into()),
            None => {}
        }
        parts.join(", ")
    }
}

/// A relay that is serving.
pub struct RunningRelay {
    pub local_addr: SocketAddr,
    pub forwarder: Forwarder,
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
    pub task: tokio::task::JoinHandle<()>,
    /// Where the admin endpoint listens, if it is on.
    pub admin: Option<SocketAddr>,
    /// Where sandboxes' callback connections are accepted, if anywhere.
    pub callback_addr: Option<SocketAddr>,
}

/// Loads the TLS material, binds the listener and starts serving.
pub async fn start(mut config: RelayConfig, shutdown: Shutdown) -> anyhow::Result<RunningRelay> {
    if !config.driver.is_local() && !config.unsafe_driver_target {
        anyhow::bail!(
            "--driver-url {}: not a loopback address; the driver hop is plaintext, so it must stay on this host (pass --unsafe-driver-target to allow it anyway)",
            config.driver.label().trim_start_matches("driver ")
        );
    }
    if config.rules.is_empty() && config.any_client.is_none() {
        anyhow::bail!("no client may call: give --allow-client ID (dns:NAME, uri:URI or cn:NAME) or, explicitly, --allow-any-client");
    }
    // A handshake in progress holds one descriptor: the shared budget plus
    // the pool of returning clients (see listen::handshakes).
    let server = &mut config.settings.server;
    let handshakes = server.max_handshakes.saturating_add(server.max_handshakes_per_source);
    crate::listen::fds::fit_connections(server, handshakes)?;
    let tls = Arc::new(ArcSwap::from_pointee(server_config(&config.tls)?));
    let dialer = Dialer::new("driver", vec![driver_target(&config.driver)], config.settings.dial.clone());
    let policy = Policy::Clients { rules: config.rules.clone(), any_client: config.any_client };
    let forwarder = Forwarder::new("relay", dialer, policy, config.settings.forward.clone());
    let mut hooks =
        ReloadHooks::new(Arc::new(forwarder.metrics().expiry_sink()), Arc::new(forwarder.metrics().crl_sink()));
    let sessions = forwarder.clone();
    hooks.swapped = Arc::new(move |files| cut_revoked(&sessions, files));
    let certificate = crate::tls::reload::keep_current(
        "relay server certificate",
        &config.tls,
        tls.clone(),
        server_config,
        hooks,
        shutdown.clone(),
    );
    if let Some(source) = config.policy_source.clone() {
        crate::role::policy_reload::keep_current(
            source,
            forwarder.clone(),
            config.tls.reload_interval,
            shutdown.clone(),
        );
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: cannot bind: {e}", config.listen))?;
    let local_addr = listener.local_addr()?;
    if !local_addr.ip().is_loopback() {
        tracing::info!(%local_addr, "relay listening on a network address (clients must present a certificate of --ca)");
    }
    let callback = match &config.callback {
        Some(callback) => {
            let listener = TcpListener::bind(callback.listen)
                .await
                .map_err(|e| anyhow::anyhow!("--callback-listen {}: cannot bind: {e}", callback.listen))?;
            let dial = &config.settings.dial;
            let keepalive = dial.keepalive_interval.map(|every| (every, dial.keepalive_timeout));
            let hub = Hub::new(callback, keepalive, forwarder.metrics().clone());
            Some((listener, hub))
        }
        None => None,
    };
    let callback_addr = match &callback {
        Some((listener, _)) => Some(listener.local_addr()?),
        None => None,
    };
    let admin = config.settings.start_admin(&forwarder, &shutdown)?;
    tracing::info!(
        listen = %local_addr,
        driver = %config.driver.label(),
        clients = %config.describe_clients(),
        identity = %describe_certificate(certificate.as_ref()),
        tls12 = config.tls.tls12,
        admin = %admin.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        callback_listen = %callback_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        callback_client = %config.callback.as_ref().map(|c| c.client.to_string()).unwrap_or_else(|| "-".into()),
        "relay serving"
    );
    let hub = callback.map(|(listener, hub)| {
        tokio::spawn(crate::listen::callback::run(listener, hub.clone(), shutdown.clone()));
        hub
    });
    let task = tokio::spawn(crate::listen::tls::run(
        listener,
        tls.clone(),
        forwarder.clone(),
        config.settings.server,
        shutdown,
        hub,
    ));
    Ok(RunningRelay { local_addr, forwarder, tls, task, admin, callback_addr })
}

/// After new TLS material (a new `--crl`) is in force: the connections
/// whose client certificate it revokes are cut, each logged.
fn cut_revoked(forwarder: &Forwarder, files: &TlsFiles) {
    if files.crls.is_empty() || forwarder.sessions().is_empty() {
        return;
    }
    let verifier = match client_verifier(files) {
        Ok(verifier) => verifier,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check open connections against the reloaded CRLs");
            return;
        }
    };
    for cut in forwarder.sessions().cut_revoked(verifier.as_ref(), forwarder.role()) {
        tracing::warn!(
            remote = %cut.peer,
            client = %cut.identity,
            serial = %cut.serial,
            issuer = %cut.issuer,
            "client certificate revoked by the reloaded CRL; its connection is closed (its calls end UNAVAILABLE)"
        );
    }
}

fn driver_target(driver: &DriverTarget) -> Target {
    let connector = match driver {
        DriverTarget::Unix(path) => Connector::Unix(path.clone()),
        DriverTarget::Tcp(addr) => Connector::Tcp(*addr),
    };
    let authority = match driver {
        DriverTarget::Unix(_) => Authority::from_static("localhost"),
        DriverTarget::Tcp(addr) => addr.to_string().parse().unwrap_or(Authority::from_static("localhost")),
    };
    // A driver is local (a Unix socket, or loopback unless the operator
    // said otherwise), so it is never pinged: gRPC servers answer pings
    // they did not ask for with GOAWAY too_many_pings.
    let network = matches!(driver, DriverTarget::Tcp(addr) if !addr.ip().is_loopback());
    Target { connector, scheme: Scheme::HTTP, authority, label: driver.label(), network }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_urls() {
        assert_eq!(
            DriverTarget::from_url("http://127.0.0.1:9000").unwrap(),
            DriverTarget::Tcp("127.0.0.1:9000".parse().unwrap())
        );
        assert!(DriverTarget::from_url("http://[::1]:9000").unwrap().is_local());
        assert!(!DriverTarget::from_url("http://10.0.0.1:9000").unwrap().is_local());
        assert!(DriverTarget::from_url("https://127.0.0.1:9000").is_err());
        assert!(DriverTarget::from_url("http://driver:9000").is_err());
    }
}
