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
//!
//! This file holds the command and the report; the steps live by family:
//! `shim.rs` and `link.rs` (a shim and its link to each upstream),
//! `relay.rs`, `socket.rs`, `material.rs` (the TLS files both roles
//! check), with the gRPC calls in `call.rs` and the wording of times in
//! `words.rs`.

mod call;
mod callback;
mod chain;
mod crl;
mod link;
mod listen;
mod material;
mod relay;
mod shim;
mod socket;
mod words;

use std::io::{self, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::args::{CheckArgs, CheckRole};

use self::relay::check_relay;
use self::shim::check_shim;
use self::socket::check_socket;
use self::words::span;

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
