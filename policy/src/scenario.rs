//! Scenario files (shared/scenarios/FORMAT.md): a small cluster, the
//! policies in force, and probes with the verdict each must get, possibly in
//! `steps` that change the cluster between probes.
//!
//! [`Scenario::parse`] reads and fully validates a file (every step is
//! applied once on a scratch copy, so an invalid later step is reported at
//! parse time) and resolves everything the format leaves implicit: node
//! addresses and pod CIDRs, pod placement and IPs, the `kube-system`
//! namespace and `kube-dns` pod. The result is what both executions use:
//! [`run`] (in memory, here) and the lab (real traffic).
//!
//! For the lab: [`Scenario::parse`] the file; build [`Scenario::nodes`]
//! (address, pod CIDR, labels), [`Scenario::namespaces`],
//! [`Scenario::pods`] (node, IP, hostNetwork, ports; `is_dns` marks the DNS
//! server, implicit or not) and [`Scenario::external`]; apply
//! [`Scenario::policies`] (the manifests as written are kept next to the
//! parsed objects); then for each of [`Scenario::steps`] apply its `apply`,
//! `delete` and `labels` in that order and send its probes. A [`Probe`] says
//! exactly what to send: destination address and port, protocol, the HTTP
//! request (or none for UDP/SCTP echo), whether it is a DNS query, and for
//! [`ProbeTarget::Name`] that the name must be resolved through the cluster
//! DNS first.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use crate::cluster::{Cluster, ExternalHost, Node, Pod, PodPort};
use crate::compile::Compiled;
use crate::error::PolicyError;
use crate::eval::{evaluate, Evaluation, Flow, Verdict};
use crate::kinds::{is_dns_label, is_dns_subdomain, is_port_name, IntOrString, Object};
use crate::model::{HttpRequest, Kind, ObjectKey, Protocol};
use crate::net::Cidr;
use crate::policyset::PolicySet;
use crate::selector::{validate_labels, Labels};

/// The namespace of the cluster DNS.
pub const DNS_NAMESPACE: &str = "kube-system";
/// The cluster DNS pod's name.
pub const DNS_POD: &str = "kube-dns";
/// The label key of a namespace's own name.
pub const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Why a scenario file is invalid: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// A field of the scenario itself.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field, e.g. `pods[2].ip`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A policy object in the scenario.
    #[error("{field}: {error}")]
    Policy {
        /// Where in the file, e.g. `policies[1]`.
        field: String,
        /// The policy error.
        error: PolicyError,
    },
}

fn inv(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

// ------------------------------------------------------------------ raw

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    description: Option<String>,
    cluster: Option<RawCluster>,
    #[serde(default)]
    namespaces: Vec<RawNamespace>,
    #[serde(default)]
    pods: Vec<RawPod>,
    #[serde(default)]
    external: Vec<RawExternal>,
    #[serde(default)]
    policies: Vec<serde_yaml::Value>,
    probes: Option<Vec<RawProbe>>,
    steps: Option<Vec<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    nodes: Option<Vec<RawNode>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawNode {
    Name(String),
    Full(RawNodeFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeFull {
    name: String,
    #[serde(default)]
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    name: String,
    #[serde(default)]
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPod {
    name: String,
    #[serde(default)]
    labels: Labels,
    node: Option<String>,
    ip: Option<String>,
    #[serde(default)]
    host_network: bool,
    service_account: Option<String>,
    #[serde(default)]
    ports: Vec<RawPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    port: i64,
    protocol: Option<Protocol>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExternal {
    name: String,
    ip: String,
    #[serde(default)]
    ports: Vec<RawPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    from: String,
    to: String,
    port: IntOrString,
    protocol: Option<Protocol>,
    http: Option<RawHttp>,
    expect: RawExpect,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawExpect {
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default)]
    apply: Vec<serde_yaml::Value>,
    #[serde(default)]
    delete: Vec<RawRef>,
    #[serde(default)]
    labels: Vec<RawLabels>,
    #[serde(default)]
    probes: Vec<RawProbe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRef {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabels {
    pod: Option<String>,
    namespace: Option<String>,
    labels: Labels,
}

// ------------------------------------------------------------- resolved

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

/// Maps an apiVersion and kind to a [`Kind`].
pub fn kind_of(api_version: &str, kind: &str) -> Option<Kind> {
    Some(match (api_version, kind) {
        ("networking.k8s.io/v1", "NetworkPolicy") => Kind::K8sNetworkPolicy,
        ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy") => Kind::AdminNetworkPolicy,
        ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy") => {
            Kind::BaselineAdminNetworkPolicy
        }
        ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => Kind::ClusterNetworkPolicy,
        ("veil.dev/v1alpha1", "Tier") => Kind::Tier,
        ("veil.dev/v1alpha1", "NetworkPolicy") => Kind::VeilNetworkPolicy,
        ("veil.dev/v1alpha1", "GlobalNetworkPolicy") => Kind::GlobalNetworkPolicy,
        _ => return None,
    })
}

fn parse_ports(field: &str, raw: &[RawPort]) -> Result<Vec<PodPort>, ScenarioError> {
    let mut out: Vec<PodPort> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if !(1..=65535).contains(&p.port) {
            return Err(inv(
                format!("{f}.port"),
                format!("{} is out of range 1..65535", p.port),
            ));
        }
        let protocol = p.protocol.unwrap_or(Protocol::Tcp);
        if !protocol.has_ports() {
            return Err(inv(format!("{f}.protocol"), "must be TCP, UDP or SCTP"));
        }
        if let Some(n) = &p.name {
            if !is_port_name(n) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("{n:?} is not a port name (lower-case, at most 15 characters)"),
                ));
            }
            if out.iter().any(|o| o.name.as_deref() == Some(n.as_str())) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("port name {n:?} is used twice"),
                ));
            }
        }
        let port = p.port as u16;
        if out.iter().any(|o| o.port == port && o.protocol == protocol) {
            return Err(inv(f, format!("port {port}/{protocol} is listed twice")));
        }
        out.push(PodPort {
            name: p.name.clone(),
            port,
            protocol,
        });
    }
    Ok(out)
}

fn dns_ports() -> Vec<PodPort> {
    vec![
        PodPort {
            name: Some("dns".into()),
            port: 53,
            protocol: Protocol::Udp,
        },
        PodPort {
            name: Some("dns-tcp".into()),
            port: 53,
            protocol: Protocol::Tcp,
        },
    ]
}

fn parse_object(field: &str, v: &serde_yaml::Value) -> Result<Object, ScenarioError> {
    Object::from_value(v).map_err(|error| ScenarioError::Policy {
        field: field.to_string(),
        error,
    })
}

impl Scenario {
    /// Parses and validates a scenario file's text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = serde_path_to_error::deserialize(
            serde_yaml::Deserializer::from_str(text),
        )
        .map_err(|e| {
            let p = e.path().to_string();
            let p = if p == "." { "(file)".to_string() } else { p };
            let msg = e.into_inner().to_string();
            // serde_yaml may already prefix the path.
            let msg = msg
                .strip_prefix(&format!("{p}: "))
                .map(str::to_string)
                .unwrap_or(msg);
            inv(p, msg)
        })?;
        let name = raw.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(inv("name", "required"));
        }
        if name.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(inv(
                "name",
                format!("{name:?} must not contain spaces or `/`"),
            ));
        }

        // Cluster: podCIDR and nodes.
        let cluster = raw.cluster.as_ref();
        let pod_cidr_s = cluster
            .and_then(|c| c.pod_cidr.clone())
            .unwrap_or_else(|| "10.244.0.0/16".into());
        let pod_cidr: Cidr = pod_cidr_s
            .parse()
            .map_err(|e: crate::net::CidrError| inv("cluster.podCIDR", e.to_string()))?;
        let IpAddr::V4(base) = pod_cidr.addr() else {
            return Err(inv("cluster.podCIDR", "must be an IPv4 network"));
        };
        if pod_cidr.prefix() > 24 {
            return Err(inv("cluster.podCIDR", "must be /24 or larger"));
        }
        let raw_nodes: Vec<RawNodeFull> = match cluster.and_then(|c| c.nodes.as_ref()) {
            None => vec![RawNodeFull {
                name: "node-a".into(),
                labels: Labels::new(),
            }],
            Some(v) => v
                .iter()
                .map(|n| match n {
                    RawNode::Name(s) => RawNodeFull {
                        name: s.clone(),
                        labels: Labels::new(),
                    },
                    RawNode::Full(f) => RawNodeFull {
                        name: f.name.clone(),
                        labels: f.labels.clone(),
                    },
                })
                .collect(),
        };
        if raw_nodes.is_empty() {
            return Err(inv("cluster.nodes", "needs at least one node"));
        }
        let max_nodes = (1u64 << (24 - pod_cidr.prefix())).min(245);
        if raw_nodes.len() as u64 > max_nodes {
            return Err(inv(
                "cluster.nodes",
                format!("at most {max_nodes} nodes fit (podCIDR /24s, node addresses)"),
            ));
        }
        let mut nodes: Vec<ScenarioNode> = Vec::new();
        for (i, n) in raw_nodes.iter().enumerate() {
            let f = format!("cluster.nodes[{i}]");
            if !is_dns_subdomain(&n.name) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("{:?} is not a valid node name", n.name),
                ));
            }
            if nodes.iter().any(|m| m.name == n.name) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("node {:?} is listed twice", n.name),
                ));
            }
            validate_labels(&n.labels).map_err(|e| inv(format!("{f}.labels"), e))?;
            let mut labels = n.labels.clone();
            for (k, v) in [
                ("kubernetes.io/hostname", n.name.as_str()),
                ("kubernetes.io/os", "linux"),
            ] {
                if labels.get(k).is_some_and(|x| x != v) {
                    return Err(inv(
                        format!("{f}.labels"),
                        format!("{k} is implied as {v:?}"),
                    ));
                }
                labels.insert(k.into(), v.into());
            }
            let net = u32::from(base) + ((i as u32) << 8);
            nodes.push(ScenarioNode {
                name: n.name.clone(),
                labels,
                address: Ipv4Addr::new(198, 18, 0, 10 + i as u8),
                pod_cidr: Cidr::new(IpAddr::V4(Ipv4Addr::from(net)), 24)
                    .ok_or_else(|| inv("cluster.podCIDR", "bad network"))?,
            });
        }

        // Namespaces.
        let mut namespaces: Vec<ScenarioNamespace> = Vec::new();
        for (i, n) in raw.namespaces.iter().enumerate() {
            let f = format!("namespaces[{i}]");
            if !is_dns_label(&n.name) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("{:?} is not a valid namespace name", n.name),
                ));
            }
            if namespaces.iter().any(|m| m.name == n.name) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("namespace {:?} is listed twice", n.name),
                ));
            }
            let labels = ns_labels(&format!("{f}.labels"), &n.name, &n.labels)?;
            namespaces.push(ScenarioNamespace {
                name: n.name.clone(),
                labels,
            });
        }
        if !namespaces.iter().any(|n| n.name == DNS_NAMESPACE) {
            namespaces.insert(
                0,
                ScenarioNamespace {
                    name: DNS_NAMESPACE.into(),
                    labels: ns_labels("namespaces", DNS_NAMESPACE, &Labels::new())?,
                },
            );
        }

        // Pods: placement first, then addresses.
        struct Placed {
            namespace: String,
            name: String,
            labels: Labels,
            node: usize,
            ip: Option<Ipv4Addr>,
            host_network: bool,
            service_account: String,
            ports: Vec<PodPort>,
            is_dns: bool,
            field: String,
        }
        let mut placed: Vec<Placed> = Vec::new();
        let mut k = 0usize;
        let dns_defined = raw
            .pods
            .iter()
            .any(|p| p.name == format!("{DNS_NAMESPACE}/{DNS_POD}"));
        if !dns_defined {
            placed.push(Placed {
                namespace: DNS_NAMESPACE.into(),
                name: DNS_POD.into(),
                labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
                node: 0,
                ip: None,
                host_network: false,
                service_account: "default".into(),
                ports: dns_ports(),
                is_dns: true,
                field: "(implicit kube-system/kube-dns)".into(),
            });
        }
        for (i, p) in raw.pods.iter().enumerate() {
            let f = format!("pods[{i}]");
            let Some((ns, name)) = p.name.split_once('/') else {
                return Err(inv(
                    format!("{f}.name"),
                    format!("{:?} must be namespace/name", p.name),
                ));
            };
            if !namespaces.iter().any(|n| n.name == ns) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("namespace {ns:?} is not listed in namespaces"),
                ));
            }
            if !is_dns_subdomain(name) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("{name:?} is not a valid pod name"),
                ));
            }
            if placed.iter().any(|q| q.namespace == ns && q.name == name) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("pod {:?} is listed twice", p.name),
                ));
            }
            validate_labels(&p.labels).map_err(|e| inv(format!("{f}.labels"), e))?;
            let is_dns = ns == DNS_NAMESPACE && name == DNS_POD;
            let node = match &p.node {
                Some(n) => nodes.iter().position(|m| m.name == *n).ok_or_else(|| {
                    inv(format!("{f}.node"), format!("node {n:?} does not exist"))
                })?,
                None if is_dns => 0,
                None => {
                    let n = k % nodes.len();
                    k += 1;
                    n
                }
            };
            let ports = parse_ports(&format!("{f}.ports"), &p.ports)?;
            if is_dns {
                let mut a = ports.clone();
                let mut b = dns_ports();
                a.sort_by_key(|x| (x.port, x.protocol));
                b.sort_by_key(|x| (x.port, x.protocol));
                if a != b {
                    return Err(inv(
                        format!("{f}.ports"),
                        "kube-system/kube-dns must have exactly the ports 53/UDP dns and 53/TCP dns-tcp",
                    ));
                }
            }
            let ip = match &p.ip {
                None => None,
                Some(s) => {
                    if p.host_network {
                        return Err(inv(
                            format!("{f}.ip"),
                            "a hostNetwork pod uses its node's address",
                        ));
                    }
                    let ip: Ipv4Addr = s.parse().map_err(|_| {
                        inv(format!("{f}.ip"), format!("{s:?} is not an IPv4 address"))
                    })?;
                    let cidr = nodes[node].pod_cidr;
                    if !cidr.contains(IpAddr::V4(ip)) {
                        return Err(inv(
                            format!("{f}.ip"),
                            format!("{ip} is not inside its node's pod range {cidr}"),
                        ));
                    }
                    if [0, 1, 255].contains(&ip.octets()[3]) {
                        return Err(inv(
                            format!("{f}.ip"),
                            format!("{ip}: .0, .1 and .255 are reserved"),
                        ));
                    }
                    if placed.iter().any(|q| q.ip == Some(ip)) {
                        return Err(inv(
                            format!("{f}.ip"),
                            format!("{ip} is used by another pod"),
                        ));
                    }
                    Some(ip)
                }
            };
            placed.push(Placed {
                namespace: ns.into(),
                name: name.into(),
                labels: p.labels.clone(),
                node,
                ip,
                host_network: p.host_network,
                service_account: p
                    .service_account
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                ports,
                is_dns,
                field: f,
            });
        }
        // Two hostNetwork pods of a node cannot listen on the same port.
        let mut host_ports: BTreeSet<(usize, u16, Protocol)> = BTreeSet::new();
        let mut host_names: BTreeSet<(usize, String)> = BTreeSet::new();
        for p in placed.iter().filter(|p| p.host_network) {
            for pp in &p.ports {
                if !host_ports.insert((p.node, pp.port, pp.protocol)) {
                    return Err(inv(
                        format!("{}.ports", p.field),
                        format!(
                            "port {}/{} is already used on node {} by another hostNetwork pod",
                            pp.port, pp.protocol, nodes[p.node].name
                        ),
                    ));
                }
                if let Some(n) = &pp.name {
                    if !host_names.insert((p.node, n.clone())) {
                        return Err(inv(
                            format!("{}.ports", p.field),
                            format!("port name {n:?} is already used on node {} by another hostNetwork pod", nodes[p.node].name),
                        ));
                    }
                }
            }
        }
        let used: BTreeSet<Ipv4Addr> = placed.iter().filter_map(|p| p.ip).collect();
        let mut next: Vec<u8> = vec![2; nodes.len()];
        let mut pods = Vec::new();
        for p in placed {
            let ip = if p.host_network {
                nodes[p.node].address
            } else if let Some(ip) = p.ip {
                ip
            } else {
                let IpAddr::V4(net) = nodes[p.node].pod_cidr.addr() else {
                    return Err(inv("cluster.podCIDR", "must be IPv4"));
                };
                let o = net.octets();
                loop {
                    if next[p.node] == 255 {
                        return Err(inv(
                            &p.field,
                            format!("no free address left on node {}", nodes[p.node].name),
                        ));
                    }
                    let cand = Ipv4Addr::new(o[0], o[1], o[2], next[p.node]);
                    next[p.node] += 1;
                    if !used.contains(&cand) {
                        break cand;
                    }
                }
            };
            pods.push(ScenarioPod {
                namespace: p.namespace,
                name: p.name,
                labels: p.labels,
                node: nodes[p.node].name.clone(),
                ip,
                fixed_ip: p.ip.is_some(),
                host_network: p.host_network,
                service_account: p.service_account,
                ports: p.ports,
                is_dns: p.is_dns,
            });
        }

        // External hosts.
        let ext_range: Cidr = "203.0.113.0/24"
            .parse()
            .map_err(|_| inv("external", "range"))?;
        let mut external: Vec<ExternalHost> = Vec::new();
        for (i, e) in raw.external.iter().enumerate() {
            let f = format!("external[{i}]");
            let lower = e.name.to_ascii_lowercase();
            if lower != e.name || !is_dns_subdomain(&e.name) || !e.name.contains('.') {
                return Err(inv(
                    format!("{f}.name"),
                    format!("{:?} is not a lower-case DNS name with a dot", e.name),
                ));
            }
            if external.iter().any(|x| x.name == e.name) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("{:?} is listed twice", e.name),
                ));
            }
            let ip: IpAddr =
                e.ip.parse()
                    .map_err(|_| inv(format!("{f}.ip"), format!("{:?} is not an address", e.ip)))?;
            if !ext_range.contains(ip)
                || [0, 255].contains(&match ip {
                    IpAddr::V4(a) => a.octets()[3],
                    IpAddr::V6(_) => 0,
                })
            {
                return Err(inv(
                    format!("{f}.ip"),
                    format!("{ip} is not a host address inside 203.0.113.0/24"),
                ));
            }
            if external.iter().any(|x| x.ip == ip) {
                return Err(inv(
                    format!("{f}.ip"),
                    format!("{ip} is used by another external host"),
                ));
            }
            external.push(ExternalHost {
                name: e.name.clone(),
                ip,
                ports: parse_ports(&format!("{f}.ports"), &e.ports)?,
            });
        }

        // Policies.
        let mut policies = Vec::new();
        for (i, v) in raw.policies.iter().enumerate() {
            policies.push((v.clone(), parse_object(&format!("policies[{i}]"), v)?));
        }

        let mut sc = Scenario {
            name,
            description: raw.description.clone(),
            pod_cidr,
            nodes,
            namespaces,
            pods,
            external,
            policies,
            steps: Vec::new(),
            has_steps: raw.steps.is_some(),
        };

        // Steps, validated against the evolving state.
        let mut state = sc.initial_state().map_err(|error| ScenarioError::Policy {
            field: "policies".into(),
            error,
        })?;
        let raw_steps: Vec<(String, RawStep)> = match (raw.probes, raw.steps) {
            (Some(_), Some(_)) => return Err(inv("steps", "use either probes or steps, not both")),
            (None, None) => return Err(inv("probes", "a scenario needs probes or steps")),
            (Some(p), None) => vec![(
                String::new(),
                RawStep {
                    apply: Vec::new(),
                    delete: Vec::new(),
                    labels: Vec::new(),
                    probes: p,
                },
            )],
            (None, Some(s)) => {
                if s.is_empty() {
                    return Err(inv("steps", "must not be empty"));
                }
                s.into_iter()
                    .enumerate()
                    .map(|(i, s)| (format!("steps[{i}]"), s))
                    .collect()
            }
        };
        let mut resolved_names: BTreeSet<String> = BTreeSet::new();
        for (sf, rs) in raw_steps {
            let mut step = Step {
                apply: Vec::new(),
                delete: Vec::new(),
                labels: Vec::new(),
                probes: Vec::new(),
            };
            for (i, v) in rs.apply.iter().enumerate() {
                step.apply
                    .push((v.clone(), parse_object(&format!("{sf}.apply[{i}]"), v)?));
            }
            for (i, r) in rs.delete.iter().enumerate() {
                let f = format!("{sf}.delete[{i}]");
                let kind = kind_of(&r.api_version, &r.kind).ok_or_else(|| {
                    inv(
                        &f,
                        format!(
                            "unknown kind {:?} of apiVersion {:?}",
                            r.kind, r.api_version
                        ),
                    )
                })?;
                if kind.namespaced() != r.namespace.is_some() {
                    return Err(inv(
                        format!("{f}.namespace"),
                        if kind.namespaced() {
                            "required for a namespaced kind"
                        } else {
                            "a cluster-scoped kind takes no namespace"
                        },
                    ));
                }
                step.delete.push(ObjectKey {
                    kind,
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                });
            }
            for (i, l) in rs.labels.iter().enumerate() {
                let f = format!("{sf}.labels[{i}]");
                validate_labels(&l.labels).map_err(|e| inv(format!("{f}.labels"), e))?;
                match (&l.pod, &l.namespace) {
                    (Some(p), None) => {
                        if !sc.pods.iter().any(|q| q.key() == *p) {
                            return Err(inv(
                                format!("{f}.pod"),
                                format!("pod {p:?} does not exist"),
                            ));
                        }
                        step.labels.push(LabelChange::Pod {
                            pod: p.clone(),
                            labels: l.labels.clone(),
                        });
                    }
                    (None, Some(n)) => {
                        if !sc.namespaces.iter().any(|q| q.name == *n) {
                            return Err(inv(
                                format!("{f}.namespace"),
                                format!("namespace {n:?} does not exist"),
                            ));
                        }
                        step.labels.push(LabelChange::Namespace {
                            namespace: n.clone(),
                            labels: ns_labels(&format!("{f}.labels"), n, &l.labels)?,
                        });
                    }
                    _ => return Err(inv(&f, "needs exactly one of pod and namespace")),
                }
            }
            state
                .apply_changes(&step)
                .map_err(|error| ScenarioError::Policy {
                    field: if sf.is_empty() {
                        "policies".into()
                    } else {
                        sf.clone()
                    },
                    error,
                })?;
            for (i, p) in rs.probes.iter().enumerate() {
                let f = if sf.is_empty() {
                    format!("probes[{i}]")
                } else {
                    format!("{sf}.probes[{i}]")
                };
                step.probes
                    .push(sc.resolve_probe(&f, p, &mut resolved_names)?);
            }
            sc.steps.push(step);
        }
        Ok(sc)
    }

    fn resolve_probe(
        &self,
        f: &str,
        p: &RawProbe,
        resolved: &mut BTreeSet<String>,
    ) -> Result<Probe, ScenarioError> {
        let from = self
            .pods
            .iter()
            .find(|q| q.key() == p.from)
            .ok_or_else(|| {
                inv(
                    format!("{f}.from"),
                    format!("pod {:?} does not exist", p.from),
                )
            })?;
        let _ = from;
        // The target: its address, its listening ports, its default Host.
        let (to, dst, ports, host, is_dns): (ProbeTarget, IpAddr, Vec<PodPort>, String, bool) = if p
            .to
            .contains('/')
        {
            let q =
                self.pods.iter().find(|q| q.key() == p.to).ok_or_else(|| {
                    inv(format!("{f}.to"), format!("pod {:?} does not exist", p.to))
                })?;
            (
                ProbeTarget::Pod(p.to.clone()),
                IpAddr::V4(q.ip),
                q.ports.clone(),
                format!("{}.{}", q.name, q.namespace),
                q.is_dns,
            )
        } else if let Ok(ip) = p.to.parse::<IpAddr>() {
            if let Some(e) = self.external.iter().find(|e| e.ip == ip) {
                if resolved.contains(&e.name) {
                    return Err(inv(
                            format!("{f}.to"),
                            format!(
                                "a probe to {ip} must come before any probe that resolves {} (DNS caching)",
                                e.name
                            ),
                        ));
                }
                (
                    ProbeTarget::Ip(ip),
                    ip,
                    e.ports.clone(),
                    p.to.clone(),
                    false,
                )
            } else if let Some(q) = self
                .pods
                .iter()
                .find(|q| !q.host_network && IpAddr::V4(q.ip) == ip)
            {
                (
                    ProbeTarget::Ip(ip),
                    ip,
                    q.ports.clone(),
                    p.to.clone(),
                    q.is_dns,
                )
            } else if let Some(n) = self.nodes.iter().find(|n| IpAddr::V4(n.address) == ip) {
                let ports = self
                    .pods
                    .iter()
                    .filter(|q| q.host_network && q.node == n.name)
                    .flat_map(|q| q.ports.iter().cloned())
                    .collect();
                let dns = self
                    .pods
                    .iter()
                    .any(|q| q.host_network && q.node == n.name && q.is_dns);
                (ProbeTarget::Ip(ip), ip, ports, p.to.clone(), dns)
            } else {
                return Err(inv(
                    format!("{f}.to"),
                    format!("{ip} is no pod's, node's or external host's address"),
                ));
            }
        } else if let Some(e) = self.external.iter().find(|e| e.name == p.to) {
            resolved.insert(e.name.clone());
            (
                ProbeTarget::Name(e.name.clone()),
                e.ip,
                e.ports.clone(),
                e.name.clone(),
                false,
            )
        } else {
            return Err(inv(
                format!("{f}.to"),
                format!(
                    "{:?} is no pod (namespace/name), external host name or address",
                    p.to
                ),
            ));
        };
        let (port, port_name, protocol) = match &p.port {
            IntOrString::Int(n) => {
                if !(1..=65535).contains(n) {
                    return Err(inv(
                        format!("{f}.port"),
                        format!("{n} is out of range 1..65535"),
                    ));
                }
                (*n as u16, None, p.protocol.unwrap_or(Protocol::Tcp))
            }
            IntOrString::String(name) => {
                let pp = ports
                    .iter()
                    .find(|x| x.name.as_deref() == Some(name.as_str()))
                    .ok_or_else(|| {
                        inv(
                            format!("{f}.port"),
                            format!("{name:?} is not a named port of {}", p.to),
                        )
                    })?;
                if p.protocol.is_some_and(|x| x != pp.protocol) {
                    return Err(inv(
                        format!("{f}.protocol"),
                        format!("port {name:?} is {}", pp.protocol),
                    ));
                }
                (pp.port, Some(name.clone()), pp.protocol)
            }
        };
        if !protocol.has_ports() {
            return Err(inv(format!("{f}.protocol"), "must be TCP, UDP or SCTP"));
        }
        if !ports
            .iter()
            .any(|x| x.port == port && x.protocol == protocol)
        {
            return Err(inv(
                format!("{f}.port"),
                format!("{} does not listen on {port}/{protocol}", p.to),
            ));
        }
        let dns_query = is_dns && port == 53;
        let http = if protocol != Protocol::Tcp || dns_query {
            if p.http.is_some() {
                return Err(inv(
                    format!("{f}.http"),
                    "http probes need a TCP port that serves HTTP (not UDP/SCTP, not DNS)",
                ));
            }
            None
        } else {
            let h = p.http.as_ref();
            let method = h
                .and_then(|h| h.method.clone())
                .unwrap_or_else(|| "GET".into());
            let path = h.and_then(|h| h.path.clone()).unwrap_or_else(|| "/".into());
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(inv(
                    format!("{f}.http.method"),
                    format!("{method:?} is not an upper-case method"),
                ));
            }
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                return Err(inv(
                    format!("{f}.http.path"),
                    format!("{path:?} must start with / and have no spaces"),
                ));
            }
            Some(HttpRequest {
                method,
                path,
                host: h.and_then(|h| h.host.clone()).unwrap_or(host),
            })
        };
        Ok(Probe {
            from: p.from.clone(),
            to,
            dst,
            port,
            port_name,
            protocol,
            http,
            explicit_http: p.http.is_some(),
            dns_query,
            expect: match p.expect {
                RawExpect::Allow => Verdict::Allow,
                RawExpect::Deny => Verdict::Deny,
            },
        })
    }

    /// The cluster before any step.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            nodes: self
                .nodes
                .iter()
                .map(|n| Node {
                    name: n.name.clone(),
                    labels: n.labels.clone(),
                    address: IpAddr::V4(n.address),
                })
                .collect(),
            namespaces: self
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), n.labels.clone()))
                .collect(),
            pods: self
                .pods
                .iter()
                .map(|p| {
                    (
                        p.key(),
                        Pod {
                            namespace: p.namespace.clone(),
                            name: p.name.clone(),
                            labels: p.labels.clone(),
                            node: p.node.clone(),
                            ip: IpAddr::V4(p.ip),
                            host_network: p.host_network,
                            ports: p.ports.clone(),
                        },
                    )
                })
                .collect(),
            external: self.external.clone(),
        }
    }

    /// The state before any step: the cluster and the initial policies.
    pub fn initial_state(&self) -> Result<State, PolicyError> {
        let mut policies = PolicySet::new();
        policies.apply(self.policies.iter().map(|(_, o)| o.clone()))?;
        Ok(State {
            cluster: self.cluster(),
            policies,
        })
    }

    /// The DNS pod (`kube-system/kube-dns`).
    pub fn dns_pod(&self) -> Option<&ScenarioPod> {
        self.pods.iter().find(|p| p.is_dns)
    }

    /// Every probe, with its step index, in file order.
    pub fn probes(&self) -> impl Iterator<Item = (usize, &Probe)> {
        self.steps
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.probes.iter().map(move |p| (i, p)))
    }
}

fn ns_labels(field: &str, name: &str, given: &Labels) -> Result<Labels, ScenarioError> {
    validate_labels(given).map_err(|e| inv(field, e))?;
    if given.get(NS_NAME_LABEL).is_some_and(|v| v != name) {
        return Err(inv(field, format!("{NS_NAME_LABEL} is fixed to {name:?}")));
    }
    let mut l = given.clone();
    l.insert(NS_NAME_LABEL.into(), name.into());
    Ok(l)
}

/// The cluster and policies at some point of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The cluster.
    pub cluster: Cluster,
    /// The policies in force.
    pub policies: PolicySet,
}

impl State {
    /// Applies a step's changes in the documented order: apply, delete, labels.
    pub fn apply_changes(&mut self, step: &Step) -> Result<(), PolicyError> {
        if !step.apply.is_empty() {
            self.policies
                .apply(step.apply.iter().map(|(_, o)| o.clone()))?;
        }
        if !step.delete.is_empty() {
            self.policies.delete(&step.delete)?;
        }
        for l in &step.labels {
            match l {
                LabelChange::Pod { pod, labels } => {
                    if let Some(p) = self.cluster.pods.get_mut(pod) {
                        p.labels = labels.clone();
                    }
                }
                LabelChange::Namespace { namespace, labels } => {
                    self.cluster
                        .namespaces
                        .insert(namespace.clone(), labels.clone());
                }
            }
        }
        Ok(())
    }
}

/// The flows a probe makes: an optional DNS lookup, then the connection.
pub fn probe_flows(cluster: &Cluster, sc: &Scenario, probe: &Probe) -> (Option<Flow>, Flow) {
    let src = cluster
        .pods
        .get(&probe.from)
        .map(|p| p.ip)
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let dns = match (&probe.to, sc.dns_pod()) {
        (ProbeTarget::Name(_), Some(d)) => Some(Flow {
            src,
            dst: IpAddr::V4(d.ip),
            protocol: Protocol::Udp,
            port: 53,
            dns_name: None,
            http: None,
        }),
        _ => None,
    };
    let main = Flow {
        src,
        dst: probe.dst,
        protocol: probe.protocol,
        port: probe.port,
        dns_name: match &probe.to {
            ProbeTarget::Name(n) => Some(n.clone()),
            _ => None,
        },
        http: probe.http.clone(),
    };
    (dns, main)
}

/// The outcome of one probe.
#[derive(Debug, Clone)]
pub struct ProbeOutcome {
    /// Step index.
    pub step: usize,
    /// Probe index within the step.
    pub index: usize,
    /// The probe.
    pub probe: Probe,
    /// The reference evaluator's DNS lookup evaluation, if the probe resolves a name.
    pub dns: Option<Evaluation>,
    /// The reference evaluator's evaluation of the connection (None when
    /// the lookup was denied).
    pub main: Option<Evaluation>,
    /// The reference verdict.
    pub reference: Verdict,
    /// The compiled program's verdict.
    pub compiled: Verdict,
}

impl ProbeOutcome {
    /// Whether both evaluators gave the expected verdict.
    pub fn passed(&self) -> bool {
        self.reference == self.probe.expect && self.compiled == self.probe.expect
    }

    /// A readable trace.
    pub fn trace(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.dns {
            s.push_str("DNS lookup (UDP 53 to kube-dns):\n");
            s.push_str(&d.trace.to_string());
            if d.verdict == Verdict::Deny {
                s.push_str("DNS lookup denied: the name cannot be resolved\n");
            }
        }
        if let Some(m) = &self.main {
            s.push_str(&m.trace.to_string());
        }
        if self.compiled != self.reference {
            s.push_str(&format!(
                "DISAGREEMENT: the compiled program says {}, the reference evaluator {}\n",
                self.compiled, self.reference
            ));
        }
        s
    }
}

/// Evaluates one probe on a state with both evaluators.
pub fn evaluate_probe(
    sc: &Scenario,
    state: &State,
    compiled: &Compiled,
    step: usize,
    index: usize,
    probe: &Probe,
) -> ProbeOutcome {
    let (dns_flow, flow) = probe_flows(&state.cluster, sc, probe);
    let dns = dns_flow
        .as_ref()
        .map(|f| evaluate(&state.cluster, &state.policies, f));
    let dns_ok = dns.as_ref().is_none_or(|d| d.verdict == Verdict::Allow);
    let main = dns_ok.then(|| evaluate(&state.cluster, &state.policies, &flow));
    let reference = main.as_ref().map_or(Verdict::Deny, |m| m.verdict);
    let c_dns_ok = dns_flow
        .as_ref()
        .is_none_or(|f| compiled.program().verdict(f) == Verdict::Allow);
    let compiled_v = if c_dns_ok {
        compiled.program().verdict(&flow)
    } else {
        Verdict::Deny
    };
    ProbeOutcome {
        step,
        index,
        probe: probe.clone(),
        dns,
        main,
        reference,
        compiled: compiled_v,
    }
}

/// Runs a scenario: each step's changes, then its probes, through the
/// reference evaluator and the compiled program (updated incrementally
/// from step to step, never recompiled from scratch).
pub fn run(sc: &Scenario) -> Result<Vec<ProbeOutcome>, PolicyError> {
    let mut out = Vec::new();
    run_steps(sc, sc.steps.len(), |sc, state, compiled, si| {
        for (pi, probe) in sc.steps[si].probes.iter().enumerate() {
            out.push(evaluate_probe(sc, state, compiled, si, pi, probe));
        }
    })?;
    Ok(out)
}

/// Applies steps `0..count` in order, updating the compiled program
/// incrementally, and calls `at_step` after each step's changes.
pub fn run_steps(
    sc: &Scenario,
    count: usize,
    mut at_step: impl FnMut(&Scenario, &State, &Compiled, usize),
) -> Result<(State, Compiled), PolicyError> {
    let mut state = sc.initial_state()?;
    let mut compiled = Compiled::new(&state.cluster, &state.policies);
    for (si, step) in sc.steps.iter().enumerate().take(count) {
        state.apply_changes(step)?;
        if !step.apply.is_empty() || !step.delete.is_empty() {
            compiled.update_policies(&state.cluster, &state.policies);
        }
        for l in &step.labels {
            match l {
                LabelChange::Pod { pod, .. } => compiled.update_pod(&state.cluster, pod),
                LabelChange::Namespace { namespace, .. } => {
                    compiled.update_namespace(&state.cluster, namespace)
                }
            }
        }
        at_step(sc, &state, &compiled, si);
    }
    Ok((state, compiled))
}

impl Scenario {
    /// Builds an ad-hoc probe (for `veilctl policy trace`), validated like
    /// a probe of the file. `port` is a number or a port name of the target.
    pub fn probe(
        &self,
        from: &str,
        to: &str,
        port: &str,
        protocol: Option<Protocol>,
        http: Option<(String, String, Option<String>)>,
    ) -> Result<Probe, ScenarioError> {
        let raw = RawProbe {
            from: from.to_string(),
            to: to.to_string(),
            port: match port.parse::<i64>() {
                Ok(n) => IntOrString::Int(n),
                Err(_) => IntOrString::String(port.to_string()),
            },
            protocol,
            http: http.map(|(m, p, h)| RawHttp {
                method: Some(m),
                path: Some(p),
                host: h,
            }),
            expect: RawExpect::Allow,
        };
        self.resolve_probe("probe", &raw, &mut BTreeSet::new())
    }
}

impl std::fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeTarget::Pod(p) | ProbeTarget::Name(p) => f.write_str(p),
            ProbeTarget::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Which file names to treat as scenarios in a directory.
pub fn is_scenario_file(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}
