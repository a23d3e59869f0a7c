//! The plan of a scenario's lab: [`Plan::from_scenario`] turns the cluster a
//! parsed scenario describes (`veil_scenario`) into nodes, namespaces,
//! pods and external hosts. Pure: no IO.

use std::net::IpAddr;

use veil_policy::model::Protocol;
use veil_scenario::{Scenario, NS_NAME_LABEL};

use super::*;

impl Plan {
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
                netns: format!("{}x-{}", crate::lab::prefix(lab), x.name),
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
