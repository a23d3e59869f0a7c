//! What a lab is to contain, decided before anything is built: nodes with their
//! addresses and pod CIDRs, namespaces, pods with their node and ports, external
//! hosts, and the namespace name of each. Built from a scenario or from the
//! sample shape (`--nodes K --pods-per-node M`; the scenario's is in
//! [`scenario`]). Pure: no IO.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use veil_policy::kinds::is_dns_subdomain;

mod scenario;

/// Node i's underlay address is `198.18.0.(10+i)`.
pub const FIRST_NODE_HOST: u8 = 10;
/// Underlay prefix length (198.18.0.0/15).
pub const UNDERLAY_PREFIX: u8 = 15;
/// Most nodes a lab may have.
pub const MAX_NODES: usize = 26;
/// Most sample pods per node.
pub const MAX_PODS_PER_NODE: usize = 100;
/// Default cluster pod CIDR; every lab pod CIDR must lie inside it.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The external hosts' range.
pub const EXTERNAL_CIDR: &str = "203.0.113.0/24";

/// A protocol of a served port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// TCP: HTTP/1.1.
    Tcp,
    /// UDP: echo.
    Udp,
    /// SCTP: echo.
    Sctp,
}

impl Proto {
    /// Parses TCP, UDP or SCTP (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }
}

/// A port a pod or external host serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanPort {
    /// Number.
    pub port: u16,
    /// Protocol.
    pub protocol: Proto,
    /// Name.
    pub name: Option<String>,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanNode {
    /// Name.
    pub name: String,
    /// Labels given by the scenario.
    pub labels: BTreeMap<String, String>,
    /// Underlay address.
    pub address: Ipv4Addr,
    /// Pod CIDR.
    pub pod_cidr: Ipv4Network,
    /// Namespace.
    pub netns: String,
    /// Interface name of its link on the underlay bridge.
    pub bridge_port: String,
}

/// A Kubernetes namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanNamespace {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanPod {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Node.
    pub node: String,
    /// Fixed address.
    pub ip: Option<Ipv4Addr>,
    /// Uses its node's namespace.
    pub host_network: bool,
    /// Service account.
    pub service_account: Option<String>,
    /// Ports.
    pub ports: Vec<PlanPort>,
    /// The cluster DNS server.
    pub dns: bool,
    /// Its own namespace (its node's for hostNetwork pods).
    pub netns: String,
}

impl PlanPod {
    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// An external host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanExternal {
    /// DNS name (lowercase).
    pub name: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Ports.
    pub ports: Vec<PlanPort>,
    /// Namespace.
    pub netns: String,
    /// Interface name of its link on the underlay bridge.
    pub bridge_port: String,
}

/// Everything a lab is to contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Lab name.
    pub lab: String,
    /// Cluster pod CIDR.
    pub cluster_cidr: Ipv4Network,
    /// Nodes.
    pub nodes: Vec<PlanNode>,
    /// Namespaces.
    pub namespaces: Vec<PlanNamespace>,
    /// Pods.
    pub pods: Vec<PlanPod>,
    /// External hosts.
    pub external: Vec<PlanExternal>,
}

/// Why a cluster description cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A count is out of range.
    #[error("{field}: {value} is out of range ({range})")]
    Range {
        /// The field.
        field: String,
        /// The value given.
        value: String,
        /// What is allowed.
        range: String,
    },
    /// Two things have the same name or address.
    #[error("{field}: {what} {name:?} appears twice")]
    Duplicate {
        /// The field.
        field: String,
        /// node, namespace, pod, address...
        what: &'static str,
        /// The repeated name.
        name: String,
    },
    /// A reference to something not defined.
    #[error("{field}: no {what} {name:?} is defined")]
    Unknown {
        /// The field.
        field: String,
        /// node, namespace.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A malformed value.
    #[error("{field}: {value:?} {reason}")]
    Invalid {
        /// The field.
        field: String,
        /// The value.
        value: String,
        /// Why it is wrong.
        reason: &'static str,
    },
}

fn node_letter_name(i: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(i % 26).unwrap_or(0));
    format!("node-{letter}")
}

/// Builds the nodes: node i gets 198.18.0.(10+i) and the i-th /24 of `cidr`.
fn nodes(
    lab: &str,
    cidr: Ipv4Network,
    specs: Vec<(String, BTreeMap<String, String>)>,
) -> Result<Vec<PlanNode>, PlanError> {
    let cluster: Ipv4Network = CLUSTER_CIDR.parse().expect("constant CIDR");
    if cidr.prefix() < cluster.prefix() || cidr.prefix() > 24 || !cluster.contains(cidr.network()) {
        return Err(PlanError::Invalid {
            field: "cluster.podCIDR".into(),
            value: cidr.to_string(),
            reason: "must be inside 10.244.0.0/16 with a prefix of at most /24",
        });
    }
    let room = 1usize << (24 - cidr.prefix());
    let max = room.min(MAX_NODES);
    if specs.is_empty() || specs.len() > max {
        return Err(PlanError::Range {
            field: "cluster.nodes".into(),
            value: specs.len().to_string(),
            range: format!("1 to {max} nodes"),
        });
    }
    let prefix = super::prefix(lab);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, (name, labels)) in specs.into_iter().enumerate() {
        let field = format!("cluster.nodes[{i}]");
        if !is_dns_subdomain(&name) || name.len() > 63 {
            return Err(PlanError::Invalid {
                field,
                value: name,
                reason: "is not a valid node name (lowercase DNS name, at most 63 characters)",
            });
        }
        if !seen.insert(name.clone()) {
            return Err(PlanError::Duplicate {
                field,
                what: "node",
                name,
            });
        }
        let i8 = u8::try_from(i).expect("at most 26 nodes");
        let base = u32::from(cidr.network()) + (u32::from(i8) << 8);
        out.push(PlanNode {
            netns: format!("{prefix}n-{name}"),
            bridge_port: format!("n{i}"),
            name,
            labels,
            address: Ipv4Addr::new(198, 18, 0, FIRST_NODE_HOST + i8),
            pod_cidr: Ipv4Network::new(Ipv4Addr::from(base), 24).expect("/24 is valid"),
        });
    }
    Ok(out)
}

fn pod_netns(lab: &str, namespace: &str, name: &str, index: usize) -> String {
    let n = format!("{}p-{namespace}.{name}", super::prefix(lab));
    if n.len() <= 200 {
        n
    } else {
        format!("{}p{index}", super::prefix(lab))
    }
}

impl Plan {
    /// The sample lab: `nodes` nodes (`node-a`, `node-b`, ...), each with
    /// `pods_per_node` pods in namespace `demo` serving HTTP on port 80.
    pub fn sample(lab: &str, nodes_count: usize, pods_per_node: usize) -> Result<Plan, PlanError> {
        if pods_per_node > MAX_PODS_PER_NODE {
            return Err(PlanError::Range {
                field: "--pods-per-node".into(),
                value: pods_per_node.to_string(),
                range: format!("0 to {MAX_PODS_PER_NODE}"),
            });
        }
        if nodes_count == 0 || nodes_count > MAX_NODES {
            return Err(PlanError::Range {
                field: "--nodes".into(),
                value: nodes_count.to_string(),
                range: format!("1 to {MAX_NODES}"),
            });
        }
        let cidr: Ipv4Network = CLUSTER_CIDR.parse().expect("constant CIDR");
        let nodes = nodes(
            lab,
            cidr,
            (0..nodes_count)
                .map(|i| (node_letter_name(i), BTreeMap::new()))
                .collect(),
        )?;
        const APPS: [&str; 4] = ["web", "api", "db", "cache"];
        let mut pods = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let letter = char::from(b'a' + u8::try_from(i).unwrap_or(0));
            for j in 0..pods_per_node {
                let app = APPS[j % APPS.len()];
                let name = format!("{app}-{letter}{j}");
                let labels = BTreeMap::from([("app".to_string(), app.to_string())]);
                pods.push(PlanPod {
                    netns: pod_netns(lab, "demo", &name, pods.len()),
                    namespace: "demo".into(),
                    name,
                    labels,
                    node: node.name.clone(),
                    ip: None,
                    host_network: false,
                    service_account: None,
                    ports: vec![PlanPort {
                        port: 80,
                        protocol: Proto::Tcp,
                        name: Some("http".into()),
                    }],
                    dns: false,
                });
            }
        }
        Ok(Plan {
            lab: lab.to_string(),
            cluster_cidr: cidr,
            nodes,
            namespaces: vec![PlanNamespace {
                name: "demo".into(),
                labels: BTreeMap::new(),
            }],
            pods,
            external: Vec::new(),
        })
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&PlanNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The DNS pod, if the lab has one.
    pub fn dns_pod(&self) -> Option<&PlanPod> {
        self.pods.iter().find(|p| p.dns)
    }

    /// The names the cluster DNS answers: every external host.
    pub fn dns_records(&self) -> BTreeMap<String, Ipv4Addr> {
        self.external
            .iter()
            .map(|x| (x.name.clone(), x.ip))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_nodes_get_consecutive_addresses_and_cidrs() {
        let p = Plan::sample("t", 3, 2).unwrap();
        assert_eq!(p.nodes.len(), 3);
        assert_eq!(p.nodes[0].name, "node-a");
        assert_eq!(p.nodes[2].name, "node-c");
        assert_eq!(p.nodes[0].address, Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(p.nodes[2].address, Ipv4Addr::new(198, 18, 0, 12));
        assert_eq!(p.nodes[1].pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(p.nodes[1].netns, "vl-t-n-node-b");
        assert_eq!(p.pods.len(), 6);
        assert!(p
            .pods
            .iter()
            .all(|x| x.namespace == "demo" && x.labels.contains_key("app")));
        let names: BTreeSet<_> = p.pods.iter().map(|x| x.netns.clone()).collect();
        assert_eq!(names.len(), 6, "every pod has its own namespace");
        assert!(p.dns_pod().is_none());
    }

    #[test]
    fn sample_sizes_are_bounded() {
        assert!(Plan::sample("t", 0, 1).is_err());
        assert!(Plan::sample("t", 27, 1).is_err());
        assert!(Plan::sample("t", 1, 101).is_err());
        assert!(Plan::sample("t", 1, 0).is_ok());
    }
}
