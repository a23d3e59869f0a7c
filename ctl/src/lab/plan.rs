//! What a lab is to contain, decided before anything is built: nodes with their
//! addresses and pod CIDRs, namespaces, pods with their node and ports, external
//! hosts, and the namespace name of each. Built from a scenario or from the
//! sample shape (`--nodes K --pods-per-node M`). Pure: no IO.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use std::net::IpAddr;

use veil_policy::kinds::is_dns_subdomain;
use veil_policy::model::Protocol;
use veil_scenario::{Scenario, NS_NAME_LABEL};

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

    /// The lab of a parsed scenario (`veil_scenario`, which has already
    /// resolved nodes, placement, addresses and `kube-system/kube-dns`). Every
    /// pod asks the CNI for the address the scenario model gave it, so that the
    /// lab and the in-memory evaluation see the same cluster.
    pub fn from_scenario(lab: &str, sc: &Scenario) -> Result<Plan, PlanError> {
        let IpAddr::V4(base) = sc.pod_cidr.addr() else {
            return Err(PlanError::Invalid {
                field: "cluster.podCIDR".into(),
                value: sc.pod_cidr.to_string(),
                reason: "must be an IPv4 network",
            });
        };
        let cidr =
            Ipv4Network::new(base, sc.pod_cidr.prefix()).map_err(|_| PlanError::Invalid {
                field: "cluster.podCIDR".into(),
                value: sc.pod_cidr.to_string(),
                reason: "is not a network",
            })?;
        let specs = sc
            .nodes
            .iter()
            .map(|n| {
                let mut labels = n.labels.clone();
                // veild adds these itself.
                labels.remove("kubernetes.io/hostname");
                labels.remove("kubernetes.io/os");
                (n.name.clone(), labels)
            })
            .collect();
        let nodes = nodes(lab, cidr, specs)?;
        for (mine, theirs) in nodes.iter().zip(&sc.nodes) {
            if IpAddr::V4(mine.address) != IpAddr::V4(theirs.address)
                || mine.pod_cidr.to_string() != theirs.pod_cidr.to_string()
            {
                return Err(PlanError::Invalid {
                    field: "cluster.nodes".into(),
                    value: theirs.name.clone(),
                    reason: "has an address or pod CIDR the lab cannot give it",
                });
            }
        }
        let namespaces = sc
            .namespaces
            .iter()
            .map(|ns| {
                let mut labels = ns.labels.clone();
                labels.remove(NS_NAME_LABEL); // implied, not stored
                PlanNamespace {
                    name: ns.name.clone(),
                    labels,
                }
            })
            .collect();
        let mut pods = Vec::new();
        for (i, p) in sc.pods.iter().enumerate() {
            let node =
                nodes
                    .iter()
                    .find(|n| n.name == p.node)
                    .ok_or_else(|| PlanError::Unknown {
                        field: format!("pods[{i}].node"),
                        what: "node",
                        name: p.node.clone(),
                    })?;
            pods.push(PlanPod {
                netns: if p.host_network {
                    node.netns.clone()
                } else {
                    pod_netns(lab, &p.namespace, &p.name, i)
                },
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                node: p.node.clone(),
                ip: (!p.host_network).then_some(p.ip),
                host_network: p.host_network,
                service_account: Some(p.service_account.clone()),
                ports: model_ports(&p.ports),
                dns: p.is_dns,
            });
        }
        let mut external = Vec::new();
        for (i, x) in sc.external.iter().enumerate() {
            let IpAddr::V4(ip) = x.ip else {
                return Err(PlanError::Invalid {
                    field: format!("external[{i}].ip"),
                    value: x.ip.to_string(),
                    reason: "must be an IPv4 address",
                });
            };
            external.push(PlanExternal {
                netns: format!("{}x-{}", super::prefix(lab), x.name),
                bridge_port: format!("x{i}"),
                name: x.name.to_ascii_lowercase(),
                ip,
                ports: model_ports(&x.ports),
            });
        }
        Ok(Plan {
            lab: lab.to_string(),
            cluster_cidr: cidr,
            nodes,
            namespaces,
            pods,
            external,
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

fn model_ports(ports: &[veil_policy::cluster::PodPort]) -> Vec<PlanPort> {
    ports
        .iter()
        .filter_map(|p| {
            let protocol = match p.protocol {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
                Protocol::Sctp => Proto::Sctp,
                Protocol::Icmp => return None,
            };
            Some(PlanPort {
                port: p.port,
                protocol,
                name: p.name.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(yaml: &str) -> Scenario {
        Scenario::parse(yaml).unwrap()
    }

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

    #[test]
    fn scenario_defaults_to_one_node_and_has_kube_dns() {
        let p = Plan::from_scenario(
            "t",
            &scenario(
                "name: s\nnamespaces: [{name: x, labels: {team: a}}]\npods:\n  - {name: x/a, ports: [{port: 80}]}\nexternal:\n  - {name: pay.example.net, ip: 203.0.113.50, ports: [{port: 443}]}\nprobes: []\n",
            ),
        )
        .unwrap();
        assert_eq!(p.nodes.len(), 1);
        assert_eq!(p.nodes[0].name, "node-a");
        assert!(
            p.nodes[0].labels.is_empty(),
            "implied node labels are left to veild"
        );
        let dns = p.dns_pod().unwrap();
        assert_eq!(dns.full_name(), "kube-system/kube-dns");
        assert_eq!(dns.node, "node-a");
        assert_eq!(dns.labels["k8s-app"], "kube-dns");
        let x = p.namespaces.iter().find(|n| n.name == "x").unwrap();
        assert_eq!(
            x.labels,
            BTreeMap::from([("team".to_string(), "a".to_string())])
        );
        assert!(p.namespaces.iter().any(|n| n.name == "kube-system"));
        assert_eq!(
            p.dns_records(),
            BTreeMap::from([(
                "pay.example.net".to_string(),
                Ipv4Addr::new(203, 0, 113, 50)
            )])
        );
        assert_eq!(p.external[0].netns, "vl-t-x-pay.example.net");
        let a = p.pods.iter().find(|q| q.name == "a").unwrap();
        assert!(a.ip.is_some(), "every pod asks for the model's address");
    }

    #[test]
    fn hostnetwork_pods_use_their_node_namespace_and_no_address_request() {
        let p = Plan::from_scenario(
            "t",
            &scenario(
                "name: s\ncluster: {nodes: [n1, {name: n2, labels: {pool: w}}]}\nnamespaces: [{name: x}]\npods:\n  - {name: x/a}\n  - {name: x/b}\n  - {name: x/h, node: n2, hostNetwork: true}\nprobes: []\n",
            ),
        )
        .unwrap();
        let h = p.pods.iter().find(|x| x.name == "h").unwrap();
        assert_eq!(h.netns, p.node("n2").unwrap().netns);
        assert_eq!(h.ip, None);
        assert_eq!(p.node("n2").unwrap().labels["pool"], "w");
        assert_eq!(p.node("n2").unwrap().address, Ipv4Addr::new(198, 18, 0, 11));
    }

    #[test]
    fn pod_cidrs_outside_the_lab_range_are_refused() {
        let sc = scenario("name: s\ncluster: {podCIDR: 10.0.0.0/16}\nprobes: []\n");
        assert!(matches!(
            Plan::from_scenario("t", &sc),
            Err(PlanError::Invalid { .. })
        ));
    }

    #[test]
    fn every_example_scenario_makes_a_plan_that_agrees_with_the_model() {
        // The shared examples (a sibling of the repository) and the repository's own.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in [
            root.join("../../shared/scenarios/examples"),
            root.join("../tests/scenarios"),
        ] {
            let mut n = 0;
            for e in std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
            {
                let path = e.path();
                if path.extension().is_some_and(|x| x == "yaml") {
                    let sc = Scenario::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
                    let p = Plan::from_scenario("t", &sc)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    assert_eq!(p.pods.len(), sc.pods.len());
                    for (mine, theirs) in p.pods.iter().zip(&sc.pods) {
                        assert_eq!(mine.node, theirs.node);
                        if !theirs.host_network {
                            assert_eq!(mine.ip, Some(theirs.ip));
                        }
                    }
                    n += 1;
                }
            }
            if dir.exists() {
                assert!(n > 0, "no scenarios in {}", dir.display());
            }
        }
    }
}
