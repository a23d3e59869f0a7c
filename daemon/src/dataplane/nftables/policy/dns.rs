//! The nftables side of egress allowlists by DNS name (`domains` peers).
//!
//! - Each egress `Allow` rule with `domains` gets one named set
//!   `d<hash>` of `pod address . destination address` with the `timeout`
//!   flag; the rule matches `ip saddr . ip daddr @d<hash>`. The set is
//!   declared here and never filled by the table manager: the DNS proxy
//!   (`crate::dns`) adds elements, each with its own timeout, before it
//!   releases the answer. The name hashes the policy and the rule's content,
//!   so a changed or deleted rule gets a new (empty) set or none: its
//!   allowances end with it.
//! - Steering (prerouting, mangle priority): UDP and TCP port 53 from the
//!   local pods that some `domains` rule selects (set [`CLIENTS_SET`]) is
//!   first checked against the pod's egress policy (a jump to the egress
//!   dispatch chain, which drops denied queries), then sent with TPROXY to
//!   the proxy's port. If no proxy listens, the next rule drops it: fail
//!   closed, never a bypass. Packets of the proxy's own transparent sockets
//!   (answers from resolvers, the pods' TCP connections) are marked
//!   [`MARK_TPROXY`] so that the policy routing (`ip rule fwmark` → table
//!   [`ROUTE_TABLE`] with a local default route) delivers them locally.
//! - Output: the proxy's upstream queries carry the pod's address and
//!   [`MARK_UPSTREAM`]; they go through the ingress dispatch, so that a local
//!   resolver's ingress policy sees them as it would see the pod's own.
//!
//! It does not run `nft` nor set up the routing (the proxy does), nor handle
//! IPv6 destinations (the pod network is IPv4: AAAA answers open nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use nftables::expr::{Expression, MetaKey, NamedExpression, Socket, SocketAttr};
use nftables::schema::{SetFlag, SetType, SetTypeValue};
use nftables::stmt::{Mangle, Statement, TProxy};
use veil_policy::compile::{CRule, Program};
use veil_policy::model::{Action, DomainPattern, ObjectKey};

use super::chains::*;
use super::{LocalEndpoint, DISPATCH_EGRESS, DISPATCH_INGRESS};
use crate::dataplane::nftables::desired::{NamedSet, PolicyHook, PolicyObjects, PolicyRule};

/// Mark of packets delivered to the proxy's transparent sockets (distinct
/// from the policy bits and from the L7 proxy's mark).
pub const MARK_TPROXY: u32 = 0x0040_0000;
/// `SO_MARK` of the proxy's upstream sockets.
pub const MARK_UPSTREAM: u32 = 0x0080_0000;
/// Routing table of the local default route for [`MARK_TPROXY`].
pub const ROUTE_TABLE: u32 = 2153;
/// Priority of the `ip rule` selecting [`ROUTE_TABLE`].
pub const RULE_PRIORITY: u32 = 2153;
/// Default port of the DNS proxy's listeners (UDP and TCP).
pub const DEFAULT_PORT: u16 = 15053;
/// Set of local pods whose DNS goes through the proxy.
pub const CLIENTS_SET: &str = "dns-clients";
/// Comment of the fail-closed rule (its counter: queries while no proxy ran).
pub const PROXY_DOWN: &str = "DNS proxy not running: fail closed";

/// A `domains` rule as the proxy sees it: the set it fills and the names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DomainRule {
    /// The nftables set (`d<hash>`).
    pub set: String,
    /// The policy that holds the rule.
    pub policy: String,
    /// The rule's index in its policy.
    pub index: usize,
    /// The names it allows.
    pub patterns: Vec<DomainPattern>,
}

impl DomainRule {
    /// Whether `name` (as asked) is allowed by this rule.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }
}

/// What the renderer collected for DNS: the rule sets and the proxied pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsObjects {
    /// The rule sets in use.
    pub sets: BTreeSet<String>,
    /// Local pods that some `domains` rule selects.
    pub clients: BTreeSet<Ipv4Addr>,
    /// The proxy's port.
    pub port: u16,
}

/// The set name of a `domains` rule of `policy`: a hash of the policy and of
/// everything the rule matches on, so that any change gives a new set.
pub fn rule_set_name(policy: &ObjectKey, r: &CRule) -> String {
    let domains: Vec<String> = r
        .peers
        .iter()
        .flat_map(|p| p.domains.iter().map(ToString::to_string))
        .collect();
    let text = format!(
        "{:?}/{}/{}/{:?}/{:?}/{}/{:?}",
        policy.kind,
        policy.full_name(),
        r.index,
        r.action,
        r.protocol,
        domains.join(","),
        r.ports
    );
    format!(
        "d{:012x}",
        crate::dataplane::nftables::desired::fnv1a(text.as_bytes()) >> 16
    )
}

/// The match of a `domains` peer of rule `r` (egress only: the pod is the
/// source), recording its set.
pub fn peer_match(objs: &mut DnsObjects, policy: &ObjectKey, r: &CRule) -> Vec<Vec<Stmt>> {
    let name = rule_set_name(policy, r);
    objs.sets.insert(name.clone());
    vec![vec![eq(
        concat(vec![addr_field(false, false), addr_field(false, true)]),
        set_ref(&name),
    )]]
}

/// The `domains` rules that apply to the egress of the endpoint at `ip`, in
/// evaluation order (empty for an address the program does not know).
pub fn domain_rules(program: &Program, ip: IpAddr) -> Vec<DomainRule> {
    let Some(ep) = program.endpoints.get(&ip) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ct in &ep.egress {
        for &pi in &ct.policies {
            let p = &program.policies[pi as usize];
            let (start, end) = p.egress;
            for r in &program.rules[start as usize..end as usize] {
                let patterns: Vec<DomainPattern> = r
                    .peers
                    .iter()
                    .flat_map(|pe| pe.domains.iter().cloned())
                    .collect();
                if patterns.is_empty() || r.action != Action::Allow {
                    continue;
                }
                let set = rule_set_name(&p.key, r);
                if out.iter().any(|d: &DomainRule| d.set == set) {
                    continue;
                }
                out.push(DomainRule {
                    set,
                    policy: p.key.to_string(),
                    index: r.index,
                    patterns,
                });
            }
        }
    }
    out
}

/// Completes `objs` with the local pods that need the proxy.
pub fn finish(objs: &mut DnsObjects, program: &Program, endpoints: &[LocalEndpoint]) {
    objs.clients = endpoints
        .iter()
        .filter_map(|e| match e.ip {
            IpAddr::V4(v4) if !domain_rules(program, e.ip).is_empty() => Some(v4),
            _ => None,
        })
        .collect();
    if objs.port == 0 {
        objs.port = DEFAULT_PORT;
    }
}

fn rule(statements: Vec<Stmt>, comment: &str) -> PolicyRule {
    PolicyRule {
        statements,
        comment: Some(comment.to_string()),
    }
}

fn tcp_udp() -> Stmt {
    eq(meta(MetaKey::L4proto), anon_set(vec![s("tcp"), s("udp")]))
}

fn set_mark_to(mark: u32) -> Stmt {
    Statement::Mangle(Mangle {
        key: meta(MetaKey::Mark),
        value: num(mark),
    })
}

fn socket_transparent() -> Stmt {
    eq(
        Expression::Named(NamedExpression::Socket(Socket {
            key: std::borrow::Cow::Owned(SocketAttr::Transparent),
        })),
        num(1),
    )
}

/// Adds the DNS sets, the steering and the output rule to `out`.
pub fn objects(d: &DnsObjects, out: &mut PolicyObjects) {
    for name in &d.sets {
        out.sets.insert(
            name.clone(),
            NamedSet {
                set_type: SetTypeValue::Concatenated(std::borrow::Cow::Owned(vec![
                    SetType::Ipv4Addr,
                    SetType::Ipv4Addr,
                ])),
                flags: vec![SetFlag::Timeout],
                timeout: None,
                elements: Vec::new(),
            },
        );
    }
    if d.clients.is_empty() {
        return;
    }
    out.sets.insert(
        CLIENTS_SET.to_string(),
        NamedSet {
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            flags: vec![],
            timeout: None,
            elements: d.clients.iter().map(|a| addr(IpAddr::V4(*a))).collect(),
        },
    );
    let from_client = || {
        vec![
            ifname_is(false, "veil*", true),
            eq(addr_field(false, false), set_ref(CLIENTS_SET)),
            tcp_udp(),
            dport(num(53)),
        ]
    };
    let mut pre = vec![
        rule(
            vec![
                tcp_udp(),
                eq(payload("th", "sport"), num(53)),
                socket_transparent(),
                set_mark_to(MARK_TPROXY),
                Statement::Accept(None),
            ],
            "answers to the DNS proxy's upstream sockets",
        ),
        rule(
            vec![
                l4proto(veil_policy::model::Protocol::Tcp),
                dport(num(53)),
                socket_transparent(),
                set_mark_to(MARK_TPROXY),
                Statement::Accept(None),
            ],
            "pods' DNS over TCP to the proxy's connections",
        ),
    ];
    let mut r = from_client();
    r.push(jump(DISPATCH_EGRESS));
    pre.push(rule(r, "pods' DNS: their egress policy first"));
    let mut r = from_client();
    r.extend([
        set_mark_to(MARK_TPROXY),
        Statement::TProxy(TProxy {
            family: Some("ip".into()),
            port: d.port,
            addr: None,
        }),
        Statement::Accept(None),
    ]);
    pre.push(rule(r, "pods' DNS to the DNS proxy"));
    let mut r = from_client();
    r.extend([counter(), drop()]);
    pre.push(rule(r, PROXY_DOWN));
    // DNS steering comes first in `prerouting`: the L7 proxy's steering
    // (tproxy.rs) may already be there, and port 53 is never proxied as HTTP.
    let hook = out.hooks.entry(PolicyHook::Prerouting).or_default();
    pre.append(hook);
    *hook = pre;
    out.hooks.entry(PolicyHook::Output).or_default().push(rule(
        vec![mark_is_set(MARK_UPSTREAM), jump(DISPATCH_INGRESS)],
        "DNS proxy's upstream queries: the resolver's ingress policy",
    ));
}

/// Set names by the policy rules they belong to (for `veilctl dns`).
pub fn rules_by_set(program: &Program) -> BTreeMap<String, DomainRule> {
    let mut out = BTreeMap::new();
    for ip in program.endpoints.keys() {
        for r in domain_rules(program, *ip) {
            out.entry(r.set.clone()).or_insert(r);
        }
    }
    out
}

#[cfg(test)]
mod tests;
