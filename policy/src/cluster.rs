//! The cluster as the policy engine sees it: nodes, namespaces, pods (with
//! labels, addresses and named ports) and hosts outside the cluster.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{NsScope, PodSelector, Protocol};
use crate::selector::Labels;

/// A node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Labels (including `kubernetes.io/hostname`).
    pub labels: Labels,
    /// The node's address.
    pub address: IpAddr,
}

/// A port a pod or host listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodPort {
    /// Port name, if any.
    pub name: Option<String>,
    /// Number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Node name.
    pub node: String,
    /// Address (the node's for hostNetwork pods).
    pub ip: IpAddr,
    /// Whether the pod uses its node's network.
    pub host_network: bool,
    /// Ports it listens on.
    pub ports: Vec<PodPort>,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A host outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalHost {
    /// DNS name.
    pub name: String,
    /// Address.
    pub ip: IpAddr,
    /// Ports it listens on.
    pub ports: Vec<PodPort>,
}

/// The cluster state policies are evaluated against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Nodes in order.
    pub nodes: Vec<Node>,
    /// Namespace name → labels (including `kubernetes.io/metadata.name`).
    pub namespaces: BTreeMap<String, Labels>,
    /// `namespace/name` → pod.
    pub pods: BTreeMap<String, Pod>,
    /// Hosts outside the cluster.
    pub external: Vec<ExternalHost>,
}

/// What lives at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// A pod with its own address (never a hostNetwork pod).
    Pod(&'a Pod),
    /// A node's address (shared by its hostNetwork pods).
    Node(&'a Node),
    /// Anything else (external hosts, unknown addresses).
    Other,
}

impl Cluster {
    /// What is at `ip`.
    pub fn endpoint(&self, ip: IpAddr) -> Endpoint<'_> {
        if let Some(p) = self.pods.values().find(|p| !p.host_network && p.ip == ip) {
            return Endpoint::Pod(p);
        }
        if let Some(n) = self.nodes.iter().find(|n| n.address == ip) {
            return Endpoint::Node(n);
        }
        Endpoint::Other
    }

    /// The node of this name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Whether a selector selects a pod (hostNetwork pods never are).
    pub fn selects(&self, sel: &PodSelector, pod: &Pod) -> bool {
        if pod.host_network {
            return false;
        }
        let ns_ok = match &sel.namespaces {
            NsScope::Named(n) => *n == pod.namespace,
            NsScope::Selector(s) => self
                .namespaces
                .get(&pod.namespace)
                .is_some_and(|l| s.matches(l)),
        };
        ns_ok && sel.pods.matches(&pod.labels)
    }

    /// The ports listening at an endpoint that carry names: a pod's own,
    /// or those of the hostNetwork pods of a node.
    pub fn named_ports<'a>(&'a self, ep: &Endpoint<'a>) -> Vec<&'a PodPort> {
        match ep {
            Endpoint::Pod(p) => p.ports.iter().filter(|x| x.name.is_some()).collect(),
            Endpoint::Node(n) => self
                .pods
                .values()
                .filter(|p| p.host_network && p.node == n.name)
                .flat_map(|p| p.ports.iter())
                .filter(|x| x.name.is_some())
                .collect(),
            Endpoint::Other => Vec::new(),
        }
    }
}
