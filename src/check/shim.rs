//! `check shim`: the shim's configuration, its TLS material, the name each
//! upstream must present and its own socket; then, per upstream, the link
//! check (see `link.rs`).

use std::io;
use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::cli::args::ShimArgs;
use crate::connect::proxy::ProxyHop;
use crate::describe::describe_io_error;
use crate::role::shim::{proxy_roots, proxy_routes, ShimConfig};
use crate::tls::config::client_config;
use crate::tls::identity::PeerIdentity;

use super::link::{ClientTls, LinkCheck};
use super::material::{check_material, Side};
use super::{fail, Outcome, Report};

const SHIM_STEPS: &[&str] = &[
    "files",
    "cert-key",
    "chain",
    "validity",
    "peer-name",
    "socket",
    "proxy",
    "tcp-connect",
    "tls-handshake",
    "get-capabilities",
];

pub(super) async fn check_shim(args: &ShimArgs, timeout: Duration, report: &mut Report) {
    let config = match args.to_config() {
        Ok(config) => config,
        Err(e) => {
            report.record("config", fail(e, "fix the flag named above; see openshell-driver-bridge shim --help"));
            report.skip(SHIM_STEPS, "the configuration is invalid");
            return;
        }
    };
    report.record("config", Outcome::Pass(describe_shim(&config)));
    let material = check_material(&config.tls, Side::Client, report);
    let identity = material.as_ref().map(|m| m.leaf.identity.clone());
    let names = check_server_names(&config, identity.as_ref(), report);
    report.record("socket", check_shim_socket(&config.socket));
    let tls = match &material {
        Some(_) => match client_config(&config.tls, &config.expect_server) {
            Ok(tls) => ClientTls::Ready(Arc::new(tls)),
            Err(e) => ClientTls::Broken(e.to_string()),
        },
        None => ClientTls::Unusable,
    };
    let routes = match proxy_routes(&config) {
        Ok(routes) => routes,
        Err(e) => {
            report.record("proxy", fail(e.to_string(), "fix --proxy-ca (the CA that issued the https:// proxy's certificate), or give the proxy's http:// URL"));
            report.skip(&SHIM_STEPS[SHIM_STEPS.len() - 3..], "no TLS configuration for the proxy");
            return;
        }
    };
    let proxy_roots = proxy_roots(&config);
    for ((upstream, name), (route, hop)) in config.upstreams.iter().zip(names).zip(&routes) {
        let link = LinkCheck {
            upstream,
            route,
            hop: hop.clone(),
            proxy_roots: &proxy_roots,
            name,
            tls: &tls,
            files: &config.tls,
            identity: identity.as_ref(),
            timeout,
        };
        link.run(report).await;
    }
    let hops: Vec<Option<ProxyHop>> = routes.into_iter().map(|(_, hop)| hop).collect();
    super::callback::check_shim(&config, &hops, timeout, report).await;
}

fn describe_shim(config: &ShimConfig) -> String {
    let upstreams: Vec<String> = config.upstreams.iter().map(|u| format!("https://{}", u.authority())).collect();
    let plural = if upstreams.len() == 1 { "" } else { "s" };
    format!("socket {}, upstream{plural} {}", config.socket.display(), upstreams.join(", "))
}

/// The `peer-name` step of a shim: which name each upstream's certificate
/// will be verified against. Returns the parsed name per upstream.
fn check_server_names(
    config: &ShimConfig,
    us: Option<&PeerIdentity>,
    report: &mut Report,
) -> Vec<Option<ServerName<'static>>> {
    let mut names = Vec::new();
    let mut parts = Vec::new();
    let mut problems = Vec::new();
    for upstream in &config.upstreams {
        let (name, source) = match &config.server_name {
            Some(name) => (name.clone(), "--server-name"),
            None => (upstream.host.clone(), "the --upstream host"),
        };
        match ServerName::try_from(name.clone()) {
            Ok(server_name) => {
                parts.push(format!("{} must present {name} ({source})", upstream.authority()));
                names.push(Some(server_name));
            }
            Err(_) => {
                problems.push(format!("{source} {name:?} is not a valid DNS name or IP address"));
                names.push(None);
            }
        }
    }
    if !problems.is_empty() {
        report.record(
            "peer-name",
            fail(problems.join("; "), "set --server-name to the DNS name or IP address in the upstream's certificate"),
        );
        return names;
    }
    let mut detail = parts.join("; ");
    if !config.expect_server.is_empty() {
        let pinned: Vec<String> = config.expect_server.iter().map(|p| p.to_string()).collect();
        detail.push_str(&format!(" and be {} (--expect-server)", pinned.join(" or ")));
    }
    if let Some(us) = us {
        detail.push_str(&format!("; we present {us}"));
    }
    report.record("peer-name", Outcome::Pass(detail));
    names
}

/// The shim's own socket: free, stale, or already served.
fn check_shim_socket(path: &Path) -> Outcome {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Outcome::Pass(format!("{shown} does not exist yet; the shim creates it (directory 0700, socket 0600)"))
        }
        Err(e) => fail(
            format!("{shown}: {}", describe_io_error(&e)),
            "the shim must be able to create its socket and directory: check the path and its parent's owner",
        ),
        Ok(meta) if meta.file_type().is_symlink() => {
            fail(format!("{shown} is a symlink; the shim refuses it"), "give the real path in --socket")
        }
        Ok(meta) if !meta.file_type().is_socket() => fail(
            format!("{shown} exists and is not a socket; the shim will not replace it"),
            "remove it, or choose another --socket",
        ),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Outcome::Pass(format!(
                "{shown} is served: a shim is running (check the gateway's view with check --socket {shown})"
            )),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Outcome::Pass(format!("{shown} is a stale socket; the shim replaces it on start"))
            }
            Err(e) => Outcome::Pass(format!("{shown} exists ({})", describe_io_error(&e))),
        },
    }
}
