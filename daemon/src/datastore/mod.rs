//! The datastore: where a node learns about the cluster (nodes, namespaces, pods,
//! policies) and publishes what it owns (its node record, its endpoints).
//!
//! Two implementations fit the [`Datastore`] trait: [`local::LocalDatastore`], a
//! directory of YAML files shared by every daemon on one machine (the lab, the
//! tests, single-host use), and later the Kubernetes API (Node annotations
//! `veil.dev/wireguard-public-key` / `veil.dev/wireguard-endpoint`, Pods,
//! Namespaces, policy kinds).

pub mod local;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Node annotation carrying the WireGuard public key (Kubernetes datastore).
pub const ANNOTATION_WG_PUBLIC_KEY: &str = "veil.dev/wireguard-public-key";
/// Node annotation carrying the WireGuard endpoint `ip:port` (Kubernetes datastore).
pub const ANNOTATION_WG_ENDPOINT: &str = "veil.dev/wireguard-endpoint";

/// A node of the cluster, as published by its daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRecord {
    /// Node name (Kubernetes node name).
    pub name: String,
    /// Underlay address.
    pub address: IpAddr,
    /// Pod CIDRs owned by this node.
    pub pod_cidrs: Vec<IpNetwork>,
    /// Node labels (always includes kubernetes.io/hostname and kubernetes.io/os).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Node annotations, where WireGuard keys live (see [`ANNOTATION_WG_PUBLIC_KEY`]).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl NodeRecord {
    /// The WireGuard public key (base64) the node published, if any.
    pub fn wireguard_public_key(&self) -> Option<&str> {
        self.annotations
            .get(ANNOTATION_WG_PUBLIC_KEY)
            .map(String::as_str)
    }

    /// The WireGuard endpoint the node published, if any and if it parses.
    pub fn wireguard_endpoint(&self) -> Option<SocketAddr> {
        self.annotations
            .get(ANNOTATION_WG_ENDPOINT)
            .and_then(|s| s.parse().ok())
    }
}

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceRecord {
    /// Namespace name.
    pub name: String,
    /// Labels (kubernetes.io/metadata.name is implied, not stored).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A port a pod declares (container port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodPort {
    /// Port number.
    pub port: u16,
    /// TCP, UDP or SCTP.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Optional port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn default_protocol() -> String {
    "TCP".to_string()
}

/// A pod's metadata (what the API server would know before the pod is wired).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Node the pod is scheduled on.
    #[serde(default)]
    pub node: Option<String>,
    /// hostNetwork pod (uses its node's address).
    #[serde(default)]
    pub host_network: bool,
    /// Service account.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Declared ports.
    #[serde(default)]
    pub ports: Vec<PodPort>,
}

/// A wired endpoint, published by the daemon that owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointRecord {
    /// Owning node.
    pub node: String,
    /// Container ID.
    pub container_id: String,
    /// Interface name in the pod.
    pub ifname: String,
    /// Pod namespace, when known.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// Pod name, when known.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// Addresses.
    pub ips: Vec<IpNetwork>,
}

/// Everything a node knows of the cluster at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Nodes.
    pub nodes: Vec<NodeRecord>,
    /// Namespaces.
    pub namespaces: Vec<NamespaceRecord>,
    /// Pod metadata.
    pub pods: Vec<PodRecord>,
    /// Wired endpoints of every node.
    pub endpoints: Vec<EndpointRecord>,
    /// Policy manifests, each one a YAML document, with the file it came from.
    pub policies: Vec<PolicyDocument>,
    /// Problems met while reading (a bad file never hides the rest).
    pub errors: Vec<String>,
}

/// One policy manifest as found in the datastore.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    /// Where it came from (file path, or `kind/namespace/name`).
    pub origin: String,
    /// The manifest.
    pub manifest: serde_yaml::Value,
}

impl Snapshot {
    /// The pod record for `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodRecord> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// The node record named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Why a datastore operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// Filesystem error on a path.
    #[error("datastore {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("datastore {path}: cannot encode: {source}")]
    Encode {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A name is not usable as a key.
    #[error("datastore: invalid name {0:?}")]
    InvalidName(String),
}

/// What a node reads from and writes to the cluster's shared state.
pub trait Datastore: Send + Sync + 'static {
    /// Reads everything now.
    fn snapshot(&self) -> Snapshot;
    /// Creates or replaces this node's record.
    fn put_node(&self, node: &NodeRecord) -> Result<(), DatastoreError>;
    /// Creates or replaces an endpoint record.
    fn put_endpoint(&self, endpoint: &EndpointRecord) -> Result<(), DatastoreError>;
    /// Removes an endpoint record (absent is success).
    fn delete_endpoint(
        &self,
        node: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), DatastoreError>;
    /// Creates or replaces a pod's metadata (used by the lab and tests).
    fn put_pod(&self, pod: &PodRecord) -> Result<(), DatastoreError>;
    /// Creates or replaces a namespace (used by the lab and tests).
    fn put_namespace(&self, ns: &NamespaceRecord) -> Result<(), DatastoreError>;
}

/// A shared datastore handle.
pub type SharedDatastore = Arc<dyn Datastore>;
