//! The two roles, shim and relay: the same pipeline from different parts.
//! What every role shares besides its own endpoints: dial timing, server
//! limits, forwarding options, the drain time and the admin endpoint.

pub mod admin;
pub mod policy_reload;
pub mod relay;
pub mod shim;

use std::net::SocketAddr;
use std::time::Duration;

use crate::admit::{ForwardOptions, Forwarder};
use crate::connect::dialer::DialSettings;
use crate::pipeline::ServerSettings;
use crate::shutdown::Shutdown;

#[derive(Clone, Debug)]
pub struct RoleSettings {
    /// How the next hop is dialled.
    pub dial: DialSettings,
    pub server: ServerSettings,
    pub forward: ForwardOptions,
    /// On SIGTERM, how long calls in flight may take.
    pub drain_timeout: Duration,
    /// The admin endpoint's address, if any.
    pub admin: Option<SocketAddr>,
    /// Allow the admin endpoint off loopback.
    pub unsafe_admin: bool,
}

impl Default for RoleSettings {
    fn default() -> Self {
        RoleSettings {
            dial: DialSettings::default(),
            server: ServerSettings::default(),
            forward: ForwardOptions::default(),
            drain_timeout: Duration::from_secs(10),
            admin: None,
            unsafe_admin: false,
        }
    }
}

impl RoleSettings {
    /// Starts the admin endpoint for `forwarder` when one is configured;
    /// where it listens.
    pub fn start_admin(&self, forwarder: &Forwarder, shutdown: &Shutdown) -> anyhow::Result<Option<SocketAddr>> {
        match self.admin {
            Some(addr) => {
                Ok(Some(crate::role::admin::start(addr, self.unsafe_admin, forwarder.clone(), shutdown.clone())?))
            }
            None => Ok(None),
        }
    }
}
