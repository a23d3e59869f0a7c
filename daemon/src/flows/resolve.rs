//! Addresses to identities: local pods from the endpoint table, remote pods
//! from the datastore's endpoint records (with their pod records' labels),
//! nodes by their underlay address and their tunnel address (the first host
//! address of each of their pod CIDRs), external hosts by the DNS name they were
//! resolved from (when the DNS proxy reported it) or by an operator-named
//! CIDR, and `world` for the rest.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use ipnetwork::IpNetwork;
use veil_graph::Identity;

use crate::datastore::Snapshot;
use crate::endpoints::Endpoint;

/// A named external network, e.g. `payments=203.0.113.0/28`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedNetwork {
    /// The name shown in the graph (`external:NAME`).
    pub name: String,
    /// The network.
    pub cidr: IpNetwork,
}

/// A `NAME=CIDR` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("external network {0:?}: expected NAME=CIDR, e.g. payments=203.0.113.0/28")]
pub struct BadNamedNetwork(pub String);

impl std::str::FromStr for NamedNetwork {
    type Err = BadNamedNetwork;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, cidr) = s
            .split_once('=')
            .ok_or_else(|| BadNamedNetwork(s.to_string()))?;
        let cidr: IpNetwork = cidr
            .trim()
            .parse()
            .map_err(|_| BadNamedNetwork(s.to_string()))?;
        if name.trim().is_empty() {
            return Err(BadNamedNetwork(s.to_string()));
        }
        Ok(NamedNetwork {
            name: name.trim().to_string(),
            cidr,
        })
    }
}

/// The first host address of `cidr` (`.1` of a pod /24): a node's tunnel address.
pub fn tunnel_address(cidr: &IpNetwork) -> IpAddr {
    match cidr {
        IpNetwork::V4(n) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(n.network()).wrapping_add(1),
        )),
        IpNetwork::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(n.network()).wrapping_add(1),
        )),
    }
}

/// What an address resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The identity.
    pub identity: Arc<Identity>,
    /// Whether it is a pod of this node or this node itself.
    pub local: bool,
}

/// The address book, rebuilt whenever the snapshot or the endpoint table changes.
#[derive(Debug, Clone)]
pub struct Resolver {
    node_name: String,
    by_ip: HashMap<IpAddr, Resolved>,
    /// Shared by every resolver built after this one (see [`Resolver::keep_dns_from`]).
    dns: Arc<RwLock<HashMap<IpAddr, Arc<Identity>>>>,
    networks: Vec<(NamedNetwork, Arc<Identity>)>,
    world: Arc<Identity>,
    /// Services, for naming destinations (see [`super::services`]).
    services: Option<Arc<super::services::ServiceBook>>,
}

impl Resolver {
    /// Builds the address book.
    pub fn new(
        node_name: &str,
        node_address: IpAddr,
        snapshot: &Snapshot,
        local: &[Endpoint],
        networks: &[NamedNetwork],
    ) -> Self {
        let mut by_ip: HashMap<IpAddr, Resolved> = HashMap::new();
        let pod_labels = |ns: &str, name: &str| -> Option<BTreeMap<String, String>> {
            snapshot.pod(ns, name).map(|p| p.labels.clone())
        };
        for n in &snapshot.nodes {
            let r = Resolved {
                identity: Arc::new(Identity::node(&n.name)),
                local: n.name == node_name,
            };
            // The node's tunnel address (first host address of each of its
            // pod CIDRs: the source of node → remote pod traffic) is the node too.
            for cidr in &n.pod_cidrs {
                by_ip.insert(tunnel_address(cidr), r.clone());
            }
            by_ip.insert(n.address, r);
        }
        by_ip.insert(
            node_address,
            Resolved {
                identity: Arc::new(Identity::node(node_name)),
                local: true,
            },
        );
        for e in &snapshot.endpoints {
            let (Some(ns), Some(name)) = (&e.pod_namespace, &e.pod_name) else {
                continue;
            };
            let labels = pod_labels(ns, name).unwrap_or_default();
            let id = Arc::new(Identity::pod_from_metadata(ns.clone(), name, labels, None));
            for ip in &e.ips {
                by_ip.insert(
                    ip.ip(),
                    Resolved {
                        identity: id.clone(),
                        local: e.node == node_name,
                    },
                );
            }
        }
        // The local table is the truth for this node's pods (it knows them
        // before the datastore does).
        for e in local {
            let (Some(ns), Some(name)) = (&e.pod_namespace, &e.pod_name) else {
                continue;
            };
            let labels = pod_labels(ns, name).unwrap_or_else(|| e.labels.clone());
            let id = Arc::new(Identity::pod_from_metadata(ns.clone(), name, labels, None));
            for ip in &e.ips {
                by_ip.insert(
                    ip.ip(),
                    Resolved {
                        identity: id.clone(),
                        local: true,
                    },
                );
            }
        }
        let mut networks: Vec<(NamedNetwork, Arc<Identity>)> = networks
            .iter()
            .map(|n| (n.clone(), Arc::new(Identity::external(&n.name))))
            .collect();
        // Most specific first.
        networks.sort_by_key(|(n, _)| std::cmp::Reverse(n.cidr.prefix()));
        Resolver {
            node_name: node_name.to_string(),
            by_ip,
            dns: Arc::default(),
            networks,
            world: Arc::new(Identity::world()),
            services: None,
        }
    }

    /// Names `ip` as this node (its tunnel address, known before the
    /// datastore publishes the node's pod CIDR).
    pub fn add_local_node_address(&mut self, ip: IpAddr) {
        self.by_ip.insert(
            ip,
            Resolved {
                identity: Arc::new(Identity::node(&self.node_name)),
                local: true,
            },
        );
    }

    /// Names destinations by the Services of `book` ([`Resolver::resolve_destination`]).
    pub fn set_services(&mut self, book: super::services::ServiceBook) {
        self.services = (!book.is_empty()).then(|| Arc::new(book));
    }

    /// The Services known, if any.
    pub fn services(&self) -> Option<&super::services::ServiceBook> {
        self.services.as_deref()
    }

    /// Keeps the DNS names learnt so far from an older resolver.
    pub fn keep_dns_from(&mut self, older: &Resolver) {
        self.dns = older.dns.clone();
    }

    /// Addresses named by DNS so far.
    pub fn dns_names(&self) -> usize {
        self.dns.read().map(|d| d.len()).unwrap_or(0)
    }

    /// Records that `name` resolved to `ips` (the DNS proxy calls this).
    pub fn learn_dns(&self, name: &str, ips: &[IpAddr]) {
        let name = name.trim_end_matches('.');
        if name.is_empty() {
            return;
        }
        // Most answers repeat what is known (a name asked again): checked
        // under the read lock, so that the DNS proxy's answers do not
        // serialise on the writer's.
        let known = |dns: &HashMap<IpAddr, Arc<Identity>>| {
            ips.iter().all(|ip| {
                self.by_ip.contains_key(ip) || dns.get(ip).is_some_and(|i| i.workload() == name)
            })
        };
        if self.dns.read().map(|d| known(&d)).unwrap_or(true) {
            return;
        }
        let Ok(mut dns) = self.dns.write() else {
            return;
        };
        // Cluster addresses keep their identity whatever DNS says.
        let ips: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| !self.by_ip.contains_key(ip))
            .collect();
        if ips
            .iter()
            .all(|ip| dns.get(ip).is_some_and(|i| i.workload() == name))
        {
            return;
        }
        let id = Arc::new(Identity::external(name));
        for ip in ips {
            // Bounded: one name per address, at most 65,536 addresses.
            if dns.len() >= 65_536 && !dns.contains_key(&ip) {
                return;
            }
            dns.insert(ip, id.clone());
        }
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The identity of `ip`.
    pub fn resolve(&self, ip: IpAddr) -> Resolved {
        if let Some(r) = self.by_ip.get(&ip) {
            return r.clone();
        }
        if let Some(id) = self.dns.read().ok().and_then(|d| d.get(&ip).cloned()) {
            return Resolved {
                identity: id,
                local: false,
            };
        }
        for (n, id) in &self.networks {
            if n.cidr.contains(ip) {
                return Resolved {
                    identity: id.clone(),
                    local: false,
                };
            }
        }
        Resolved {
            identity: self.world.clone(),
            local: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{EndpointRecord, NodeRecord, PodRecord};

    fn snapshot() -> Snapshot {
        Snapshot {
            nodes: vec![
                NodeRecord {
                    name: "n1".into(),
                    address: "198.18.0.1".parse().unwrap(),
                    pod_cidrs: vec![],
                    labels: Default::default(),
                    annotations: Default::default(),
                },
                NodeRecord {
                    name: "n2".into(),
                    address: "198.18.0.2".parse().unwrap(),
                    pod_cidrs: vec![],
                    labels: Default::default(),
                    annotations: Default::default(),
                },
            ],
            pods: vec![PodRecord {
                namespace: "shop".into(),
                name: "backend-7d4b9c8f6d-x2x9z".into(),
                labels: [("app".to_string(), "backend".to_string())].into(),
                node: Some("n2".into()),
                host_network: false,
                service_account: None,
                ports: vec![],
            }],
            endpoints: vec![EndpointRecord {
                node: "n2".into(),
                container_id: "c2".into(),
                ifname: "eth0".into(),
                pod_namespace: Some("shop".into()),
                pod_name: Some("backend-7d4b9c8f6d-x2x9z".into()),
                ips: vec!["10.244.2.5/32".parse().unwrap()],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn resolves_remote_pods_with_labels_nodes_and_networks() {
        let nets = vec![
            "api=203.0.113.0/28".parse().unwrap(),
            "wide=203.0.113.0/24".parse().unwrap(),
        ];
        let r = Resolver::new("n1", "198.18.0.1".parse().unwrap(), &snapshot(), &[], &nets);
        let b = r.resolve("10.244.2.5".parse().unwrap());
        assert_eq!(b.identity.id(), "shop/backend");
        assert!(!b.local);
        let n = r.resolve("198.18.0.1".parse().unwrap());
        assert_eq!((n.identity.id(), n.local), ("node:n1", true));
        assert!(!r.resolve("198.18.0.2".parse().unwrap()).local);
        assert_eq!(
            r.resolve("203.0.113.5".parse().unwrap()).identity.id(),
            "external:api"
        );
        assert_eq!(
            r.resolve("203.0.113.50".parse().unwrap()).identity.id(),
            "external:wide"
        );
        assert_eq!(
            r.resolve("192.0.2.1".parse().unwrap()).identity.id(),
            "world"
        );
        r.learn_dns("example.com.", &["192.0.2.1".parse().unwrap()]);
        assert_eq!(
            r.resolve("192.0.2.1".parse().unwrap()).identity.id(),
            "external:example.com"
        );
    }

    #[test]
    fn node_tunnel_addresses_are_named_as_their_nodes() {
        let mut snap = snapshot();
        snap.nodes[0].pod_cidrs = vec!["10.244.0.0/24".parse().unwrap()];
        snap.nodes[1].pod_cidrs = vec!["10.244.1.0/24".parse().unwrap()];
        let mut r = Resolver::new("n1", "198.18.0.1".parse().unwrap(), &snap, &[], &[]);
        let a = r.resolve("10.244.0.1".parse().unwrap());
        assert_eq!((a.identity.id(), a.local), ("node:n1", true));
        let b = r.resolve("10.244.1.1".parse().unwrap());
        assert_eq!((b.identity.id(), b.local), ("node:n2", false));
        assert_eq!(
            r.resolve("10.244.1.2".parse().unwrap()).identity.id(),
            "world"
        );
        r.add_local_node_address("10.244.7.1".parse().unwrap());
        assert_eq!(
            r.resolve("10.244.7.1".parse().unwrap()).identity.id(),
            "node:n1"
        );
    }

    #[test]
    fn bad_named_networks_are_rejected() {
        assert!("x".parse::<NamedNetwork>().is_err());
        assert!("=1.2.3.0/24".parse::<NamedNetwork>().is_err());
        assert!("a=1.2.3.0/99".parse::<NamedNetwork>().is_err());
    }
}
