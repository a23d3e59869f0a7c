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
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"node":"n","address":"198.18.0.10","podCidr":"10.244.0.0/24","mtu":1420,"ready":true,"endpoints":[{"pod":"x/a","ips":["10.244.0.2"],"hostIfname":"veil0","state":"ready"}],"datastoreErrors":[]}"#
        );
    }
}
