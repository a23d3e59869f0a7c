//! The renderer: [`Program`] + local endpoints → [`RenderedPolicy`].
//! [`render_cached`] keeps what it rendered in a [`RenderCache`] and reuses
//! the chains whose inputs did not change.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use veil_policy::compile::{CPeer, CPort, CRule, ChainTier, Program, SetKey};
use veil_policy::model::{Action, Direction, Protocol, TierDefault};
use veil_policy::net::Cidr;

use super::cache::{EndpointEntry, PolicyEntry, RenderCache, SetUse, TierWalk};
use super::chains::*;
use super::prefix::{LogAction, LogPrefix};
use super::schema::chain_of;
use super::{
    Element, RenderedPolicy, SetKind, SetSpec, DISPATCH_EGRESS, DISPATCH_INGRESS, LOG_BURST,
    LOG_RATE_PER_SECOND, MAP_EGRESS, MAP_INGRESS, MARK_ALLOW, MARK_PASS, NFLOG_GROUP_DENY,
    NFLOG_GROUP_LOG, OPEN_CHAIN,
};
use crate::dataplane::nftables::desired::LOG_SUPPRESSED_COUNTER;

/// A pod of this node: its host-side interface and its address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalEndpoint {
    /// The host end of the pod's veth (`veil` + 11 hex digits).
    pub ifname: String,
    /// The pod's address.
    pub ip: IpAddr,
    /// The pod's Kubernetes identity (`namespace/name`). Without one (the
    /// plugin used outside Kubernetes) no policy can select it, and it is
    /// dispatched to the open chain. Another attachment of a pod the program
    /// knows (a second interface) gets that pod's chains.
    pub pod: Option<String>,
}

fn dir_tag(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "eg",
        Direction::Ingress => "in",
    }
}

fn fnv(s: &str) -> u64 {
    crate::dataplane::nftables::desired::fnv1a(s.as_bytes())
}

/// Renders the policy part of the node's table.
pub fn render(program: &Program, endpoints: &[LocalEndpoint]) -> RenderedPolicy {
    render_cached(
        &mut RenderCache::new(),
        program,
        endpoints,
        &BTreeMap::new(),
    )
}

/// Renders the policy part of the node's table, reusing from `cache` the
/// chains whose inputs are unchanged since the previous render through it
/// (the output is the same as [`render`]'s).
///
/// `tunnels` maps each node's address to its tunnel address (the source of
/// its traffic to pods of other nodes, see DESIGN.md): wherever a node
/// address is matched (node selector sets, `nets`/`ipBlock`), its tunnel
/// address is matched as that node's address.
pub fn render_cached(
    cache: &mut RenderCache,
    program: &Program,
    endpoints: &[LocalEndpoint],
    tunnels: &BTreeMap<IpAddr, IpAddr>,
) -> RenderedPolicy {
    if cache.tunnels != *tunnels {
        // Rendered peers depend on them: render every policy again.
        cache.policies.clear();
        cache.tunnels = tunnels.clone();
    }
    let mut r = Renderer {
        tunnels,
        program,
        out: RenderedPolicy::default(),
        policy_chains: BTreeMap::new(),
        tier_denies: BTreeSet::new(),
        policy_key: None,
        cache,
        used_policies: HashSet::new(),
        used_endpoints: HashSet::new(),
        recording: None,
    };
    r.out.chains.insert(
        OPEN_CHAIN.to_string(),
        chain_of(OPEN_CHAIN, vec![vec![super::verdict_mark::stamp_open()]]),
    );
    let mut eps: Vec<&LocalEndpoint> = endpoints.iter().collect();
    eps.sort();
    let mut egress = Vec::new();
    let mut ingress = Vec::new();
    for ep in eps {
        let Some(pod) = &ep.pod else {
            egress.push((ep.ifname.clone(), OPEN_CHAIN.to_string()));
            ingress.push((ep.ifname.clone(), OPEN_CHAIN.to_string()));
            continue;
        };
        let prog = program
            .endpoints
            .get(&ep.ip)
            .or_else(|| program.endpoints.values().find(|e| &e.pod == pod));
        let Some(prog) = prog else {
            // Not compiled yet: left out of the maps, so its packets are
            // dropped until it is.
            continue;
        };
        egress.push((
            ep.ifname.clone(),
            r.endpoint_chain(&ep.ifname, Direction::Egress, &prog.egress),
        ));
        ingress.push((
            ep.ifname.clone(),
            r.endpoint_chain(&ep.ifname, Direction::Ingress, &prog.ingress),
        ));
    }
    r.dispatch(DISPATCH_EGRESS, MAP_EGRESS, false, egress);
    r.dispatch(DISPATCH_INGRESS, MAP_INGRESS, true, ingress);
    r.out.forward = vec![vec![jump(DISPATCH_EGRESS)], vec![jump(DISPATCH_INGRESS)]];
    r.out.steering = super::tproxy::steering(program, endpoints, &r.out.maps, MAP_INGRESS);
    super::tproxy::remember(&mut r.cache.l7_seen, &mut r.out.steering);
    super::dns::finish(&mut r.out.dns, program, endpoints);
    let (used_p, used_e) = (r.used_policies, r.used_endpoints);
    r.cache.policies.retain(|k, _| used_p.contains(k));
    r.cache.endpoints.retain(|k, _| used_e.contains(k));
    let used = &r.cache.policies;
    r.cache
        .rule_ids
        .sweep(|d, p| used.contains_key(&(format!("{:?}/{}", p.kind, p.full_name()), d)));
    r.out
        .prefixes
        .set_rule_ids(r.cache.rule_ids.table().clone());
    r.out
}

struct Renderer<'a> {
    program: &'a Program,
    tunnels: &'a BTreeMap<IpAddr, IpAddr>,
    out: RenderedPolicy,
    /// (policy index, direction) → chain name, rendered once.
    policy_chains: BTreeMap<(u32, Direction), String>,
    tier_denies: BTreeSet<(u32, Direction)>,
    /// The policy whose chain is being rendered (names `domains` sets).
    policy_key: Option<veil_policy::model::ObjectKey>,
    cache: &'a mut RenderCache,
    used_policies: HashSet<(String, Direction)>,
    used_endpoints: HashSet<(String, Direction)>,
    /// The sets used while rendering one policy (for its cache entry).
    recording: Option<Vec<SetUse>>,
}

impl Renderer<'_> {
    fn dispatch(&mut self, name: &str, map: &str, ingress: bool, entries: Vec<(String, String)>) {
        let rules = vec![
            vec![ifname_vmap(ingress, map)],
            vec![
                ifname_is(ingress, "veil*", true),
                ifname_is(ingress, "veil-wg", false),
                counter(),
                drop(),
            ],
        ];
        self.out
            .chains
            .insert(name.to_string(), chain_of(name, rules));
        self.out
            .maps
            .insert(map.to_string(), entries.into_iter().collect());
    }

    fn endpoint_chain(&mut self, ifname: &str, dir: Direction, tiers: &[ChainTier]) -> String {
        if tiers.is_empty() {
            return OPEN_CHAIN.to_string();
        }
        let name = format!("e-{ifname}-{}", dir_tag(dir));
        let mut walk: Vec<TierWalk> = Vec::with_capacity(tiers.len());
        for ct in tiers {
            let chains = ct
                .policies
                .iter()
                .map(|&pi| self.policy_chain(pi, dir))
                .collect();
            let deny = (self.program.tiers[ct.tier as usize].default_action == TierDefault::Deny)
                .then(|| self.tier_deny_chain(ct.tier, dir));
            walk.push((chains, deny));
        }
        let key = (ifname.to_string(), dir);
        let chain = match self.cache.endpoints.get(&key) {
            Some(e) if e.walk == walk => e.chain.clone(),
            _ => {
                let mut rules = walk_rules(&walk);
                if walk.last().is_some_and(|(_, deny)| deny.is_none()) {
                    // Falling off the last tier allows: say so in the mark.
                    rules.push(vec![super::verdict_mark::stamp(
                        dir,
                        super::verdict_mark::ID_END_OF_TIERS,
                    )]);
                }
                let chain = chain_of(&name, rules);
                self.cache.endpoints.insert(
                    key.clone(),
                    EndpointEntry {
                        walk,
                        chain: chain.clone(),
                    },
                );
                chain
            }
        };
        self.used_endpoints.insert(key);
        self.out.chains.insert(name.clone(), chain);
        name
    }

    fn tier_deny_chain(&mut self, tier: u32, dir: Direction) -> String {
        let t = &self.program.tiers[tier as usize];
        let name = format!("t-{}-{}-deny", t.name, dir_tag(dir));
        if self.tier_denies.insert((tier, dir)) {
            let prefix = self.out.prefixes.intern(LogPrefix {
                action: LogAction::Deny,
                direction: dir,
                tier: t.name.clone(),
                policy: None,
                rule: None,
            });
            let rules = log_chain(NFLOG_GROUP_DENY, &prefix, true);
            self.out.chains.insert(name.clone(), chain_of(&name, rules));
        }
        name
    }

    fn policy_chain(&mut self, pi: u32, dir: Direction) -> String {
        if let Some(n) = self.policy_chains.get(&(pi, dir)) {
            return n.clone();
        }
        let p = &self.program.policies[pi as usize];
        let id = format!("{:?}/{}", p.key.kind, p.key.full_name());
        let base = format!("p-{:012x}-{}", fnv(&id) >> 16, dir_tag(dir));
        self.policy_chains.insert((pi, dir), base.clone());
        let (start, end) = match dir {
            Direction::Egress => p.egress,
            Direction::Ingress => p.ingress,
        };
        let crules = &self.program.rules[start as usize..end as usize];
        let tier = &self.program.tiers[p.tier as usize].name;
        let key = (id, dir);
        let hit = self
            .cache
            .policies
            .get(&key)
            .filter(|e| e.tier == *tier && e.rules == crules);
        // The cheap parts of the entry (its rules stay in the cache).
        let (sets, prefixes, chains) = match hit {
            Some(e) => (e.sets.clone(), e.prefixes.clone(), e.chains.clone()),
            None => {
                let e = self.render_policy(pi, dir, &base);
                let parts = (e.sets.clone(), e.prefixes.clone(), e.chains.clone());
                self.cache.policies.insert(key.clone(), e);
                parts
            }
        };
        self.used_policies.insert(key);
        for u in &sets {
            match u {
                SetUse::Addr(id) => {
                    self.addr_set(*id);
                }
                SetUse::NamedPort(id) => {
                    self.named_port_set(*id);
                }
                SetUse::Net(v6, nets) => {
                    self.net_set(*v6, nets);
                }
                SetUse::Fixed(name, spec) => {
                    self.fixed_set(name, spec.clone());
                }
                SetUse::Domain(name) => {
                    self.out.dns.sets.insert(name.clone());
                }
            }
        }
        for lp in prefixes {
            self.out.prefixes.intern(lp);
        }
        self.out.chains.extend(chains);
        base
    }

    /// Renders policy `pi`'s rules of direction `dir` into chain `base` and
    /// its deny/log chains.
    fn render_policy(&mut self, pi: u32, dir: Direction, base: &str) -> PolicyEntry {
        let p = &self.program.policies[pi as usize];
        let (start, end) = match dir {
            Direction::Egress => p.egress,
            Direction::Ingress => p.ingress,
        };
        let tier = self.program.tiers[p.tier as usize].name.clone();
        let key = p.key.clone();
        self.policy_key = Some(key.clone());
        let crules = &self.program.rules[start as usize..end as usize];
        let outer = self.recording.replace(Vec::new());
        let mut rules = Vec::new();
        let mut chains = Vec::new();
        let mut prefixes = Vec::new();
        for cr in crules {
            let stamp = |ids: &mut super::verdict_mark::RuleIds| {
                super::verdict_mark::stamp(dir, ids.id(dir, &tier, &key, cr.index))
            };
            let action: Vec<Stmt> = match cr.action {
                // An http rule also flags the L7 proxy's steering (tproxy.rs).
                Action::Allow if cr.http.is_some() => vec![
                    stamp(&mut self.cache.rule_ids),
                    set_mark(MARK_ALLOW | super::tproxy::MARK_HTTP),
                    ret(),
                ],
                Action::Allow => vec![stamp(&mut self.cache.rule_ids), set_mark(MARK_ALLOW), ret()],
                Action::Pass => vec![set_mark(MARK_PASS), ret()],
                Action::Deny | Action::Log => {
                    let deny = cr.action == Action::Deny;
                    let lp = LogPrefix {
                        action: if deny {
                            LogAction::Deny
                        } else {
                            LogAction::Log
                        },
                        direction: dir,
                        tier: tier.clone(),
                        policy: Some(key.clone()),
                        rule: Some(cr.index),
                    };
                    let prefix = self.out.prefixes.intern(lp.clone());
                    prefixes.push(lp);
                    let chain = format!("{base}-{}{}", if deny { 'd' } else { 'l' }, cr.index);
                    let group = if deny {
                        NFLOG_GROUP_DENY
                    } else {
                        NFLOG_GROUP_LOG
                    };
                    let lc = log_chain(group, &prefix, deny);
                    chains.push((chain.clone(), chain_of(&chain, lc)));
                    if deny {
                        vec![goto(&chain)]
                    } else {
                        vec![jump(&chain)]
                    }
                }
            };
            for m in self.rule_matches(cr, dir) {
                let mut rule = m;
                rule.extend(action.iter().cloned());
                rules.push(rule);
            }
        }
        chains.insert(0, (base.to_string(), chain_of(base, rules)));
        let sets = std::mem::replace(&mut self.recording, outer).unwrap_or_default();
        PolicyEntry {
            tier,
            rules: crules.to_vec(),
            chains,
            prefixes,
            sets,
        }
    }

    /// The alternatives (ORed) of a rule's match, each a list of statements
    /// (ANDed). Empty when the rule can never match here.
    fn rule_matches(&mut self, r: &CRule, dir: Direction) -> Vec<Vec<Stmt>> {
        let peer_is_dst = dir == Direction::Egress;
        let mut peers: Vec<Vec<Stmt>> = Vec::new();
        if r.peers.is_empty() {
            peers.push(Vec::new());
        }
        for p in &r.peers {
            match &self.policy_key {
                Some(k) if !p.domains.is_empty() && peer_is_dst => {
                    if let Some(rec) = &mut self.recording {
                        rec.push(SetUse::Domain(super::dns::rule_set_name(k, r)));
                    }
                    peers.extend(super::dns::peer_match(&mut self.out.dns, k, r))
                }
                _ => peers.extend(self.peer_matches(p, peer_is_dst)),
            }
        }
        let ports = self.port_matches(r);
        let mut out = Vec::new();
        for pm in &peers {
            for po in &ports {
                let mut v = Vec::new();
                v.extend(pm.iter().cloned());
                v.extend(po.iter().cloned());
                out.push(v);
            }
        }
        out
    }

    fn port_matches(&mut self, r: &CRule) -> Vec<Vec<Stmt>> {
        if r.ports.is_empty() {
            return vec![r.protocol.map(l4proto).into_iter().collect()];
        }
        // Ranges grouped by their effective protocol, in first-seen order.
        let mut groups: Vec<PortGroup> = Vec::new();
        let mut out = Vec::new();
        for m in &r.ports {
            match m {
                CPort::Range { protocol, from, to } => {
                    let p = protocol.or(r.protocol);
                    if p == Some(Protocol::Icmp) {
                        continue;
                    }
                    match groups.iter_mut().find(|g| g.0 == p) {
                        Some(g) => g.1.push((*from, *to)),
                        None => groups.push((p, vec![(*from, *to)])),
                    }
                }
                CPort::Named { protocol, set } => {
                    let name = self.named_port_set(*set);
                    let mut v: Vec<Stmt> =
                        protocol.or(r.protocol).map(l4proto).into_iter().collect();
                    v.push(eq(
                        concat(vec![
                            addr_field(false, true),
                            meta(nftables::expr::MetaKey::L4proto),
                            payload("th", "dport"),
                        ]),
                        set_ref(&name),
                    ));
                    out.push(v);
                }
            }
        }
        let mut ranged: Vec<Vec<Stmt>> = Vec::new();
        for (p, rs) in groups {
            let proto = match p {
                Some(p) => l4proto(p),
                None => l4proto_ported(),
            };
            let one = |&(a, b): &(u16, u16)| range(u32::from(a), u32::from(b));
            if rs.len() <= SPLIT_PORTS {
                // One rule per port or range: an anonymous set costs the
                // kernel a set creation per rule written (see `SPLIT_PORTS`).
                ranged.extend(rs.iter().map(|r| vec![proto.clone(), dport(one(r))]));
            } else {
                ranged.push(vec![proto, dport(anon_set(rs.iter().map(one).collect()))]);
            }
        }
        ranged.extend(out);
        ranged
    }

    fn peer_matches(&mut self, p: &CPeer, dst: bool) -> Vec<Vec<Stmt>> {
        if !p.domains.is_empty() {
            // Only egress `domains` peers match (see `rule_matches`): their
            // set holds what the DNS proxy resolved; never anything else.
            return Vec::new();
        }
        let (nets4, nets6) = split_family(&p.nets);
        let (not4, not6) = split_family(&p.not_nets);
        let mut alts = Vec::new();
        if p.pods.is_some() || p.nodes.is_some() {
            // Selector sets hold IPv4 addresses: the peer is IPv4 only.
            if !p.nets.is_empty() && nets4.is_empty() {
                return alts;
            }
            let mut v = Vec::new();
            for s in [p.pods, p.nodes].into_iter().flatten() {
                let name = self.addr_set(s);
                v.push(eq(addr_field(false, dst), set_ref(&name)));
            }
            self.net_conds(&mut v, false, dst, &nets4, &not4);
            alts.push(v);
            return alts;
        }
        if p.nets.is_empty() && p.not_nets.is_empty() {
            alts.push(Vec::new());
            return alts;
        }
        for (v6, nets, not) in [(false, &nets4, &not4), (true, &nets6, &not6)] {
            if !p.nets.is_empty() && nets.is_empty() {
                continue;
            }
            let mut v = Vec::new();
            if nets.is_empty() && not.is_empty() {
                v.push(eq(
                    meta(nftables::expr::MetaKey::Nfproto),
                    s(if v6 { "ipv6" } else { "ipv4" }),
                ));
            }
            self.net_conds(&mut v, v6, dst, nets, not);
            if !v6 && !self.tunnels.is_empty() {
                self.tunnel_conds(&mut v, &mut alts, dst, nets, not);
            }
            alts.push(v);
        }
        alts
    }

    fn net_conds(&mut self, v: &mut Vec<Stmt>, v6: bool, dst: bool, nets: &[Cidr], not: &[Cidr]) {
        if !nets.is_empty() {
            let name = self.net_set(v6, nets);
            v.push(eq(addr_field(v6, dst), set_ref(&name)));
        }
        if !not.is_empty() {
            let name = self.net_set(v6, not);
            v.push(matches(
                addr_field(v6, dst),
                nftables::stmt::Operator::NEQ,
                set_ref(&name),
            ));
        }
    }

    fn net_set(&mut self, v6: bool, nets: &[Cidr]) -> String {
        if let Some(r) = &mut self.recording {
            r.push(SetUse::Net(v6, nets.to_vec()));
        }
        let nets = minimal_cover(nets);
        let key: Vec<String> = nets.iter().map(ToString::to_string).collect();
        let name = format!("n{:012x}", fnv(&key.join(",")) >> 16);
        self.out
            .sets
            .entry(name.clone())
            .or_insert_with(|| SetSpec {
                kind: if v6 { SetKind::Net6 } else { SetKind::Net4 },
                elements: nets.into_iter().map(Element::Net).collect(),
            });
        name
    }

    fn addr_set(&mut self, id: u32) -> String {
        if let Some(r) = &mut self.recording {
            r.push(SetUse::Addr(id));
        }
        let name = format!("s{id}");
        if !self.out.sets.contains_key(&name) {
            let elements = self.program.sets[id as usize]
                .as_ref()
                .map(|s| {
                    // A node set also holds its nodes' tunnel addresses.
                    let tunnels = s
                        .addrs
                        .iter()
                        .filter(|_| matches!(s.key, SetKey::Nodes(_)))
                        .filter_map(|a| self.tunnels.get(a));
                    s.addrs
                        .iter()
                        .chain(tunnels)
                        .filter(|a| a.is_ipv4())
                        .map(|a| Element::Addr(*a))
                        .collect()
                })
                .unwrap_or_default();
            self.out.sets.insert(
                name.clone(),
                SetSpec {
                    kind: SetKind::Addr4,
                    elements,
                },
            );
        }
        name
    }

    fn named_port_set(&mut self, id: u32) -> String {
        if let Some(r) = &mut self.recording {
            r.push(SetUse::NamedPort(id));
        }
        let name = format!("np{id}");
        if !self.out.sets.contains_key(&name) {
            let elements = self.program.sets[id as usize]
                .as_ref()
                .filter(|s| matches!(s.key, SetKey::NamedPort(_)))
                .map(|s| {
                    s.ports
                        .iter()
                        .filter(|(a, p, _)| a.is_ipv4() && p.has_ports())
                        .map(|&(a, p, port)| Element::NamedPort(a, p, port))
                        .collect()
                })
                .unwrap_or_default();
            self.out.sets.insert(
                name.clone(),
                SetSpec {
                    kind: SetKind::NamedPort4,
                    elements,
                },
            );
        }
        name
    }
}

/// Up to this many ports and ranges of one protocol in a rule are written as
/// one nftables rule each rather than one rule with an anonymous set: the
/// kernel creates an anonymous set per rule written and names it by scanning
/// every set of the table (`nf_tables_set_alloc_name`), which made a
/// 1,000-rule change spend most of its transaction there (DESIGN.md, policy
/// dataplane). Longer lists keep the set (one lookup per packet).
pub const SPLIT_PORTS: usize = 4;

/// Port ranges sharing one effective protocol (`None`: TCP, UDP and SCTP).
type PortGroup = (Option<Protocol>, Vec<(u16, u16)>);

/// A chain that logs (rate-limited) and then drops (`deny`) or returns; the
/// entries over the limit are counted by the second rule, into the table's
/// named counter [`LOG_SUPPRESSED_COUNTER`] (read back by the resync and
/// exposed as `veil_policy_log_suppressed_total`).
fn log_chain(group: u32, prefix: &str, deny: bool) -> Vec<Vec<Stmt>> {
    let verdict = if deny { drop() } else { ret() };
    vec![
        vec![
            limit(LOG_RATE_PER_SECOND, LOG_BURST),
            nflog(group, prefix),
            verdict.clone(),
        ],
        vec![named_counter(LOG_SUPPRESSED_COUNTER), verdict],
    ]
}

fn split_family(nets: &[Cidr]) -> (Vec<Cidr>, Vec<Cidr>) {
    nets.iter().partition(|c| c.addr().is_ipv4())
}

/// The networks of `nets` not contained in another one, sorted: an interval
/// set refuses overlapping elements.
fn minimal_cover(nets: &[Cidr]) -> Vec<Cidr> {
    let mut v: Vec<Cidr> = nets.to_vec();
    v.sort_by_key(|c| (c.prefix(), c.addr()));
    v.dedup();
    let mut out: Vec<Cidr> = Vec::new();
    for c in v {
        if !out
            .iter()
            .any(|o| o.contains(c.addr()) && o.prefix() <= c.prefix())
        {
            out.push(c);
        }
    }
    out.sort_by_key(|c| (c.addr(), c.prefix()));
    out
}

mod tunnels;
use tunnels::walk_rules;

#[cfg(test)]
mod tests;
