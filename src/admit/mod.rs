//! Admission: what each request may become (a call to forward, a health
//! check the bridge answers, or a refusal), decided by path, caller
//! identity, policy and deadline; never by message content.
//!
//! The transparent forwarder: one gRPC call in, the same call out.
//!
//! Requests and responses cross at the HTTP/2 level. Headers, body frames
//! and trailers pass unchanged (compression flags included); only
//! hop-by-hop headers are dropped and `:authority` is rewritten for the next
//! hop. Messages are never decoded, so fields and methods added to the
//! contract after this bridge was built pass just the same. The forwarder
//! answers itself only to refuse (a path outside the service, a caller the
//! policy rejects) or to fail (the next hop unreachable, a deadline spent),
//! always with a gRPC status that names the hop and the cause.

pub mod call_log;
pub mod policy;
pub mod route;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;

use crate::admit::policy::{Caller, Policy};
use crate::admit::route::{grpc_timeout, printable, route};
use crate::admit::sessions::Sessions;
use crate::connect::dialer::Dialer;
use crate::grpc::contract::STREAMING_METHODS;
use crate::grpc::status::{BridgeStatus, Code};
use crate::obs::metrics::{Metrics, Refusal};

/// Shared by every connection of one listener.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<ForwarderInner>,
}

struct ForwarderInner {
    /// Names this bridge in messages: "shim" or "relay".
    role: &'static str,
    dialer: Dialer,
    /// Swapped whole when the access policy is reloaded; read per call.
    policy: ArcSwap<Policy>,
    /// The live client connections (registered by the TLS listener).
    sessions: Sessions,
    default_timeout: Option<Duration>,
    metrics: Arc<Metrics>,
    /// Why streams end when the bridge stops, made once.
    shutting_down: Arc<str>,
}

/// Options of a forwarder beyond its link and policy.
#[derive(Clone, Debug, Default)]
pub struct ForwardOptions {
    /// Deadline for unary calls that carry no `grpc-timeout`.
    pub default_timeout: Option<Duration>,
}

impl Forwarder {
    pub fn new(role: &'static str, dialer: Dialer, policy: Policy, options: ForwardOptions) -> Self {
        Forwarder {
            inner: Arc::new(ForwarderInner {
                role,
                dialer,
                policy: ArcSwap::from_pointee(policy),
                sessions: Sessions::default(),
                default_timeout: options.default_timeout,
                metrics: Arc::new(Metrics::new(role)),
                shutting_down: Arc::from(format!("{role} is shutting down")),
            }),
        }
    }

    /// How the next hop is reached.
    pub fn dialer(&self) -> &Dialer {
        &self.inner.dialer
    }

    /// The access policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.inner.policy.load_full()
    }

    /// Puts `policy` in force for every call from now on, and cuts the
    /// connections whose identity it no longer admits.
    pub fn replace_policy(&self, policy: Policy) -> Vec<sessions::CutConnection> {
        let policy = Arc::new(policy);
        self.inner.policy.store(policy.clone());
        self.inner.sessions.cut_unadmitted(&policy, self.inner.role)
    }

    /// The live client connections.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub(crate) fn role(&self) -> &'static str {
        self.inner.role
    }

    /// Why streams end when the bridge stops.
    pub(crate) fn shutting_down(&self) -> &Arc<str> {
        &self.inner.shutting_down
    }

    /// What a request with `path` and `headers` from `caller` may become:
    /// a health check the bridge answers, a call to forward, or a refusal
    /// (logged and counted here).
    pub(crate) fn admit(&self, path: &str, headers: &HeaderMap, caller: &Caller) -> Result<Admission, BridgeStatus> {
        let role = self.inner.role;
        let policy = self.inner.policy.load();
        if path == crate::grpc::health::CHECK_PATH && policy.admits(caller) {
            return Ok(Admission::Health);
        }
        let method = match route(path) {
            Ok(method) => method,
            Err(status) => {
                tracing::warn!(role, caller = %caller, path = %printable(path), "refused: path outside the contract");
                self.inner.metrics.refused(Refusal::Path);
                return Err(status);
            }
        };
        if let Err(denied) = policy.authorize(caller, method) {
            tracing::warn!(role, caller = %caller, method = %printable(method), reason = %denied.0, "refused by policy");
            self.inner.metrics.refused(Refusal::Policy);
            return Err(BridgeStatus::new(Code::PermissionDenied, format!("{role}: {}", denied.0)));
        }
        let streaming = STREAMING_METHODS.contains(&method);
        let budget = grpc_timeout(headers)?.or(if streaming { None } else { self.inner.default_timeout });
        Ok(Admission::Call(Admitted { method: method.to_owned(), streaming, budget }))
    }
}

/// What the forwarder makes of a request.
pub(crate) enum Admission {
    /// `grpc.health.v1.Health/Check`, answered by the bridge.
    Health,
    Call(Admitted),
}

/// A call the forwarder lets through.
pub(crate) struct Admitted {
    pub method: String,
    /// A long-lived response stream (watches end as soon as draining begins).
    pub streaming: bool,
    /// The call's deadline from now, if it has one.
    pub budget: Option<Duration>,
}
