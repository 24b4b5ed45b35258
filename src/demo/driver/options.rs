//! The demo driver's tunables: what it reports about itself and how long
//! provisioning takes.

use std::time::Duration;

/// Tunables of the demo driver.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Reported as `driver_name` by GetCapabilities.
    pub name: String,
    /// Reported as `driver_version` by GetCapabilities.
    pub version: String,
    /// Reported as `default_image` by GetCapabilities.
    pub default_image: String,
    /// How long a created sandbox stays "provisioning" before Ready=True.
    pub provision_delay: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            name: "demo".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            default_image: "openshell/sandbox:latest".to_owned(),
            provision_delay: Duration::from_millis(300),
        }
    }
}
