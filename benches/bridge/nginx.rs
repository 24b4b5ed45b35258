//! The peer an operator would otherwise reach for: the same two-hop shape
//! built from nginx. A front instance (next to the gateway, in place of the
//! shim) listens on a Unix socket (h2c) and passes gRPC over mutual TLS
//! (`grpc_pass grpcs://`, client certificate, verified server) to a back
//! instance (next to the driver, in place of the relay) that requires a
//! client certificate (`ssl_verify_client on`) and passes to the driver's
//! socket (`grpc_pass unix:`).
//!
//! Front and back are two nginx instances (two masters, two workers each),
//! as they would be on two hosts: one instance serving both hops would
//! carry a call through both in one event loop, a shortcut no real
//! deployment has. Both upstreams keep connections alive, as an operator
//! tuning nginx for gRPC would configure them: without `keepalive`, nginx
//! would open a new TLS connection for every call.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::setup::{free_port, wait_tcp, wait_uds, Pki, Proc};
use crate::wan::WanLink;

pub struct Nginx {
    /// In place of the shim.
    pub front: Proc,
    /// In place of the relay.
    pub back: Proc,
    pub binary: PathBuf,
    pub version: String,
    pub socket: PathBuf,
    pub socket_wan: PathBuf,
}

impl Nginx {
    /// Master and workers of the front instance.
    pub fn front_pids(&self) -> Vec<u32> {
        family(self.front.pid())
    }

    /// Master and workers of the back instance.
    pub fn back_pids(&self) -> Vec<u32> {
        family(self.back.pid())
    }

    /// Every process of both instances.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = self.front_pids();
        pids.extend(self.back_pids());
        pids
    }
}

fn family(master: u32) -> Vec<u32> {
    let mut pids = vec![master];
    pids.extend(crate::procfs::children_of(master));
    pids
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// nginx from PATH or /usr/sbin; installed from Debian's packages when it
/// is missing and we are root with apt-get at hand.
pub fn find_or_install() -> Result<PathBuf, String> {
    if let Some(found) = which("nginx") {
        return Ok(found);
    }
    if !is_root() {
        return Err("nginx not found and not running as root to install it (apt-get install nginx)".into());
    }
    if which("apt-get").is_none() {
        return Err("nginx not found and apt-get is not available to install it".into());
    }
    let install = |package: &str| {
        eprintln!("nginx not found: installing Debian package {package} (apt-get install -y {package})");
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut installed = install("nginx") || install("nginx-light");
    if !installed {
        eprintln!("apt-get install failed: refreshing package lists (apt-get update)");
        let _ = Command::new("apt-get").args(["update", "-q"]).stdout(std::process::Stdio::null()).status();
        installed = install("nginx") || install("nginx-light");
    }
    match which("nginx") {
        Some(found) if installed => Ok(found),
        _ => Err("nginx not found and `apt-get install nginx` / `nginx-light` failed".into()),
    }
}

/// `1.22.1` from `nginx -v`.
fn version(binary: &Path) -> Result<(String, (u32, u32, u32)), String> {
    let out = Command::new(binary).arg("-v").output().map_err(|e| format!("{}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let version = text
        .split("nginx/")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| format!("cannot read the version from `nginx -v`: {text:?}"))?
        .to_owned();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let triple = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Ok((version, triple))
}

/// Writes both configurations and starts both instances in the foreground
/// as children.
pub async fn start(dir: &Path, pki: &Pki, driver_socket: &Path, wan: WanLink) -> Result<Nginx, String> {
    let binary = find_or_install()?;
    let (version, triple) = version(&binary)?;
    // `http2 on;` arrived in 1.25.1; before that it is a `listen` parameter.
    let (h2_listen, h2_on) = if triple >= (1, 25, 1) { ("", "http2 on;") } else { (" http2", "") };
    let p = |path: &Path| path.display().to_string();
    let back_port = free_port().map_err(|e| e.to_string())?;
    let back_addr: SocketAddr = ([127, 0, 0, 1], back_port).into();
    let proxy = crate::wan::start(back_addr, wan).await.map_err(|e| format!("WAN proxy: {e}"))?;
    let front_prefix = dir.join("nginx-front");
    let back_prefix = dir.join("nginx-back");
    let socket = front_prefix.join("front.sock");
    let socket_wan = front_prefix.join("front-wan.sock");
    let keepalive = "keepalive 256;\n        keepalive_requests 1000000;\n        keepalive_timeout 3600s;";

    let front_server = |sock: &Path, upstream: &str| {
        format!(
            r#"
    server {{
        listen unix:{sock}{h2_listen};
        {h2_on}
        http2_max_concurrent_streams 4096;
        location / {{
            grpc_pass grpcs://{upstream};
            grpc_ssl_certificate {client_cert};
            grpc_ssl_certificate_key {client_key};
            grpc_ssl_trusted_certificate {ca};
            grpc_ssl_verify on;
            grpc_ssl_name localhost;
            grpc_ssl_server_name on;
            grpc_ssl_protocols TLSv1.3;
            grpc_read_timeout 3600s;
            grpc_send_timeout 3600s;
            grpc_socket_keepalive on;
        }}
    }}"#,
            sock = p(sock),
            client_cert = p(&pki.client.0),
            client_key = p(&pki.client.1),
            ca = p(&pki.ca),
        )
    };
    let front_http = format!(
        r#"
    upstream back {{
        server {back_addr};
        {keepalive}
    }}
    upstream back_wan {{
        server {proxy};
        {keepalive}
    }}
{}
{}"#,
        front_server(&socket, "back"),
        front_server(&socket_wan, "back_wan"),
    );
    let back_http = format!(
        r#"
    upstream driver {{
        server unix:{driver};
        {keepalive}
    }}
    server {{
        listen {back_addr} ssl{h2_listen};
        {h2_on}
        http2_max_concurrent_streams 4096;
        ssl_certificate {server_cert};
        ssl_certificate_key {server_key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        location /openshell.compute.v1.ComputeDriver/ {{
            grpc_pass grpc://driver;
            grpc_read_timeout 3600s;
            grpc_send_timeout 3600s;
        }}
    }}"#,
        driver = p(driver_socket),
        server_cert = p(&pki.server.0),
        server_key = p(&pki.server.1),
        ca = p(&pki.ca),
    );

    let back = launch(&binary, &version, triple, "nginx back", &back_prefix, &back_http)?;
    let mut back = back;
    wait_tcp(back_addr, &mut back, Duration::from_secs(10)).await?;
    let mut front = launch(&binary, &version, triple, "nginx front", &front_prefix, &front_http)?;
    wait_uds(&socket, &mut front, Duration::from_secs(10)).await?;
    wait_uds(&socket_wan, &mut front, Duration::from_secs(10)).await?;
    Ok(Nginx { front, back, binary, version, socket, socket_wan })
}

/// Writes `prefix/nginx.conf` around `http` (the servers), checks it with
/// `nginx -t` and starts the instance in the foreground.
fn launch(
    binary: &Path,
    version: &str,
    triple: (u32, u32, u32),
    name: &str,
    prefix: &Path,
    http: &str,
) -> Result<Proc, String> {
    for sub in ["", "tmp", "logs"] {
        std::fs::create_dir_all(prefix.join(sub)).map_err(|e| e.to_string())?;
    }
    let p = |path: &Path| path.display().to_string();
    let tmp = p(&prefix.join("tmp"));
    let config = format!(
        r#"# {name}, generated by benches/bridge (nginx {version})
{user}
worker_processes 2;
worker_rlimit_nofile 16384;
pid {pid};
error_log {error_log} warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 3600s;
{http}
}}
"#,
        user = if is_root() { "user root;" } else { "" },
        pid = p(&prefix.join("nginx.pid")),
        error_log = p(&prefix.join("logs/error.log")),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, config).map_err(|e| e.to_string())?;
    let args = |command: &mut Command| {
        command.arg("-p").arg(format!("{}/", prefix.display()));
        // `-e` (the error log before the configuration is read) arrived in 1.19.5.
        if triple >= (1, 19, 5) {
            command.arg("-e").arg(prefix.join("logs/error.log"));
        }
        command.arg("-c").arg(&conf_path);
    };
    let mut test = Command::new(binary);
    args(&mut test);
    let tested = test.arg("-t").output().map_err(|e| e.to_string())?;
    if !tested.status.success() {
        let errors = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
        return Err(format!(
            "nginx {version} rejects the configuration of the {name} ({}): {} {}",
            conf_path.display(),
            String::from_utf8_lossy(&tested.stderr).trim(),
            errors.trim()
        ));
    }
    let mut command = Command::new(binary);
    args(&mut command);
    command.args(["-g", "daemon off;"]);
    Proc::spawn(name, &mut command, prefix.join("logs/stdout.log"))
}
