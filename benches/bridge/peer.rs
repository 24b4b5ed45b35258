//! What the off-the-shelf peers (nginx, HAProxy) share: finding or
//! installing the program, a directory per instance, the loopback port of
//! the back instance and its emulated wide-area link, checking a
//! configuration before starting it, and the two instances as a pair of
//! child processes with their pids.
//!
//! Every peer has the bridge's shape: a front instance (in place of the
//! shim) on a Unix socket, plus a second front socket whose upstream is the
//! WAN proxy, and a back instance (in place of the relay) on loopback TCP
//! with mutual TLS, passing to the driver's socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::setup::{free_port, wait_tcp, wait_uds, Proc};
use crate::wan::WanLink;

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `program` from PATH or /usr/sbin; installed from Debian's packages (the
/// first of `packages` that installs) when it is missing and we are root
/// with apt-get at hand.
pub fn find_or_install(program: &str, packages: &[&str]) -> Result<PathBuf, String> {
    if let Some(found) = which(program) {
        return Ok(found);
    }
    let wanted = packages.join(" / ");
    if !is_root() {
        return Err(format!("{program} not found and not running as root to install it (apt-get install {wanted})"));
    }
    if which("apt-get").is_none() {
        return Err(format!("{program} not found and apt-get is not available to install it"));
    }
    let install = |package: &str| {
        eprintln!("{program} not found: installing Debian package {package} (apt-get install -y {package})");
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let any = || packages.iter().any(|p| install(p));
    let mut installed = any();
    if !installed {
        eprintln!("apt-get install failed: refreshing package lists (apt-get update)");
        let _ = Command::new("apt-get").args(["update", "-q"]).stdout(Stdio::null()).status();
        installed = any();
    }
    match which(program) {
        Some(found) if installed => Ok(found),
        _ => Err(format!("{program} not found and `apt-get install {wanted}` failed")),
    }
}

/// The text after `marker` in a version banner, up to the next space.
pub fn version_after(binary: &Path, arg: &str, marker: &str) -> Result<String, String> {
    let out = Command::new(binary).arg(arg).output().map_err(|e| format!("{}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    text.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| format!("cannot read the version from `{} {arg}`: {text:?}", binary.display()))
}

/// The first three numeric parts of a version ("2.6.12-1" -> (2, 6, 12)).
pub fn triple(version: &str) -> (u32, u32, u32) {
    let mut parts = version.split(['.', '-', '+', '~']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Where a peer's instances live and listen.
pub struct Layout {
    /// The front instance's directory (configuration, logs, sockets).
    pub front_dir: PathBuf,
    /// The back instance's directory.
    pub back_dir: PathBuf,
    /// The front's socket (upstream: the back instance directly).
    pub socket: PathBuf,
    /// The front's second socket (upstream: the WAN proxy).
    pub socket_wan: PathBuf,
    /// The back instance's loopback address.
    pub back_addr: SocketAddr,
    /// The emulated wide-area link in front of `back_addr`.
    pub wan_addr: SocketAddr,
}

impl Layout {
    /// Directories `<dir>/<tag>-front` and `<dir>/<tag>-back` (each with
    /// `subdirs`), a free port for the back and a WAN proxy in front of it.
    pub async fn new(dir: &Path, tag: &str, wan: WanLink, subdirs: &[&str]) -> Result<Layout, String> {
        let back_port = free_port().map_err(|e| e.to_string())?;
        let back_addr: SocketAddr = ([127, 0, 0, 1], back_port).into();
        let wan_addr = crate::wan::start(back_addr, wan).await.map_err(|e| format!("WAN proxy: {e}"))?;
        let front_dir = dir.join(format!("{tag}-front"));
        let back_dir = dir.join(format!("{tag}-back"));
        for prefix in [&front_dir, &back_dir] {
            for sub in std::iter::once(&"").chain(subdirs) {
                std::fs::create_dir_all(prefix.join(sub)).map_err(|e| format!("{}: {e}", prefix.display()))?;
            }
        }
        Ok(Layout {
            socket: front_dir.join("front.sock"),
            socket_wan: front_dir.join("front-wan.sock"),
            front_dir,
            back_dir,
            back_addr,
            wan_addr,
        })
    }
}

/// Writes `config` to `path`, runs `check` (the program's own
/// configuration test) and, when it passes, starts `run` as a child
/// process logging to `log`.
pub fn check_and_spawn(
    name: &str,
    path: &Path,
    config: &str,
    check: &mut Command,
    run: &mut Command,
    log: PathBuf,
    details: impl FnOnce() -> String,
) -> Result<Proc, String> {
    std::fs::write(path, config).map_err(|e| format!("{}: {e}", path.display()))?;
    let Output { status, stdout, stderr } = check.output().map_err(|e| format!("{name}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "the {name} rejects its configuration ({}): {} {} {}",
            path.display(),
            String::from_utf8_lossy(&stderr).trim(),
            String::from_utf8_lossy(&stdout).trim(),
            details().trim()
        ));
    }
    Proc::spawn(name, run, log)
}

/// A peer's two instances, each a process (HAProxy) or a master with
/// workers (nginx).
pub struct Pair {
    /// In place of the shim.
    pub front: Proc,
    /// In place of the relay.
    pub back: Proc,
    pub socket: PathBuf,
    pub socket_wan: PathBuf,
}

impl Pair {
    /// Starts `back`, waits until it accepts on the layout's address, then
    /// starts `front` and waits for both of its sockets.
    pub async fn start(
        layout: &Layout,
        back: impl FnOnce() -> Result<Proc, String>,
        front: impl FnOnce() -> Result<Proc, String>,
    ) -> Result<Pair, String> {
        let limit = Duration::from_secs(10);
        let mut back = back()?;
        wait_tcp(layout.back_addr, &mut back, limit).await?;
        let mut front = front()?;
        wait_uds(&layout.socket, &mut front, limit).await?;
        wait_uds(&layout.socket_wan, &mut front, limit).await?;
        Ok(Pair { front, back, socket: layout.socket.clone(), socket_wan: layout.socket_wan.clone() })
    }

    /// The front instance's processes (its master and workers, if any).
    pub fn front_pids(&self) -> Vec<u32> {
        family(self.front.pid())
    }

    /// The back instance's processes.
    pub fn back_pids(&self) -> Vec<u32> {
        family(self.back.pid())
    }

    /// Every process of both instances.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = self.front_pids();
        pids.extend(self.back_pids());
        pids
    }

    /// `Err` for each instance that has exited.
    pub fn check_alive(&mut self) -> Vec<String> {
        [&mut self.front, &mut self.back].into_iter().filter_map(|p| p.check_alive().err()).collect()
    }
}

/// A process and its children.
fn family(master: u32) -> Vec<u32> {
    let mut pids = vec![master];
    pids.extend(crate::procfs::children_of(master));
    pids
}
