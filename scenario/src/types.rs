//! The resolved scenario: nodes with addresses and pod ranges, namespaces
//! with their name label, pods placed and addressed, and the steps with
//! their probes, exactly as both executions (in memory and the lab) use
//! them. Built only by [`Scenario::parse`].

use std::net::{IpAddr, Ipv4Addr};

use veil_policy::cluster::{ExternalHost, PodPort};
use veil_policy::eval::Verdict;
use veil_policy::kinds::Object;
use veil_policy::model::{HttpRequest, ObjectKey, Protocol};
use veil_policy::net::Cidr;
use veil_policy::selector::Labels;

/// A node of the scenario cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioNode {
    /// Name.
    pub name: String,
    /// Labels, implied ones included.
    pub labels: Labels,
    /// 198.18.0.(10+i).
    pub address: Ipv4Addr,
    /// The i-th /24 of podCIDR.
    pub pod_cidr: Cidr,
}

/// A namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioNamespace {
    /// Name.
    pub name: String,
    /// Labels, `kubernetes.io/metadata.name` included.
    pub labels: Labels,
}

/// A pod, with its node and address resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Node name.
    pub node: String,
    /// Address (its node's for hostNetwork pods).
    pub ip: Ipv4Addr,
    /// Whether the address was fixed in the file.
    pub fixed_ip: bool,
    /// hostNetwork.
    pub host_network: bool,
    /// Service account (default `default`).
    pub service_account: String,
    /// Ports it listens on.
    pub ports: Vec<PodPort>,
    /// True for the implicit or defined `kube-system/kube-dns`.
    pub is_dns: bool,
}

impl ScenarioPod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What a probe targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    /// A pod, `namespace/name`.
    Pod(String),
    /// An external host's name: resolved through the cluster DNS first.
    Name(String),
    /// An address, connected to without lookup.
    Ip(IpAddr),
}

/// A probe with everything resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Source pod `namespace/name`.
    pub from: String,
    /// Target as written.
    pub to: ProbeTarget,
    /// The destination address.
    pub dst: IpAddr,
    /// Destination port number.
    pub port: u16,
    /// The port name, when the file named it.
    pub port_name: Option<String>,
    /// Protocol.
    pub protocol: Protocol,
    /// The HTTP request sent (TCP probes to HTTP servers; `GET /` by
    /// default), or `None` (UDP/SCTP echo, or a DNS query to kube-dns).
    pub http: Option<HttpRequest>,
    /// Whether the file gave an `http` request explicitly.
    pub explicit_http: bool,
    /// The probe sends a DNS query (a probe to kube-dns on port 53).
    pub dns_query: bool,
    /// Expected verdict.
    pub expect: Verdict,
}

/// A change of labels in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    /// Replace a pod's labels.
    Pod {
        /// `namespace/name`.
        pod: String,
        /// New labels.
        labels: Labels,
    },
    /// Replace a namespace's labels (the name label is kept).
    Namespace {
        /// Name.
        namespace: String,
        /// New labels, `kubernetes.io/metadata.name` included.
        labels: Labels,
    },
}

/// One step: changes, then probes. Top-level `probes` become one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Objects created or replaced (as written, and parsed).
    pub apply: Vec<(serde_yaml::Value, Object)>,
    /// Objects deleted.
    pub delete: Vec<ObjectKey>,
    /// Label changes.
    pub labels: Vec<LabelChange>,
    /// Probes.
    pub probes: Vec<Probe>,
}

/// A parsed, validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// The pod CIDR.
    pub pod_cidr: Cidr,
    /// Nodes in order.
    pub nodes: Vec<ScenarioNode>,
    /// Namespaces (`kube-system` included).
    pub namespaces: Vec<ScenarioNamespace>,
    /// Pods (`kube-system/kube-dns` included).
    pub pods: Vec<ScenarioPod>,
    /// External hosts.
    pub external: Vec<ExternalHost>,
    /// Initial policy manifests as written, and parsed.
    pub policies: Vec<(serde_yaml::Value, Object)>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Whether the file used `steps` (rather than top-level `probes`).
    pub has_steps: bool,
}

impl std::fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeTarget::Pod(p) | ProbeTarget::Name(p) => f.write_str(p),
            ProbeTarget::Ip(ip) => write!(f, "{ip}"),
        }
    }
}
