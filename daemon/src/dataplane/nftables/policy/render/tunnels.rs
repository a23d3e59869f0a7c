//! Two parts of the renderer kept apart for size: nodes' tunnel addresses
//! matched as their nodes' addresses, and the rules of an endpoint chain.

use std::collections::BTreeSet;
use std::net::IpAddr;

use veil_policy::net::Cidr;

use super::super::cache::{SetUse, TierWalk};
use super::super::chains::*;
use super::super::{Element, SetKind, SetSpec, MARK_ALLOW, MARK_PASS, NODE_TUNNELS};
use super::{fnv, Renderer};

impl Renderer<'_> {
    /// Nodes' tunnel addresses stand for their nodes' addresses: the
    /// networks' alternative `v` must not match a tunnel address by itself
    /// (guarded by `!= @node-tunnels` when one lies in the networks), and an
    /// alternative matches the tunnel addresses of the nodes whose address
    /// the networks hold.
    pub(super) fn tunnel_conds(
        &mut self,
        v: &mut Vec<Stmt>,
        alts: &mut Vec<Vec<Stmt>>,
        dst: bool,
        nets: &[Cidr],
        not: &[Cidr],
    ) {
        let ok = |a: IpAddr| {
            (nets.is_empty() || nets.iter().any(|c| c.contains(a)))
                && !not.iter().any(|c| c.contains(a))
        };
        if self.tunnels.values().any(|&t| ok(t)) {
            let all: BTreeSet<Element> = self
                .tunnels
                .values()
                .filter(|t| t.is_ipv4())
                .map(|t| Element::Addr(*t))
                .collect();
            self.fixed_set(
                NODE_TUNNELS,
                SetSpec {
                    kind: SetKind::Addr4,
                    elements: all,
                },
            );
            v.push(matches(
                addr_field(false, dst),
                nftables::stmt::Operator::NEQ,
                set_ref(NODE_TUNNELS),
            ));
        }
        let as_node: BTreeSet<Element> = self
            .tunnels
            .iter()
            .filter(|(n, t)| t.is_ipv4() && ok(**n))
            .map(|(_, t)| Element::Addr(*t))
            .collect();
        if !as_node.is_empty() {
            let key: Vec<String> = as_node.iter().map(|e| format!("{e:?}")).collect();
            let name = format!("t{:012x}", fnv(&key.join(",")) >> 16);
            self.fixed_set(
                &name,
                SetSpec {
                    kind: SetKind::Addr4,
                    elements: as_node,
                },
            );
            alts.push(vec![eq(addr_field(false, dst), set_ref(&name))]);
        }
    }

    /// A set whose members are given (recorded for the policy's cache entry).
    pub(super) fn fixed_set(&mut self, name: &str, spec: SetSpec) {
        if let Some(r) = &mut self.recording {
            r.push(SetUse::Fixed(name.to_string(), spec.clone()));
        }
        self.out.sets.insert(name.to_string(), spec);
    }
}

/// The rules of an endpoint chain walking `walk`: per tier, clear the PASS
/// bit (and ALLOW once, first), jump to each policy chain while PASS is clear,
/// return once ALLOW is set, and end with the tier's deny chain if any.
pub(super) fn walk_rules(walk: &[TierWalk]) -> Vec<Vec<Stmt>> {
    let mut rules = vec![vec![clear_mark(MARK_ALLOW | MARK_PASS)]];
    for (i, (chains, deny)) in walk.iter().enumerate() {
        if i > 0 {
            rules.push(vec![clear_mark(MARK_PASS)]);
        }
        for chain in chains {
            rules.push(vec![mark_clear(MARK_PASS), jump(chain)]);
            rules.push(vec![mark_is_set(MARK_ALLOW), ret()]);
        }
        if let Some(deny) = deny {
            rules.push(vec![mark_clear(MARK_PASS), goto(deny)]);
        }
    }
    rules
}
