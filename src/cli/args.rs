//! The command line: flags (each also an `OPENSHELL_BRIDGE_*` environment
//! variable), their validation, and their translation into the roles'
//! configurations. Every refusal names the flag, the value and what to do.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::collections::BTreeSet;
use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::admit::policy::{Access, Rule};
use crate::admit::ForwardOptions;
use crate::callback::relay::RelayCallback;
use crate::callback::shim::ShimCallback;
use crate::callback::CallbackSettings;
use crate::connect::dialer::DialSettings;
use crate::connect::proxy::ProxySetting;
use crate::pipeline::ServerSettings;
use crate::role::relay::{DriverTarget, RelayConfig};
use crate::role::shim::{ShimConfig, Upstream};
use crate::role::RoleSettings;
use crate::tls::config::TlsFiles;
use crate::tls::identity::IdentityPattern;

#[derive(Parser, Debug)]
#[command(
    name = "openshell-driver-bridge",
    version,
    about = "Carries an OpenShell gateway's compute-driver socket across networks over mutual TLS",
    long_about = "Carries an OpenShell gateway's compute-driver socket across networks over mutual TLS.\n\n\
        gateway --UDS--> shim ==mTLS==> relay --UDS--> driver\n\n\
        Run `openshell-driver-bridge demo` to see the whole chain on this machine."
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the driver contract on a private Unix socket next to the gateway and relay every call over mTLS.
    Shim(ShimArgs),
    /// Terminate mTLS next to the driver, authorize each client, and forward to the driver's socket.
    Relay(RelayArgs),
    /// Run the in-memory reference driver on a private Unix socket.
    DemoDriver(DemoDriverArgs),
    /// Development certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run demo-driver, relay and shim together with throw-away certificates.
    Demo(DemoArgs),
    /// Diagnose a configuration or a socket step by step, as an operator would.
    Check(CheckArgs),
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log level (error, warn, info, debug, trace) or a full filter; RUST_LOG wins when set.
    #[arg(long, global = true, env = "OPENSHELL_BRIDGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, global = true, env = "OPENSHELL_BRIDGE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Where settings may also come from, and showing them.
#[derive(Args, Debug, Clone, Default)]
pub struct FileArgs {
    /// TOML file whose keys are this command's flag names (e.g. connect-wait = "15s"); flags and environment win.
    #[arg(long, env = "OPENSHELL_BRIDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (as a TOML file, with where each value came from) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The admin endpoint.
#[derive(Args, Debug, Clone, Default)]
pub struct AdminArgs {
    /// Serve /healthz, /readyz and /metrics on HOST:PORT (off by default; loopback only unless --unsafe-admin).
    #[arg(long, env = "OPENSHELL_BRIDGE_ADMIN", value_name = "HOST:PORT")]
    pub admin: Option<SocketAddr>,
    /// Allow --admin on a non-loopback address (it has no authentication).
    #[arg(long, env = "OPENSHELL_BRIDGE_UNSAFE_ADMIN")]
    pub unsafe_admin: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TlsArgs {
    /// CA certificate(s) (PEM) that the peer's certificate must chain to.
    #[arg(long, env = "OPENSHELL_BRIDGE_CA", value_name = "FILE")]
    pub ca: PathBuf,
    /// This side's certificate chain (PEM).
    #[arg(long, env = "OPENSHELL_BRIDGE_CERT", value_name = "FILE")]
    pub cert: PathBuf,
    /// This side's private key (PEM: PKCS#8, PKCS#1 or SEC1; not encrypted; mode 0600).
    #[arg(long, env = "OPENSHELL_BRIDGE_KEY", value_name = "FILE")]
    pub key: PathBuf,
    /// Accept a key file readable by group or others (warned) instead of refusing it.
    #[arg(long, env = "OPENSHELL_BRIDGE_ALLOW_LOOSE_KEY_PERMISSIONS")]
    pub allow_loose_key_permissions: bool,
    /// Also allow TLS 1.2 (modern AEAD suites only); TLS 1.3 only otherwise.
    #[arg(long, env = "OPENSHELL_BRIDGE_TLS12")]
    pub tls12: bool,
    /// How often to check the certificate, key and CA files for a change (SIGHUP reloads at once).
    #[arg(long, env = "OPENSHELL_BRIDGE_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Certificate revocation list (PEM or DER) of a CA or intermediate: a peer certificate it lists is refused, and open connections made with one are closed; repeatable.
    #[arg(long = "crl", env = "OPENSHELL_BRIDGE_CRL", value_name = "FILE", value_delimiter = ',')]
    pub crls: Vec<PathBuf>,
}

impl TlsArgs {
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            allow_loose_key_permissions: self.allow_loose_key_permissions,
            tls12: self.tls12,
            reload_interval: self.reload_interval.max(Duration::from_millis(100)),
            crls: self.crls.clone(),
        }
    }
}

/// Timers and limits shared by both roles.
#[derive(Args, Debug, Clone)]
pub struct TuningArgs {
    /// How long a call waits for the next hop to become reachable before failing UNAVAILABLE.
    #[arg(long, env = "OPENSHELL_BRIDGE_CONNECT_WAIT", default_value = "15s", value_parser = parse_duration)]
    pub connect_wait: Duration,
    /// Time limit of one connection attempt (TCP and TLS handshake).
    #[arg(long, env = "OPENSHELL_BRIDGE_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval on the links; 0 turns pings off.
    #[arg(long, env = "OPENSHELL_BRIDGE_KEEPALIVE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    /// A ping unanswered this long declares the peer dead.
    #[arg(long, env = "OPENSHELL_BRIDGE_KEEPALIVE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    /// Deadline for unary calls that carry no grpc-timeout (watch streams exempt); off by default.
    #[arg(long, env = "OPENSHELL_BRIDGE_DEFAULT_TIMEOUT", value_parser = parse_duration)]
    pub default_timeout: Option<Duration>,
    /// On SIGTERM, how long calls in flight may take to finish.
    #[arg(long, env = "OPENSHELL_BRIDGE_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Largest request header block accepted (bytes).
    #[arg(long, env = "OPENSHELL_BRIDGE_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: u32,
    /// Concurrent calls allowed on one client connection.
    #[arg(long, env = "OPENSHELL_BRIDGE_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,
    /// Client connections served at once; more are closed on arrival.
    #[arg(long, env = "OPENSHELL_BRIDGE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Time a TLS client gets to complete its handshake.
    #[arg(long, env = "OPENSHELL_BRIDGE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Threads serving calls. 1 (one event loop) is fastest per call; more help a relay serving many shims on many cores.
    #[arg(long, env = "OPENSHELL_BRIDGE_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
}

impl TuningArgs {
    fn settings(&self, admin: &AdminArgs) -> RoleSettings {
        RoleSettings {
            dial: self.dial(),
            server: self.server(),
            forward: self.forward(),
            drain_timeout: self.drain_timeout,
            admin: admin.admin,
            unsafe_admin: admin.unsafe_admin,
        }
    }

    fn dial(&self) -> DialSettings {
        DialSettings {
            connect_wait: self.connect_wait,
            connect_timeout: self.connect_timeout,
            keepalive_interval: nonzero(self.keepalive_interval),
            keepalive_timeout: self.keepalive_timeout,
            ..DialSettings::default()
        }
    }

    fn server(&self) -> ServerSettings {
        ServerSettings {
            max_header_list_size: self.max_header_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            keepalive_interval: nonzero(self.keepalive_interval).map(|d| d * 2),
            keepalive_timeout: self.keepalive_timeout,
            ..ServerSettings::default()
        }
    }

    fn forward(&self) -> ForwardOptions {
        ForwardOptions { default_timeout: self.default_timeout }
    }

    fn validate(&self) -> Result<(), String> {
        if self.connect_timeout.is_zero() {
            return Err("--connect-timeout must be more than 0".into());
        }
        if self.max_connections == 0 || self.max_concurrent_streams == 0 {
            return Err("--max-connections and --max-concurrent-streams must be at least 1".into());
        }
        if self.max_header_bytes < 1024 {
            return Err(format!(
                "--max-header-bytes {}: too small for gRPC metadata; use at least 1024",
                self.max_header_bytes
            ));
        }
        Ok(())
    }
}

/// Limits of the way back (sandboxes calling the gateway), in both roles.
#[derive(Args, Debug, Clone)]
pub struct CallbackLimitArgs {
    /// Callback connections (sandbox to gateway) carried at once; more are closed on arrival.
    #[arg(long, env = "OPENSHELL_BRIDGE_CALLBACK_MAX_CONNECTIONS", default_value_t = 1024)]
    pub callback_max_connections: usize,
    /// A callback connection that moves no byte either way for this long is closed.
    #[arg(long, env = "OPENSHELL_BRIDGE_CALLBACK_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub callback_idle_timeout: Duration,
}

impl CallbackLimitArgs {
    fn settings(&self) -> Result<CallbackSettings, String> {
        if self.callback_max_connections == 0 {
            return Err("--callback-max-connections 0: must be at least 1 (no sandbox could call back)".into());
        }
        if self.callback_idle_timeout < Duration::from_secs(1) {
            return Err(format!(
                "--callback-idle-timeout {} ms: too short; use at least 1s (e.g. 1h)",
                self.callback_idle_timeout.as_millis()
            ));
        }
        Ok(CallbackSettings {
            max_connections: self.callback_max_connections,
            idle_timeout: self.callback_idle_timeout,
        })
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[derive(Args, Debug, Clone)]
pub struct ShimArgs {
    /// Where to serve the driver contract (point the gateway's --compute-driver-socket here).
    #[arg(long, env = "OPENSHELL_BRIDGE_SOCKET", value_name = "PATH")]
    pub socket: PathBuf,
    /// Upstream relay or mTLS driver, https://HOST:PORT; repeat for fail-over, tried in order.
    #[arg(
        long = "upstream",
        env = "OPENSHELL_BRIDGE_UPSTREAM",
        value_name = "URL",
        required = true,
        value_delimiter = ','
    )]
    pub upstreams: Vec<String>,
    /// Verify the upstream certificate against this name instead of the URL's host.
    #[arg(long, env = "OPENSHELL_BRIDGE_SERVER_NAME", value_name = "NAME")]
    pub server_name: Option<String>,
    /// Also require the upstream certificate to carry this identity (dns:, uri:, cn:); repeatable.
    #[arg(long, env = "OPENSHELL_BRIDGE_EXPECT_SERVER", value_name = "ID", value_delimiter = ',')]
    pub expect_server: Vec<String>,
    /// Also admit local peers of this UID on the socket (the bridge's own UID always is); repeatable.
    #[arg(long = "allow-uid", env = "OPENSHELL_BRIDGE_ALLOW_UID", value_name = "UID", value_delimiter = ',')]
    pub allow_uids: Vec<u32>,
    /// Carry sandboxes' callback connections (arriving at the relay's --callback-listen) to the gateway's listener at HOST:PORT; off unless set.
    #[arg(long, env = "OPENSHELL_BRIDGE_CALLBACK_TARGET", value_name = "HOST:PORT")]
    pub callback_target: Option<String>,
    #[command(flatten)]
    pub callback: CallbackLimitArgs,
    /// Reach the upstreams through this HTTP CONNECT proxy, http://[USER:PASSWORD@]HOST:PORT (https:// for TLS to
    /// the proxy itself), or `none` to ignore grpc_proxy/https_proxy/http_proxy and no_grpc_proxy/no_proxy (which
    /// apply when this is not given).
    #[arg(long, env = "OPENSHELL_BRIDGE_PROXY", value_name = "URL|none")]
    pub proxy: Option<String>,
    /// Verify an https:// proxy's certificate against the CA certificates in FILE (PEM) instead of the system's roots.
    #[arg(long, env = "OPENSHELL_BRIDGE_PROXY_CA", value_name = "FILE")]
    pub proxy_ca: Option<PathBuf>,
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

impl ShimArgs {
    pub fn to_config(&self) -> Result<ShimConfig, String> {
        self.tuning.validate()?;
        let upstreams = self
            .upstreams
            .iter()
            .map(|u| u.parse::<Upstream>().map_err(|e| format!("--upstream {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let expect_server = self
            .expect_server
            .iter()
            .map(|p| p.parse::<IdentityPattern>().map_err(|e| format!("--expect-server {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let callback_settings = self.callback.settings()?;
        let callback = match &self.callback_target {
            Some(target) => {
                Some(ShimCallback { target: crate::callback::shim::parse_target(target)?, settings: callback_settings })
            }
            None => None,
        };
        // Our own refusal, not clap's: it would repeat the value, password and all.
        let proxy = match &self.proxy {
            Some(text) => ProxySetting::from_flag(text).map_err(|e| format!("--proxy: {e}"))?,
            None => ProxySetting::from_environment(),
        };
        for upstream in &upstreams {
            proxy.route(&upstream.host, upstream.port).map_err(|e| format!("proxy: {e}"))?;
        }
        Ok(ShimConfig {
            socket: self.socket.clone(),
            upstreams,
            server_name: self.server_name.clone(),
            expect_server,
            tls: self.tls.files(),
            allow_uids: self.allow_uids.clone(),
            proxy,
            proxy_ca: self.proxy_ca.clone(),
            settings: self.tuning.settings(&self.admin),
            callback,
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct RelayArgs {
    /// Address to accept mTLS clients on, HOST:PORT.
    #[arg(long, env = "OPENSHELL_BRIDGE_LISTEN", value_name = "HOST:PORT")]
    pub listen: String,
    /// The real driver's Unix socket.
    #[arg(
        long,
        env = "OPENSHELL_BRIDGE_DRIVER_SOCKET",
        value_name = "PATH",
        conflicts_with = "driver_url",
        required_unless_present = "driver_url"
    )]
    pub driver_socket: Option<PathBuf>,
    /// The real driver on loopback TCP, http://127.0.0.1:PORT.
    #[arg(long, env = "OPENSHELL_BRIDGE_DRIVER_URL", value_name = "URL")]
    pub driver_url: Option<String>,
    /// Allow a --driver-url that is not a loopback address (the driver hop is plaintext).
    #[arg(long, env = "OPENSHELL_BRIDGE_UNSAFE_DRIVER_TARGET")]
    pub unsafe_driver_target: bool,
    /// Admit clients with this identity: dns:NAME, uri:URI (uri:PREFIX/* for a prefix), cn:NAME; repeatable.
    #[arg(
        long = "allow-client",
        env = "OPENSHELL_BRIDGE_ALLOW_CLIENT",
        value_name = "ID",
        value_delimiter = ',',
        value_parser = identity_pattern
    )]
    pub allow_clients: Vec<String>,
    /// Admit these identities for read-only methods only (Get*, List, Watch, Validate); repeatable.
    #[arg(
        long = "allow-client-read-only",
        env = "OPENSHELL_BRIDGE_ALLOW_CLIENT_READ_ONLY",
        value_name = "ID",
        value_delimiter = ',',
        value_parser = identity_pattern
    )]
    pub allow_clients_read_only: Vec<String>,
    /// Admit any client certificate issued by --ca (must be asked for explicitly).
    #[arg(long, env = "OPENSHELL_BRIDGE_ALLOW_ANY_CLIENT")]
    pub allow_any_client: bool,
    /// TLS handshakes in progress at once, apart from --max-connections; more are closed on arrival.
    #[arg(long, env = "OPENSHELL_BRIDGE_MAX_HANDSHAKES", default_value_t = 128)]
    pub max_handshakes: usize,
    /// TLS handshakes in progress at once from one source address (an IPv6 /64).
    #[arg(long, env = "OPENSHELL_BRIDGE_MAX_HANDSHAKES_PER_SOURCE", default_value_t = 16)]
    pub max_handshakes_per_source: usize,
    /// Accept sandboxes' callback connections (plain TCP, carried to the gateway through the shim) on HOST:PORT; off unless set.
    #[arg(long, env = "OPENSHELL_BRIDGE_CALLBACK_LISTEN", value_name = "HOST:PORT")]
    pub callback_listen: Option<String>,
    /// The client identity whose shim serves callbacks (needed when several identities are allowed).
    #[arg(long, env = "OPENSHELL_BRIDGE_CALLBACK_CLIENT", value_name = "ID")]
    pub callback_client: Option<String>,
    #[command(flatten)]
    pub callback: CallbackLimitArgs,
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

impl RelayArgs {
    pub fn to_config(&self) -> Result<RelayConfig, String> {
        self.tuning.validate()?;
        if self.max_handshakes == 0 {
            return Err("--max-handshakes 0: must be at least 1 (no client could connect)".into());
        }
        if self.max_handshakes_per_source == 0 {
            return Err("--max-handshakes-per-source 0: must be at least 1 (no client could connect)".into());
        }
        let mut settings = self.tuning.settings(&self.admin);
        settings.server.max_handshakes = self.max_handshakes;
        settings.server.max_handshakes_per_source = self.max_handshakes_per_source;
        let listen = resolve_listen(&self.listen)?;
        let driver = match (&self.driver_socket, &self.driver_url) {
            (Some(path), None) => DriverTarget::Unix(path.clone()),
            (None, Some(url)) => DriverTarget::from_url(url).map_err(|e| format!("--driver-url {e}"))?,
            _ => return Err("give exactly one of --driver-socket PATH or --driver-url http://127.0.0.1:PORT".into()),
        };
        let mut rules = Vec::new();
        for (ids, access, flag) in [
            (&self.allow_clients, Access::Full, "--allow-client"),
            (&self.allow_clients_read_only, Access::ReadOnly, "--allow-client-read-only"),
        ] {
            for id in ids {
                let pattern = id.parse::<IdentityPattern>().map_err(|e| format!("{flag} {e}"))?;
                rules.push(Rule { pattern, access });
            }
        }
        if rules.is_empty() && !self.allow_any_client {
            return Err(
                "no client may call: give --allow-client ID (dns:NAME, uri:URI or cn:NAME), or explicitly --allow-any-client".into(),
            );
        }
        let callback = self.callback_config(&rules)?;
        Ok(RelayConfig {
            listen,
            driver,
            unsafe_driver_target: self.unsafe_driver_target,
            tls: self.tls.files(),
            rules,
            any_client: self.allow_any_client.then_some(Access::Full),
            settings,
            policy_source: None,
            callback,
        })
    }

    /// The callback listener and the identity whose shim serves it: named
    /// by --callback-client, or the one identity allowed.
    fn callback_config(&self, rules: &[Rule]) -> Result<Option<RelayCallback>, String> {
        let settings = self.callback.settings()?;
        let Some(text) = &self.callback_listen else {
            if let Some(id) = &self.callback_client {
                return Err(format!("--callback-client {id}: only meaningful with --callback-listen HOST:PORT"));
            }
            return Ok(None);
        };
        let listen = resolve_addr("--callback-listen", text, "0.0.0.0:8080")?;
        let allowed = || rules.iter().map(|r| r.pattern.to_string()).collect::<Vec<_>>().join(", ");
        let client = match &self.callback_client {
            Some(id) => {
                let pattern = id.parse::<IdentityPattern>().map_err(|e| format!("--callback-client {e}"))?;
                let covered = self.allow_any_client
                    || rules.iter().any(|rule| match (&rule.pattern, &pattern) {
                        (IdentityPattern::UriPrefix(prefix), IdentityPattern::Uri(uri)) => uri.starts_with(prefix.as_str()),
                        (allowed, wanted) => allowed == wanted,
                    });
                if !covered {
                    return Err(format!(
                        "--callback-client {pattern}: not an allowed client (allowed: {}); the callback identity must also be admitted with --allow-client",
                        allowed()
                    ));
                }
                pattern
            }
            None => match rules {
                [only] if !self.allow_any_client => only.pattern.clone(),
                _ => {
                    return Err(format!(
                        "--callback-listen {text}: several client identities are allowed ({}); name the one whose shim serves callbacks with --callback-client ID",
                        if self.allow_any_client { "any client of the CA".to_string() } else { allowed() }
                    ))
                }
            },
        };
        Ok(Some(RelayCallback { listen, client, settings }))
    }
}

/// An identity pattern, checked where it is given (a flag, or a key of
/// the file named with its line), kept as written.
fn identity_pattern(text: &str) -> Result<String, String> {
    text.parse::<IdentityPattern>().map(|_| text.to_owned()).map_err(|e| e.to_string())
}

fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    resolve_addr("--listen", text, "0.0.0.0:7443")
}

fn resolve_addr(flag: &str, text: &str, example: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .map_err(|e| format!("{flag} {text:?}: {e}; expected HOST:PORT such as {example}"))?
        .next()
        .ok_or_else(|| format!("{flag} {text:?}: resolves to no address"))
}

#[derive(Args, Debug, Clone)]
pub struct DemoDriverArgs {
    /// Where to serve the reference driver.
    #[arg(long, env = "OPENSHELL_BRIDGE_SOCKET", value_name = "PATH")]
    pub socket: PathBuf,
    /// The driver name it reports.
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// How long a sandbox takes to become Ready.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    pub provision_delay: Duration,
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Write a development CA plus one server and one client certificate (--intermediate: a root, an intermediate, and leaves from it).
    Init(CertsInitArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CertsInitArgs {
    /// Directory to write ca.pem, ca-key.pem, server.pem, server-key.pem, client.pem, client-key.pem.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub out: PathBuf,
    /// Server name (DNS or IP SAN); repeatable. Default: localhost, 127.0.0.1, ::1.
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
    /// Client name (DNS SAN; the first is also the CN); repeatable. Default: openshell-gateway.
    #[arg(long = "client-name", value_name = "NAME")]
    pub client_names: Vec<String>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Issue the leaves from an intermediate CA: ca.pem is the root only, server.pem and client.pem hold leaf then intermediate.
    #[arg(long)]
    pub intermediate: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Working directory for sockets and certificates (default: a fresh temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Drive a short scripted session through the shim, print it, and exit 0 only if every step behaved.
    #[arg(long)]
    pub smoke: bool,
}

impl Command {
    /// Threads the async runtime should serve with.
    pub fn worker_threads(&self) -> usize {
        match self {
            Command::Shim(args) => args.tuning.worker_threads.into(),
            Command::Relay(args) => args.tuning.worker_threads.into(),
            _ => 1,
        }
    }
}

/// The parsed command line, with what is needed to show where values came from.
pub struct Parsed {
    pub cli: Cli,
    /// The effective configuration of the role, rendered as TOML.
    pub effective: Option<String>,
}

/// Parses `args` (the process's arguments), merging a `--config` file in.
pub fn parse_from(args: Vec<OsString>) -> Result<Parsed, ParseError> {
    let command = Cli::command();
    let merged = super::file::merge(&command, args).map_err(ParseError::File)?;
    let matches = command.try_get_matches_from(merged.args).map_err(ParseError::Clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    let effective = matches.subcommand().and_then(|(name, sub)| {
        let command = Cli::command();
        command.find_subcommand(name).map(|c| render_effective(c, sub, &merged.from_file))
    });
    Ok(Parsed { cli, effective })
}

#[derive(Debug)]
pub enum ParseError {
    Clap(clap::Error),
    File(String),
}

/// Every setting of a role as TOML, each with where its value came from.
/// Paths only: key material is never read here.
fn render_effective(command: &clap::Command, matches: &ArgMatches, from_file: &BTreeSet<String>) -> String {
    let mut out = format!("# effective configuration of `openshell-driver-bridge {}`\n", command.get_name());
    for arg in command.get_arguments() {
        let Some(name) = arg.get_long() else { continue };
        if super::file::is_not_in_file(name) {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = if from_file.contains(name) {
            "file"
        } else {
            match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::EnvVariable) => "env",
                Some(ValueSource::DefaultValue) => "default",
                _ => "unset",
            }
        };
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let value = match arg.get_action() {
            clap::ArgAction::SetTrue => (source != "unset" && raw.first().map(String::as_str) != Some("false"))
                .then(|| "true".to_owned())
                .or(Some("false".to_owned())),
            clap::ArgAction::Append => (!raw.is_empty())
                .then(|| format!("[{}]", raw.iter().map(|v| toml_scalar(v)).collect::<Vec<_>>().join(", "))),
            // The proxy URL may carry a password: shown as user:***.
            _ if name == "proxy" => raw.first().map(|v| toml_scalar(&crate::connect::proxy::redact(v))),
            _ => raw.first().map(|v| toml_scalar(v)),
        };
        match value {
            Some(value) => out.push_str(&format!("{name} = {value}  # {source}\n")),
            None => out.push_str(&format!("# {name} = (not set)\n")),
        }
    }
    out
}

/// A TOML scalar: integers bare, everything else a quoted string.
fn toml_scalar(value: &str) -> String {
    let canonical_integer = value == "0" || !value.starts_with('0');
    if !value.is_empty() && value.len() < 19 && canonical_integer && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.to_owned();
    }
    let escaped: String = value
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if c.is_control() => format!("\\u{:04X}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

/// `check`: either `--socket PATH`, or a role followed by that role's flags.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    openshell-driver-bridge check shim --socket /run/openshell-bridge/compute-driver.sock \\\n      \
    --upstream https://relay.example:7443 --ca ca.pem --cert client.pem --key client-key.pem\n  \
    openshell-driver-bridge check relay --listen 0.0.0.0:7443 --driver-socket /run/driver.sock \\\n      \
    --allow-client dns:openshell-gateway --ca ca.pem --cert server.pem --key server-key.pem\n  \
    openshell-driver-bridge check --socket /run/openshell-bridge/compute-driver.sock\n\n\
    Prints one line per step (OK, WARN, FAIL or SKIP), a hint under each problem, and a summary.\n\
    Exit status: 0 when no step failed, 1 when one did, 2 when the command line is wrong.")]
pub struct CheckArgs {
    /// Check a shim's socket as the gateway sees it: connect, GetCapabilities, ListSandboxes.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Time limit of each network step.
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub role: Option<CheckRole>,
}

/// Which side's configuration to check; each takes the role's own flags.
#[derive(Subcommand, Debug, Clone)]
pub enum CheckRole {
    /// Check a shim: its TLS files, then per upstream TCP, the mTLS handshake and GetCapabilities through the link.
    Shim(ShimArgs),
    /// Check a relay: its TLS files, its client rules, its listen address, and GetCapabilities on its driver.
    Relay(RelayArgs),
}

/// Parses `250ms`, `15s`, `2m`, `1h` (a bare number means seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration; use e.g. 500ms, 15s, 2m"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(amount),
        "" | "s" => Duration::from_secs(amount),
        "m" => Duration::from_secs(amount.saturating_mul(60)),
        "h" => Duration::from_secs(amount.saturating_mul(3600)),
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("unit"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
