//! `check --socket`: the gateway's view of a shim's socket. The file, a
//! connection, then `GetCapabilities` and `ListSandboxes` through the shim.

use std::error::Error as _;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

use crate::describe::describe_io_error;
use crate::proto::compute::{GetCapabilitiesRequest, ListSandboxesRequest};

use super::call::{describe_status, driver_client, error_chain, timed, CallError, Capabilities};
use super::words::{ms, span};
use super::{fail, Outcome, Report};

pub(super) async fn check_socket(path: &Path, timeout: Duration, report: &mut Report) {
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
