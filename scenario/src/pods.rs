//! Pods of a scenario: placement (the given node, or round-robin over the
//! nodes; the DNS pod on the first node), validation (names, labels, ports,
//! fixed addresses, hostNetwork port clashes) and then addresses (the
//! node's for hostNetwork pods, else the next free one of the node's pod
//! range). The implicit `kube-system/kube-dns` pod is added first unless
//! the file defines it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use veil_policy::cluster::PodPort;
use veil_policy::kinds::is_dns_subdomain;
use veil_policy::model::Protocol;
use veil_policy::selector::{validate_labels, Labels};

use crate::error::{inv, ScenarioError};
use crate::parse::{dns_ports, parse_ports};
use crate::raw::RawPod;
use crate::{ScenarioNamespace, ScenarioNode, ScenarioPod, DNS_NAMESPACE, DNS_POD};

/// Places, validates and addresses the pods of the file.
pub(crate) fn place_pods(
    raw: &[RawPod],
    nodes: &[ScenarioNode],
    namespaces: &[ScenarioNamespace],
) -> Result<Vec<ScenarioPod>, ScenarioError> {
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
    for (i, p) in raw.iter().enumerate() {
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
            Some(n) => nodes
                .iter()
                .position(|m| m.name == *n)
                .ok_or_else(|| inv(format!("{f}.node"), format!("node {n:?} does not exist")))?,
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
                let ip: Ipv4Addr = s
                    .parse()
                    .map_err(|_| inv(format!("{f}.ip"), format!("{s:?} is not an IPv4 address")))?;
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
                        format!(
                            "port name {n:?} is already used on node {} by another hostNetwork pod",
                            nodes[p.node].name
                        ),
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
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use crate::Scenario;

    #[test]
    fn pods_are_spread_round_robin_and_take_the_next_free_address() {
        let sc = Scenario::parse(
            "name: n\ncluster: {nodes: [a, b]}\nnamespaces: [{name: x}]\npods:\n- {name: x/p0}\n- {name: x/p1}\n- {name: x/p2, ip: 10.244.0.2}\n- {name: x/p3}\nprobes: []\n",
        )
        .unwrap();
        let got: Vec<(String, String, String)> = sc
            .pods
            .iter()
            .map(|p| (p.key(), p.node.clone(), p.ip.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "kube-system/kube-dns".into(),
                    "a".into(),
                    "10.244.0.3".into()
                ),
                ("x/p0".into(), "a".into(), "10.244.0.4".into()),
                ("x/p1".into(), "b".into(), "10.244.1.2".into()),
                ("x/p2".into(), "a".into(), "10.244.0.2".into()),
                ("x/p3".into(), "b".into(), "10.244.1.3".into()),
            ]
        );
        assert!(sc.dns_pod().is_some_and(|p| p.is_dns));
    }

    #[test]
    fn host_network_pods_use_their_node_address_and_cannot_share_a_port() {
        let sc = Scenario::parse(
            "name: n\nnamespaces: [{name: x}]\npods:\n- {name: x/h, hostNetwork: true, ports: [{port: 80}]}\nprobes: []\n",
        )
        .unwrap();
        assert_eq!(sc.pods[1].ip.to_string(), "198.18.0.10");
        let e = Scenario::parse(
            "name: n\nnamespaces: [{name: x}]\npods:\n- {name: x/h, hostNetwork: true, ports: [{port: 80}]}\n- {name: x/i, hostNetwork: true, ports: [{port: 80}]}\nprobes: []\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("pods[1].ports:"), "{e}");
    }
}
