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
