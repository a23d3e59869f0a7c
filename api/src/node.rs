//! The answer of `node.status`: what a node's daemon knows of itself and its
//! endpoints. Field names are camelCase on the wire.

use serde::{Deserialize, Serialize};

/// What `node.status` answers about the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// Underlay address.
    pub address: String,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// Pod MTU.
    pub mtu: u32,
    /// Ready.
    pub ready: bool,
    /// Endpoints.
    pub endpoints: Vec<EndpointStatus>,
    /// Problems the datastore reported.
    pub datastore_errors: Vec<String>,
    /// Generation of the policy program (increments when it changes).
    #[serde(default)]
    pub policy_generation: u64,
    /// The policy generation the node's dataplane (nftables) holds.
    #[serde(default)]
    pub policy_applied_generation: u64,
    /// Why policies are not in force as written (object, field, reason).
    #[serde(default)]
    pub policy_errors: Vec<Issue>,
    /// The last error applying the dataplane, if the last apply failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_error: Option<String>,
}

/// Why an object could not be used: which object, which field, what is
/// wrong (`pods/shop/web.yaml: labels.app: invalid type: ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// The object (a file relative to the datastore, or `kind namespace/name`).
    pub object: String,
    /// The field path (`(document)` when the object does not parse at all).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.reason)
    }
}

/// One endpoint in `node.status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// `namespace/name` or container ID.
    pub pod: String,
    /// Addresses.
    pub ips: Vec<String>,
    /// Host veth.
    pub host_ifname: String,
    /// pending / ready.
    pub state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_is_camel_case_on_the_wire() {
        let s = NodeStatus {
            node: "n".into(),
            address: "198.18.0.10".into(),
            pod_cidr: "10.244.0.0/24".into(),
            mtu: 1420,
            ready: true,
            endpoints: vec![EndpointStatus {
                pod: "x/a".into(),
                ips: vec!["10.244.0.2".into()],
                host_ifname: "veil0".into(),
                state: "ready".into(),
            }],
            datastore_errors: vec![],
            policy_generation: 3,
            policy_applied_generation: 2,
            policy_errors: vec![],
            dataplane_error: None,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"node":"n","address":"198.18.0.10","podCidr":"10.244.0.0/24","mtu":1420,"ready":true,"endpoints":[{"pod":"x/a","ips":["10.244.0.2"],"hostIfname":"veil0","state":"ready"}],"datastoreErrors":[],"policyGeneration":3,"policyAppliedGeneration":2,"policyErrors":[]}"#
        );
    }
}
