//! Who may call what.
//!
//! The shim's callers are local processes already admitted by peer
//! credentials at accept time. The relay's callers are TLS client
//! identities, each admitted by an explicit rule, optionally restricted to
//! the read-only methods. Decisions look at the path and the identity only,
//! never at message content.

use std::fmt;
use std::sync::Arc;

use crate::tls::identity::{IdentityPattern, PeerIdentity};

/// Methods that observe but never change anything.
pub const READ_ONLY_METHODS: &[&str] = &[
    "GetCapabilities",
    "GetGatewayListenerRequirements",
    "GetSandbox",
    "ListSandboxes",
    "WatchSandboxes",
    "ValidateSandboxCreate",
];

/// Who is calling, as established when the connection was accepted.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A local process on the shim's socket.
    Local { uid: u32, pid: Option<i32> },
    /// A TLS client of the relay.
    Tls(Arc<PeerIdentity>),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Local { uid, pid: Some(pid) } => write!(f, "uid:{uid} pid:{pid}"),
            Caller::Local { uid, pid: None } => write!(f, "uid:{uid}"),
            Caller::Tls(identity) => write!(f, "{identity}"),
        }
    }
}

/// How much of the service an identity may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Full,
    ReadOnly,
}

impl Access {
    fn permits(self, method: &str) -> bool {
        match self {
            Access::Full => true,
            // A method added to the contract later is not known to be safe.
            Access::ReadOnly => READ_ONLY_METHODS.contains(&method),
        }
    }
}

/// One `--allow-client` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub pattern: IdentityPattern,
    pub access: Access,
}

/// The decision procedure for one listener.
#[derive(Clone, Debug)]
pub enum Policy {
    /// Local callers were vetted at accept; every method is open to them.
    LocalPeers,
    /// TLS clients: the first matching rule decides; `any_client` admits any
    /// certificate of the CA when the operator asked for it explicitly.
    Clients { rules: Vec<Rule>, any_client: Option<Access> },
}

/// A refusal, worded for the caller and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied(pub String);

impl Policy {
    pub fn authorize(&self, caller: &Caller, method: &str) -> Result<(), Denied> {
        let (rules, any_client, identity) = match (self, caller) {
            (Policy::LocalPeers, Caller::Local { .. }) => return Ok(()),
            (Policy::Clients { rules, any_client }, Caller::Tls(identity)) => (rules, any_client, identity),
            _ => return Err(Denied(format!("caller {caller} is not admitted by this listener"))),
        };
        let access = rules.iter().find(|rule| rule.pattern.matches(identity)).map(|rule| rule.access).or(*any_client);
        match access {
            None => Err(Denied(format!(
                "client identity {} is not allowed (no --allow-client rule matches {})",
                identity,
                identity.names().collect::<Vec<_>>().join(", ")
            ))),
            Some(access) if access.permits(method) => Ok(()),
            Some(_) => Err(Denied(format!(
                "client identity {identity} is read-only and may not call {}",
                crate::obs::escape::for_log(method, crate::obs::escape::LIMIT)
            ))),
        }
    }

    /// Whether this caller is admitted at all (checked once per connection
    /// for logging; calls are still authorized one by one).
    pub fn admits(&self, caller: &Caller) -> bool {
        self.authorize(caller, READ_ONLY_METHODS[0]).is_ok()
    }
}

/// What a new policy changes for identities, for the reload's log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// `dns:x (full -> read-only)`.
    pub moved: Vec<String>,
}

impl PolicyChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.moved.is_empty()
    }
}

fn access_name(access: Access) -> &'static str {
    match access {
        Access::Full => "full",
        Access::ReadOnly => "read-only",
    }
}

impl Policy {
    /// The identities (rules, and "any client of the CA") with their access.
    fn grants(&self) -> Vec<(String, Access)> {
        match self {
            Policy::LocalPeers => vec![],
            Policy::Clients { rules, any_client } => {
                let mut grants: Vec<(String, Access)> = Vec::new();
                for rule in rules {
                    let name = rule.pattern.to_string();
                    // The first matching rule decides: later duplicates do not count.
                    if !grants.iter().any(|(n, _)| *n == name) {
                        grants.push((name, rule.access));
                    }
                }
                if let Some(access) = any_client {
                    grants.push(("any client of the CA".to_owned(), *access));
                }
                grants
            }
        }
    }

    /// What `new` changes compared with this policy.
    pub fn changes(&self, new: &Policy) -> PolicyChanges {
        let (old, new) = (self.grants(), new.grants());
        let mut changes = PolicyChanges::default();
        for (name, access) in &new {
            match old.iter().find(|(n, _)| n == name) {
                None => changes.added.push(format!("{name} ({})", access_name(*access))),
                Some((_, was)) if was != access => {
                    changes.moved.push(format!("{name} ({} -> {})", access_name(*was), access_name(*access)))
                }
                Some(_) => {}
            }
        }
        for (name, access) in &old {
            if !new.iter().any(|(n, _)| n == name) {
                changes.removed.push(format!("{name} ({})", access_name(*access)));
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(dns: &str) -> Caller {
        Caller::Tls(Arc::new(PeerIdentity { dns: vec![dns.into()], uris: vec![], cn: Some(dns.into()) }))
    }

    fn rule(pattern: &str, access: Access) -> Rule {
        Rule { pattern: pattern.parse().expect("pattern"), access }
    }

    #[test]
    fn listed_identity_may_call_everything() {
        let policy = Policy::Clients { rules: vec![rule("dns:gw", Access::Full)], any_client: None };
        assert!(policy.authorize(&tls("gw"), "CreateSandbox").is_ok());
        assert!(policy.authorize(&tls("gw"), "SomethingNew").is_ok());
        let denied = policy.authorize(&tls("other"), "ListSandboxes").unwrap_err();
        assert!(denied.0.contains("dns:other"), "{}", denied.0);
    }

    #[test]
    fn read_only_identity_may_only_observe() {
        let policy = Policy::Clients { rules: vec![rule("dns:ro", Access::ReadOnly)], any_client: None };
        assert!(policy.authorize(&tls("ro"), "ListSandboxes").is_ok());
        assert!(policy.authorize(&tls("ro"), "WatchSandboxes").is_ok());
        let denied = policy.authorize(&tls("ro"), "CreateSandbox").unwrap_err();
        assert!(denied.0.contains("read-only") && denied.0.contains("CreateSandbox"));
        assert!(policy.authorize(&tls("ro"), "SomethingNew").is_err());
    }

    #[test]
    fn any_client_must_be_explicit() {
        let closed = Policy::Clients { rules: vec![], any_client: None };
        assert!(closed.authorize(&tls("x"), "GetCapabilities").is_err());
        let open = Policy::Clients { rules: vec![], any_client: Some(Access::Full) };
        assert!(open.authorize(&tls("x"), "DeleteSandbox").is_ok());
    }

    #[test]
    fn changes_name_added_removed_and_moved_identities() {
        let old = Policy::Clients {
            rules: vec![rule("dns:a", Access::Full), rule("dns:b", Access::Full), rule("dns:c", Access::ReadOnly)],
            any_client: None,
        };
        let new = Policy::Clients {
            rules: vec![rule("dns:a", Access::Full), rule("dns:b", Access::ReadOnly), rule("dns:d", Access::Full)],
            any_client: None,
        };
        let changes = old.changes(&new);
        assert_eq!(changes.added, vec!["dns:d (full)"]);
        assert_eq!(changes.removed, vec!["dns:c (read-only)"]);
        assert_eq!(changes.moved, vec!["dns:b (full -> read-only)"]);
        assert!(old.changes(&old).is_empty());
    }

    #[test]
    fn local_callers_are_not_tls_clients() {
        let policy = Policy::Clients { rules: vec![], any_client: Some(Access::Full) };
        assert!(policy.authorize(&Caller::Local { uid: 0, pid: None }, "GetCapabilities").is_err());
    }
}
