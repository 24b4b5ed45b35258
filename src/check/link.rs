//! The shim's link to one upstream, step by step as the shim walks it: the
//! proxy it goes through (if any), TCP connect (to the proxy, then the
//! proxy's answer to CONNECT), the mTLS handshake with an HTTP/2 opening (a refused client
//! certificate only shows after it), then `GetCapabilities` through relay
//! and driver. Each failure names its likely cause.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::connect::open::PREFACE;
use crate::connect::proxy::{self, ProxyHop, ProxyUrl, Route};
use crate::connect::tcp::tune_tcp;
use crate::connect::tls::TlsConnector;
use crate::connect::{BoxIo, Connector};
use crate::describe::{describe_io_error, describe_tls_io_error};
use crate::role::shim::Upstream;
use crate::tls::config::TlsFiles;
use crate::tls::identity::PeerIdentity;
use crate::tls::material;

use super::call::{call_capabilities, describe_status, CallError};
use super::words::{date, ms, span};
use super::{fail, Outcome, Report};

/// An empty HTTP/2 SETTINGS frame: sent after the preface so that an HTTP/2
/// server answers with its own SETTINGS.
const EMPTY_SETTINGS_FRAME: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// The shim's client TLS configuration, if the material allowed one.
pub(super) enum ClientTls {
    Ready(Arc<rustls::ClientConfig>),
    /// The material check already failed (and said why).
    Unusable,
    /// The material looked fine, yet the configuration could not be built.
    Broken(String),
}

/// TCP, TLS and GetCapabilities to one upstream, as the shim reaches it.
pub(super) struct LinkCheck<'a> {
    pub(super) upstream: &'a Upstream,
    /// Directly or through a proxy, and why.
    pub(super) route: &'a Route,
    /// The proxy as the shim reaches it (with TLS for `https://`).
    pub(super) hop: Option<ProxyHop>,
    /// Where an `https://` proxy's certificate must chain to.
    pub(super) proxy_roots: &'a str,
    pub(super) name: Option<ServerName<'static>>,
    pub(super) tls: &'a ClientTls,
    pub(super) files: &'a TlsFiles,
    pub(super) identity: Option<&'a PeerIdentity>,
    pub(super) timeout: Duration,
}

impl LinkCheck<'_> {
    pub(super) async fn run(self, report: &mut Report) {
        let authority = self.upstream.authority();
        let tls_to_proxy = self.hop.as_ref().is_some_and(|hop| hop.url.tls);
        let roots = if tls_to_proxy {
            format!("; TLS to the proxy verified against {}", self.proxy_roots)
        } else {
            String::new()
        };
        report.record("proxy", Outcome::Pass(format!("{authority} {}{roots}", self.route)));
        // The steps of this link in order; a failed one skips those after it.
        let steps: Vec<&str> = std::iter::once("tcp-connect")
            .chain(tls_to_proxy.then_some("proxy-tls"))
            .chain(self.hop.is_some().then_some("proxy-connect"))
            .chain(["tls-handshake", "get-capabilities"])
            .collect();
        let after = |step: &str| steps.iter().position(|s| *s == step).map_or(&steps[..0], |at| &steps[at + 1..]);
        let connected = match &self.hop {
            None => tcp_connect(&authority, self.timeout).await,
            Some(hop) => proxy_connect(&hop.url, self.timeout).await,
        };
        let tcp = match connected {
            Ok((stream, detail)) => {
                report.record("tcp-connect", Outcome::Pass(detail));
                stream
            }
            Err(outcome) => {
                report.record("tcp-connect", outcome);
                let to = self.hop.as_ref().map_or(authority, |hop| hop.url.to_string());
                report.skip(after("tcp-connect"), &format!("no TCP connection to {to}"));
                return;
            }
        };
        let mut io: BoxIo = match &self.hop {
            Some(hop) if tls_to_proxy => {
                let started = Instant::now();
                match proxy::secure_proxy(hop, tcp, self.timeout).await {
                    Ok(secured) => {
                        let detail = format!("TLS with proxy {} in {}", hop.url, ms(started.elapsed()));
                        report.record("proxy-tls", Outcome::Pass(detail));
                        secured
                    }
                    Err(e) => {
                        let hint = format!(
                            "the proxy's certificate must chain to {} and carry the name {}: give its CA with --proxy-ca FILE, or fix the proxy's address",
                            self.proxy_roots, hop.url.host
                        );
                        report.record("proxy-tls", fail(e.0, hint));
                        report.skip(after("proxy-tls"), "no TLS connection to the proxy");
                        return;
                    }
                }
            }
            _ => Box::new(tcp),
        };
        if let Some(hop) = &self.hop {
            let started = Instant::now();
            match proxy::open_tunnel(&mut io, &hop.url, &authority, self.timeout).await {
                Ok(answer) => {
                    let detail = format!("CONNECT {authority}: {} in {}", answer.line, ms(started.elapsed()));
                    report.record("proxy-connect", Outcome::Pass(detail));
                }
                Err(e) => {
                    report.record("proxy-connect", fail(e.0.clone(), tunnel_hint(&e.0, &hop.url, &authority)));
                    report.skip(after("proxy-connect"), "the proxy opened no tunnel");
                    return;
                }
            }
        }
        let config = match self.tls {
            ClientTls::Ready(config) => config.clone(),
            ClientTls::Unusable => {
                report.skip(&["tls-handshake", "get-capabilities"], "our certificate or key is unusable (see above)");
                return;
            }
            ClientTls::Broken(e) => {
                report.record("tls-handshake", fail(e.clone(), "fix the TLS files named above"));
                report.skip(&["get-capabilities"], "no TLS configuration");
                return;
            }
        };
        let Some(name) = self.name.clone() else {
            report.skip(&["tls-handshake", "get-capabilities"], "the server name is invalid (see peer-name)");
            return;
        };
        if !report.record("tls-handshake", self.handshake(io, name.clone(), config.clone()).await) {
            report.skip(&["get-capabilities"], "the TLS handshake failed");
            return;
        }
        report.record("get-capabilities", self.capabilities(name, config).await);
    }

    /// The handshake exactly as the shim does it, then an HTTP/2 opening to
    /// see whether the peer accepted our certificate (with TLS 1.3 a refused
    /// client certificate only shows after the client's side is done).
    async fn handshake(&self, io: BoxIo, name: ServerName<'static>, config: Arc<rustls::ClientConfig>) -> Outcome {
        let authority = self.upstream.authority();
        let connector = tokio_rustls::TlsConnector::from(config);
        let name_for_probe = name.clone();
        let mut stream = match tokio::time::timeout(self.timeout, connector.connect(name, io)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let mut hint = self.handshake_hint(&e, false);
                if matches!(rustls_error(&e), Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)))
                {
                    // Which chain did the relay send? A missing intermediate is the usual cause.
                    if let Some(sent) =
                        super::chain::presented_by(&authority, name_for_probe.clone(), self.timeout).await
                    {
                        let ca = self.ca_certs();
                        if let Some(issuer) = super::chain::missing_issuer(&sent, &ca) {
                            hint = super::chain::missing_hint("the upstream's", &issuer, sent.len());
                        }
                        return fail(
                            format!(
                                "{authority}: {}; chain sent: {}",
                                describe_tls_io_error(&e),
                                super::chain::describe(&sent, &ca)
                            ),
                            hint,
                        );
                    }
                }
                return fail(format!("{authority}: {}", describe_tls_io_error(&e)), hint);
            }
            Err(_) => {
                return fail(
                    format!("{authority}: no TLS handshake within {}", span(self.timeout)),
                    format!("the peer accepted TCP but did not answer TLS: is {authority} the relay's TLS port?"),
                )
            }
        };
        let mut session = describe_session(stream.get_ref().1);
        if let (Outcome::Pass(detail) | Outcome::Warn(detail, _), Some(sent)) =
            (&mut session, stream.get_ref().1.peer_certificates())
        {
            detail.push_str(&format!("; chain {}", super::chain::describe(sent, &self.ca_certs())));
        }
        match open_http2(&mut stream, self.timeout).await {
            Opening::Answered => session,
            Opening::Refused(e) => {
                fail(format!("{authority}: {}", describe_tls_io_error(&e)), self.handshake_hint(&e, true))
            }
            Opening::Closed => fail(
                format!("{authority}: the peer closed the connection right after the handshake"),
                self.closed_after_handshake_hint(),
            ),
            Opening::Silent => match session {
                Outcome::Pass(detail) => Outcome::Warn(
                    detail,
                    format!("no HTTP/2 answer within {} after the handshake; see get-capabilities", span(self.timeout)),
                ),
                other => other,
            },
        }
    }

    /// The certificates of `--ca` (none when unreadable).
    fn ca_certs(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        material::load_certs("--ca", &self.files.ca).unwrap_or_default()
    }

    /// What to do about a failed handshake; `after` when our side had
    /// completed it and the peer then refused (or dropped) the connection.
    fn handshake_hint(&self, error: &io::Error, after: bool) -> String {
        let authority = self.upstream.authority();
        let Some(tls) = rustls_error(error) else {
            if after {
                return self.closed_after_handshake_hint();
            }
            return format!(
                "the peer closed the connection during the handshake: is {authority} the relay's TLS port? see the relay's log"
            );
        };
        match tls {
            rustls::Error::InvalidCertificate(problem) => self.server_cert_hint(problem),
            rustls::Error::AlertReceived(
                AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateRequired
                | AlertDescription::CertificateUnknown
                | AlertDescription::AccessDenied,
            ) => format!(
                "the relay does not trust our --cert {}: its --ca must be the CA that issued our certificate",
                self.files.cert.display()
            ),
            rustls::Error::AlertReceived(AlertDescription::DecryptError) if after => format!(
                "the relay does not trust our --cert {}: it knows a CA of our issuer's name but not the key that signed it (another certs init run?); its --ca must be the CA that issued our certificate",
                self.files.cert.display()
            ),
            rustls::Error::AlertReceived(AlertDescription::CertificateExpired) => {
                "the relay considers our certificate expired: renew it, or check the clocks of both hosts".into()
            }
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure)
            | rustls::Error::PeerIncompatible(_) => {
                "no common TLS version or cipher suite: TLS 1.2 needs --tls12 on both sides".into()
            }
            rustls::Error::General(message) if message.contains("expected") => {
                "the upstream is not the identity --expect-server pins: fix --expect-server, or the relay's certificate"
                    .into()
            }
            _ => format!("is {authority} a TLS endpoint (the relay's --listen), not another service?"),
        }
    }

    fn closed_after_handshake_hint(&self) -> String {
        format!(
            "the relay dropped us after the handshake, most likely refusing our --cert {}: its --ca must be the CA that issued it; see the relay's log",
            self.files.cert.display()
        )
    }

    fn server_cert_hint(&self, problem: &CertificateError) -> String {
        match problem {
            CertificateError::UnknownIssuer => format!(
                "the upstream's certificate was not issued by the CA in --ca {}: give the CA that issued the relay's certificate",
                self.files.ca.display()
            ),
            CertificateError::BadSignature => format!(
                "the upstream's certificate names the CA in --ca {} as its issuer but another key signed it: a CA of the same name from another certs init run? give the CA that issued the relay's certificate",
                self.files.ca.display()
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "set --server-name to a name the upstream's certificate carries (listed above), or reissue it with the --upstream host"
                    .into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the upstream's certificate expired: renew it on the relay (or check this host's clock)".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the upstream's certificate is not valid yet: check the clocks of both hosts".into()
            }
            _ => "the upstream's certificate is unusable: reissue it".into(),
        }
    }

    /// GetCapabilities over a fresh mTLS connection, as the shim forwards it.
    async fn capabilities(&self, name: ServerName<'static>, config: Arc<rustls::ClientConfig>) -> Outcome {
        let connector = Connector::Tls(TlsConnector {
            address: self.upstream.authority(),
            server_name: name,
            config: Arc::new(ArcSwap::new(config)),
            live: None,
            proxy: self.hop.clone(),
        });
        let uri = format!("https://{}", self.upstream.authority());
        match call_capabilities(&uri, connector, self.timeout).await {
            Ok(done) => Outcome::Pass(done.describe()),
            Err(CallError::Connect(e)) => fail(
                format!("{}: cannot connect: {e}", self.upstream.authority()),
                "the handshake above worked; try again, and see the relay's log",
            ),
            Err(CallError::Status(status)) => fail(describe_status(&status), self.status_hint(&status)),
            Err(CallError::Timeout) => fail(
                format!("no answer within {}", span(self.timeout)),
                "the relay accepted the call but no answer came: run openshell-driver-bridge check relay ... on the relay host",
            ),
        }
    }

    fn status_hint(&self, status: &tonic::Status) -> String {
        let us = self.identity.map(|id| id.to_string()).unwrap_or_else(|| "ours".into());
        match status.code() {
            tonic::Code::PermissionDenied => format!(
                "the relay does not admit our identity {us}: add --allow-client {us} on the relay, or present a certificate it admits"
            ),
            tonic::Code::Unavailable => {
                "the upstream answered but could not reach its driver: run openshell-driver-bridge check relay ... on the relay host"
                    .into()
            }
            tonic::Code::Unimplemented => {
                "the upstream does not serve the compute-driver contract: does --upstream point at a relay or an mTLS driver?"
                    .into()
            }
            _ => "the driver or the relay answered with an error: see their logs".into(),
        }
    }
}

/// TCP to the proxy, as the shim opens it.
async fn proxy_connect(proxy: &ProxyUrl, timeout: Duration) -> Result<(TcpStream, String), Outcome> {
    let started = Instant::now();
    match proxy::connect_proxy(proxy, timeout).await {
        Ok(stream) => Ok((stream, format!("proxy {proxy} connected in {}", ms(started.elapsed())))),
        Err(e) => {
            let hint = if e.0.contains("connection refused") {
                format!("nothing listens on {}: is the proxy running, and is this its address?", proxy.authority())
            } else {
                "check the proxy's address (--proxy or the variable named in the proxy step) and the network path to it"
                    .into()
            };
            Err(fail(e.0, hint))
        }
    }
}

/// What to do when the proxy opened no tunnel.
fn tunnel_hint(error: &str, proxy: &ProxyUrl, authority: &str) -> String {
    if error.contains("wants credentials") {
        "give the proxy's credentials in the URL: --proxy http://USER:PASSWORD@HOST:PORT (or in the variable named in the proxy step)".into()
    } else if error.contains("refused the credentials") {
        format!(
            "the proxy does not accept the password of user {}: fix it in the proxy URL",
            proxy.user().unwrap_or_default()
        )
    } else if error.contains("refused the tunnel") {
        format!("the proxy's policy does not allow CONNECT to {authority}: ask its operator to allow this host and port, or exempt it with no_proxy")
    } else {
        format!("is {} an HTTP proxy that allows CONNECT? see its log", proxy.authority())
    }
}

/// Resolves `authority` and connects to the first address that answers.
async fn tcp_connect(authority: &str, timeout: Duration) -> Result<(TcpStream, String), Outcome> {
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(timeout, tokio::net::lookup_host(authority)).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            return Err(fail(
                format!("cannot resolve {authority}: {e}"),
                "check the host in --upstream, and this host's DNS",
            ))
        }
        Err(_) => {
            return Err(fail(format!("cannot resolve {authority} within {}", span(timeout)), "check this host's DNS"))
        }
    };
    let mut last = fail(format!("{authority} resolves to no address"), "check the host in --upstream, and DNS");
    for addr in addrs {
        let shown = shown_address(authority, addr);
        let started = Instant::now();
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                tune_tcp(&stream);
                return Ok((stream, format!("{shown} connected in {}", ms(started.elapsed()))));
            }
            Ok(Err(e)) => last = fail(format!("{shown}: {}", describe_io_error(&e)), tcp_hint(e.kind(), authority)),
            Err(_) => {
                last = fail(
                    format!("{shown}: no answer within {}", span(timeout)),
                    "a firewall or network policy may drop the traffic, or the host is down",
                )
            }
        }
    }
    Err(last)
}

/// `relay.example:7443 (10.0.0.5:7443)`, or just `127.0.0.1:7443`.
fn shown_address(authority: &str, addr: SocketAddr) -> String {
    match authority.parse::<SocketAddr>() {
        Ok(same) if same == addr => authority.to_owned(),
        _ => format!("{authority} ({addr})"),
    }
}

fn tcp_hint(kind: io::ErrorKind, authority: &str) -> String {
    match kind {
        io::ErrorKind::ConnectionRefused => {
            format!("nothing listens on {authority}: is the relay running, and is this its --listen address?")
        }
        io::ErrorKind::TimedOut => "a firewall or network policy may drop the traffic, or the host is down".into(),
        _ => format!("check the address in --upstream and the network path to {authority}"),
    }
}

/// `TLS 1.3 TLS13_AES_256_GCM_SHA384, peer dns:localhost (expires 2027-11-28, 365 days)`;
/// a warning when the peer's certificate expires within a week.
fn describe_session(connection: &rustls::ClientConnection) -> Outcome {
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "TLS (version unknown)".to_owned(),
    };
    let suite = connection.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
    let leaf = connection.peer_certificates().and_then(|certs| certs.first());
    let Some(info) = leaf.and_then(|der| material::cert_info(der).ok()) else {
        return Outcome::Pass(format!("{version} {suite}, peer certificate unreadable"));
    };
    let days = (info.not_after - OffsetDateTime::now_utc()).whole_days();
    let detail = format!("{version} {suite}, peer {} (expires {}, {days} days)", info.identity, date(info.not_after));
    if days < 7 {
        Outcome::Warn(detail, "the upstream's certificate expires within a week: renew it on the relay".into())
    } else {
        Outcome::Pass(detail)
    }
}

/// What a peer did with our HTTP/2 opening.
enum Opening {
    /// It sent something back (its SETTINGS): it accepted us.
    Answered,
    /// A TLS alert or an I/O error.
    Refused(io::Error),
    /// It closed the connection without a word.
    Closed,
    /// Nothing within the time limit.
    Silent,
}

/// Sends the HTTP/2 preface and an empty SETTINGS frame, then reads. A
/// failed write does not end the attempt: a peer that refused our
/// certificate sent its alert before closing, and reading finds it.
async fn open_http2<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, timeout: Duration) -> Opening {
    let exchange = async {
        let opening = [&PREFACE[..], &EMPTY_SETTINGS_FRAME].concat();
        let wrote = match stream.write_all(&opening).await {
            Ok(()) => stream.flush().await,
            Err(e) => Err(e),
        };
        let mut buf = [0u8; 64];
        let read = stream.read(&mut buf).await;
        match (wrote, read) {
            (_, Err(e)) if rustls_error(&e).is_some() => Opening::Refused(e),
            (_, Ok(n)) if n > 0 => Opening::Answered,
            (Err(e), _) | (Ok(()), Err(e)) => Opening::Refused(e),
            (Ok(()), Ok(_)) => Opening::Closed,
        }
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or(Opening::Silent)
}

fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}
