//! The benchmark's cluster and policies: 1,000 pods on one node, 100
//! namespaces, 1,000 NetworkPolicies of 10 rules each (5 per direction), and
//! the node's desired `inet veil` table rendered from them. Pure: touches no
//! kernel state.

use std::net::IpAddr;

use veil_daemon::dataplane::nftables::policy::{
    render, render_cached, LocalEndpoint, RenderCache, RenderedPolicy,
};
use veil_daemon::dataplane::nftables::{BaseFilter, DesiredTable};
use veil_policy::cluster::{Cluster, Node, Pod};
use veil_policy::compile::Compiled;
use veil_policy::{Object, PolicySet};

pub const PODS: usize = 1000;
pub const NAMESPACES: usize = 100;
pub const APPS: usize = 10;
pub const RULES_PER_DIRECTION: usize = 5;
/// Rules over all policies.
pub const RULES: usize = NAMESPACES * APPS * RULES_PER_DIRECTION * 2;
/// The CRR server's port (allowed by the last rule of each direction).
pub const PORT: u16 = 5005;
/// iperf3's port (allowed by the same rule).
pub const IPERF_PORT: u16 = 5201;
/// Host-side interface of the client pod (`veil` + 11 hex digits).
pub const CLI_IF: &str = "veil0000000c110";
/// Host-side interface of the server pod.
pub const SRV_IF: &str = "veil0000000c220";
pub const CLI_IP: &str = "10.244.0.10";
pub const SRV_IP: &str = "10.244.1.10";

/// How a generated policy differs from the base one (to time changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// As generated.
    Base,
    /// The first ingress rule's port moved (one rule changed).
    OneRule,
    /// Every rule's ports moved (10 rules changed).
    AllRules,
}

fn pod_ip(i: usize) -> IpAddr {
    match i {
        // Pods 0 and 1 are the real client and server; the others fill sets.
        0 => CLI_IP.parse().unwrap(),
        1 => SRV_IP.parse().unwrap(),
        _ => format!("10.244.{}.{}", 2 + i / 250, 1 + i % 250)
            .parse()
            .unwrap(),
    }
}

/// The cluster: one node, [`PODS`] pods labelled `app: a<i % APPS>`.
pub fn cluster() -> Cluster {
    let mut c = Cluster::default();
    c.nodes.push(Node {
        name: "node-a".into(),
        labels: [("kubernetes.io/hostname".to_string(), "node-a".to_string())]
            .into_iter()
            .collect(),
        address: "198.18.0.10".parse().unwrap(),
    });
    for n in 0..NAMESPACES {
        let ns = format!("ns{n}");
        c.namespaces.insert(
            ns.clone(),
            [("kubernetes.io/metadata.name".to_string(), ns.clone())]
                .into_iter()
                .collect(),
        );
    }
    for i in 0..PODS {
        let p = Pod {
            namespace: format!("ns{}", i / (PODS / NAMESPACES)),
            name: format!("p{i}"),
            labels: [("app".to_string(), format!("a{}", i % APPS))]
                .into_iter()
                .collect(),
            node: "node-a".into(),
            ip: pod_ip(i),
            host_network: false,
            ports: Vec::new(),
        };
        c.pods.insert(p.key(), p);
    }
    c
}

/// NetworkPolicy `np<j>` of namespace `ns<n>`: selects `app: a<j>`; each
/// direction allows 5 other apps on one port each, the last rule (the one
/// the client and server use, so every rule is walked) on [`PORT`] and
/// [`IPERF_PORT`].
pub fn policy(n: usize, j: usize, v: Variant) -> Object {
    // Ports of rule `k` of one direction.
    let ports = |k: usize, ingress: bool| {
        let moved = match v {
            Variant::Base => false,
            Variant::OneRule => ingress && k == 0,
            Variant::AllRules => true,
        };
        if k == RULES_PER_DIRECTION - 1 {
            let extra = if moved { ", {port: 5202}" } else { "" };
            format!("[{{port: {PORT}}}, {{port: {IPERF_PORT}}}{extra}]")
        } else {
            format!("[{{port: {}}}]", 6000 + k + if moved { 1000 } else { 0 })
        }
    };
    let mut ingress = String::new();
    let mut egress = String::new();
    for k in 0..RULES_PER_DIRECTION {
        ingress.push_str(&format!(
            "    - from: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}]\n      ports: {}\n",
            (j + 5 + k) % APPS,
            ports(k, true)
        ));
        egress.push_str(&format!(
            "    - to: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}]\n      ports: {}\n",
            (j + 7 + k) % APPS,
            ports(k, false)
        ));
    }
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{j}, namespace: ns{n}}}\nspec:\n  podSelector: {{matchLabels: {{app: a{j}}}}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n{ingress}  egress:\n{egress}"
    );
    Object::from_yaml(&yaml).expect("generated policy parses")
}

/// All [`NAMESPACES`] × [`APPS`] policies, as generated.
pub fn policies() -> PolicySet {
    let mut objs = Vec::new();
    for n in 0..NAMESPACES {
        for j in 0..APPS {
            objs.push(policy(n, j, Variant::Base));
        }
    }
    let mut ps = PolicySet::new();
    ps.apply(objs).expect("generated policies are valid");
    ps
}

/// The node's pods as local endpoints; the client and server get the names
/// of the interfaces the test bed creates.
pub fn endpoints(c: &Cluster) -> Vec<LocalEndpoint> {
    c.pods
        .values()
        .enumerate()
        .map(|(k, p)| LocalEndpoint {
            ifname: match p.ip.to_string().as_str() {
                CLI_IP => CLI_IF.into(),
                SRV_IP => SRV_IF.into(),
                _ => format!("veil{k:011x}"),
            },
            ip: p.ip,
            pod: Some(p.key()),
        })
        .collect()
}

/// The base of the node's table (no underlay interface in the test bed:
/// `eth0` does not exist in the node's namespace).
pub fn base() -> BaseFilter {
    BaseFilter {
        underlay_interface: "eth0".into(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        pod_cidr: "10.244.0.0/24".parse().unwrap(),
    }
}

/// The desired table holding `rendered`.
pub fn desired(rendered: &RenderedPolicy) -> DesiredTable {
    let mut d = DesiredTable::new(base());
    d.policy = rendered.objects();
    d
}

/// Renders `compiled` for this node.
pub fn render_node(c: &Cluster, compiled: &Compiled) -> RenderedPolicy {
    render(compiled.program(), &endpoints(c))
}

/// Renders `compiled` for this node through `cache`, as veild does.
pub fn render_node_cached(
    c: &Cluster,
    compiled: &Compiled,
    cache: &mut RenderCache,
) -> RenderedPolicy {
    render_cached(
        cache,
        compiled.program(),
        &endpoints(c),
        &Default::default(),
    )
}
