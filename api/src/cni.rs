//! The CNI methods' parameter and answer types (`cni.*`): what the `veil`
//! plugin asks of `veild` for one attachment. The CNI spec's own result and
//! error objects are the plugin's business, not the socket's.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Which IP addresses the pod gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum IpamMode {
    /// The daemon allocates from the node's pod CIDR.
    Daemon,
    /// A delegated IPAM plugin already allocated these; the daemon only records them.
    Delegated {
        /// Addresses from the IPAM plugin's result.
        ips: Vec<IpNetwork>,
    },
}

/// `cni.add`: reserve addresses and record the endpoint (pending until `cni.commit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRequest {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS (a path).
    pub netns: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// The host-side veth name the plugin will create.
    pub host_ifname: String,
    /// K8S_POD_NAMESPACE (or the runtime's equivalent), when known.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// K8S_POD_NAME, when known.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// Network name from the CNI config.
    #[serde(default)]
    pub network: String,
    /// Who allocates.
    pub ipam: IpamMode,
    /// Specific addresses asked for (runtimeConfig `ips`, or CNI_ARGS `IP=`), with
    /// daemon IPAM only; the add fails when one is taken or outside the node's CIDR.
    #[serde(default)]
    pub requested_ips: Vec<IpAddr>,
}

/// Answer to `cni.add` and `cni.check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddReply {
    /// The pod's addresses, each as a host prefix (/32 or /128).
    pub ips: Vec<IpNetwork>,
    /// The gateway the pod routes through (link-local, answered by proxy ARP on
    /// the host end of the veth), per address family.
    pub gateways: Vec<IpAddr>,
    /// MTU for the pod's interface.
    pub mtu: u32,
    /// The host-side veth name recorded for the endpoint.
    pub host_ifname: String,
}

/// `cni.commit`: the plugin finished wiring the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

/// `cni.del`: forget the endpoint and release its addresses. Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelRequest {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

/// Answer to `cni.del`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelReply {
    /// Whether the daemon knew the endpoint.
    pub existed: bool,
    /// The host veth recorded for it, so the plugin can remove it.
    #[serde(default)]
    pub host_ifname: Option<String>,
}

/// `cni.check`: what does the daemon know of this attachment?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

/// Answer to `cni.status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Ready to add pods.
    pub ready: bool,
    /// Why not, when not.
    #[serde(default)]
    pub reason: String,
}

/// One attachment, as in `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// `cni.gc`: release every endpoint not in `valid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    /// The attachments to keep.
    pub valid: Vec<Attachment>,
    /// The network being collected (the CNI config's `name`): when not empty,
    /// only endpoints added with this network name are candidates, so that two
    /// networks using Veil on one node do not collect each other's endpoints.
    #[serde(default)]
    pub network: String,
}

/// Answer to `cni.gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReply {
    /// Host veths of the released endpoints (the plugin removes those still present).
    pub removed_host_ifnames: Vec<String>,
    /// The released attachments (the plugin releases their delegated IPAM
    /// allocations with the IPAM plugin's DEL when that plugin has no GC).
    #[serde(default)]
    pub removed: Vec<Attachment>,
}
