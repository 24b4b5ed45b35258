//! `check`: the doctor. It walks a configuration, or a shim's socket, the
//! way the bridge and the gateway would, one step at a time, and says for
//! each step whether it passed and, when it did not, what to do about it:
//!
//! ```text
//!   OK    tls-handshake     TLS 1.3 TLS13_AES_256_GCM_SHA384, peer dns:localhost (expires 2027-11-28, 365 days)
//!   FAIL  tcp-connect       127.0.0.1:7443: connection refused
//!         hint: nothing listens on 127.0.0.1:7443: is the relay running, and is this its --listen address?
//! ```
//!
//! Three forms:
//!
//! - `check shim <shim flags>`: the shim's outbound side. Its TLS files, the
//!   name each upstream must present, then per upstream a TCP connect, the
//!   mTLS handshake exactly as the shim does it, and `GetCapabilities`
//!   through the link (relay and driver included).
//! - `check relay <relay flags>`: the relay's side. Its TLS files, the
//!   client rules, the listen address, and `GetCapabilities` straight to the
//!   driver (h2c), as the relay would forward it.
//! - `check --socket PATH`: the gateway's view of a shim's socket.
//!
//! A step that depends on a failed one is shown as SKIP with the reason.
//! Every network step is bounded by `--timeout`. The exit code is 0 only
//! when no step failed (a WARN passes, with a hint).

use std::error::Error as StdError;
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::{Channel, Endpoint};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use crate::cli::args::{CheckArgs, CheckRole, RelayArgs, ShimArgs};
use crate::connect::open::PREFACE;
use crate::connect::tcp::tune_tcp;
use crate::connect::tls::TlsConnector;
use crate::connect::Connector;
use crate::describe::{describe_io_error, describe_tls_io_error};
use crate::grpc::client::GATEWAY_DUMMY_URI;
use crate::grpc::status::code_name;
use crate::proto::compute::compute_driver_client::ComputeDriverClient;
use crate::proto::compute::{GetCapabilitiesRequest, GetCapabilitiesResponse, ListSandboxesRequest};
use crate::role::relay::{DriverTarget, RelayConfig};
use crate::role::shim::{ShimConfig, Upstream};
use crate::tls::config::{client_config, provider, TlsFiles};
use crate::tls::identity::PeerIdentity;
use crate::tls::material::{self, CertInfo, MaterialError, Validity};

/// The largest answer `check` accepts, as the bridge does.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// An empty HTTP/2 SETTINGS frame: sent after the preface so that an HTTP/2
/// server answers with its own SETTINGS.
const EMPTY_SETTINGS_FRAME: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

mod callback;

// ---------------------------------------------------------------------------
// Command line

/// Runs the checks; the exit code is 0 only when no step failed.
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if args.timeout.is_zero() {
        anyhow::bail!("--timeout must be more than 0");
    }
    let timeout = args.timeout;
    let mut report = Report::default();
    match (args.socket, args.role) {
        (Some(path), None) => {
            report.header(&format!("the gateway's view of {}", path.display()), timeout);
            check_socket(&path, timeout, &mut report).await;
        }
        (None, Some(CheckRole::Shim(shim))) => {
            report.header("shim", timeout);
            check_shim(&shim, timeout, &mut report).await;
        }
        (None, Some(CheckRole::Relay(relay))) => {
            report.header("relay", timeout);
            check_relay(&relay, timeout, &mut report).await;
        }
        (Some(_), Some(_)) => {
            anyhow::bail!("give either --socket PATH or a role (check shim ..., check relay ...), not both")
        }
        (None, None) => anyhow::bail!(
            "nothing to check: give --socket PATH (a shim's socket), or `shim` or `relay` followed by that role's flags"
        ),
    }
    Ok(report.finish())
}

// ---------------------------------------------------------------------------
// Report

/// How one step went.
enum Outcome {
    Pass(String),
    /// Passed, but something deserves attention; the hint says what.
    Warn(String, String),
    /// Failed: what went wrong, and what to do about it.
    Fail(String, String),
    /// Not run because an earlier step failed; the reason.
    Skip(String),
}

fn fail(detail: impl Into<String>, hint: impl Into<String>) -> Outcome {
    Outcome::Fail(detail.into(), hint.into())
}

/// Writes one line to stdout at once; a closed pipe (`check ... | head`) is
/// not worth a panic.
fn print_line(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints steps as they finish and keeps the tally.
#[derive(Default)]
struct Report {
    passed: usize,
    warned: usize,
    failed: usize,
    skipped: usize,
}

impl Report {
    fn header(&self, what: &str, timeout: Duration) {
        print_line(&format!("check {what} (network steps time out after {})", span(timeout)));
    }

    /// Prints the step; true when it passed (with or without a warning).
    fn record(&mut self, step: &str, outcome: Outcome) -> bool {
        let (label, detail, hint) = match &outcome {
            Outcome::Pass(detail) => ("OK", detail.as_str(), None),
            Outcome::Warn(detail, hint) => ("WARN", detail.as_str(), Some(hint.as_str())),
            Outcome::Fail(detail, hint) => ("FAIL", detail.as_str(), Some(hint.as_str())),
            Outcome::Skip(reason) => ("SKIP", reason.as_str(), None),
        };
        print_line(&format!("  {label:<6}{step:<18}{detail}"));
        if let Some(hint) = hint {
            print_line(&format!("        hint: {hint}"));
        }
        match outcome {
            Outcome::Pass(_) => self.passed += 1,
            Outcome::Warn(..) => self.warned += 1,
            Outcome::Fail(..) => self.failed += 1,
            Outcome::Skip(_) => self.skipped += 1,
        }
        matches!(outcome, Outcome::Pass(_) | Outcome::Warn(..))
    }

    fn skip(&mut self, steps: &[&str], reason: &str) {
        for step in steps {
            self.record(step, Outcome::Skip(reason.to_owned()));
        }
    }

    /// Prints the summary line and picks the exit code.
    fn finish(&self) -> ExitCode {
        let mut summary = format!("check: {} passed", self.passed);
        if self.warned > 0 {
            summary.push_str(&format!(", {} warned", self.warned));
        }
        summary.push_str(&format!(", {} failed", self.failed));
        if self.skipped > 0 {
            summary.push_str(&format!(", {} skipped", self.skipped));
        }
        print_line(&summary);
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// check shim

const SHIM_STEPS: &[&str] = &[
    "files",
    "cert-key",
    "chain",
    "validity",
    "peer-name",
    "socket",
    "tcp-connect",
    "tls-handshake",
    "get-capabilities",
];

async fn check_shim(args: &ShimArgs, timeout: Duration, report: &mut Report) {
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
    for (upstream, name) in config.upstreams.iter().zip(names) {
        let link = LinkCheck { upstream, name, tls: &tls, files: &config.tls, identity: identity.as_ref(), timeout };
        link.run(report).await;
    }
    callback::check_shim(&config, timeout, report).await;
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

/// The shim's client TLS configuration, if the material allowed one.
enum ClientTls {
    Ready(Arc<rustls::ClientConfig>),
    /// The material check already failed (and said why).
    Unusable,
    /// The material looked fine, yet the configuration could not be built.
    Broken(String),
}

/// TCP, TLS and GetCapabilities to one upstream, as the shim reaches it.
struct LinkCheck<'a> {
    upstream: &'a Upstream,
    name: Option<ServerName<'static>>,
    tls: &'a ClientTls,
    files: &'a TlsFiles,
    identity: Option<&'a PeerIdentity>,
    timeout: Duration,
}

impl LinkCheck<'_> {
    async fn run(self, report: &mut Report) {
        let authority = self.upstream.authority();
        let tcp = match tcp_connect(&authority, self.timeout).await {
            Ok((stream, detail)) => {
                report.record("tcp-connect", Outcome::Pass(detail));
                stream
            }
            Err(outcome) => {
                report.record("tcp-connect", outcome);
                report.skip(&["tls-handshake", "get-capabilities"], &format!("no TCP connection to {authority}"));
                return;
            }
        };
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
        if !report.record("tls-handshake", self.handshake(tcp, name.clone(), config.clone()).await) {
            report.skip(&["get-capabilities"], "the TLS handshake failed");
            return;
        }
        report.record("get-capabilities", self.capabilities(name, config).await);
    }

    /// The handshake exactly as the shim does it, then an HTTP/2 opening to
    /// see whether the peer accepted our certificate (with TLS 1.3 a refused
    /// client certificate only shows after the client's side is done).
    async fn handshake(&self, tcp: TcpStream, name: ServerName<'static>, config: Arc<rustls::ClientConfig>) -> Outcome {
        let authority = self.upstream.authority();
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut stream = match tokio::time::timeout(self.timeout, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return fail(format!("{authority}: {}", describe_tls_io_error(&e)), self.handshake_hint(&e, false));
            }
            Err(_) => {
                return fail(
                    format!("{authority}: no TLS handshake within {}", span(self.timeout)),
                    format!("the peer accepted TCP but did not answer TLS: is {authority} the relay's TLS port?"),
                )
            }
        };
        let session = describe_session(stream.get_ref().1);
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

// ---------------------------------------------------------------------------
// check relay

const RELAY_STEPS: &[&str] =
    &["files", "cert-key", "chain", "validity", "peer-name", "listen", "driver-connect", "get-capabilities"];

async fn check_relay(args: &RelayArgs, timeout: Duration, report: &mut Report) {
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
    callback::check_relay(&config, report);
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

/// Whether the listen address is free or already served; binding is not
/// needed for the check, only informative.
fn check_listen(addr: SocketAddr) -> Outcome {
    if addr.port() == 0 {
        return Outcome::Pass(format!("{addr}: the system will pick a free port"));
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Outcome::Pass(format!("{addr} is free (no relay is serving it yet)")),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Outcome::Pass(format!("{addr} is in use: something serves it already (a running relay?)"))
        }
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => fail(
            format!("{addr}: not an address of this host"),
            "listen on an address of this host, or on 0.0.0.0:PORT for all of them",
        ),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => fail(
            format!("{addr}: permission denied"),
            "ports below 1024 need CAP_NET_BIND_SERVICE (AmbientCapabilities= in a systemd unit); or use a higher port",
        ),
        Err(e) => fail(format!("{addr}: {}", describe_io_error(&e)), "check --listen"),
    }
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

// ---------------------------------------------------------------------------
// check --socket

async fn check_socket(path: &Path, timeout: Duration, report: &mut Report) {
    let later = ["connect", "get-capabilities", "list-sandboxes"];
    if !report.record("socket", socket_file(path)) {
        report.skip(&later, "no socket to connect to");
        return;
    }
    if !report.record("connect", socket_connect(path, timeout).await) {
        report.skip(&later[1..], "no connection");
        return;
    }
    let started = Instant::now();
    let channel = match tokio::time::timeout(timeout, crate::grpc::client::uds_channel(path)).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            report.record("get-capabilities", fail(error_chain(&e), "see the shim's log"));
            report.skip(&later[2..], "no connection");
            return;
        }
        Err(_) => {
            report.record(
                "get-capabilities",
                fail(format!("no connection within {}", span(timeout)), "see the shim's log"),
            );
            report.skip(&later[2..], "no connection");
            return;
        }
    };
    let connected = started.elapsed();
    let mut client = driver_client(channel);
    let outcome = match timed(timeout, client.get_capabilities(GetCapabilitiesRequest {})).await {
        Ok((caps, rtt)) => Outcome::Pass(Capabilities { caps, rtt, connected }.describe()),
        Err(e) => socket_failure(e, path, timeout),
    };
    if !report.record("get-capabilities", outcome) {
        report.skip(&later[2..], "GetCapabilities failed");
        return;
    }
    let outcome = match timed(timeout, client.list_sandboxes(ListSandboxesRequest {})).await {
        Ok((list, rtt)) => Outcome::Pass(format!("{} sandbox(es), {} round trip", list.sandboxes.len(), ms(rtt))),
        Err(e) => socket_failure(e, path, timeout),
    };
    report.record("list-sandboxes", outcome);
}

/// The socket file as the gateway would find it.
fn socket_file(path: &Path) -> Outcome {
    let shown = path.display();
    let uid = rustix::process::geteuid().as_raw();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fail(
            format!("{shown}: no such socket"),
            format!(
                "is the shim running with --socket {shown}? the gateway's --compute-driver-socket must name the same path"
            ),
        ),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => fail(
            format!("{shown}: permission denied"),
            format!("the socket's directory admits only the shim's user (mode 0700): run check as that user (this is uid {uid})"),
        ),
        Err(e) => fail(format!("{shown}: {}", describe_io_error(&e)), "check the path"),
        Ok(meta) if !meta.file_type().is_socket() => {
            fail(format!("{shown} exists but is not a socket"), "give the path of the shim's --socket")
        }
        Ok(meta) => {
            let detail = format!("{shown}: socket, mode {:04o}, owner uid {}", meta.mode() & 0o7777, meta.uid());
            if meta.uid() == uid {
                Outcome::Pass(detail)
            } else {
                Outcome::Warn(
                    detail,
                    format!("check runs as uid {uid}: the shim admits only its own UID unless started with --allow-uid {uid}"),
                )
            }
        }
    }
}

async fn socket_connect(path: &Path, timeout: Duration) -> Outcome {
    let shown = path.display();
    let started = Instant::now();
    match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
        Ok(Ok(_)) => Outcome::Pass(format!("connected in {}", ms(started.elapsed()))),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => fail(
            format!("{shown}: connection refused (a stale socket: nothing listens on it)"),
            "the shim is not running: start it (it replaces its stale socket)",
        ),
        Ok(Err(e)) if e.kind() == io::ErrorKind::PermissionDenied => fail(
            format!("{shown}: permission denied"),
            "the socket admits only the shim's user (mode 0600): run check as the gateway's user, the shim's UID",
        ),
        Ok(Err(e)) => fail(format!("{shown}: {}", describe_io_error(&e)), "check the path"),
        Err(_) => {
            fail(format!("{shown}: no connection within {}", span(timeout)), "the shim is not accepting: see its log")
        }
    }
}

fn socket_failure(error: CallError, path: &Path, timeout: Duration) -> Outcome {
    let run_shim_check = "run openshell-driver-bridge check shim with the shim's flags to test its link";
    match error {
        CallError::Timeout => fail(
            format!("no answer within {}", span(timeout)),
            format!("the shim holds calls while its upstream is unreachable (up to --connect-wait): {run_shim_check}"),
        ),
        CallError::Connect(e) => fail(e, "see the shim's log"),
        CallError::Status(status) => {
            let hint = match status.code() {
                tonic::Code::Unavailable if status.source().is_none() => {
                    format!("the shim is up but cannot reach its upstream: {run_shim_check}")
                }
                tonic::Code::PermissionDenied => format!("the relay refused the shim's identity: {run_shim_check}"),
                tonic::Code::Unimplemented => format!(
                    "the server on {} does not serve the compute-driver contract: is it the shim's --socket?",
                    path.display()
                ),
                _ if status.source().is_some() => format!(
                    "the connection was closed: the shim admits only its own UID and --allow-uid (this is uid {}); see the shim's log",
                    rustix::process::geteuid().as_raw()
                ),
                _ => "the driver answered with an error: see the shim's and the driver's logs".into(),
            };
            fail(describe_status(&status), hint)
        }
    }
}

// ---------------------------------------------------------------------------
// TLS material: files, cert-key, chain, validity (both roles)

/// Which end of the mTLS link a role's certificate serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The shim: a client certificate (clientAuth).
    Client,
    /// The relay: a server certificate (serverAuth).
    Server,
}

impl Side {
    fn usage(self) -> &'static str {
        match self {
            Side::Client => "clientAuth",
            Side::Server => "serverAuth",
        }
    }
}

/// This side's TLS material, parsed.
struct Material {
    roots: RootCertStore,
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key_algorithm: String,
    leaf: CertInfo,
}

/// files, cert-key, chain and validity. Returns the material when it is
/// fit for a handshake (parsed, matching, valid now).
fn check_material(tls: &TlsFiles, side: Side, report: &mut Report) -> Option<Material> {
    let now = OffsetDateTime::now_utc();
    if !report.record("files", check_files(tls)) {
        report.skip(&["cert-key", "chain", "validity"], "a TLS file is unreadable");
        return None;
    }
    let material = match load_material(tls) {
        Ok(material) => material,
        Err(e) => {
            report.record("cert-key", material_failure(&e));
            report.skip(&["chain", "validity"], "the certificate or key is unusable");
            return None;
        }
    };
    report.record("cert-key", describe_material(&material));
    report.record("chain", check_chain(tls, &material, side, now));
    report.record("validity", check_validity(tls, &material, now)).then_some(material)
}

fn check_files(tls: &TlsFiles) -> Outcome {
    let files = [("--ca", &tls.ca), ("--cert", &tls.cert), ("--key", &tls.key)];
    let mut problems = Vec::new();
    let mut hints: Vec<String> = Vec::new();
    for (flag, path) in files {
        if let Err((problem, hint)) = readable(path) {
            problems.push(format!("{flag} {}: {problem}", path.display()));
            if !hints.contains(&hint) {
                hints.push(hint);
            }
        }
    }
    if problems.is_empty() {
        let names: Vec<String> = files.iter().map(|(_, path)| file_name(path)).collect();
        Outcome::Pass(format!("{} readable", names.join(", ")))
    } else {
        fail(problems.join("; "), hints.join("; "))
    }
}

/// Opens and reads a byte of `path`: the problem and the remedy, if any.
fn readable(path: &Path) -> Result<(), (String, String)> {
    let uid = rustix::process::geteuid().as_raw();
    let describe = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound => (
            "file not found".to_owned(),
            "check the path (development certificates: openshell-driver-bridge certs init)".to_owned(),
        ),
        io::ErrorKind::PermissionDenied => (
            "permission denied".to_owned(),
            format!("make the file and its directories readable by the bridge's user (this is uid {uid})"),
        ),
        _ => (describe_io_error(&e), "check the path".to_owned()),
    };
    let mut file = std::fs::File::open(path).map_err(describe)?;
    let meta = file.metadata().map_err(describe)?;
    if meta.is_dir() {
        return Err(("is a directory".into(), "pass the PEM file itself".into()));
    }
    let mut byte = [0u8; 1];
    file.read(&mut byte).map_err(describe)?;
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn load_material(tls: &TlsFiles) -> Result<Material, MaterialError> {
    let ca = material::load_certs("--ca", &tls.ca)?;
    let roots = material::load_roots("--ca", &tls.ca)?;
    let certified =
        material::load_certified_key("--cert", &tls.cert, "--key", &tls.key, tls.allow_loose_key_permissions)?;
    let leaf = material::load_cert_info("--cert", &tls.cert)?;
    Ok(Material {
        roots,
        ca,
        chain: certified.cert.clone(),
        key_algorithm: format!("{:?}", certified.key.algorithm()),
        leaf,
    })
}

fn describe_material(material: &Material) -> Outcome {
    let intermediates = match material.chain.len() {
        0 | 1 => String::new(),
        2 => " + 1 intermediate".to_owned(),
        n => format!(" + {} intermediates", n - 1),
    };
    let cas = if material.ca.len() == 1 {
        "1 CA certificate".to_owned()
    } else {
        format!("{} CA certificates", material.ca.len())
    };
    Outcome::Pass(format!(
        "cert {}{intermediates} and {} key match; --ca holds {cas}",
        material.leaf.identity, material.key_algorithm
    ))
}

/// A material error split into the problem and the remedy that follows
/// its `; ` (every material message is worded that way).
fn material_failure(error: &MaterialError) -> Outcome {
    let full = error.to_string();
    let message = error.message();
    let origin = full.strip_suffix(message).unwrap_or("");
    match message.split_once("; ") {
        Some((problem, remedy)) => fail(format!("{origin}{problem}"), remedy),
        None => fail(full, "development certificates: openshell-driver-bridge certs init"),
    }
}

/// Verifies our own certificate against our CA as the peer would (with the
/// key usage of our side). Time problems are left to `validity`.
fn check_chain(tls: &TlsFiles, material: &Material, side: Side, now: OffsetDateTime) -> Outcome {
    let Some((leaf, intermediates)) = material.chain.split_first() else {
        return fail("--cert holds no certificate", "pass this side's certificate chain in --cert");
    };
    let mut note = "";
    let mut verdict = verify_own(&material.roots, side, leaf, intermediates, unix_time(now));
    if verdict.as_ref().is_err_and(is_time_error) {
        let inside = material.leaf.not_before + (material.leaf.not_after - material.leaf.not_before) / 2;
        verdict = verify_own(&material.roots, side, leaf, intermediates, unix_time(inside));
        note = " (checked within its validity period; see validity)";
    }
    let subject = &material.leaf.subject;
    let peer = match side {
        Side::Client => "the relay trusts",
        Side::Server => "the shims trust",
    };
    match verdict {
        Ok(()) => {
            let issuer = material.chain.last().and_then(issuer_of).unwrap_or_else(|| "the CA".into());
            Outcome::Pass(format!("issued by {issuer} (in --ca), usable for {}{note}", side.usage()))
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => Outcome::Warn(
            format!("{subject} was not issued by a CA in --ca {}", tls.ca.display()),
            format!("fine only if {peer} its issuer; usually both sides share one CA"),
        ),
        Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature)) => Outcome::Warn(
            format!("{subject} was signed by another CA of the same name as the one in --ca {}", tls.ca.display()),
            format!("fine only if {peer} its issuer; a CA from another certs init run?"),
        ),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        )) => fail(
            format!("{subject} lacks the {} extended key usage", side.usage()),
            match side {
                Side::Client => "the shim needs a client certificate (certs init writes client.pem)",
                Side::Server => "the relay needs a server certificate (certs init writes server.pem)",
            },
        ),
        Err(e) => fail(
            format!("{subject} does not verify against --ca: {e}"),
            "reissue it from the CA in --ca, with any intermediates after it in --cert",
        ),
    }
}

fn verify_own(
    roots: &RootCertStore,
    side: Side,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let roots = Arc::new(roots.clone());
    let built = |e: rustls::client::VerifierBuilderError| rustls::Error::General(format!("--ca: {e}"));
    match side {
        Side::Client => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build().map_err(built)?;
            verifier.verify_client_cert(leaf, intermediates, now).map(drop)
        }
        Side::Server => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider()).build().map_err(built)?;
            // The chain is verified before the name; a name mismatch means
            // the chain is fine (names are peer-name's business).
            let name = ServerName::try_from("check.invalid").map_err(|e| rustls::Error::General(e.to_string()))?;
            match verifier.verify_server_cert(leaf, intermediates, &name, &[], now) {
                Ok(_) => Ok(()),
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

fn is_time_error(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. }
        )
    )
}

/// Our certificate and the CA certificates against the clock.
fn check_validity(tls: &TlsFiles, material: &Material, now: OffsetDateTime) -> Outcome {
    let mut checked = vec![("cert", "--cert", &tls.cert, material.leaf.clone())];
    // Of the CA file, the certificate that ends first speaks for all.
    let cas: Vec<CertInfo> = material.ca.iter().filter_map(|der| material::cert_info(der).ok()).collect();
    if let Some(first_to_end) = cas.iter().min_by_key(|info| info.not_after) {
        checked.push(("CA", "--ca", &tls.ca, first_to_end.clone()));
    }
    let mut shown = Vec::new();
    let mut soon = Vec::new();
    for (what, flag, path, info) in &checked {
        let days_left = match material::check_validity(flag, path, info, now) {
            Validity::Expired => {
                return fail(
                    format!("{what} {} expired on {}", info.subject, date(info.not_after)),
                    "renew it (development certificates: openshell-driver-bridge certs init --force); the bridge reloads renewed files without a restart",
                )
            }
            Validity::NotYetValid => {
                return fail(
                    format!("{what} {} is not valid before {} (now {})", info.subject, date(info.not_before), date(now)),
                    "check this host's clock (timedatectl), or wait for the certificate's start",
                )
            }
            Validity::ExpiresSoon { days_left } => {
                soon.push(format!("{what} {}", info.subject));
                days_left
            }
            Validity::Ok { days_left } => days_left,
        };
        shown.push(format!("{what} until {} ({days_left} days left)", date(info.not_after)));
    }
    let detail = shown.join(", ");
    if soon.is_empty() {
        Outcome::Pass(detail)
    } else {
        Outcome::Warn(
            detail,
            format!(
                "{} expires within a week: renew it; the bridge reloads renewed files without a restart",
                soon.join(" and ")
            ),
        )
    }
}

// ---------------------------------------------------------------------------
// gRPC calls

/// Why a call did not answer.
enum CallError {
    Connect(String),
    Status(tonic::Status),
    Timeout,
}

/// A GetCapabilities answer and how long it took.
struct Capabilities {
    caps: GetCapabilitiesResponse,
    rtt: Duration,
    connected: Duration,
}

impl Capabilities {
    fn describe(&self) -> String {
        format!(
            "driver {} {}, {} round trip (connect {})",
            self.caps.driver_name,
            self.caps.driver_version,
            ms(self.rtt),
            ms(self.connected)
        )
    }
}

/// Connects a channel through `connector` and calls GetCapabilities; both
/// bounded by `timeout`.
async fn call_capabilities(uri: &str, connector: Connector, timeout: Duration) -> Result<Capabilities, CallError> {
    let started = Instant::now();
    let channel = match tokio::time::timeout(timeout, channel_through(uri, connector, timeout)).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => return Err(CallError::Connect(e)),
        Err(_) => return Err(CallError::Timeout),
    };
    let connected = started.elapsed();
    let mut client = driver_client(channel);
    let (caps, rtt) = timed(timeout, client.get_capabilities(GetCapabilitiesRequest {})).await?;
    Ok(Capabilities { caps, rtt, connected })
}

async fn channel_through(uri: &str, connector: Connector, timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(|e| format!("{uri}: {e}"))?;
    let connector = Arc::new(connector);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move { connector.connect(timeout).await.map(TokioIo::new).map_err(|e| io::Error::other(e.0)) }
        }))
        .await
        .map_err(|e| error_chain(&e))
}

fn driver_client(channel: Channel) -> ComputeDriverClient<Channel> {
    ComputeDriverClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Runs one call within `timeout`; the answer and its round-trip time.
async fn timed<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<(T, Duration), CallError> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok((response.into_inner(), started.elapsed())),
        Ok(Err(status)) => Err(CallError::Status(status)),
        Err(_) => Err(CallError::Timeout),
    }
}

/// `PERMISSION_DENIED: relay: client identity ...`, with the transport
/// cause appended when the status came from the connection.
fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{}: {}", code_name(status.code()), status.message());
    if let Some(source) = status.source() {
        let cause = error_chain(source);
        if !cause.is_empty() && !status.message().contains(&cause) {
            text.push_str(&format!(" ({cause})"));
        }
    }
    text
}

/// An error and its sources, joined by `: `, without repeats.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

// ---------------------------------------------------------------------------
// Small helpers

/// The IP address SANs of a certificate (PeerIdentity keeps DNS, URI, CN).
fn ip_sans(der: &CertificateDer<'_>) -> Vec<IpAddr> {
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        16 => <[u8; 16]>::try_from(bytes).ok().map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

/// The issuer DN of a certificate, as in `CN=bridge test CA`.
fn issuer_of(der: &CertificateDer<'_>) -> Option<String> {
    X509Certificate::from_der(der.as_ref()).ok().map(|(_, cert)| cert.issuer().to_string())
}

fn unix_time(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap_or(0)))
}

/// `2027-11-28`.
fn date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// `1.3 ms`.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `5 s`, or `500 ms` when not whole seconds.
fn span(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_dates() {
        assert_eq!(span(Duration::from_secs(5)), "5 s");
        assert_eq!(span(Duration::from_millis(250)), "250 ms");
        assert_eq!(ms(Duration::from_micros(1250)), "1.2 ms");
        let t = OffsetDateTime::from_unix_timestamp(1_811_462_400).expect("timestamp");
        assert_eq!(date(t), "2027-05-28");
    }

    #[test]
    fn material_errors_split_into_problem_and_hint() {
        let error = material::load_certs("--cert", Path::new("/nonexistent/cert.pem")).expect_err("missing file");
        let Outcome::Fail(detail, hint) = material_failure(&error) else { panic!("not a failure") };
        assert!(detail.starts_with("--cert /nonexistent/cert.pem: file not found"), "{detail}");
        assert!(hint.contains("certs init"), "{hint}");
    }

    #[test]
    fn ip_sans_are_read() {
        assert_eq!(ip_from_bytes(&[127, 0, 0, 1]), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(ip_from_bytes(&[0; 5]), None);
    }
}
