//! Egress through an HTTP CONNECT proxy: which proxy an upstream is reached
//! through (the `--proxy` flag, or gRPC's own environment conventions), the
//! connection to the proxy (TCP, then TLS for an `https://` proxy, verified
//! against the system's roots or `--proxy-ca`), and the CONNECT handshake
//! that turns it into a tunnel. The mTLS handshake then runs end to end
//! through the tunnel: the proxy sees the upstream's `host:port` and TLS
//! records, nothing else.
//!
//! The proxy's password never leaves this file: every way of showing a
//! proxy prints `user:***`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use rustls::pki_types::ServerName;

use super::tcp::connect_tcp;
use super::{BoxIo, ConnectError};
use crate::describe::{describe_io_error, describe_tls_io_error};

/// The most of a CONNECT answer (status line and headers) read before the
/// proxy is declared broken.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024;

/// Proxy variables in the order gRPC C-core reads them; the first set wins.
const PROXY_VARIABLES: &[&str] = &["grpc_proxy", "https_proxy", "http_proxy"];
/// Exclusion lists, the first set wins.
const NO_PROXY_VARIABLES: &[&str] = &["no_grpc_proxy", "no_proxy"];

/// A proxy as given by `http://[user[:password]@]host[:port]` or
/// `https://...` (TLS to the proxy itself).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    /// `https://`: the connection to the proxy is TLS.
    pub tls: bool,
    user: Option<String>,
    password: Option<String>,
}

impl ProxyUrl {
    /// `host:port`, with IPv6 hosts in brackets.
    pub fn authority(&self) -> String {
        super::address::authority(&self.host, self.port)
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// `Basic base64(user:password)`, when the URL carries credentials.
    fn authorization(&self) -> Option<String> {
        let user = self.user.as_deref()?;
        let pair = format!("{user}:{}", self.password.as_deref().unwrap_or_default());
        Some(format!("Basic {}", base64(pair.as_bytes())))
    }
}

/// `http://user:***@host:port`: the password is never shown.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        // The user as it would be written in the URL: escaped, so that what
        // is shown reads as the same URL again (a `/` or `@` in it too).
        match (self.user.as_deref().map(percent_encode), &self.password) {
            (Some(user), Some(_)) => write!(f, "{scheme}://{user}:***@{}", self.authority()),
            (Some(user), None) => write!(f, "{scheme}://{user}@{}", self.authority()),
            _ => write!(f, "{scheme}://{}", self.authority()),
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for ProxyUrl {
    type Err = String;

    /// Refusals never repeat the text: it may hold a password.
    fn from_str(text: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected http://[USER:PASSWORD@]HOST:PORT or https://[USER:PASSWORD@]HOST:PORT";
        let text = text.trim();
        let (tls, rest) = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some(_) => return Err(format!("only the http:// and https:// schemes are supported; {EXPECTED}")),
            None => (false, text),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(format!("a path is not allowed; {EXPECTED}"));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((user, password)) => (user, Some(percent_decode(password)?)),
                    None => (info, None),
                };
                if user.is_empty() {
                    return Err(format!("the user name is empty; {EXPECTED}"));
                }
                (Some(percent_decode(user)?), password)
            }
        };
        let has_port = match hostport.rsplit_once(':') {
            Some((host, _)) => !host.is_empty() && (host.ends_with(']') || !host.contains(':')),
            None => false,
        };
        let default_port = if tls { 443 } else { 80 };
        let with_port = if has_port { hostport.to_owned() } else { format!("{hostport}:{default_port}") };
        let upstream: super::address::Upstream =
            format!("https://{with_port}").parse().map_err(|_| format!("no usable host and port; {EXPECTED}"))?;
        Ok(ProxyUrl { host: upstream.host, port: upstream.port, tls, user, password })
    }
}

/// A `--proxy` value for showing: the URL with its password as `***`,
/// `none`, or a placeholder for a value that does not parse.
pub fn redact(text: &str) -> String {
    match ProxySetting::from_flag(text) {
        Ok(ProxySetting::Flag(url)) => url.to_string(),
        Ok(_) => "none".into(),
        Err(_) => "(not a valid proxy URL)".into(),
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(16).collect()
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a % in the user or password must start an escape such as %40")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the user or password is not UTF-8 once unescaped".into())
}

/// Escapes every byte of a URL's user name that is not unreserved or a
/// sub-delimiter (RFC 3986), as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Where the shim's proxy setting comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum ProxySetting {
    /// `--proxy URL`: every upstream goes through it.
    Flag(ProxyUrl),
    /// `--proxy none`: every upstream is dialled directly.
    Off,
    /// No `--proxy`: these variables (name, value), as read at start.
    Environment(Vec<(String, String)>),
}

/// Shows variables' values as proxies do, password as `***`.
impl fmt::Debug for ProxySetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxySetting::Flag(url) => write!(f, "Flag({url})"),
            ProxySetting::Off => f.write_str("Off"),
            ProxySetting::Environment(vars) => {
                let shown: Vec<String> = vars
                    .iter()
                    .map(|(name, value)| {
                        if name.to_ascii_lowercase().starts_with("no_") {
                            format!("{name}={value}")
                        } else {
                            format!("{name}={}", redact(value))
                        }
                    })
                    .collect();
                write!(f, "Environment({})", shown.join(", "))
            }
        }
    }
}

impl Default for ProxySetting {
    fn default() -> Self {
        ProxySetting::Environment(Vec::new())
    }
}

impl ProxySetting {
    /// The proxy variables of this process, lower and upper case.
    pub fn from_environment() -> ProxySetting {
        let names = PROXY_VARIABLES.iter().chain(NO_PROXY_VARIABLES);
        let found = names
            .flat_map(|name| [name.to_string(), name.to_uppercase()])
            .filter_map(|name| std::env::var(&name).ok().filter(|v| !v.trim().is_empty()).map(|v| (name, v)))
            .collect();
        ProxySetting::Environment(found)
    }

    /// The `--proxy` flag's value: a URL or `none`.
    pub fn from_flag(text: &str) -> Result<ProxySetting, String> {
        if text.trim().eq_ignore_ascii_case("none") {
            return Ok(ProxySetting::Off);
        }
        text.parse().map(ProxySetting::Flag)
    }

    /// How `host:port` is reached.
    pub fn route(&self, host: &str, port: u16) -> Result<Route, String> {
        let vars = match self {
            ProxySetting::Flag(proxy) => {
                return Ok(Route::Via { proxy: Arc::new(proxy.clone()), source: "--proxy".into() });
            }
            ProxySetting::Off => return Ok(Route::Direct("--proxy none".into())),
            ProxySetting::Environment(vars) => vars,
        };
        let first = |names: &[&str]| {
            names.iter().find_map(|name| {
                let upper = name.to_uppercase();
                vars.iter().find(|(n, _)| n == name || *n == upper).map(|(n, v)| (n.clone(), v.clone()))
            })
        };
        let Some((name, value)) = first(PROXY_VARIABLES) else {
            return Ok(Route::Direct("no grpc_proxy, https_proxy or http_proxy is set".into()));
        };
        let proxy: ProxyUrl =
            value.parse().map_err(|e| format!("{name}: {e} (or give --proxy none to ignore the environment)"))?;
        if let Some((list_name, list)) = first(NO_PROXY_VARIABLES) {
            if let Some(entry) = NoProxy::parse(&list).matching(host, port) {
                return Ok(Route::Direct(format!("{list_name} entry {entry:?} matches; {name} not used")));
            }
        }
        Ok(Route::Via { proxy: Arc::new(proxy), source: name })
    }
}

/// How one upstream is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Directly, and why.
    Direct(String),
    /// Through `proxy`, set by `source` (`--proxy` or a variable's name).
    Via { proxy: Arc<ProxyUrl>, source: String },
}

impl Route {
    pub fn proxy(&self) -> Option<Arc<ProxyUrl>> {
        match self {
            Route::Via { proxy, .. } => Some(proxy.clone()),
            Route::Direct(_) => None,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Direct(why) => write!(f, "direct ({why})"),
            Route::Via { proxy, source } => write!(f, "via proxy {proxy} ({source})"),
        }
    }
}

/// A `no_proxy` list: `*`, exact hosts, `.domain` and `domain` suffixes,
/// IP addresses and CIDR ranges, each optionally with `:port`.
#[derive(Clone, Debug, Default)]
pub struct NoProxy {
    entries: Vec<NoProxyEntry>,
}

#[derive(Clone, Debug)]
struct NoProxyEntry {
    text: String,
    pattern: Pattern,
    port: Option<u16>,
}

#[derive(Clone, Debug)]
enum Pattern {
    All,
    Ip(IpAddr),
    Cidr(IpAddr, u8),
    Domain(String),
}

impl NoProxy {
    /// Parses a comma (or space) separated list; entries that mean nothing
    /// are kept as names, which match no host.
    pub fn parse(list: &str) -> NoProxy {
        let entries = list
            .split([',', ' ', '\t'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .take(1024)
            .map(|text| {
                let (body, port) = split_port(text);
                NoProxyEntry { text: text.to_owned(), pattern: Pattern::of(body), port }
            })
            .collect();
        NoProxy { entries }
    }

    /// The entry that excludes `host:port`, if any.
    pub fn matching(&self, host: &str, port: u16) -> Option<&str> {
        let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries
            .iter()
            .find(|entry| entry.port.is_none_or(|p| p == port) && entry.pattern.matches(&host, ip))
            .map(|entry| entry.text.as_str())
    }
}

/// `host:port`, `[v6]:port`, or an entry without a port.
fn split_port(text: &str) -> (&str, Option<u16>) {
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((inside, after)) = rest.split_once(']') {
            return (inside, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    if text.parse::<IpAddr>().is_ok() || text.matches(':').count() != 1 {
        return (text, None);
    }
    match text.rsplit_once(':') {
        Some((body, port)) => match port.parse() {
            Ok(port) => (body, Some(port)),
            Err(_) => (text, None),
        },
        None => (text, None),
    }
}

impl Pattern {
    fn of(body: &str) -> Pattern {
        if body == "*" {
            return Pattern::All;
        }
        if let Ok(ip) = body.parse::<IpAddr>() {
            return Pattern::Ip(ip);
        }
        if let Some((addr, bits)) = body.split_once('/') {
            if let (Ok(ip), Ok(bits)) = (addr.parse::<IpAddr>(), bits.parse::<u8>()) {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if bits <= max {
                    return Pattern::Cidr(ip, bits);
                }
            }
        }
        Pattern::Domain(
            body.trim_start_matches("*.").trim_start_matches('.').trim_end_matches('.').to_ascii_lowercase(),
        )
    }

    fn matches(&self, host: &str, ip: Option<IpAddr>) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Ip(entry) => ip == Some(*entry),
            Pattern::Cidr(net, bits) => ip.is_some_and(|ip| in_cidr(ip, *net, *bits)),
            Pattern::Domain(domain) => {
                !domain.is_empty()
                    && ip.is_none()
                    && (host == domain || host.strip_suffix(domain.as_str()).is_some_and(|head| head.ends_with('.')))
            }
        }
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// The proxy's answer to CONNECT: its status and status line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectAnswer {
    pub status: u16,
    /// The status line, printable ASCII only, at most 120 characters.
    pub line: String,
}

/// Where the answer's header block ends (just past the empty line), if it
/// is complete in `buf`.
pub fn answer_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

/// Parses a complete header block: `HTTP/1.x NNN reason`, then header
/// lines (read, not needed).
pub fn parse_answer(head: &[u8]) -> Result<ConnectAnswer, String> {
    let line_end = head.windows(2).position(|w| w == b"\r\n").unwrap_or(head.len());
    let line: String =
        head[..line_end].iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '?' }).take(120).collect();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !(version == "HTTP/1.1" || version == "HTTP/1.0") {
        return Err(format!("it did not answer with HTTP/1.x but {:?}: is it an HTTP proxy?", shorten(&line)));
    }
    let code = parts.next().unwrap_or_default();
    let status = match code.parse::<u16>() {
        Ok(status) if code.len() == 3 && (100..=599).contains(&status) => status,
        _ => return Err(format!("its status line {line:?} has no valid status code")),
    };
    Ok(ConnectAnswer { status, line })
}

/// A proxy as a connector reaches it: its URL and, for an `https://`
/// proxy, the TLS configuration that verifies it (the system's roots or
/// `--proxy-ca`).
#[derive(Clone, Debug)]
pub struct ProxyHop {
    pub url: Arc<ProxyUrl>,
    /// Present exactly when `url` is `https://`.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ProxyHop {
    /// `url` with the configuration for TLS to it; None for an `https://`
    /// proxy is refused (the caller builds one from `--proxy-ca`).
    pub fn new(url: Arc<ProxyUrl>, tls: Option<Arc<rustls::ClientConfig>>) -> Result<ProxyHop, String> {
        match (url.tls, tls) {
            (true, None) => Err(format!("proxy {url}: no TLS configuration to verify it with")),
            (true, Some(config)) => Ok(ProxyHop { url, tls: Some(config) }),
            (false, _) => Ok(ProxyHop { url, tls: None }),
        }
    }
}

/// Connects to the proxy (TCP, then TLS for `https://`) and opens a tunnel
/// to `target` (`host:port` as written: the proxy resolves it). Each step
/// is given `timeout`, each of the proxy's addresses its own.
pub async fn tunnel(hop: &ProxyHop, target: &str, timeout: Duration) -> Result<BoxIo, ConnectError> {
    let tcp = connect_proxy(&hop.url, timeout).await?;
    let mut io = secure_proxy(hop, tcp, timeout).await?;
    open_tunnel(&mut io, &hop.url, target, timeout).await?;
    Ok(io)
}

/// A TCP connection to the proxy, trying each of its addresses.
pub async fn connect_proxy(proxy: &ProxyUrl, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let authority = proxy.authority();
    let unreachable = |why: String| ConnectError(format!("proxy {proxy} unreachable: {why}"));
    let addrs: Vec<SocketAddr> = tokio::time::timeout(timeout, tokio::net::lookup_host(&authority))
        .await
        .map_err(|_| unreachable(format!("cannot resolve {authority} within {} ms", timeout.as_millis())))?
        .map_err(|e| unreachable(format!("cannot resolve {authority}: {e}")))?
        .collect();
    let mut errors = Vec::new();
    for addr in &addrs {
        match tokio::time::timeout(timeout, connect_tcp(*addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => errors.push((addr, e.0)),
            Err(_) => errors.push((addr, format!("no connection within {} ms", timeout.as_millis()))),
        }
    }
    Err(unreachable(match errors.as_slice() {
        [] => format!("{authority} resolved to no address"),
        [(_, why)] => why.clone(),
        many => many.iter().map(|(addr, why)| format!("{addr}: {why}")).collect::<Vec<_>>().join("; "),
    }))
}

/// The connection to the proxy as CONNECT is sent on it: TLS to the proxy
/// for an `https://` proxy (its certificate verified for its host name),
/// the TCP connection as it is otherwise.
pub async fn secure_proxy(hop: &ProxyHop, tcp: TcpStream, timeout: Duration) -> Result<BoxIo, ConnectError> {
    let Some(config) = &hop.tls else { return Ok(Box::new(tcp)) };
    let proxy = &hop.url;
    let name = ServerName::try_from(proxy.host.clone())
        .map_err(|_| ConnectError(format!("proxy {proxy}: its host is not a valid DNS name or IP address for TLS")))?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) => Err(ConnectError(format!(
            "TLS to proxy {proxy} failed: {} (its certificate must chain to the system's roots, or to --proxy-ca FILE)",
            describe_tls_io_error(&e)
        ))),
        Err(_) => Err(ConnectError(format!(
            "TLS to proxy {proxy}: no answer within {} ms (is this the proxy's TLS port?)",
            timeout.as_millis()
        ))),
    }
}

/// Sends `CONNECT target` on a connection to the proxy and reads its
/// answer (at most [`MAX_ANSWER_BYTES`], within `timeout`). Reads byte by
/// byte so that nothing past the answer is taken from the tunnel.
pub async fn open_tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    proxy: &ProxyUrl,
    target: &str,
    timeout: Duration,
) -> Result<ConnectAnswer, ConnectError> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(credentials) = proxy.authorization() {
        request.push_str(&format!("Proxy-Authorization: {credentials}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = async {
        io.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("writing CONNECT failed: {}", describe_io_error(&e)))?;
        io.flush().await.map_err(|e| format!("writing CONNECT failed: {}", describe_io_error(&e)))?;
        let mut head = Vec::with_capacity(256);
        loop {
            if head.len() >= MAX_ANSWER_BYTES {
                return Err(format!("its answer to CONNECT exceeds {MAX_ANSWER_BYTES} bytes of headers"));
            }
            let byte = match io.read_u8().await {
                Ok(byte) => byte,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(if head.is_empty() {
                        "it closed the connection without answering CONNECT".to_owned()
                    } else {
                        "it closed the connection in the middle of its answer to CONNECT".to_owned()
                    });
                }
                Err(e) => return Err(format!("reading its answer failed: {}", describe_io_error(&e))),
            };
            head.push(byte);
            if head.ends_with(b"\r\n\r\n") {
                return parse_answer(&head);
            }
        }
    };
    let answer = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(why)) => return Err(ConnectError(format!("proxy {proxy}, tunnel to {target}: {why}"))),
        Err(_) => {
            return Err(ConnectError(format!(
                "proxy {proxy} did not answer CONNECT {target} within {} ms",
                timeout.as_millis()
            )))
        }
    };
    match answer.status {
        200..=299 => Ok(answer),
        // 407 is the standard answer; some proxies (tinyproxy 1.11) answer
        // wrong credentials on CONNECT with 401.
        401 | 407 => Err(ConnectError(match proxy.user() {
            None => format!(
                "proxy {proxy} wants credentials for the tunnel to {target} ({}): give them as http://USER:PASSWORD@HOST:PORT",
                answer.line
            ),
            Some(user) => format!(
                "proxy {proxy} refused the credentials of user {user} for the tunnel to {target} ({})",
                answer.line
            ),
        })),
        _ => Err(ConnectError(format!("proxy {proxy} refused the tunnel to {target}: {}", answer.line))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> ProxySetting {
        ProxySetting::Environment(vars.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())
    }

    #[test]
    fn proxy_urls() {
        let p: ProxyUrl = "http://alice:s%40cret@proxy.corp:3128/".parse().unwrap();
        assert_eq!((p.host.as_str(), p.port, p.user()), ("proxy.corp", 3128, Some("alice")));
        assert_eq!(p.to_string(), "http://alice:***@proxy.corp:3128");
        assert_eq!(format!("{p:?}"), "http://alice:***@proxy.corp:3128");
        assert_eq!(p.authorization().unwrap(), format!("Basic {}", base64(b"alice:s@cret")));
        let bare: ProxyUrl = "proxy:8080".parse().unwrap();
        assert_eq!(bare.authority(), "proxy:8080");
        assert_eq!("http://[::1]".parse::<ProxyUrl>().unwrap().authority(), "[::1]:80");
        // An escaped user is shown escaped, so the shown URL reads the same.
        let odd: ProxyUrl = "http://l%2F*e:%40pw@c".parse().unwrap();
        assert_eq!((odd.user(), odd.to_string().as_str()), (Some("l/*e"), "http://l%2F*e:***@c:80"));
        assert_eq!(odd.to_string().parse::<ProxyUrl>().unwrap().user(), Some("l/*e"));
        let tls: ProxyUrl = "HTTPS://alice:pw@proxy.corp".parse().unwrap();
        assert!(tls.tls && !bare.tls);
        assert_eq!(tls.to_string(), "https://alice:***@proxy.corp:443");
        for (bad, why) in [
            ("socks5://u:secret@p:1080", "only the http:// and https:// schemes"),
            ("u:secret@p://x", "only the http:// and https:// schemes"),
            ("http://u:secret@p:3128/x", "path"),
            ("http://:secret@p:3128", "user name is empty"),
            ("http://u:secret@:3128", "no usable host"),
            ("http://u:sec%zzret@p:3128", "escape"),
        ] {
            let err = bad.parse::<ProxyUrl>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("secret") && !err.contains("sec%zz"), "{bad}: password shown: {err}");
        }
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, coded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn no_proxy_entries() {
        let list =
            NoProxy::parse("relay.internal, .corp.example,example.org:7443,10.0.0.0/8,192.168.1.5,[::1]:9,fd00::/8");
        assert_eq!(list.matching("relay.internal", 1), Some("relay.internal"));
        assert_eq!(list.matching("RELAY.internal.", 1), Some("relay.internal"));
        // A bare domain also excludes its subdomains, as in gRPC and curl.
        assert_eq!(list.matching("x.relay.internal", 1), Some("relay.internal"));
        assert_eq!(list.matching("xrelay.internal", 1), None);
        assert_eq!(list.matching("a.b.corp.example", 1), Some(".corp.example"));
        assert_eq!(list.matching("corp.example", 1), Some(".corp.example"));
        assert_eq!(list.matching("notcorp.example", 1), None);
        assert_eq!(list.matching("www.example.org", 7443), Some("example.org:7443"));
        assert_eq!(list.matching("www.example.org", 443), None);
        assert_eq!(list.matching("10.1.2.3", 1), Some("10.0.0.0/8"));
        assert_eq!(list.matching("11.1.2.3", 1), None);
        assert_eq!(list.matching("192.168.1.5", 1), Some("192.168.1.5"));
        assert_eq!(list.matching("::1", 9), Some("[::1]:9"));
        assert_eq!(list.matching("::1", 8), None);
        assert_eq!(list.matching("fd12::1", 1), Some("fd00::/8"));
        assert_eq!(NoProxy::parse("*").matching("anything", 1), Some("*"));
        assert_eq!(NoProxy::parse("").matching("anything", 1), None);
        assert_eq!(NoProxy::parse("0.0.0.0/0").matching("8.8.8.8", 1), Some("0.0.0.0/0"));
    }

    #[test]
    fn routes_follow_grpc_rules() {
        let none = env(&[]);
        assert!(matches!(none.route("relay", 1).unwrap(), Route::Direct(_)));
        // grpc_proxy first, lower case before upper case.
        let vars = env(&[("HTTPS_PROXY", "http://b:2"), ("grpc_proxy", "http://a:1"), ("http_proxy", "http://c:3")]);
        let route = vars.route("relay", 1).unwrap();
        assert_eq!(route.to_string(), "via proxy http://a:1 (grpc_proxy)");
        let vars = env(&[("HTTPS_PROXY", "http://b:2"), ("http_proxy", "http://c:3")]);
        assert_eq!(vars.route("relay", 1).unwrap().to_string(), "via proxy http://b:2 (HTTPS_PROXY)");
        // no_grpc_proxy wins over no_proxy.
        let vars = env(&[("http_proxy", "http://u:pw@c:3"), ("no_grpc_proxy", "other"), ("no_proxy", "relay")]);
        assert_eq!(vars.route("relay", 1).unwrap().to_string(), "via proxy http://u:***@c:3 (http_proxy)");
        let vars = env(&[("http_proxy", "http://c:3"), ("NO_PROXY", ".example")]);
        assert_eq!(
            vars.route("relay.example", 1).unwrap().to_string(),
            "direct (NO_PROXY entry \".example\" matches; http_proxy not used)"
        );
        let bad = env(&[("https_proxy", "ftp://u:secret@p:1")]);
        let err = bad.route("relay", 1).unwrap_err();
        assert!(err.starts_with("https_proxy: ") && err.contains("--proxy none") && !err.contains("secret"), "{err}");
        assert_eq!(
            ProxySetting::from_flag("None").unwrap().route("r", 1).unwrap().to_string(),
            "direct (--proxy none)"
        );
        let vars = env(&[("https_proxy", "http://u:secret@p:1"), ("no_proxy", "a")]);
        assert_eq!(format!("{vars:?}"), "Environment(https_proxy=http://u:***@p:1, no_proxy=a)");
        let flag = ProxySetting::from_flag("http://p:3").unwrap();
        assert_eq!(flag.route("r", 1).unwrap().to_string(), "via proxy http://p:3 (--proxy)");
    }

    #[test]
    fn answers() {
        let ok = parse_answer(b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\n").unwrap();
        assert_eq!((ok.status, ok.line.as_str()), (200, "HTTP/1.1 200 Connection established"));
        assert_eq!(parse_answer(b"HTTP/1.0 407\r\n\r\n").unwrap().status, 407);
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap_err().contains("HTTP/1.x"));
        assert!(parse_answer(b"HTTP/1.1 2000 x\r\n\r\n").unwrap_err().contains("status code"));
        assert_eq!(answer_end(b"HTTP/1.1 200 OK\r\n\r\nrest"), Some(19));
        assert_eq!(answer_end(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[tokio::test]
    async fn connect_request_and_answers() {
        let proxy: ProxyUrl = "http://alice:pw@proxy:3128".parse().unwrap();
        let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut seen = vec![0u8; 4096];
            let n = theirs.read(&mut seen).await.unwrap();
            theirs.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await.unwrap();
            String::from_utf8_lossy(&seen[..n]).into_owned()
        });
        let err = open_tunnel(&mut ours, &proxy, "relay.example:7443", Duration::from_secs(5)).await.unwrap_err();
        let seen = server.await.unwrap();
        assert!(seen.starts_with("CONNECT relay.example:7443 HTTP/1.1\r\nHost: relay.example:7443\r\n"), "{seen}");
        assert!(seen.contains(&format!("Proxy-Authorization: Basic {}\r\n", base64(b"alice:pw"))), "{seen}");
        assert!(err.0.contains("refused the credentials of user alice") && !err.0.contains("pw@"), "{err}");

        // A proxy that hangs up without a word.
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut sink = [0u8; 1024];
            let _ = theirs.read(&mut sink).await;
        });
        let err = open_tunnel(&mut ours, &proxy, "r:1", Duration::from_secs(5)).await.unwrap_err();
        assert!(err.0.ends_with("tunnel to r:1: it closed the connection without answering CONNECT"), "{err}");

        // An endless header block is cut at the bound.
        let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut sink = [0u8; 1024];
            let _ = theirs.read(&mut sink).await;
            let _ = theirs.write_all(b"HTTP/1.1 200 OK\r\n").await;
            for _ in 0..2000 {
                if theirs.write_all(b"X-Filler: aaaaaaaa\r\n").await.is_err() {
                    break;
                }
            }
        });
        let err = open_tunnel(&mut ours, &proxy, "r:1", Duration::from_secs(5)).await.unwrap_err();
        assert!(err.0.contains("exceeds 8192 bytes"), "{err}");
    }
}
