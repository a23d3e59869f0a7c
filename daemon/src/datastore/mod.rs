//! The datastore: where a node learns about the cluster (nodes, namespaces, pods,
//! endpoints, services and their endpoint slices, policies of every kind) and publishes what it owns (its node
//! record, its endpoints).
//!
//! The shape is kube-rs's reflector: an implementation of [`Datastore`]
//! *watches* its source and emits [`Event`]s (an object applied or deleted,
//! an object that could not be read, the end of the initial listing); a
//! [`store::Store`] applies them into keyed maps and reports which keys
//! changed, so that consumers (the controller, the flow collector) get both
//! the state and the changes. Events and the store know nothing of where the
//! objects come from: [`local::LocalDatastore`] (a directory of YAML files
//! shared by every daemon on one machine: the lab, the tests, single-host
//! use) and the Kubernetes API (watchers per kind; Node annotations
//! `veil.dev/wireguard-public-key` / `veil.dev/wireguard-endpoint`) feed the
//! same store.
//!
//! Two traits split the writes: [`Datastore`] has what `veild` itself
//! publishes (its node record, its endpoints); [`DatastoreWriter`] has what
//! only the lab and the tests write (pods, namespaces, policy manifests),
//! which on a real cluster come from the API server.
//!
//! It does not interpret policies (the controller validates them) and does
//! not decide anything from the state.

pub mod kube;
pub mod local;
mod local_watch;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Node annotation carrying the WireGuard public key (Kubernetes datastore).
pub const ANNOTATION_WG_PUBLIC_KEY: &str = "veil.dev/wireguard-public-key";
/// Node annotation carrying the WireGuard endpoint `ip:port` (Kubernetes datastore).
pub const ANNOTATION_WG_ENDPOINT: &str = "veil.dev/wireguard-endpoint";
/// Node annotation: how many WireGuard lanes (sessions on consecutive UDP
/// ports from the endpoint's) the node listens on. Absent: 1 (a node from
/// before lanes listens on the endpoint's port only).
pub const ANNOTATION_WG_LANES: &str = "veil.dev/wireguard-lanes";

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

    /// How many WireGuard lanes the node listens on: the published number,
    /// 1 when absent (a node from before lanes), `None` when unparsable or 0.
    pub fn wireguard_lanes(&self) -> Option<usize> {
        match self.annotations.get(ANNOTATION_WG_LANES) {
            None => Some(1),
            Some(s) => s.trim().parse().ok().filter(|&n: &usize| n > 0),
        }
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

/// A port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// The Service's port (on its cluster IPs).
    pub port: u16,
    /// TCP, UDP or SCTP.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Optional port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The pods' port it forwards to, when a number (default: `port`;
    /// a named target port is left to the endpoint slices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

/// A Service: a name for a set of pods, reached through its cluster IPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Cluster IPs (none for a headless Service).
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<IpAddr>,
    /// Pod selector in the Service's namespace; `None`: the Service has no
    /// selector and its endpoints come only from endpoint slices.
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

/// An EndpointSlice: addresses backing one Service (Kubernetes datastore;
/// the local datastore derives them from the Service's selector instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSliceRecord {
    /// Namespace.
    pub namespace: String,
    /// Slice name.
    pub name: String,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    /// Endpoint addresses.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// The ports on the endpoints (empty: every port).
    #[serde(default)]
    pub ports: Vec<PodPort>,
}

/// Everything a node knows of the cluster at one moment: the values of a
/// [`store::Store`] as lists, for the parts that read the whole state (flow
/// identities, WireGuard peers).
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
    /// Services.
    pub services: Vec<ServiceRecord>,
    /// Endpoint slices of the Services.
    pub endpoint_slices: Vec<EndpointSliceRecord>,
    /// Policy manifests, each one a YAML document, with where it came from.
    pub policies: Vec<PolicyDocument>,
    /// Objects that could not be read (a bad object never hides the rest;
    /// its last good version, if any, stays in the lists above).
    pub errors: Vec<String>,
}

/// One policy manifest as found in the datastore (not yet validated).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    /// Where it came from (`file#document` for the local datastore,
    /// `kind/namespace/name` for Kubernetes).
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

/// The kinds of object a datastore holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// [`NodeRecord`].
    Node,
    /// [`NamespaceRecord`].
    Namespace,
    /// [`PodRecord`].
    Pod,
    /// [`EndpointRecord`].
    Endpoint,
    /// [`ServiceRecord`].
    Service,
    /// [`EndpointSliceRecord`].
    EndpointSlice,
    /// [`PolicyDocument`] (any policy kind, and tiers).
    Policy,
}

impl Kind {
    /// Lower-case name, as in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::Endpoint => "endpoint",
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice",
            Kind::Policy => "policy",
        }
    }
}

/// The identity of an object in a datastore: its kind and a name that the
/// implementation chooses and keeps stable (a file's path relative to the
/// kind's directory for the local datastore, `namespace/name` or
/// `kind/namespace/name` for Kubernetes). Consumers treat the name as
/// opaque and read identities (pod `namespace/name`) from the values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Kind.
    pub kind: Kind,
    /// Name, unique within the kind.
    pub name: String,
}

impl Key {
    /// A key.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Key {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

/// An object's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A node.
    Node(NodeRecord),
    /// A namespace.
    Namespace(NamespaceRecord),
    /// A pod.
    Pod(PodRecord),
    /// An endpoint.
    Endpoint(EndpointRecord),
    /// A Service.
    Service(ServiceRecord),
    /// An endpoint slice.
    EndpointSlice(EndpointSliceRecord),
    /// A policy manifest.
    Policy(PolicyDocument),
}

impl Resource {
    /// The kind of the value.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Node(_) => Kind::Node,
            Resource::Namespace(_) => Kind::Namespace,
            Resource::Pod(_) => Kind::Pod,
            Resource::Endpoint(_) => Kind::Endpoint,
            Resource::Service(_) => Kind::Service,
            Resource::EndpointSlice(_) => Kind::EndpointSlice,
            Resource::Policy(_) => Kind::Policy,
        }
    }
}

pub use veil_api::Issue;

/// What a watch reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The object `key` now has this value (created or changed; also every
    /// object of the initial listing).
    Applied(Key, Resource),
    /// The object `key` is gone (also clears its [`Event::Invalid`]).
    Deleted(Key),
    /// The object `key` exists but cannot be read. Its last good value, if
    /// any, stays; the issue stays until the object is applied or deleted.
    Invalid(Key, Issue),
    /// The initial listing is complete: the store now holds the whole state.
    Synced,
}

/// The receiving end of a watch. The watch stops when it is dropped.
pub type EventStream = tokio::sync::mpsc::UnboundedReceiver<Event>;

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
    /// The Kubernetes API could not be used.
    #[error("datastore kube: {0}")]
    Kube(String),
    /// The change watch could not be started.
    #[error("datastore {path}: cannot watch for changes: {error}")]
    Watch {
        /// What was being watched.
        path: String,
        /// The error (interpolated in the message, so not a `source`).
        error: notify::Error,
    },
}

/// What a node reads from the cluster's shared state (a watch) and what it
/// publishes there (its node record, its endpoints).
pub trait Datastore: Send + Sync + 'static {
    /// Starts a watch: an [`Event::Applied`] (or [`Event::Invalid`]) for every
    /// object, then [`Event::Synced`], then every change as it happens.
    fn watch(&self) -> Result<EventStream, DatastoreError>;
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
}

/// Writes that only the lab and the tests make (on a cluster these objects
/// come from the API server, never from `veild`).
pub trait DatastoreWriter {
    /// Creates or replaces a pod's metadata.
    fn put_pod(&self, pod: &PodRecord) -> Result<(), DatastoreError>;
    /// Removes a pod's metadata (absent is success).
    fn delete_pod(&self, namespace: &str, name: &str) -> Result<(), DatastoreError>;
    /// Creates or replaces a Service.
    fn put_service(&self, service: &ServiceRecord) -> Result<(), DatastoreError>;
    /// Removes a Service (absent is success).
    fn delete_service(&self, namespace: &str, name: &str) -> Result<(), DatastoreError>;
    /// Creates or replaces a namespace.
    fn put_namespace(&self, ns: &NamespaceRecord) -> Result<(), DatastoreError>;
    /// Creates or replaces the policy manifests stored under `name` (one or
    /// more YAML documents).
    fn put_policies(&self, name: &str, text: &str) -> Result<(), DatastoreError>;
    /// Removes the policy manifests stored under `name` (absent is success).
    fn delete_policies(&self, name: &str) -> Result<(), DatastoreError>;
}

/// A shared datastore handle.
pub type SharedDatastore = Arc<dyn Datastore>;
