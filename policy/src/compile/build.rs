//! Compiling: rules to [`CRule`]s over interned sets (a set per selector or
//! port name, shared by every rule that uses it, freed when none does),
//! policies in evaluation order, and the chains of each endpoint.
//!
//! Incremental updates that reuse this are in the `update` module.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::program::{
    CPeer, CPolicy, CPort, CRule, ChainTier, EndpointProgram, IpSet, SetId, SetKey, TierInfo,
};
use super::{Compiled, FxHashMap, FxHashSet, PolicyEntry};
use crate::cluster::{Cluster, Pod};
use crate::model::{NsScope, ObjectKey, PodSelector, Policy, PortMatch, Protocol, Rule};
use crate::policyset::PolicySet;

impl Compiled {
    fn intern(
        &mut self,
        idx: &ClusterIndex<'_>,
        cluster: &Cluster,
        key: SetKey,
        used: &mut Vec<SetId>,
    ) -> SetId {
        if let Some(&id) = self.set_index.get(&key) {
            self.set_refs[id as usize] += 1;
            used.push(id);
            return id;
        }
        let set = IpSet {
            key: key.clone(),
            addrs: FxHashSet::default(),
            ports: FxHashSet::default(),
        };
        let id = match self.program.sets.iter().position(|s| s.is_none()) {
            Some(free) => {
                self.program.sets[free] = Some(set);
                free as SetId
            }
            None => {
                self.program.sets.push(Some(set));
                (self.program.sets.len() - 1) as SetId
            }
        };
        match &key {
            SetKey::Pods(sel) => {
                for p in idx.candidates(cluster, &sel.namespaces) {
                    if cluster.selects(sel, p) {
                        self.program.insert_addr(id, p.ip);
                    }
                }
                match &sel.namespaces {
                    NsScope::Named(ns) => self.sets_by_ns.entry(ns.clone()).or_default().push(id),
                    NsScope::Selector(_) => self.sets_global.push(id),
                }
            }
            SetKey::Nodes(sel) => {
                for n in &cluster.nodes {
                    if sel.matches(&n.labels) {
                        self.program.insert_addr(id, n.address);
                    }
                }
            }
            SetKey::NamedPort(name) => {
                let mut members = Vec::new();
                for p in cluster.pods.values() {
                    for pp in &p.ports {
                        if pp.name.as_deref() == Some(name.as_str()) {
                            members.push((p.ip, pp.protocol, pp.port));
                        }
                    }
                }
                for (ip, proto, port) in members {
                    let a = self.program.addr_id(ip) as usize;
                    self.program.named_by_addr[a].push((id, proto, port));
                    if let Some(Some(s)) = self.program.sets.get_mut(id as usize) {
                        s.ports.insert((ip, proto, port));
                    }
                }
            }
        }
        self.set_index.insert(key, id);
        if self.set_refs.len() <= id as usize {
            self.set_refs.resize(id as usize + 1, 0);
        }
        self.set_refs[id as usize] = 1;
        used.push(id);
        id
    }

    fn compile_rule(
        &mut self,
        idx: &ClusterIndex<'_>,
        cluster: &Cluster,
        index: usize,
        r: &Rule,
        used: &mut Vec<SetId>,
    ) -> CRule {
        let peers: Vec<CPeer> = r
            .peers
            .iter()
            .map(|p| CPeer {
                pods: p
                    .pods
                    .as_ref()
                    .map(|s| self.intern(idx, cluster, SetKey::Pods(s.clone()), used)),
                nodes: p
                    .nodes
                    .as_ref()
                    .map(|s| self.intern(idx, cluster, SetKey::Nodes(s.clone()), used)),
                nets: p.nets.clone(),
                not_nets: p.not_nets.clone(),
                domains: p.domains.clone(),
            })
            .collect();
        let ports = r
            .ports
            .iter()
            .map(|m| match m {
                PortMatch::Range { protocol, from, to } => CPort::Range {
                    protocol: *protocol,
                    from: *from,
                    to: *to,
                },
                PortMatch::Named { protocol, name } => CPort::Named {
                    protocol: *protocol,
                    set: self.intern(idx, cluster, SetKey::NamedPort(name.clone()), used),
                },
            })
            .collect();
        let all_ports =
            (1u8 << Protocol::Tcp as u8) | (1 << Protocol::Udp as u8) | (1 << Protocol::Sctp as u8);
        let mut proto_mask = match r.protocol {
            Some(p) => 1u8 << (p as u8),
            None => all_ports | (1 << Protocol::Icmp as u8),
        };
        let (mut port_lo, mut port_hi) = (0u16, u16::MAX);
        if !r.ports.is_empty() {
            // Ports exclude ICMP; the hull of the ranges bounds the port.
            proto_mask &= all_ports;
            let mut lo = u16::MAX;
            let mut hi = 0u16;
            let mut mask = 0u8;
            for m in &r.ports {
                let (p, a, b) = match m {
                    PortMatch::Range { protocol, from, to } => (*protocol, *from, *to),
                    PortMatch::Named { protocol, .. } => (*protocol, 1, u16::MAX),
                };
                mask |= p.map_or(all_ports, |p| 1 << (p as u8));
                lo = lo.min(a);
                hi = hi.max(b);
            }
            proto_mask &= mask;
            port_lo = lo;
            port_hi = hi;
        }
        let ports_exact = r.ports.is_empty()
            || (r.ports.len() == 1 && matches!(r.ports[0], PortMatch::Range { .. }));
        let peer_fast = match peers.as_slice() {
            [CPeer {
                pods: Some(s),
                nodes: None,
                nets,
                not_nets,
                domains,
            }] if nets.is_empty() && not_nets.is_empty() && domains.is_empty() => Some(*s),
            _ => None,
        };
        CRule {
            index,
            proto_mask,
            port_lo,
            port_hi,
            ports_exact,
            peer_fast,
            action: r.action,
            protocol: r.protocol,
            peers,
            ports,
            http: r.http.clone(),
        }
    }

    /// Compiles one policy's rules, holding a reference on each set they use.
    fn compile_entry(
        &mut self,
        idx: &ClusterIndex<'_>,
        cluster: &Cluster,
        p: &Policy,
    ) -> PolicyEntry {
        let mut sets = Vec::new();
        let ingress = p
            .ingress
            .iter()
            .enumerate()
            .map(|(i, r)| self.compile_rule(idx, cluster, i, r, &mut sets))
            .collect();
        let egress = p
            .egress
            .iter()
            .enumerate()
            .map(|(i, r)| self.compile_rule(idx, cluster, i, r, &mut sets))
            .collect();
        PolicyEntry {
            policy: p.clone(),
            revision: None,
            ingress,
            egress,
            sets,
        }
    }

    /// Drops an entry's references on its sets, freeing the sets no rule
    /// uses any more.
    fn release_entry(&mut self, e: &PolicyEntry) {
        for &id in &e.sets {
            let r = &mut self.set_refs[id as usize];
            *r -= 1;
            if *r > 0 {
                continue;
            }
            let Some(Some(set)) = self.program.sets.get_mut(id as usize).map(Option::take) else {
                continue;
            };
            if matches!(set.key, SetKey::NamedPort(_)) {
                for l in &mut self.program.named_by_addr {
                    l.retain(|e| e.0 != id);
                }
            }
            if let SetKey::Pods(sel) = &set.key {
                match &sel.namespaces {
                    NsScope::Named(ns) => {
                        if let Some(v) = self.sets_by_ns.get_mut(ns) {
                            v.retain(|x| *x != id);
                        }
                    }
                    NsScope::Selector(_) => self.sets_global.retain(|x| *x != id),
                }
            }
            self.set_index.remove(&set.key);
            if let Some(b) = self.program.set_bits.get_mut(id as usize) {
                b.clear();
            }
        }
    }

    /// Brings the compiled rules up to date with `policies`: compiles the
    /// policies added or changed since the last call (in evaluation order),
    /// drops the ones removed or replaced, and lays the program's policies
    /// and rules out again in evaluation order, moving the unchanged ones
    /// (their rules and sets stay). Returns the subjects (old and new) of
    /// the policies that changed, and each old policy index's new index
    /// (`None` when the tiers changed: every index is new).
    pub(super) fn compile_policies(
        &mut self,
        cluster: &Cluster,
        idx: &ClusterIndex<'_>,
        policies: &PolicySet,
    ) -> (Vec<PodSelector>, Option<Vec<Option<u32>>>) {
        let tiers: Vec<TierInfo> = policies
            .tiers()
            .into_iter()
            .map(|t| TierInfo {
                name: t.name,
                order: t.order,
                default_action: t.default_action,
            })
            .collect();
        let relayout = tiers != self.program.tiers;
        let tier_pos: HashMap<String, u32> = tiers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i as u32))
            .collect();
        let pos = |p: &Policy| tier_pos.get(p.tier.as_str()).copied();

        let mut subjects = Vec::new();
        let mut replaced: HashSet<ObjectKey> = HashSet::new();
        let gone: Vec<ObjectKey> = self
            .entries
            .keys()
            .filter(|k| !policies.policies().contains_key(*k))
            .cloned()
            .collect();
        let mut stale = Vec::new();
        for k in gone {
            if let Some(e) = self.entries.remove(&k) {
                subjects.push(e.policy.subject.clone());
                stale.push(e);
                replaced.insert(k);
            }
        }
        let mut added: Vec<&Policy> = Vec::new();
        for p in policies.policies().values() {
            let rev = policies.revision(&p.key);
            match self.entries.get_mut(&p.key) {
                Some(e) if rev.is_some() && e.revision == rev => continue,
                Some(e) if e.policy == *p => {
                    e.revision = rev;
                    continue;
                }
                _ => {}
            }
            added.push(p);
        }
        added.sort_by(|a, b| (pos(a), &a.sort_key).cmp(&(pos(b), &b.sort_key)));
        for &p in &added {
            // Compiled before the old entry is released: sets both use stay.
            let mut e = self.compile_entry(idx, cluster, p);
            e.revision = policies.revision(&p.key);
            subjects.push(p.subject.clone());
            if let Some(old) = self.entries.insert(p.key.clone(), e) {
                if old.policy.subject != p.subject {
                    subjects.push(old.policy.subject.clone());
                }
                stale.push(old);
                replaced.insert(p.key.clone());
            }
        }
        for e in &stale {
            self.release_entry(e);
        }

        // Lay out: the old order without the replaced, merged with the
        // added; unchanged policies and their rules are moved, not copied.
        let (old_pols, old_rules) = if relayout {
            // Every tier index may differ: lay every policy out anew.
            added = policies.policies().values().collect();
            added.sort_by(|a, b| (pos(a), &a.sort_key).cmp(&(pos(b), &b.sort_key)));
            self.program.policies.clear();
            self.program.rules.clear();
            (Vec::new(), Vec::new())
        } else {
            (
                std::mem::take(&mut self.program.policies),
                std::mem::take(&mut self.program.rules),
            )
        };
        let mut out: Vec<CPolicy> = Vec::with_capacity(policies.policies().len());
        let mut arena: Vec<CRule> = Vec::with_capacity(old_rules.len());
        let mut renumber = Vec::with_capacity(old_pols.len());
        let mut rules = old_rules.into_iter();
        let mut ins = added.into_iter().peekable();
        let entries = &self.entries;
        let push_new = |p: &Policy, out: &mut Vec<CPolicy>, arena: &mut Vec<CRule>| {
            let e = &entries[&p.key];
            let start = arena.len() as u32;
            arena.extend(e.ingress.iter().cloned());
            let ingress = (start, arena.len() as u32);
            arena.extend(e.egress.iter().cloned());
            out.push(CPolicy {
                key: p.key.clone(),
                tier: pos(p).unwrap_or(0),
                subject: p.subject.clone(),
                applies_ingress: p.applies_ingress,
                applies_egress: p.applies_egress,
                ingress,
                egress: (ingress.1, arena.len() as u32),
            });
        };
        for mut old in old_pols {
            let n = (old.egress.1 - old.ingress.0) as usize;
            if replaced.contains(&old.key) {
                renumber.push(None);
                rules.by_ref().take(n).for_each(drop);
                continue;
            }
            let key = (Some(old.tier), &entries[&old.key].policy.sort_key);
            while let Some(p) = ins.next_if(|p| (pos(p), &p.sort_key) < key) {
                push_new(p, &mut out, &mut arena);
            }
            renumber.push(Some(out.len() as u32));
            let n_in = old.ingress.1 - old.ingress.0;
            let start = arena.len() as u32;
            arena.extend(rules.by_ref().take(n));
            old.ingress = (start, start + n_in);
            old.egress = (start + n_in, arena.len() as u32);
            out.push(old);
        }
        for p in ins {
            push_new(p, &mut out, &mut arena);
        }
        self.program.tiers = tiers;
        for v in self.policies_by_ns.values_mut() {
            v.clear();
        }
        self.policies_global.clear();
        for (i, p) in out.iter().enumerate() {
            match &p.subject.namespaces {
                NsScope::Named(ns) => match self.policies_by_ns.get_mut(ns.as_str()) {
                    Some(v) => v.push(i as u32),
                    None => {
                        self.policies_by_ns.insert(ns.clone(), vec![i as u32]);
                    }
                },
                NsScope::Selector(_) => self.policies_global.push(i as u32),
            }
        }
        self.policies_by_ns.retain(|_, v| !v.is_empty());
        self.program.policies = out;
        self.program.rules = arena;
        (subjects, (!relayout).then_some(renumber))
    }

    pub(super) fn rebuild_all_chains(&mut self, cluster: &Cluster, idx: &ClusterIndex<'_>) {
        // Group policies by subject so each selector is evaluated once.
        let mut by_subject: HashMap<&PodSelector, Vec<u32>> = HashMap::new();
        for (i, p) in self.program.policies.iter().enumerate() {
            by_subject.entry(&p.subject).or_default().push(i as u32);
        }
        let mut per_pod: HashMap<IpAddr, Vec<u32>> = HashMap::new();
        for (sel, pols) in by_subject {
            for p in idx.candidates(cluster, &sel.namespaces) {
                if cluster.selects(sel, p) {
                    per_pod.entry(p.ip).or_default().extend_from_slice(&pols);
                }
            }
        }
        let mut endpoints = FxHashMap::default();
        endpoints.reserve(cluster.pods.len());
        for p in cluster.pods.values().filter(|p| !p.host_network) {
            let mut pols = per_pod.remove(&p.ip).unwrap_or_default();
            pols.sort_unstable();
            endpoints.insert(p.ip, self.chains_from(p, &pols));
        }
        self.program.endpoints = endpoints;
    }

    pub(super) fn endpoint_program(&self, cluster: &Cluster, p: &Pod) -> EndpointProgram {
        let ns_pols = self
            .policies_by_ns
            .get(&p.namespace)
            .map_or(&[][..], |v| &v[..]);
        let mut pols: Vec<u32> = ns_pols
            .iter()
            .chain(self.policies_global.iter())
            .copied()
            .filter(|&i| cluster.selects(&self.program.policies[i as usize].subject, p))
            .collect();
        pols.sort_unstable();
        self.chains_from(p, &pols)
    }

    fn chains_from(&self, p: &Pod, pols: &[u32]) -> EndpointProgram {
        let mut ingress: Vec<ChainTier> = Vec::new();
        let mut egress: Vec<ChainTier> = Vec::new();
        for &i in pols {
            let cp = &self.program.policies[i as usize];
            for (applies, chain, range) in [
                (cp.applies_ingress, &mut ingress, cp.ingress),
                (cp.applies_egress, &mut egress, cp.egress),
            ] {
                if !applies {
                    continue;
                }
                match chain.last_mut() {
                    Some(ct) if ct.tier == cp.tier => {
                        ct.policies.push(i);
                        ct.rules.push(range);
                    }
                    _ => chain.push(ChainTier {
                        tier: cp.tier,
                        policies: vec![i],
                        rules: vec![range],
                    }),
                }
            }
        }
        EndpointProgram {
            pod: p.key(),
            node: p.node.clone(),
            ip: p.ip,
            ingress,
            egress,
        }
    }
}

/// Pods by namespace, to evaluate selectors only where they can match.
pub(super) struct ClusterIndex<'a> {
    by_ns: HashMap<&'a str, Vec<&'a Pod>>,
}

impl<'a> ClusterIndex<'a> {
    pub(super) fn new(cluster: &'a Cluster) -> Self {
        let mut by_ns: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for p in cluster.pods.values() {
            by_ns.entry(p.namespace.as_str()).or_default().push(p);
        }
        Self { by_ns }
    }

    pub(super) fn candidates(&self, cluster: &'a Cluster, scope: &NsScope) -> Vec<&'a Pod> {
        match scope {
            NsScope::Named(ns) => self.by_ns.get(ns.as_str()).cloned().unwrap_or_default(),
            NsScope::Selector(sel) => cluster
                .namespaces
                .iter()
                .filter(|(_, l)| sel.matches(l))
                .flat_map(|(n, _)| self.by_ns.get(n.as_str()).cloned().unwrap_or_default())
                .collect(),
        }
    }
}
