//! The compiler: turns the cluster and the policies into a
//! dataplane-neutral [`Program`], and keeps it up to date incrementally.
//!
//! The program has, per endpoint (pod with its own address), an ingress and
//! an egress chain: the tiers that have a policy selecting it, in order,
//! each with those policies in order. Rules are compiled once per policy and
//! refer to **sets** keyed by selector (pods of a selector, nodes of a
//! selector, the addresses and ports of a port name). A pod appearing,
//! disappearing or changing labels changes set membership and its own
//! chains, never the rules. [`Program::verdict`] interprets the program;
//! the differential tests check it against [`crate::eval::evaluate`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::cluster::{Cluster, Pod};
use crate::eval::{Flow, Verdict};
use crate::model::{
    Action, Direction, DomainPattern, HttpMatch, NsScope, ObjectKey, PodSelector, PortMatch,
    Protocol, Rule, TierDefault,
};
use crate::net::Cidr;
use crate::policyset::PolicySet;
use crate::selector::LabelSelector;

/// The program's address-keyed tables hash with the Fx hash of
/// `rustc-hash` (small, fast, non-cryptographic): lookups are on the
/// per-packet path and the keys are not attacker-chosen in bulk.
pub use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

/// Index of a set in [`Program::sets`].
pub type SetId = u32;

/// What a set contains, and the key it is shared by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SetKey {
    /// Addresses of the (non-hostNetwork) pods a selector selects.
    Pods(PodSelector),
    /// Addresses of the nodes whose labels match.
    Nodes(LabelSelector),
    /// (address, protocol, port) of every port with this name (pods; node
    /// addresses for hostNetwork pods).
    NamedPort(String),
}

/// A set and its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    /// Its key.
    pub key: SetKey,
    /// Members of `Pods` and `Nodes` sets.
    pub addrs: FxHashSet<IpAddr>,
    /// Members of `NamedPort` sets.
    pub ports: FxHashSet<(IpAddr, Protocol, u16)>,
}

/// A compiled peer: fields ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CPeer {
    /// The address must be in this pod set.
    pub pods: Option<SetId>,
    /// The address must be in this node set.
    pub nodes: Option<SetId>,
    /// The address must be in one of these.
    pub nets: Vec<Cidr>,
    /// The address must be in none of these.
    pub not_nets: Vec<Cidr>,
    /// The flow must have been resolved from a matching name.
    pub domains: Vec<DomainPattern>,
}

/// A compiled port condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CPort {
    /// A range; `None`: TCP, UDP or SCTP.
    Range {
        /// Protocol.
        protocol: Option<Protocol>,
        /// First port.
        from: u16,
        /// Last port.
        to: u16,
    },
    /// (destination, protocol, port) must be in the set.
    Named {
        /// Required protocol.
        protocol: Option<Protocol>,
        /// A `NamedPort` set.
        set: SetId,
    },
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CRule {
    /// Index in the policy's rule list.
    pub index: usize,
    /// Prefilter: bit `1 << protocol` for each protocol the rule can match.
    pub proto_mask: u8,
    /// Prefilter: every port the rule can match lies in `port_lo..=port_hi`.
    pub port_lo: u16,
    /// See `port_lo`.
    pub port_hi: u16,
    /// The prefilter is the whole port condition (no ports, or one range).
    pub ports_exact: bool,
    /// Set when the peers are exactly one pod set: the peer check is one
    /// bitmap lookup.
    pub peer_fast: Option<SetId>,
    /// Action.
    pub action: Action,
    /// Required protocol.
    pub protocol: Option<Protocol>,
    /// Alternatives; empty: any address.
    pub peers: Vec<CPeer>,
    /// Alternatives; empty: any port.
    pub ports: Vec<CPort>,
    /// L7 conditions.
    pub http: Option<HttpMatch>,
}

/// A compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CPolicy {
    /// The object.
    pub key: ObjectKey,
    /// Index in [`Program::tiers`].
    pub tier: u32,
    /// Who it applies to.
    pub subject: PodSelector,
    /// Applies for ingress.
    pub applies_ingress: bool,
    /// Applies for egress.
    pub applies_egress: bool,
    /// Ingress rules: `start..end` in [`Program::rules`].
    pub ingress: (u32, u32),
    /// Egress rules: `start..end` in [`Program::rules`].
    pub egress: (u32, u32),
}

/// A tier of the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierInfo {
    /// Name.
    pub name: String,
    /// Order.
    pub order: u32,
    /// Default.
    pub default_action: TierDefault,
}

/// One tier of an endpoint's chain and the policies (indices into
/// [`Program::policies`], in evaluation order) selecting it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTier {
    /// Index in [`Program::tiers`].
    pub tier: u32,
    /// Policies in order.
    pub policies: Vec<u32>,
    /// For each of `policies`, its rules of this chain's direction
    /// (`start..end` in [`Program::rules`]), so the walk touches only rules.
    pub rules: Vec<(u32, u32)>,
}

/// The program of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointProgram {
    /// `namespace/name`.
    pub pod: String,
    /// Node name.
    pub node: String,
    /// Address.
    pub ip: IpAddr,
    /// Ingress chain.
    pub ingress: Vec<ChainTier>,
    /// Egress chain.
    pub egress: Vec<ChainTier>,
}

/// The dataplane-neutral program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Program {
    /// Every tier, in order.
    pub tiers: Vec<TierInfo>,
    /// Every policy, in global evaluation order (tier, then policy order).
    pub policies: Vec<CPolicy>,
    /// Every rule, policy by policy (see [`CPolicy::ingress`]).
    pub rules: Vec<CRule>,
    /// Sets by id (`None`: freed).
    pub sets: Vec<Option<IpSet>>,
    /// Endpoints by address.
    pub endpoints: FxHashMap<IpAddr, EndpointProgram>,
    /// Node addresses → node name.
    pub nodes: FxHashMap<IpAddr, String>,
    /// Dense ids of the addresses of pods and nodes (never reused).
    pub addr_ids: FxHashMap<IpAddr, u32>,
    /// By address id: the (`NamedPort` set, protocol, port) listening there.
    pub named_by_addr: Vec<Vec<(SetId, Protocol, u16)>>,
    /// By set id: membership of `Pods`/`Nodes` sets as a bitmap over
    /// address ids ([`Program::addr_ids`]), for the interpreter.
    pub set_bits: Vec<Vec<u64>>,
}

impl Program {
    /// The endpoints on one node (what that node's dataplane renders).
    pub fn node_endpoints<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a EndpointProgram> {
        self.endpoints.values().filter(move |e| e.node == node)
    }

    fn addr_id(&mut self, ip: IpAddr) -> u32 {
        if let Some(&i) = self.addr_ids.get(&ip) {
            return i;
        }
        let i = self.addr_ids.len() as u32;
        self.addr_ids.insert(ip, i);
        self.named_by_addr.push(Vec::new());
        i
    }

    fn insert_addr(&mut self, set: SetId, ip: IpAddr) {
        let id = self.addr_id(ip) as usize;
        if let Some(Some(s)) = self.sets.get_mut(set as usize) {
            s.addrs.insert(ip);
            if self.set_bits.len() <= set as usize {
                self.set_bits.resize(set as usize + 1, Vec::new());
            }
            let bits = &mut self.set_bits[set as usize];
            if bits.len() <= id / 64 {
                bits.resize(id / 64 + 1, 0);
            }
            bits[id / 64] |= 1 << (id % 64);
        }
    }

    fn remove_addr(&mut self, set: SetId, ip: IpAddr) {
        let Some(&id) = self.addr_ids.get(&ip) else {
            return;
        };
        let id = id as usize;
        if let Some(Some(s)) = self.sets.get_mut(set as usize) {
            s.addrs.remove(&ip);
            if let Some(w) = self
                .set_bits
                .get_mut(set as usize)
                .and_then(|b| b.get_mut(id / 64))
            {
                *w &= !(1 << (id % 64));
            }
        }
    }

    #[inline]
    fn in_set(&self, set: SetId, addr: Option<u32>) -> bool {
        let Some(id) = addr else { return false };
        let id = id as usize;
        self.set_bits
            .get(set as usize)
            .and_then(|b| b.get(id / 64))
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Interprets the program for a flow.
    pub fn verdict(&self, flow: &Flow) -> Verdict {
        let src = self.endpoints.get(&flow.src);
        let dst = self.endpoints.get(&flow.dst);
        if flow.src == flow.dst && (src.is_some() || self.nodes.contains_key(&flow.src)) {
            return Verdict::Allow;
        }
        if let Some(n) = self.nodes.get(&flow.src) {
            if dst.is_some_and(|d| d.node == *n) {
                return Verdict::Allow;
            }
        }
        if let Some(n) = self.nodes.get(&flow.dst) {
            if src.is_some_and(|s| s.node == *n) {
                return Verdict::Allow;
            }
        }
        let src_id = self.addr_ids.get(&flow.src).copied();
        let dst_id = self.addr_ids.get(&flow.dst).copied();
        if let Some(s) = src {
            let peer = Addr {
                ip: flow.dst,
                id: dst_id,
            };
            if !self.chain_allows(&s.egress, Direction::Egress, peer, dst_id, flow) {
                return Verdict::Deny;
            }
        }
        if let Some(d) = dst {
            let peer = Addr {
                ip: flow.src,
                id: src_id,
            };
            if !self.chain_allows(&d.ingress, Direction::Ingress, peer, dst_id, flow) {
                return Verdict::Deny;
            }
        }
        Verdict::Allow
    }

    fn chain_allows(
        &self,
        chain: &[ChainTier],
        dir: Direction,
        peer: Addr,
        dst: Option<u32>,
        flow: &Flow,
    ) -> bool {
        'tiers: for ct in chain {
            let proto_bit = 1u8 << (flow.protocol as u8);
            for &(start, end) in &ct.rules {
                for r in &self.rules[start as usize..end as usize] {
                    if r.proto_mask & proto_bit == 0
                        || flow.port < r.port_lo
                        || flow.port > r.port_hi
                    {
                        continue;
                    }
                    if !self.rule_matches(r, dir, peer, dst, flow) {
                        continue;
                    }
                    match r.action {
                        Action::Log => continue,
                        Action::Pass => continue 'tiers,
                        Action::Deny => return false,
                        Action::Allow => {
                            return match (&r.http, &flow.http) {
                                (None, _) => true,
                                (Some(h), Some(req)) => h.matches(req),
                                (Some(_), None) => false,
                            }
                        }
                    }
                }
            }
            if self.tiers[ct.tier as usize].default_action == TierDefault::Deny {
                return false;
            }
        }
        true
    }

    fn rule_matches(
        &self,
        r: &CRule,
        dir: Direction,
        peer: Addr,
        dst: Option<u32>,
        flow: &Flow,
    ) -> bool {
        if r.protocol.is_some_and(|p| p != flow.protocol) {
            return false;
        }
        if !r.ports_exact
            && !r.ports.is_empty()
            && !r.ports.iter().any(|m| match m {
                CPort::Range { protocol, from, to } => {
                    protocol.map_or(flow.protocol.has_ports(), |p| p == flow.protocol)
                        && *from <= flow.port
                        && flow.port <= *to
                }
                CPort::Named { protocol, set } => {
                    protocol.is_none_or(|p| p == flow.protocol)
                        && dst.is_some_and(|d| {
                            self.named_by_addr[d as usize].iter().any(|&(s, pr, po)| {
                                s == *set && pr == flow.protocol && po == flow.port
                            })
                        })
                }
            })
        {
            return false;
        }
        if let Some(s) = r.peer_fast {
            return self.in_set(s, peer.id);
        }
        r.peers.is_empty()
            || r.peers.iter().any(|p| {
                p.pods.is_none_or(|s| self.in_set(s, peer.id))
                    && p.nodes.is_none_or(|s| self.in_set(s, peer.id))
                    && (p.nets.is_empty() || p.nets.iter().any(|n| n.contains(peer.ip)))
                    && !p.not_nets.iter().any(|n| n.contains(peer.ip))
                    && (p.domains.is_empty()
                        || (dir == Direction::Egress
                            && flow
                                .dns_name
                                .as_deref()
                                .is_some_and(|n| p.domains.iter().any(|d| d.matches(n)))))
            })
    }
}

/// The compiler state: the program plus the indexes that make updates
/// incremental.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    program: Program,
    set_index: HashMap<SetKey, SetId>,
    /// Pod sets scoped to one namespace, by namespace.
    sets_by_ns: HashMap<String, Vec<SetId>>,
    /// Pod sets scoped by a namespace selector.
    sets_global: Vec<SetId>,
    /// Policies whose subject is one namespace, by namespace.
    policies_by_ns: HashMap<String, Vec<u32>>,
    /// Policies whose subject spans namespaces.
    policies_global: Vec<u32>,
    /// Last known address of each pod (hostNetwork pods included).
    pod_ips: HashMap<String, IpAddr>,
}

impl Compiled {
    /// Compiles from scratch.
    pub fn new(cluster: &Cluster, policies: &PolicySet) -> Self {
        let mut c = Compiled::default();
        c.program.nodes = cluster
            .nodes
            .iter()
            .map(|n| (n.address, n.name.clone()))
            .collect();
        c.pod_ips = cluster
            .pods
            .iter()
            .map(|(k, p)| (k.clone(), p.ip))
            .collect();
        let idx = ClusterIndex::new(cluster);
        c.compile_policies(cluster, &idx, policies);
        c.rebuild_all_chains(cluster, &idx);
        c
    }

    /// The current program.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Number of live sets.
    pub fn set_count(&self) -> usize {
        self.set_index.len()
    }

    /// The policies changed: recompiles the rules, reusing the sets whose
    /// keys are still used (their membership is not recomputed), creating
    /// new ones and freeing unused ones; then rebuilds the chains.
    pub fn update_policies(&mut self, cluster: &Cluster, policies: &PolicySet) {
        let idx = ClusterIndex::new(cluster);
        self.compile_policies(cluster, &idx, policies);
        self.rebuild_all_chains(cluster, &idx);
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

    fn intern(
        &mut self,
        idx: &ClusterIndex<'_>,
        cluster: &Cluster,
        key: SetKey,
        used: &mut HashSet<SetId>,
    ) -> SetId {
        if let Some(&id) = self.set_index.get(&key) {
            used.insert(id);
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
        used.insert(id);
        id
    }

    fn compile_rule(
        &mut self,
        idx: &ClusterIndex<'_>,
        cluster: &Cluster,
        index: usize,
        r: &Rule,
        used: &mut HashSet<SetId>,
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

    fn compile_policies(
        &mut self,
        cluster: &Cluster,
        idx: &ClusterIndex<'_>,
        policies: &PolicySet,
    ) {
        let tiers = policies.tiers();
        let tier_pos: HashMap<&str, u32> = tiers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i as u32))
            .collect();
        let mut ordered: Vec<_> = policies.policies().values().collect();
        ordered.sort_by(|a, b| {
            (tier_pos.get(a.tier.as_str()), &a.sort_key)
                .cmp(&(tier_pos.get(b.tier.as_str()), &b.sort_key))
        });
        let mut used = HashSet::new();
        let mut out = Vec::with_capacity(ordered.len());
        let mut arena: Vec<CRule> = Vec::new();
        for p in ordered {
            let start = arena.len() as u32;
            for (i, r) in p.ingress.iter().enumerate() {
                let c = self.compile_rule(idx, cluster, i, r, &mut used);
                arena.push(c);
            }
            let ingress = (start, arena.len() as u32);
            for (i, r) in p.egress.iter().enumerate() {
                let c = self.compile_rule(idx, cluster, i, r, &mut used);
                arena.push(c);
            }
            let egress = (ingress.1, arena.len() as u32);
            out.push(CPolicy {
                key: p.key.clone(),
                tier: tier_pos.get(p.tier.as_str()).copied().unwrap_or(0),
                subject: p.subject.clone(),
                applies_ingress: p.applies_ingress,
                applies_egress: p.applies_egress,
                ingress,
                egress,
            });
        }
        // Free the sets no rule uses any more.
        let stale: Vec<(SetKey, SetId)> = self
            .set_index
            .iter()
            .filter(|(_, id)| !used.contains(id))
            .map(|(k, id)| (k.clone(), *id))
            .collect();
        for (k, id) in stale {
            if matches!(k, SetKey::NamedPort(_)) {
                for l in &mut self.program.named_by_addr {
                    l.retain(|e| e.0 != id);
                }
            }
            self.set_index.remove(&k);
            self.program.sets[id as usize] = None;
            if let Some(b) = self.program.set_bits.get_mut(id as usize) {
                b.clear();
            }
            self.sets_global.retain(|x| *x != id);
            for v in self.sets_by_ns.values_mut() {
                v.retain(|x| *x != id);
            }
        }
        self.program.tiers = tiers
            .into_iter()
            .map(|t| TierInfo {
                name: t.name,
                order: t.order,
                default_action: t.default_action,
            })
            .collect();
        self.policies_by_ns.clear();
        self.policies_global.clear();
        for (i, p) in out.iter().enumerate() {
            match &p.subject.namespaces {
                NsScope::Named(ns) => self
                    .policies_by_ns
                    .entry(ns.clone())
                    .or_default()
                    .push(i as u32),
                NsScope::Selector(_) => self.policies_global.push(i as u32),
            }
        }
        self.program.policies = out;
        self.program.rules = arena;
    }

    fn rebuild_all_chains(&mut self, cluster: &Cluster, idx: &ClusterIndex<'_>) {
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

    fn endpoint_program(&self, cluster: &Cluster, p: &Pod) -> EndpointProgram {
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

/// An address and its dense id, if it has one.
#[derive(Debug, Clone, Copy)]
struct Addr {
    ip: IpAddr,
    id: Option<u32>,
}

/// Pods by namespace, to evaluate selectors only where they can match.
struct ClusterIndex<'a> {
    by_ns: HashMap<&'a str, Vec<&'a Pod>>,
}

impl<'a> ClusterIndex<'a> {
    fn new(cluster: &'a Cluster) -> Self {
        let mut by_ns: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for p in cluster.pods.values() {
            by_ns.entry(p.namespace.as_str()).or_default().push(p);
        }
        Self { by_ns }
    }

    fn candidates(&self, cluster: &'a Cluster, scope: &NsScope) -> Vec<&'a Pod> {
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
