//! `check`'s steps for the way back (sandboxes calling the gateway).
//!
//! - shim, with `--callback-target`: the gateway's listener accepts TCP
//!   (`callback-target`), and per upstream the callback link opens
//!   (`callback-link`): TLS with the callback ALPN protocol, then the relay
//!   must open HTTP/2 on it, which it does only for its callback identity.
//!   The check's link says GOAWAY at once, so the relay routes no sandbox
//!   to it.
//! - relay, with `--callback-listen`: the address is free or served
//!   (`callback-listen`), and whose shim serves callbacks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::words::{ms, span};
use super::{fail, Outcome, Report};
use crate::callback::ALPN_CALLBACK;
use crate::connect::proxy::ProxyHop;
use crate::connect::tls::TlsConnector;
use crate::describe::describe_io_error;
use crate::role::relay::RelayConfig;
use crate::role::shim::{ShimConfig, Upstream};
use crate::tls::config::{client_config, with_alpn};

/// The shim's callback steps; nothing when it has no `--callback-target`.
pub(super) async fn check_shim(config: &ShimConfig, hops: &[Option<ProxyHop>], timeout: Duration, report: &mut Report) {
    let Some(callback) = &config.callback else {
        return;
    };
    report.record("callback-target", target(&callback.target, timeout).await);
    let tls = match client_config(&config.tls, &config.expect_server) {
        Ok(tls) => Arc::new(with_alpn(&tls, ALPN_CALLBACK)),
        Err(e) => {
            report.record("callback-link", Outcome::Skip(format!("no TLS configuration: {e}")));
            return;
        }
    };
    for (upstream, hop) in config.upstreams.iter().zip(hops) {
        let outcome = link(upstream, config.server_name.as_deref(), tls.clone(), hop.clone(), timeout).await;
        report.record("callback-link", outcome);
    }
}

/// The relay's callback steps; nothing when it has no `--callback-listen`.
pub(super) fn check_relay(config: &RelayConfig, report: &mut Report) {
    let Some(callback) = &config.callback else {
        return;
    };
    let outcome = match super::listen::check_listen(callback.listen) {
        Outcome::Pass(detail) => Outcome::Pass(format!(
            "{detail}; sandboxes' connections go to the gateway through the shim of {} (its --callback-target)",
            callback.client
        )),
        Outcome::Fail(detail, hint) => fail(format!("--callback-listen {detail}"), hint),
        other => other,
    };
    report.record("callback-listen", outcome);
}

async fn target(target: &str, timeout: Duration) -> Outcome {
    let started = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(_)) => Outcome::Pass(format!("the gateway's listener {target} accepts connections ({})", ms(started.elapsed()))),
        Ok(Err(e)) => fail(
            format!("--callback-target {target}: {}", describe_io_error(&e)),
            "nothing accepts connections there: is the gateway running, and is this its own listener (the address its sandboxes would call)?",
        ),
        Err(_) => fail(
            format!("--callback-target {target}: no connection within {}", span(timeout)),
            "the address swallows packets: a firewall, or the wrong host",
        ),
    }
}

/// One callback link opened and closed again, as the shim opens it
/// (through its proxy, if it has one).
async fn link(
    upstream: &Upstream,
    server_name: Option<&str>,
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<ProxyHop>,
    timeout: Duration,
) -> Outcome {
    let authority = upstream.authority();
    let name = server_name.unwrap_or(&upstream.host).to_owned();
    let Ok(name) = ServerName::try_from(name.clone()) else {
        return Outcome::Skip(format!("{name:?} is not a valid server name (see peer-name)"));
    };
    let started = Instant::now();
    let connector = TlsConnector {
        address: authority.clone(),
        server_name: name,
        config: Arc::new(ArcSwap::new(tls)),
        live: None,
        proxy,
    };
    let stream = match connector.connect(timeout).await {
        Ok(stream) => stream,
        Err(e) => {
            let hint = if e.0.to_ascii_lowercase().contains("application") {
                "the relay does not speak the callback protocol: upgrade it, and give it --callback-listen"
            } else {
                "see tcp-connect and tls-handshake"
            };
            return fail(format!("{authority}: {e}"), hint);
        }
    };
    match tokio::time::timeout(timeout, h2::server::handshake(stream)).await {
        Ok(Ok(mut connection)) => {
            // Take no sandbox: this link is only a probe.
            connection.graceful_shutdown();
            Outcome::Pass(format!("{authority} took the callback link ({})", ms(started.elapsed())))
        }
        Ok(Err(_)) => fail(
            format!("{authority} closed the callback link"),
            "the relay takes callback links only from its callback identity (--callback-client), and only with --callback-listen set: read its log (`refused a callback link`)",
        ),
        Err(_) => fail(
            format!("{authority}: the relay did not open the callback link within {}", span(timeout)),
            "the relay may be overloaded, or not an openshell-driver-bridge relay",
        ),
    }
}
