//! [`PolicyObjects`] as `nftables` crate objects of the `inet veil` table:
//! declarations (sets, counters, chains), rules, and set elements, for the
//! manager to put into one `nft -j -f -` transaction.

use std::borrow::Cow;
use std::collections::HashSet;

use nftables::expr::{Expression, NamedExpression, Prefix};
use nftables::schema::{self, NfListObject, SetFlag, SetType, SetTypeValue};
use nftables::types::NfFamily;

use super::chains::{addr, concat, num, proto_name, s, Expr, Stmt};
use super::{Element, PolicyObjects, SetKind, SetSpec};

/// The table everything lives in.
pub const TABLE: &str = "veil";

/// The set declaration (without elements).
pub fn set_decl(name: &str, spec: &SetSpec) -> schema::Set<'static> {
    let (set_type, interval) = match spec.kind {
        SetKind::Addr4 => (SetTypeValue::Single(SetType::Ipv4Addr), false),
        SetKind::Net4 => (SetTypeValue::Single(SetType::Ipv4Addr), true),
        SetKind::Net6 => (SetTypeValue::Single(SetType::Ipv6Addr), true),
        SetKind::NamedPort4 => (
            SetTypeValue::Concatenated(Cow::Owned(vec![
                SetType::Ipv4Addr,
                SetType::InetProto,
                SetType::InetService,
            ])),
            false,
        ),
    };
    schema::Set {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name.to_string()),
        handle: None,
        set_type,
        policy: None,
        flags: interval.then(|| HashSet::from([SetFlag::Interval])),
        elem: None,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

/// One element as an expression.
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

/// An `element` object adding or deleting `elems` of set `name`.
pub fn elements<'e>(
    name: &str,
    elems: impl IntoIterator<Item = &'e Element>,
) -> Option<NfListObject<'static>> {
    let v: Vec<Expr> = elems.into_iter().map(element_expr).collect();
    if v.is_empty() {
        return None;
    }
    Some(NfListObject::Element(schema::Element {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name.to_string()),
        elem: Cow::Owned(v),
    }))
}

/// A regular chain declaration.
pub fn chain_decl(name: &str) -> schema::Chain<'static> {
    schema::Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name.to_string()),
        ..Default::default()
    }
}

/// A rule of `chain`.
pub fn rule(chain: &str, stmts: &[Stmt]) -> schema::Rule<'static> {
    schema::Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(stmts.to_vec()),
        handle: None,
        index: None,
        comment: None,
    }
}

/// A named counter declaration.
pub fn counter_decl(name: &str) -> schema::Counter<'static> {
    schema::Counter {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name.to_string()),
        handle: None,
        packets: None,
        bytes: None,
    }
}

/// Everything of `p` as `add` objects, in an order `nft` accepts: counters,
/// sets with their elements, chains, then the rules of every chain (jump
/// targets exist before the rules that name them). The `forward` rules are
/// not included: they belong to the base chain, which the table owns.
pub fn add_all(p: &PolicyObjects) -> Vec<NfListObject<'static>> {
    let mut out = Vec::new();
    for c in &p.counters {
        out.push(NfListObject::Counter(counter_decl(c)));
    }
    for (name, spec) in &p.sets {
        out.push(NfListObject::Set(Box::new(set_decl(name, spec))));
        out.extend(elements(name, &spec.elements));
    }
    for name in p.chains.keys() {
        out.push(NfListObject::Chain(chain_decl(name)));
    }
    for (name, rules) in &p.chains {
        for r in rules {
            out.push(NfListObject::Rule(rule(name, r)));
        }
    }
    out
}
