//! Incremental updates of a [`Compiled`] program: policies changed (rules
//! recompiled, sets reused), a pod or a namespace changed (set membership
//! and the affected chains only), nodes changed (node sets).
//!
//! Every update leaves the program equal in verdicts to a compile from
//! scratch (the differential tests check this).

use std::net::IpAddr;

use super::build::ClusterIndex;
use super::program::{ChainTier, IpSet, SetId, SetKey};
use super::{Compiled, FxHashSet};
use crate::cluster::{Cluster, Pod};
use crate::policyset::PolicySet;
use crate::selector::LabelSelector;

impl Compiled {
    /// The policies changed: compiles the policies added or changed (a
    /// policy that did not change keeps its rules and sets), frees the sets
    /// no rule uses any more, rebuilds the chains of the endpoints that a
    /// changed policy selects or selected, and renumbers the others'. A
    /// change of the tiers rebuilds every chain.
    pub fn update_policies(&mut self, cluster: &Cluster, policies: &PolicySet) {
        let idx = ClusterIndex::new(cluster);
        let (subjects, renumber) = self.compile_policies(cluster, &idx, policies);
        let Some(renumber) = renumber else {
            self.rebuild_all_chains(cluster, &idx);
            return;
        };
        if subjects.is_empty() {
            return;
        }
        let mut affected: FxHashSet<IpAddr> = FxHashSet::default();
        for sel in &subjects {
            for p in idx.candidates(cluster, &sel.namespaces) {
                if !p.host_network && cluster.selects(sel, p) {
                    affected.insert(p.ip);
                }
            }
        }
        let mut rebuild = Vec::new();
        let policies = &self.program.policies;
        for (ip, ep) in self.program.endpoints.iter_mut() {
            if affected.contains(ip) {
                rebuild.push(ep.pod.clone());
                continue;
            }
            let ok = renumber_chain(&mut ep.ingress, &renumber, |i| policies[i].ingress)
                && renumber_chain(&mut ep.egress, &renumber, |i| policies[i].egress);
            if !ok {
                rebuild.push(ep.pod.clone());
            }
        }
        for key in rebuild {
            if let Some(p) = cluster.pods.get(&key) {
                let ep = self.endpoint_program(cluster, p);
                self.program.endpoints.insert(p.ip, ep);
            }
        }
    }

    /// A pod was added, changed (labels, ports, address) or removed
    /// (absent from `cluster`): updates its membership in the sets that can
    /// contain it, and its own chains.
    pub fn update_pod(&mut self, cluster: &Cluster, key: &str) {
        let old_ip = self.pod_ips.remove(key);
        let pod = cluster.pods.get(key);
        let ns = key.split_once('/').map_or("", |(n, _)| n).to_string();
        // Pod sets of its namespace and the cross-namespace ones.
        let mut ids: Vec<SetId> = self.sets_by_ns.get(&ns).cloned().unwrap_or_default();
        ids.extend(self.sets_global.iter().copied());
        for id in ids {
            let selected = match (pod, self.program.sets.get(id as usize)) {
                (
                    Some(p),
                    Some(Some(IpSet {
                        key: SetKey::Pods(sel),
                        ..
                    })),
                ) => cluster.selects(sel, p),
                (_, Some(Some(_))) => false,
                _ => continue,
            };
            if let Some(ip) = old_ip {
                self.program.remove_addr(id, ip);
            }
            if let (Some(p), true) = (pod, selected) {
                self.program.insert_addr(id, p.ip);
            }
        }
        // Named ports at the old and new addresses.
        let mut addrs: Vec<IpAddr> = old_ip.into_iter().collect();
        if let Some(p) = pod {
            addrs.push(p.ip);
        }
        self.refresh_named_ports(cluster, &addrs);
        // Its chains.
        if let Some(ip) = old_ip {
            if self
                .program
                .endpoints
                .get(&ip)
                .is_some_and(|e| e.pod == key)
            {
                self.program.endpoints.remove(&ip);
            }
        }
        if let Some(p) = pod {
            self.pod_ips.insert(key.to_string(), p.ip);
            if !p.host_network {
                let ep = self.endpoint_program(cluster, p);
                self.program.endpoints.insert(p.ip, ep);
            }
        }
    }

    /// A namespace's labels changed (or it appeared/disappeared):
    /// recomputes cross-namespace set membership and chains of its pods.
    pub fn update_namespace(&mut self, cluster: &Cluster, namespace: &str) {
        let pods: Vec<&Pod> = cluster
            .pods
            .values()
            .filter(|p| p.namespace == namespace)
            .collect();
        for &id in &self.sets_global {
            let Some(Some(IpSet {
                key: SetKey::Pods(sel),
                ..
            })) = self.program.sets.get(id as usize)
            else {
                continue;
            };
            let decisions: Vec<(IpAddr, bool)> = pods
                .iter()
                .filter(|p| !p.host_network)
                .map(|p| (p.ip, cluster.selects(sel, p)))
                .collect();
            for (ip, selected) in decisions {
                if selected {
                    self.program.insert_addr(id, ip);
                } else {
                    self.program.remove_addr(id, ip);
                }
            }
        }
        for p in pods {
            if !p.host_network {
                let ep = self.endpoint_program(cluster, p);
                self.program.endpoints.insert(p.ip, ep);
            }
        }
    }

    /// Nodes changed (labels, addresses, added or removed): recomputes the
    /// node sets and the node address table.
    pub fn update_nodes(&mut self, cluster: &Cluster) {
        self.program.nodes = cluster
            .nodes
            .iter()
            .map(|n| (n.address, n.name.clone()))
            .collect();
        let node_sets: Vec<(SetId, LabelSelector)> = self
            .set_index
            .iter()
            .filter_map(|(k, id)| match k {
                SetKey::Nodes(sel) => Some((*id, sel.clone())),
                _ => None,
            })
            .collect();
        for (id, sel) in node_sets {
            let old: Vec<IpAddr> = match self.program.sets.get(id as usize) {
                Some(Some(s)) => s.addrs.iter().copied().collect(),
                _ => continue,
            };
            for ip in old {
                self.program.remove_addr(id, ip);
            }
            for n in &cluster.nodes {
                if sel.matches(&n.labels) {
                    self.program.insert_addr(id, n.address);
                }
            }
        }
    }

    fn refresh_named_ports(&mut self, cluster: &Cluster, addrs: &[IpAddr]) {
        let named: Vec<SetId> = self
            .set_index
            .iter()
            .filter(|(k, _)| matches!(k, SetKey::NamedPort(_)))
            .map(|(_, id)| *id)
            .collect();
        if named.is_empty() || addrs.is_empty() {
            return;
        }
        let at: Vec<&Pod> = cluster
            .pods
            .values()
            .filter(|p| addrs.contains(&p.ip))
            .collect();
        for ip in addrs {
            let id = self.program.addr_id(*ip) as usize;
            self.program.named_by_addr[id].clear();
        }
        for id in named {
            let Some(Some(set)) = self.program.sets.get_mut(id as usize) else {
                continue;
            };
            let SetKey::NamedPort(name) = &set.key else {
                continue;
            };
            set.ports.retain(|(ip, _, _)| !addrs.contains(ip));
            let mut added = Vec::new();
            for p in &at {
                for pp in &p.ports {
                    if pp.name.as_deref() == Some(name.as_str()) {
                        set.ports.insert((p.ip, pp.protocol, pp.port));
                        added.push((p.ip, pp.protocol, pp.port));
                    }
                }
            }
            for (ip, proto, port) in added {
                let a = self.program.addr_id(ip) as usize;
                self.program.named_by_addr[a].push((id, proto, port));
            }
        }
    }
}

/// Renumbers an endpoint's chain after the policies were laid out again:
/// each policy index through `renumber`, each rule range from the policy's
/// new range. Returns `false` when a policy of the chain is gone (the chain
/// must then be rebuilt).
fn renumber_chain(
    chain: &mut [ChainTier],
    renumber: &[Option<u32>],
    range: impl Fn(usize) -> (u32, u32),
) -> bool {
    for ct in chain {
        for (pi, r) in ct.policies.iter_mut().zip(ct.rules.iter_mut()) {
            let Some(Some(n)) = renumber.get(*pi as usize) else {
                return false;
            };
            *pi = *n;
            *r = range(*n as usize);
        }
    }
    true
}
