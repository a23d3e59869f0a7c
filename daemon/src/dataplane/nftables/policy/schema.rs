//! [`RenderedPolicy`] as the table manager's [`PolicyObjects`]: typed sets,
//! verdict maps, chains and forward-hook rules of the `inet veil` table.

use std::borrow::Cow;

use nftables::expr::{Expression, NamedExpression, Prefix, Verdict};
use nftables::schema::{SetFlag, SetType, SetTypeValue};
use nftables::stmt::{JumpTarget, Statement};

use super::chains::{addr, concat, num, proto_name, s, Expr};
use super::{Element, RenderedPolicy, SetKind, LOG_SUPPRESSED, UNPROGRAMMED};
use crate::dataplane::nftables::desired::{
    NamedSet, NamedVerdictMap, PolicyChain, PolicyHook, PolicyObjects, PolicyRule,
};

/// One element as an expression, in the form `nft` prints it back.
pub fn element_expr(e: &Element) -> Expr {
    match e {
        Element::Addr(a) => addr(*a),
        Element::Net(c) => Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(addr(c.addr())),
            len: u32::from(c.prefix()),
        })),
        Element::NamedPort(a, p, port) => {
            concat(vec![addr(*a), s(proto_name(*p)), num(u32::from(*port))])
        }
    }
}

fn set_type(kind: SetKind) -> (SetTypeValue<'static>, Vec<SetFlag>) {
    match kind {
        SetKind::Addr4 => (SetTypeValue::Single(SetType::Ipv4Addr), vec![]),
        SetKind::Net4 => (
            SetTypeValue::Single(SetType::Ipv4Addr),
            vec![SetFlag::Interval],
        ),
        SetKind::Net6 => (
            SetTypeValue::Single(SetType::Ipv6Addr),
            vec![SetFlag::Interval],
        ),
        SetKind::NamedPort4 => (
            SetTypeValue::Concatenated(Cow::Owned(vec![
                SetType::Ipv4Addr,
                SetType::InetProto,
                SetType::InetService,
            ])),
            vec![],
        ),
    }
}

fn has_counter(rule: &[Statement<'static>]) -> bool {
    rule.iter().any(|s| matches!(s, Statement::Counter(_)))
}

/// Chain `name` of `rules`, each rule hashed once. A rule with a counter
/// is commented for what it counts: pods not programmed yet in the dispatch
/// chains, log entries over the rate limit elsewhere.
pub fn chain_of(name: &str, rules: Vec<Vec<Statement<'static>>>) -> PolicyChain {
    let dispatch = name == super::DISPATCH_EGRESS || name == super::DISPATCH_INGRESS;
    PolicyChain::new(
        rules
            .into_iter()
            .map(|r| PolicyRule {
                comment: has_counter(&r).then(|| {
                    if dispatch {
                        UNPROGRAMMED
                    } else {
                        LOG_SUPPRESSED
                    }
                    .to_string()
                }),
                statements: r,
            })
            .collect(),
    )
}

/// The objects of `p` for the table manager.
pub fn objects(p: &RenderedPolicy) -> PolicyObjects {
    let mut out = PolicyObjects::default();
    for (name, spec) in &p.sets {
        let (set_type, flags) = set_type(spec.kind);
        out.sets.insert(
            name.clone(),
            NamedSet {
                set_type,
                flags,
                timeout: None,
                elements: spec.elements.iter().map(element_expr).collect(),
            },
        );
    }
    for (name, entries) in &p.maps {
        out.maps.insert(
            name.clone(),
            NamedVerdictMap {
                key_type: SetTypeValue::Single(SetType::Ifname),
                flags: vec![],
                elements: entries
                    .iter()
                    .map(|(ifname, chain)| {
                        (
                            s(ifname.clone()),
                            Expression::Verdict(Verdict::Goto(JumpTarget {
                                target: Cow::Owned(chain.clone()),
                            })),
                        )
                    })
                    .collect(),
            },
        );
    }
    for (name, chain) in &p.chains {
        out.chains.insert(name.clone(), chain.clone());
    }
    super::tproxy::add_objects(&p.steering, &mut out);
    if !p.forward.is_empty() {
        out.hooks.insert(
            PolicyHook::Forward,
            p.forward
                .iter()
                .map(|r| PolicyRule {
                    statements: r.clone(),
                    comment: None,
                })
                .collect(),
        );
    }
    super::dns::objects(&p.dns, &mut out);
    out
}
