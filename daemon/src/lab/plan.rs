//! What a lab is to contain, decided before anything is built: nodes with their
//! addresses and pod CIDRs, namespaces, pods with their node and ports, external
//! hosts, and the namespace name of each. Built from a scenario or from the
//! sample shape (`--nodes K --pods-per-node M`). Pure: no IO.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::scenario::Scenario;

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
/// The DNS pod every cluster has.
pub const DNS_NAMESPACE: &str = "kube-system";
/// The DNS pod's name.
pub const DNS_POD: &str = "kube-dns";

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

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn node_letter_name(i: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(i % 26).unwrap_or(0));
    format!("node-{letter}")
}

fn dns_ports() -> Vec<PlanPort> {
    vec![
        PlanPort {
            port: 53,
            protocol: Proto::Udp,
            name: Some("dns".into()),
        },
        PlanPort {
            port: 53,
            protocol: Proto::Tcp,
            name: Some("dns-tcp".into()),
        },
    ]
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

    /// The lab of a scenario: its nodes, namespaces, pods and external hosts, plus
    /// `kube-system/kube-dns` when the scenario does not define it.
    pub fn from_scenario(lab: &str, sc: &Scenario) -> Result<Plan, PlanError> {
        let cluster = sc.cluster.clone().unwrap_or_default();
        let cidr = cluster
            .pod_cidr
            .unwrap_or_else(|| CLUSTER_CIDR.parse().expect("constant CIDR"));
        let specs = if cluster.nodes.is_empty() {
            vec![("node-a".to_string(), BTreeMap::new())]
        } else {
            cluster
                .nodes
                .iter()
                .map(|n| match n {
                    super::scenario::NodeSpec::Name(name) => (name.clone(), BTreeMap::new()),
                    super::scenario::NodeSpec::Full { name, labels } => {
                        (name.clone(), labels.clone())
                    }
                })
                .collect()
        };
        let nodes = nodes(lab, cidr, specs)?;

        let mut namespaces = Vec::new();
        let mut ns_names = BTreeSet::new();
        for (i, ns) in sc.namespaces.iter().enumerate() {
            let field = format!("namespaces[{i}]");
            if !is_dns_label(&ns.name) {
                return Err(PlanError::Invalid {
                    field,
                    value: ns.name.clone(),
                    reason: "is not a valid namespace name (lowercase DNS label)",
                });
            }
            if !ns_names.insert(ns.name.clone()) {
                return Err(PlanError::Duplicate {
                    field,
                    what: "namespace",
                    name: ns.name.clone(),
                });
            }
            namespaces.push(PlanNamespace {
                name: ns.name.clone(),
                labels: ns.labels.clone(),
            });
        }
        if ns_names.insert(DNS_NAMESPACE.to_string()) {
            namespaces.push(PlanNamespace {
                name: DNS_NAMESPACE.into(),
                labels: BTreeMap::new(),
            });
        }

        let mut pods = Vec::new();
        let mut pod_names = BTreeSet::new();
        let mut fixed_ips = BTreeSet::new();
        let mut unplaced = 0usize;
        for (i, p) in sc.pods.iter().enumerate() {
            let field = format!("pods[{i}]");
            let Some((ns, name)) = p.name.split_once('/') else {
                return Err(PlanError::Invalid {
                    field: format!("{field}.name"),
                    value: p.name.clone(),
                    reason: "must be namespace/name",
                });
            };
            if !is_dns_subdomain(name) {
                return Err(PlanError::Invalid {
                    field: format!("{field}.name"),
                    value: p.name.clone(),
                    reason: "has an invalid pod name (lowercase DNS name)",
                });
            }
            if !ns_names.contains(ns) {
                return Err(PlanError::Unknown {
                    field: format!("{field}.name"),
                    what: "namespace",
                    name: ns.to_string(),
                });
            }
            if !pod_names.insert(p.name.clone()) {
                return Err(PlanError::Duplicate {
                    field,
                    what: "pod",
                    name: p.name.clone(),
                });
            }
            let dns = ns == DNS_NAMESPACE && name == DNS_POD;
            let node = match &p.node {
                Some(n) => match nodes.iter().find(|x| &x.name == n) {
                    Some(x) => x,
                    None => {
                        return Err(PlanError::Unknown {
                            field: format!("{field}.node"),
                            what: "node",
                            name: n.clone(),
                        })
                    }
                },
                None if dns => &nodes[0],
                None => {
                    let n = &nodes[unplaced % nodes.len()];
                    unplaced += 1;
                    n
                }
            };
            if let Some(ip) = p.ip {
                if p.host_network {
                    return Err(PlanError::Invalid {
                        field: format!("{field}.ip"),
                        value: ip.to_string(),
                        reason: "cannot be set on a hostNetwork pod",
                    });
                }
                let last = ip.octets()[3];
                if !node.pod_cidr.contains(ip) || last == 0 || last == 255 {
                    return Err(PlanError::Invalid {
                        field: format!("{field}.ip"),
                        value: ip.to_string(),
                        reason: "is not a usable address of its node's pod CIDR",
                    });
                }
                if !fixed_ips.insert(ip) {
                    return Err(PlanError::Duplicate {
                        field: format!("{field}.ip"),
                        what: "address",
                        name: ip.to_string(),
                    });
                }
            }
            let ports = ports(&format!("{field}.ports"), &p.ports)?;
            if dns && ports != dns_ports() {
                return Err(PlanError::Invalid {
                    field: format!("{field}.ports"),
                    value: p.name.clone(),
                    reason: "must be exactly 53/UDP dns and 53/TCP dns-tcp",
                });
            }
            pods.push(PlanPod {
                netns: if p.host_network {
                    node.netns.clone()
                } else {
                    pod_netns(lab, ns, name, i)
                },
                namespace: ns.to_string(),
                name: name.to_string(),
                labels: p.labels.clone(),
                node: node.name.clone(),
                ip: p.ip,
                host_network: p.host_network,
                service_account: p.service_account.clone(),
                ports,
                dns,
            });
        }
        if !pods.iter().any(|p| p.dns) {
            pods.push(PlanPod {
                netns: pod_netns(lab, DNS_NAMESPACE, DNS_POD, pods.len()),
                namespace: DNS_NAMESPACE.into(),
                name: DNS_POD.into(),
                labels: BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
                node: nodes[0].name.clone(),
                ip: None,
                host_network: false,
                service_account: None,
                ports: dns_ports(),
                dns: true,
            });
        }

        let ext_cidr: Ipv4Network = EXTERNAL_CIDR.parse().expect("constant CIDR");
        let mut external = Vec::new();
        let mut ext_names = BTreeSet::new();
        let mut ext_ips = BTreeSet::new();
        for (i, x) in sc.external.iter().enumerate() {
            let field = format!("external[{i}]");
            let name = x.name.to_ascii_lowercase();
            if !is_dns_subdomain(&name) {
                return Err(PlanError::Invalid {
                    field: format!("{field}.name"),
                    value: x.name.clone(),
                    reason: "is not a valid DNS name",
                });
            }
            if !ext_names.insert(name.clone()) {
                return Err(PlanError::Duplicate {
                    field,
                    what: "external host",
                    name,
                });
            }
            let last = x.ip.octets()[3];
            if !ext_cidr.contains(x.ip) || last == 0 || last == 255 {
                return Err(PlanError::Invalid {
                    field: format!("{field}.ip"),
                    value: x.ip.to_string(),
                    reason: "is not a usable address of 203.0.113.0/24",
                });
            }
            if !ext_ips.insert(x.ip) {
                return Err(PlanError::Duplicate {
                    field: format!("{field}.ip"),
                    what: "address",
                    name: x.ip.to_string(),
                });
            }
            external.push(PlanExternal {
                netns: format!("{}x-{name}", super::prefix(lab)),
                bridge_port: format!("x{i}"),
                name,
                ip: x.ip,
                ports: ports(&format!("{field}.ports"), &x.ports)?,
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

fn ports(field: &str, given: &[super::scenario::Port]) -> Result<Vec<PlanPort>, PlanError> {
    let mut out: Vec<PlanPort> = Vec::new();
    for (i, p) in given.iter().enumerate() {
        let protocol = match &p.protocol {
            None => Proto::Tcp,
            Some(s) => Proto::parse(s).ok_or_else(|| PlanError::Invalid {
                field: format!("{field}[{i}].protocol"),
                value: s.clone(),
                reason: "is not TCP, UDP or SCTP",
            })?,
        };
        if p.port == 0 {
            return Err(PlanError::Range {
                field: format!("{field}[{i}].port"),
                value: "0".into(),
                range: "1 to 65535".into(),
            });
        }
        if out
            .iter()
            .any(|o| o.port == p.port && o.protocol == protocol)
        {
            return Err(PlanError::Duplicate {
                field: format!("{field}[{i}]"),
                what: "port",
                name: format!("{}/{}", p.port, protocol.as_str()),
            });
        }
        out.push(PlanPort {
            port: p.port,
            protocol,
            name: p.name.clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(yaml: &str) -> Scenario {
        serde_yaml::from_str(yaml).unwrap()
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
    fn scenario_defaults_to_one_node_and_adds_kube_dns() {
        let p = Plan::from_scenario(
            "t",
            &scenario(
                "name: s\nnamespaces: [{name: x}]\npods:\n  - {name: x/a, ports: [{port: 80}]}\nexternal:\n  - {name: Pay.Example.net, ip: 203.0.113.50, ports: [{port: 443}]}\n",
            ),
        )
        .unwrap();
        assert_eq!(p.nodes.len(), 1);
        assert_eq!(p.nodes[0].name, "node-a");
        let dns = p.dns_pod().unwrap();
        assert_eq!(dns.full_name(), "kube-system/kube-dns");
        assert_eq!(dns.node, "node-a");
        assert_eq!(dns.labels["k8s-app"], "kube-dns");
        assert!(p.namespaces.iter().any(|n| n.name == "kube-system"));
        assert_eq!(
            p.dns_records(),
            BTreeMap::from([(
                "pay.example.net".to_string(),
                Ipv4Addr::new(203, 0, 113, 50)
            )])
        );
        assert_eq!(p.external[0].netns, "vl-t-x-pay.example.net");
    }

    #[test]
    fn unplaced_pods_go_round_robin_and_hostnetwork_uses_the_node_namespace() {
        let p = Plan::from_scenario(
            "t",
            &scenario(
                "name: s\ncluster: {nodes: [n1, {name: n2, labels: {pool: w}}]}\nnamespaces: [{name: x}]\npods:\n  - {name: x/a}\n  - {name: x/b}\n  - {name: x/c}\n  - {name: x/h, node: n2, hostNetwork: true}\n",
            ),
        )
        .unwrap();
        let node_of = |n: &str| p.pods.iter().find(|x| x.name == n).unwrap().node.clone();
        assert_eq!(node_of("a"), "n1");
        assert_eq!(node_of("b"), "n2");
        assert_eq!(node_of("c"), "n1");
        let h = p.pods.iter().find(|x| x.name == "h").unwrap();
        assert_eq!(h.netns, p.node("n2").unwrap().netns);
        assert_eq!(p.node("n2").unwrap().labels["pool"], "w");
    }

    #[test]
    fn addresses_outside_the_lab_ranges_are_refused() {
        let bad_cidr = scenario("name: s\ncluster: {podCIDR: 10.0.0.0/16}\n");
        assert!(matches!(
            Plan::from_scenario("t", &bad_cidr),
            Err(PlanError::Invalid { .. })
        ));
        let bad_ext = scenario("name: s\nexternal: [{name: a.b, ip: 8.8.8.8}]\n");
        assert!(Plan::from_scenario("t", &bad_ext).is_err());
        let bad_ip =
            scenario("name: s\nnamespaces: [{name: x}]\npods: [{name: x/a, ip: 10.244.1.5}]\n");
        let e = Plan::from_scenario("t", &bad_ip).unwrap_err();
        assert!(e.to_string().contains("pods[0].ip"), "{e}");
    }

    #[test]
    fn references_and_duplicates_are_checked() {
        let no_ns = scenario("name: s\npods: [{name: y/a}]\n");
        assert!(matches!(
            Plan::from_scenario("t", &no_ns),
            Err(PlanError::Unknown {
                what: "namespace",
                ..
            })
        ));
        let no_node = scenario("name: s\nnamespaces: [{name: x}]\npods: [{name: x/a, node: zz}]\n");
        assert!(matches!(
            Plan::from_scenario("t", &no_node),
            Err(PlanError::Unknown { what: "node", .. })
        ));
        let dup = scenario("name: s\nnamespaces: [{name: x}]\npods: [{name: x/a}, {name: x/a}]\n");
        assert!(matches!(
            Plan::from_scenario("t", &dup),
            Err(PlanError::Duplicate { what: "pod", .. })
        ));
        let bad_proto = scenario("name: s\nnamespaces: [{name: x}]\npods: [{name: x/a, ports: [{port: 1, protocol: ICMP}]}]\n");
        assert!(Plan::from_scenario("t", &bad_proto).is_err());
    }

    #[test]
    fn a_defined_kube_dns_must_have_the_two_dns_ports() {
        let wrong = scenario(
            "name: s\nnamespaces: [{name: kube-system}]\npods: [{name: kube-system/kube-dns, ports: [{port: 53, protocol: UDP, name: dns}]}]\n",
        );
        assert!(Plan::from_scenario("t", &wrong).is_err());
        let right = scenario(
            "name: s\ncluster: {nodes: [a, b]}\nnamespaces: [{name: kube-system}]\npods: [{name: kube-system/kube-dns, node: b, ports: [{port: 53, protocol: UDP, name: dns}, {port: 53, protocol: TCP, name: dns-tcp}]}]\n",
        );
        let p = Plan::from_scenario("t", &right).unwrap();
        assert_eq!(p.pods.len(), 1);
        assert_eq!(p.dns_pod().unwrap().node, "b");
    }
}
