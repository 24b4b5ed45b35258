//! Facts of the compute-driver contract the bridge needs: the service's
//! name and its methods as this build knows them. Methods added later pass
//! all the same; these lists only say which calls are watches and which
//! are the contract's own.

/// The full gRPC service name of the contract.
pub const SERVICE: &str = "openshell.compute.v1.ComputeDriver";
/// Every path of the contract starts with this.
pub const SERVICE_PREFIX: &str = "/openshell.compute.v1.ComputeDriver/";

/// The contract's methods: each takes one request message.
pub const CONTRACT_METHODS: &[&str] = &[
    "GetCapabilities",
    "GetGatewayListenerRequirements",
    "ValidateSandboxCreate",
    "GetSandbox",
    "ListSandboxes",
    "CreateSandbox",
    "StopSandbox",
    "StartSandbox",
    "DeleteSandbox",
    "WatchSandboxes",
    "EnsureWorkspace",
    "DeleteWorkspace",
];

/// Methods whose response is a long-lived stream.
pub const STREAMING_METHODS: &[&str] = &["WatchSandboxes"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_method_list_matches_the_proto() {
        let proto = include_str!("../../proto/compute_driver.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|line| line.trim().strip_prefix("rpc "))
            .filter_map(|rest| rest.split('(').next())
            .map(str::trim)
            .collect();
        assert_eq!(rpcs, CONTRACT_METHODS);
    }
}
