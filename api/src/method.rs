//! The name of every method `veild` serves on its socket, each written once,
//! here. The daemon registers its handlers under these names and every client
//! calls them by these names; each constant's doc says its parameters and its
//! answer.

/// [`crate::AddRequest`] → [`crate::AddReply`]: reserve addresses and record
/// the endpoint (pending until [`CNI_COMMIT`]).
pub const CNI_ADD: &str = "cni.add";
/// [`crate::CommitRequest`] → `null`: the plugin wired the pod; the endpoint is live.
pub const CNI_COMMIT: &str = "cni.commit";
/// [`crate::DelRequest`] → [`crate::DelReply`]
pub const CNI_DEL: &str = "cni.del";
/// [`crate::CheckRequest`] → [`crate::AddReply`] (what the daemon recorded)
pub const CNI_CHECK: &str = "cni.check";
/// `null` → [`crate::StatusReply`]
pub const CNI_STATUS: &str = "cni.status";
/// [`crate::GcRequest`] → [`crate::GcReply`]
pub const CNI_GC: &str = "cni.gc";
/// `null` → [`crate::NodeStatus`]: the node, its endpoints, datastore problems.
pub const NODE_STATUS: &str = "node.status";
/// `null` → [`crate::WireguardStatus`]: the device, its peers and counters.
pub const WIREGUARD_STATUS: &str = "wireguard.status";
/// `null` → [`crate::Rotated`]: make-before-break rotation of the node key.
pub const WIREGUARD_ROTATE_KEY: &str = "wireguard.rotate-key";
/// `null` or [`crate::GraphParams`] → [`crate::GraphReply`]: the node's
/// service dependency graph.
pub const GRAPH_GET: &str = "graph.get";
/// `null` or [`crate::FlowFilter`] → [`crate::FlowPage`]: recent flows after a
/// cursor.
pub const FLOWS_LIST: &str = "flows.list";
/// `null` or [`crate::GraphParams`] → [`crate::HealthReport`]: the flow
/// collector's health.
pub const FLOWS_HEALTH: &str = "flows.health";

/// `null` → [`crate::PolicyList`]: the tiers and policies of the node's
/// compiled policy program, with its generation.
pub const POLICY_LIST: &str = "policy.list";

/// `null` → `{"allowances": [{pod, name, address, set, policy, rule,
/// expires_in}]}`: what the DNS proxy opened for `domains` rules.
pub const DNS_ALLOWANCES: &str = "dns.allowances";

/// Every method, for tests and listings.
pub const ALL: &[&str] = &[
    CNI_ADD,
    CNI_COMMIT,
    CNI_DEL,
    CNI_CHECK,
    CNI_STATUS,
    CNI_GC,
    NODE_STATUS,
    WIREGUARD_STATUS,
    WIREGUARD_ROTATE_KEY,
    GRAPH_GET,
    FLOWS_LIST,
    FLOWS_HEALTH,
    POLICY_LIST,
    DNS_ALLOWANCES,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_are_unique_and_namespaced() {
        let mut seen = std::collections::BTreeSet::new();
        for m in ALL {
            assert!(seen.insert(*m), "{m} listed twice");
            let (family, name) = m.split_once('.').expect("family.name");
            assert!(!family.is_empty() && !name.is_empty(), "{m}");
            assert!(
                m.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'-'),
                "{m}"
            );
        }
    }
}
