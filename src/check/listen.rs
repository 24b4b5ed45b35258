//! A TCP address this host is to listen on (`--listen`,
//! `--callback-listen`): free, already served, or unusable and why.

use std::io;
use std::net::SocketAddr;

use super::{fail, Outcome};
use crate::describe::describe_io_error;

/// Whether the listen address is free or already served; binding is not
/// needed for the check, only informative.
pub(super) fn check_listen(addr: SocketAddr) -> Outcome {
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
