//! Steering to the L7 proxy: the rules that send exactly the new TCP
//! connections whose deciding rule has `http` (egress side, ingress side or
//! both) to veild's transparent HTTP proxy, and keep every later packet of
//! those connections (both legs) on the node's own stack.
//!
//! Layout, in the `prerouting` hook chain (filter, priority mangle; rule 1
//! from the first render with an `http` rule in the cluster on, even after
//! the last one is removed, so that connections being proxied then go on
//! until they close; rule 2 while the cluster has `http` rules; the others
//! while a local endpoint has one in its chains):
//!
//! 1. `ct mark & CT_STEERED` → `meta mark |= FWMARK_LOCAL`, accept: packets
//!    of a connection already steered (the client's leg) or opened by the
//!    proxy (its upstream leg, marked in `output` from the socket's
//!    `SO_MARK`) are delivered locally through route table [`ROUTE_TABLE`]
//!    (`fwmark FWMARK_LOCAL lookup ROUTE_TABLE`, `local 0.0.0.0/0 dev lo`).
//! 2. A pod's packet carrying the DSCP [`DSCP_PROXIED`] has it cleared: only
//!    a proxy may claim that a connection was already checked.
//! 3. New TCP connections jump to [`CLASSIFY`] when the source is a local
//!    pod whose egress chain has an `http` rule (set [`SET_EGRESS`], by
//!    interface) or the destination a local pod whose ingress chain has one
//!    (set [`SET_INGRESS`], by address) and the connection does not come
//!    from another node's proxy (DSCP [`DSCP_PROXIED`] on `veil-wg`: one
//!    proxy does the work, the source's).
//! 4. [`CLASSIFY`] runs the renderer's own endpoint chains (egress by
//!    `iifname` through the dispatch map, ingress by address through
//!    [`MAP_INGRESS_ADDR`]): a denied connection is dropped and logged there,
//!    exactly as in `forward`. An `Allow` rule with `http` sets
//!    [`MARK_HTTP`] besides ALLOW; when either direction set it the
//!    connection is marked, `tproxy`'d to `127.0.0.1:`[`PROXY_PORT`] and
//!    accepted. When no listener takes it (veild down) it is refused with a
//!    TCP reset: steered connections are never passed unchecked.
//!
//! What it does not do: IPv6 (the pod network's policy sets are IPv4), and
//! the routing rule and table (veild's `l7` module adds them at start).

use crate::dataplane::nftables::PolicyChain;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use nftables::expr::{
    BinaryOperation, Expression, Fib, FibFlag, FibResult, MetaKey, NamedExpression, Verdict, CT,
};
use nftables::schema::{SetType, SetTypeValue};
use nftables::stmt::{JumpTarget, Mangle, Operator, Reject, RejectType, Statement, TProxy};
use veil_policy::compile::{ChainTier, Program};

use super::chains::{
    addr, clear_mark, counter, drop, eq, ifname_is, ifname_vmap, jump, mark_is_set, matches, meta,
    num, payload, s, set_mark, set_ref, Stmt,
};
use super::{LocalEndpoint, MAP_EGRESS, MARK_ALLOW, MARK_PASS, OPEN_CHAIN};
use crate::dataplane::nftables::desired::{
    NamedSet, NamedVerdictMap, PolicyHook, PolicyObjects, PolicyRule,
};

/// Mark bit: an `Allow` rule with `http` decided the current direction.
pub const MARK_HTTP: u32 = 0x0100_0000;
/// Mark bit: a direction of this connection has an `http` deciding rule.
pub const MARK_STEER: u32 = 0x0200_0000;
/// Mark bit: deliver locally (the fwmark of the proxy's routing rule).
pub const FWMARK_LOCAL: u32 = 0x0400_0000;
/// `SO_MARK` of the proxy's upstream sockets (copied to the conntrack mark).
pub const MARK_UPSTREAM: u32 = 0x0800_0000;
/// Conntrack mark bit of steered and upstream connections.
pub const CT_STEERED: u32 = 0x0100_0000;
/// The routing table holding `local 0.0.0.0/0 dev lo` (also the rule's
/// priority).
pub const ROUTE_TABLE: u32 = 7331;
/// The proxy's listener port (on 127.0.0.1, `IP_TRANSPARENT`).
pub const PROXY_PORT: u16 = 15001;
/// DSCP of the proxy's upstream connections: checked by the source's node.
pub const DSCP_PROXIED: u32 = 0x2d;
/// Chain evaluating a candidate connection.
pub const CLASSIFY: &str = "l7-classify";
/// Chain running the source's egress endpoint chain.
pub const EGRESS_EVAL: &str = "l7-egress";
/// Interfaces of local pods whose egress chain has an `http` rule.
pub const SET_EGRESS: &str = "l7-egress-pods";
/// Addresses of local pods whose ingress chain has an `http` rule.
pub const SET_INGRESS: &str = "l7-ingress-pods";
/// Local pod address → `jump` its ingress endpoint chain.
pub const MAP_INGRESS_ADDR: &str = "l7-ingress-chains";

/// What the steering needs from a render.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steering {
    /// Interfaces of local pods whose egress chain has an `http` rule.
    pub egress: BTreeSet<String>,
    /// Addresses of local pods whose ingress chain has an `http` rule.
    pub ingress: BTreeSet<Ipv4Addr>,
    /// Every dispatched local pod's address → its ingress chain.
    pub ingress_chains: BTreeMap<Ipv4Addr, String>,
    /// Whether any rule of the cluster's program has `http`.
    pub any_http: bool,
    /// Whether connections steered under an earlier program may still be
    /// open (an earlier render through the same cache had `http` rules):
    /// their packets are still kept on the node's stack.
    pub keep_proxied: bool,
}

/// Records in `seen` (the render cache's memory) whether `st` has `http`
/// rules, and keeps the proxied connections' rules in `st` once any render
/// had them: removing the last `http` rule then stops steering new
/// connections, and those being proxied go on through the proxy until they
/// close.
pub fn remember(seen: &mut bool, st: &mut Steering) {
    *seen |= st.any_http;
    st.keep_proxied = *seen;
}

impl Steering {
    /// Whether nothing is steered on this node.
    pub fn is_empty(&self) -> bool {
        self.egress.is_empty() && self.ingress.is_empty()
    }
}

fn has_http(program: &Program, chain: &[ChainTier]) -> bool {
    chain.iter().any(|ct| {
        ct.rules.iter().any(|&(a, b)| {
            program.rules[a as usize..b as usize]
                .iter()
                .any(|r| r.http.is_some())
        })
    })
}

/// The steering of a render: `maps` are the renderer's dispatch maps
/// (`ifname` → endpoint chain) and `ingress_map` the name of its ingress one.
pub fn steering(
    program: &Program,
    endpoints: &[LocalEndpoint],
    maps: &BTreeMap<String, BTreeMap<String, String>>,
    ingress_map: &str,
) -> Steering {
    let mut out = Steering {
        any_http: program.rules.iter().any(|r| r.http.is_some()),
        ..Steering::default()
    };
    if !out.any_http {
        return out;
    }
    let ingress = maps.get(ingress_map);
    for ep in endpoints {
        let IpAddr::V4(ip) = ep.ip else { continue };
        let Some(chain) = ingress.and_then(|m| m.get(&ep.ifname)) else {
            continue;
        };
        if chain != OPEN_CHAIN {
            out.ingress_chains.insert(ip, chain.clone());
        }
        let Some(prog) = program.endpoints.get(&ep.ip).or_else(|| {
            let pod = ep.pod.as_ref()?;
            program.endpoints.values().find(|e| &e.pod == pod)
        }) else {
            continue;
        };
        if has_http(program, &prog.egress) {
            out.egress.insert(ep.ifname.clone());
        }
        if has_http(program, &prog.ingress) {
            out.ingress.insert(ip);
        }
    }
    out
}

fn ct_mark() -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed("mark"),
        family: None,
        dir: None,
    }))
}

fn ct_mark_is_set(bit: u32) -> Stmt {
    eq(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(ct_mark(), num(bit)))),
        num(bit),
    )
}

fn set_ct_mark(bit: u32) -> Stmt {
    Statement::Mangle(Mangle {
        key: ct_mark(),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            ct_mark(),
            num(bit),
        ]))),
    })
}

fn tcp() -> Stmt {
    eq(meta(MetaKey::L4proto), s("tcp"))
}

fn dscp(v: u32) -> Stmt {
    eq(payload("ip", "dscp"), num(v))
}

fn from_pod() -> [Stmt; 2] {
    [
        ifname_is(false, "veil*", true),
        ifname_is(false, "veil-wg", false),
    ]
}

fn rule(statements: Vec<Stmt>, comment: &str) -> PolicyRule {
    PolicyRule {
        statements,
        comment: Some(comment.to_string()),
    }
}

/// Adds the steering's sets, map, chains and hook rules to `out` (nothing
/// when nothing is steered).
pub fn add_objects(st: &Steering, out: &mut PolicyObjects) {
    if st.any_http || st.keep_proxied {
        add_keep(out);
    }
    if st.any_http {
        add_base(out);
    }
    if st.is_empty() {
        return;
    }
    out.sets.insert(
        SET_EGRESS.to_string(),
        NamedSet {
            set_type: SetTypeValue::Single(SetType::Ifname),
            flags: vec![],
            timeout: None,
            elements: st.egress.iter().map(|i| s(i.clone())).collect(),
        },
    );
    out.sets.insert(
        SET_INGRESS.to_string(),
        NamedSet {
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            flags: vec![],
            timeout: None,
            elements: st.ingress.iter().map(|a| addr(IpAddr::V4(*a))).collect(),
        },
    );
    out.maps.insert(
        MAP_INGRESS_ADDR.to_string(),
        NamedVerdictMap {
            key_type: SetTypeValue::Single(SetType::Ipv4Addr),
            flags: vec![],
            elements: st
                .ingress_chains
                .iter()
                .map(|(a, c)| {
                    (
                        addr(IpAddr::V4(*a)),
                        Expression::Verdict(Verdict::Jump(JumpTarget {
                            target: Cow::Owned(c.clone()),
                        })),
                    )
                })
                .collect(),
        },
    );
    // The source's egress: the renderer's dispatch map `goto`s the endpoint
    // chain, whose return comes back to CLASSIFY. A pod interface not in
    // the map is not programmed yet: dropped, as `forward` would.
    let [pod, not_wg] = from_pod();
    out.chains.insert(
        EGRESS_EVAL.to_string(),
        PolicyChain::new(vec![
            rule(
                vec![ifname_vmap(false, MAP_EGRESS)],
                "egress of the source pod",
            ),
            rule(vec![counter(), drop()], "pod not programmed yet"),
        ]),
    );
    let steer = |comment| rule(vec![mark_is_set(MARK_HTTP), set_mark(MARK_STEER)], comment);
    out.chains.insert(
        CLASSIFY.to_string(),
        PolicyChain::new(vec![
            rule(
                vec![
                    eq(
                        Expression::Named(NamedExpression::Fib(Fib {
                            result: FibResult::Type,
                            flags: [FibFlag::Daddr].into_iter().collect(),
                        })),
                        s("local"),
                    ),
                    Statement::Return(None),
                ],
                "a pod and its own node: always allowed, never proxied",
            ),
            rule(
                vec![clear_mark(MARK_ALLOW | MARK_PASS | MARK_HTTP | MARK_STEER)],
                "fresh evaluation",
            ),
            rule(vec![pod, not_wg, jump(EGRESS_EVAL)], "source pod's egress"),
            steer("egress decided by an http rule"),
            rule(
                vec![clear_mark(MARK_ALLOW | MARK_PASS | MARK_HTTP)],
                "fresh ingress evaluation",
            ),
            rule(
                vec![Statement::VerdictMap(nftables::stmt::VerdictMap {
                    key: payload("ip", "daddr"),
                    data: set_ref(MAP_INGRESS_ADDR),
                })],
                "destination pod's ingress",
            ),
            steer("ingress decided by an http rule"),
            rule(
                vec![
                    tcp(),
                    mark_is_set(MARK_STEER),
                    set_mark(FWMARK_LOCAL),
                    set_ct_mark(CT_STEERED),
                    Statement::TProxy(TProxy {
                        family: Some(Cow::Borrowed("ip")),
                        port: PROXY_PORT,
                        addr: Some(Cow::Borrowed("127.0.0.1")),
                    }),
                    Statement::Accept(None),
                ],
                "to the L7 proxy",
            ),
            rule(
                vec![
                    tcp(),
                    mark_is_set(MARK_STEER),
                    counter(),
                    Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
                ],
                "L7 proxy down: refused",
            ),
            rule(
                vec![clear_mark(MARK_ALLOW | MARK_PASS | MARK_HTTP | MARK_STEER)],
                "not steered: forward decides",
            ),
        ]),
    );
    out.hooks
        .entry(PolicyHook::Prerouting)
        .or_default()
        .extend([
            rule(
                vec![
                    eq(meta(MetaKey::Iifname), set_ref(SET_EGRESS)),
                    tcp(),
                    ct_new(),
                    jump(CLASSIFY),
                ],
                "new connection of a pod with egress http rules",
            ),
            rule(
                vec![
                    eq(payload("ip", "daddr"), set_ref(SET_INGRESS)),
                    tcp(),
                    ct_new(),
                    matches(payload("ip", "dscp"), Operator::NEQ, num(DSCP_PROXIED)),
                    jump(CLASSIFY),
                ],
                "new connection to a pod with ingress http rules, unless a proxy checked it",
            ),
        ]);
}

/// The rules a node holds while connections may be proxied (any policy of
/// the cluster has `http`, or had it since veild started): the proxy's
/// connections, both legs, stay on the node's stack until they close.
fn add_keep(out: &mut PolicyObjects) {
    out.hooks.insert(
        PolicyHook::Prerouting,
        vec![rule(
            vec![
                ct_mark_is_set(CT_STEERED),
                set_mark(FWMARK_LOCAL),
                Statement::Accept(None),
            ],
            "L7 proxy connections stay on the node",
        )],
    );
    out.hooks.insert(
        PolicyHook::Output,
        vec![rule(
            vec![mark_is_set(MARK_UPSTREAM), set_ct_mark(CT_STEERED)],
            "the L7 proxy's upstream connections",
        )],
    );
}

/// The rules every node holds while any policy of the cluster has `http`:
/// nothing but a proxy sends the DSCP [`DSCP_PROXIED`] to another node.
fn add_base(out: &mut PolicyObjects) {
    let [pod, not_wg] = from_pod();
    let clear_dscp = || {
        Statement::Mangle(Mangle {
            key: payload("ip", "dscp"),
            value: num(0),
        })
    };
    out.hooks
        .entry(PolicyHook::Prerouting)
        .or_default()
        .push(rule(
            vec![pod, not_wg, dscp(DSCP_PROXIED), clear_dscp()],
            "only a proxy claims a checked connection",
        ));
    out.hooks
        .entry(PolicyHook::Output)
        .or_default()
        .extend([rule(
            vec![
                eq(meta(MetaKey::Oifname), s("veil-wg")),
                eq(
                    Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                        meta(MetaKey::Mark),
                        num(MARK_UPSTREAM),
                    ))),
                    num(0),
                ),
                dscp(DSCP_PROXIED),
                clear_dscp(),
            ],
            "only a proxy claims a checked connection",
        )]);
}

fn ct_new() -> Stmt {
    matches(
        Expression::Named(NamedExpression::CT(CT {
            key: Cow::Borrowed("state"),
            family: None,
            dir: None,
        })),
        Operator::IN,
        s("new"),
    )
}

#[cfg(test)]
mod tests;
