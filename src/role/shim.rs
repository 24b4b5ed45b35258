//! The shim: a drop-in driver socket next to the gateway whose every call
//! goes over mutual TLS to an upstream (a relay, or a driver that speaks
//! mTLS itself).

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme};
use rustls::pki_types::ServerName;

use crate::admit::policy::Policy;
use crate::admit::Forwarder;
use crate::callback::shim::ShimCallback;
pub use crate::connect::address::Upstream;
use crate::connect::dialer::{Dialer, Target};
use crate::connect::proxy::{ProxyHop, ProxySetting, Route};
use crate::connect::severable::LiveUpstreams;
use crate::connect::{tls::TlsConnector, Connector};
use crate::listen::uds::{self, PrivateSocket};
use crate::pipeline::ServerSettings;
use crate::role::RoleSettings;
use crate::shutdown::Shutdown;
use crate::tls::config::{
    client_config, describe_certificate, proxy_client_config, server_verifier, with_alpn, TlsFiles, ALPN_CALLBACK,
};
use crate::tls::identity::IdentityPattern;
use crate::tls::reload::ReloadHooks;

/// Everything the shim needs, validated.
#[derive(Clone, Debug)]
pub struct ShimConfig {
    pub socket: PathBuf,
    pub upstreams: Vec<Upstream>,
    /// Name to verify the upstream's certificate against instead of its host.
    pub server_name: Option<String>,
    pub expect_server: Vec<IdentityPattern>,
    pub tls: TlsFiles,
    pub allow_uids: Vec<u32>,
    /// `--proxy`, or the proxy variables read at start.
    pub proxy: ProxySetting,
    /// `--proxy-ca`: the roots an `https://` proxy is verified against
    /// (the system's when absent).
    pub proxy_ca: Option<PathBuf>,
    pub settings: RoleSettings,
    /// Carry sandboxes' connections back to the gateway (`--callback-target`).
    pub callback: Option<ShimCallback>,
}

/// A shim that is serving.
pub struct RunningShim {
    pub socket: PathBuf,
    pub forwarder: Forwarder,
    pub tls: Arc<ArcSwap<rustls::ClientConfig>>,
    pub task: tokio::task::JoinHandle<()>,
    /// Where the admin endpoint listens, if it is on.
    pub admin: Option<std::net::SocketAddr>,
}

/// Loads the TLS material, binds the socket and starts serving. Every
/// problem with the configuration is reported here, before serving.
pub fn start(mut config: ShimConfig, shutdown: Shutdown) -> anyhow::Result<RunningShim> {
    // Local peers are checked by credentials at once: no handshakes to budget.
    crate::listen::fds::fit_connections(&mut config.settings.server, 0)?;
    let tls = Arc::new(ArcSwap::from_pointee(client_config(&config.tls, &config.expect_server)?));
    // The upstream connections open now, which a reloaded CRL may sever.
    let live = LiveUpstreams::default();
    let hops: Vec<Option<ProxyHop>> = proxy_routes(&config)?.into_iter().map(|(_, hop)| hop).collect();
    let tls_to_proxy = hops.iter().flatten().any(|hop| hop.url.tls);
    if config.proxy_ca.is_some() && !tls_to_proxy {
        tracing::warn!("--proxy-ca is given, yet no upstream goes through an https:// proxy: it is not used");
    }
    let proxy_tls = if tls_to_proxy { format!("verified against {}", proxy_roots(&config)) } else { "-".to_owned() };
    // The upstreams as reached with `tls`: the driver contract's dialer, and
    // the callback link's (same identity and upstreams, its own ALPN id).
    let targets_with = |tls: &Arc<ArcSwap<rustls::ClientConfig>>| {
        config
            .upstreams
            .iter()
            .zip(&hops)
            .map(|(upstream, hop)| target_for(upstream, config.server_name.as_deref(), tls, hop, &live))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let targets = targets_with(&tls)?;
    let routes = describe_routes(&config)?;
    let dialer = Dialer::new("upstream", targets, config.settings.dial.clone());
    let forwarder = Forwarder::new("shim", dialer, Policy::LocalPeers, config.settings.forward.clone());
    // The callback link: the same identity and upstreams, its own ALPN protocol.
    let callback_tls = Arc::new(ArcSwap::from_pointee(with_alpn(&tls.load(), ALPN_CALLBACK)));
    let callback_dialer = match &config.callback {
        Some(_) => Some(Dialer::new("callback upstream", targets_with(&callback_tls)?, config.settings.dial.clone())),
        None => None,
    };
    let expect = config.expect_server.clone();
    let reloaded_callback_tls = callback_tls.clone();
    let certificate = crate::tls::reload::keep_current(
        "shim client certificate",
        &config.tls,
        tls.clone(),
        move |files| {
            let config = client_config(files, &expect)?;
            reloaded_callback_tls.store(Arc::new(with_alpn(&config, ALPN_CALLBACK)));
            Ok(config)
        },
        ReloadHooks {
            swapped: Arc::new(move |files| sever_revoked(&live, files)),
            ..ReloadHooks::new(Arc::new(forwarder.metrics().expiry_sink()), Arc::new(forwarder.metrics().crl_sink()))
        },
        shutdown.clone(),
    );
    let socket = PrivateSocket::bind(&config.socket, &config.allow_uids)?;
    let admin = config.settings.start_admin(&forwarder, &shutdown)?;
    tracing::info!(
        socket = %config.socket.display(),
        upstreams = %forwarder.dialer().labels().join(", "),
        proxy = %routes,
        proxy_tls = %proxy_tls,
        server_name = config.server_name.as_deref().unwrap_or("(the upstream's host)"),
        expect_server = %config.expect_server.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        identity = %describe_certificate(certificate.as_ref()),
        allowed_uids = ?socket.allowed_uids(),
        admin = %admin.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        callback_target = config.callback.as_ref().map(|c| c.target.as_str()).unwrap_or("off"),
        "shim serving"
    );
    if let (Some(callback), Some(dialer)) = (&config.callback, callback_dialer) {
        crate::callback::shim::start(dialer, callback, forwarder.metrics().clone(), shutdown.clone());
    }
    // The gateway is a local peer: its death shows as end of file, and it
    // is never pinged.
    let server = ServerSettings { keepalive_interval: None, ..config.settings.server };
    let task = tokio::spawn(uds::run(socket, forwarder.clone(), server, shutdown));
    Ok(RunningShim { socket: config.socket, forwarder, tls, task, admin })
}

/// After new TLS material (a new `--crl`) is in force: the upstream
/// connections whose relay certificate it revokes are severed, each logged;
/// their calls end `UNAVAILABLE` naming the revocation and the redial is
/// refused at the handshake.
fn sever_revoked(live: &LiveUpstreams, files: &TlsFiles) {
    if files.crls.is_empty() || live.is_empty() {
        return;
    }
    let verifier = match server_verifier(files) {
        Ok(verifier) => verifier,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check open upstream connections against the reloaded CRLs");
            return;
        }
    };
    for severed in live.sever_revoked(verifier.as_ref()) {
        tracing::warn!(upstream = %severed.address, reason = %severed.reason, "upstream connection closed: the reloaded CRL revokes the relay's certificate");
    }
}

fn target_for(
    upstream: &Upstream,
    server_name: Option<&str>,
    tls: &Arc<ArcSwap<rustls::ClientConfig>>,
    proxy: &Option<ProxyHop>,
    live: &LiveUpstreams,
) -> anyhow::Result<Target> {
    let name = server_name.unwrap_or(&upstream.host).to_owned();
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| anyhow::anyhow!("--server-name {name:?}: not a valid DNS name or IP address"))?;
    let authority: Authority =
        upstream.authority().parse().map_err(|e| anyhow::anyhow!("--upstream {}: {e}", upstream.authority()))?;
    Ok(Target {
        connector: Connector::Tls(TlsConnector {
            address: upstream.authority(),
            server_name,
            config: tls.clone(),
            live: Some(live.clone()),
            proxy: proxy.clone(),
        }),
        scheme: Scheme::HTTPS,
        authority,
        label: format!("upstream {}", upstream.authority()),
        network: true,
    })
}

/// How each upstream is reached (directly, or through which proxy and
/// why), with the proxy hop its connector takes. The TLS configuration for
/// `https://` proxies is built once, from `--proxy-ca` or the system's
/// roots, and only when some upstream needs it.
pub fn proxy_routes(config: &ShimConfig) -> anyhow::Result<Vec<(Route, Option<ProxyHop>)>> {
    let routes = config
        .upstreams
        .iter()
        .map(|upstream| config.proxy.route(&upstream.host, upstream.port).map_err(|e| anyhow::anyhow!("proxy: {e}")))
        .collect::<anyhow::Result<Vec<Route>>>()?;
    let tls = match routes.iter().any(|route| route.proxy().is_some_and(|url| url.tls)) {
        true => Some(Arc::new(proxy_client_config(config.proxy_ca.as_deref()).map_err(anyhow::Error::msg)?)),
        false => None,
    };
    routes
        .into_iter()
        .map(|route| {
            let hop = route.proxy().map(|url| ProxyHop::new(url, tls.clone())).transpose();
            Ok((route, hop.map_err(anyhow::Error::msg)?))
        })
        .collect()
}

/// What an `https://` proxy's certificate must chain to.
pub fn proxy_roots(config: &ShimConfig) -> String {
    match &config.proxy_ca {
        Some(path) => format!("--proxy-ca {}", path.display()),
        None => "the system's roots".to_owned(),
    }
}

/// How each upstream is reached: `relay:7443 via proxy http://user:***@proxy:3128
/// (https_proxy)`, or `relay:7443 direct (no_proxy entry ".corp" matches; ...)`.
pub fn describe_routes(config: &ShimConfig) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for upstream in &config.upstreams {
        let route = config.proxy.route(&upstream.host, upstream.port).map_err(|e| anyhow::anyhow!("proxy: {e}"))?;
        parts.push(format!("{} {route}", upstream.authority()));
    }
    Ok(parts.join("; "))
}
