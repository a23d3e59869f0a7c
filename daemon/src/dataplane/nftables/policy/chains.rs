//! Small constructors of nftables statements and expressions (typed JSON of
//! the `nftables` crate), so that the renderer reads like the rules it writes.

use std::borrow::Cow;
use std::net::IpAddr;

use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Range,
    SetItem,
};
use nftables::stmt::{
    Counter, JumpTarget, Limit, Log, Mangle, Match, Operator, Statement, VerdictMap,
};
use veil_policy::model::Protocol;

pub(crate) type Stmt = Statement<'static>;
pub(crate) type Expr = Expression<'static>;

pub(crate) fn s(v: impl Into<String>) -> Expr {
    Expression::String(Cow::Owned(v.into()))
}

pub(crate) fn num(n: u32) -> Expr {
    Expression::Number(n)
}

pub(crate) fn set_ref(name: &str) -> Expr {
    s(format!("@{name}"))
}

pub(crate) fn meta(key: MetaKey) -> Expr {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(crate) fn payload(protocol: &'static str, field: &'static str) -> Expr {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

pub(crate) fn anon_set(items: Vec<Expr>) -> Expr {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

pub(crate) fn concat(items: Vec<Expr>) -> Expr {
    Expression::Named(NamedExpression::Concat(items))
}

pub(crate) fn range(lo: u32, hi: u32) -> Expr {
    if lo == hi {
        num(lo)
    } else {
        Expression::Range(Box::new(Range {
            range: [num(lo), num(hi)],
        }))
    }
}

pub(crate) fn matches(left: Expr, op: Operator, right: Expr) -> Stmt {
    Statement::Match(Match { left, right, op })
}

pub(crate) fn eq(left: Expr, right: Expr) -> Stmt {
    matches(left, Operator::EQ, right)
}

/// The address field of the peer: `ip daddr`, `ip6 saddr`, ...
pub(crate) fn addr_field(v6: bool, dst: bool) -> Expr {
    let proto = if v6 { "ip6" } else { "ip" };
    payload(proto, if dst { "daddr" } else { "saddr" })
}

/// `meta l4proto <p>` (ICMP means ICMP and ICMPv6).
pub(crate) fn l4proto(p: Protocol) -> Stmt {
    match p {
        Protocol::Icmp => eq(
            meta(MetaKey::L4proto),
            anon_set(vec![s("icmp"), s("ipv6-icmp")]),
        ),
        other => eq(meta(MetaKey::L4proto), s(proto_name(other))),
    }
}

/// `meta l4proto { tcp, udp, sctp }`: the protocols with ports.
pub(crate) fn l4proto_ported() -> Stmt {
    eq(
        meta(MetaKey::L4proto),
        anon_set(vec![s("tcp"), s("udp"), s("sctp")]),
    )
}

pub(crate) fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
        Protocol::Icmp => "icmp",
    }
}

/// `th dport <ports>`.
pub(crate) fn dport(ports: Expr) -> Stmt {
    eq(payload("th", "dport"), ports)
}

fn mark_and(mask: u32) -> Expr {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(
        meta(MetaKey::Mark),
        num(mask),
    )))
}

/// `meta mark & bit == 0`.
pub(crate) fn mark_clear(bit: u32) -> Stmt {
    eq(mark_and(bit), num(0))
}

/// `meta mark & bit == bit`.
pub(crate) fn mark_is_set(bit: u32) -> Stmt {
    eq(mark_and(bit), num(bit))
}

/// `meta mark set meta mark | bit`.
pub(crate) fn set_mark(bit: u32) -> Stmt {
    Statement::Mangle(Mangle {
        key: meta(MetaKey::Mark),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            meta(MetaKey::Mark),
            num(bit),
        ]))),
    })
}

/// `meta mark set meta mark & !bits`.
pub(crate) fn clear_mark(bits: u32) -> Stmt {
    Statement::Mangle(Mangle {
        key: meta(MetaKey::Mark),
        value: mark_and(!bits),
    })
}

pub(crate) fn jump(chain: &str) -> Stmt {
    Statement::Jump(JumpTarget {
        target: Cow::Owned(chain.to_string()),
    })
}

pub(crate) fn goto(chain: &str) -> Stmt {
    Statement::Goto(JumpTarget {
        target: Cow::Owned(chain.to_string()),
    })
}

pub(crate) fn ret() -> Stmt {
    Statement::Return(None)
}

pub(crate) fn drop() -> Stmt {
    Statement::Drop(None)
}

pub(crate) fn counter() -> Stmt {
    Statement::Counter(Counter::Anonymous(None))
}

/// `counter name <name>`.
pub(crate) fn named_counter(name: &str) -> Stmt {
    Statement::Counter(Counter::Named(Cow::Owned(name.to_string())))
}

pub(crate) fn limit(rate_per_second: u32, burst: u32) -> Stmt {
    Statement::Limit(Limit {
        rate: rate_per_second,
        rate_unit: None,
        per: Some(Cow::Borrowed("second")),
        burst: Some(burst),
        burst_unit: None,
        inv: None,
    })
}

pub(crate) fn nflog(group: u32, prefix: &str) -> Stmt {
    let mut l = Log::new(Some(group));
    l.prefix = Some(Cow::Owned(prefix.to_string()));
    Statement::Log(Some(l))
}

/// `<iifname|oifname> vmap @map`.
pub(crate) fn ifname_vmap(ingress: bool, map: &str) -> Stmt {
    let key = meta(if ingress {
        MetaKey::Oifname
    } else {
        MetaKey::Iifname
    });
    Statement::VerdictMap(VerdictMap {
        key,
        data: set_ref(map),
    })
}

/// `<iifname|oifname> <pattern>` (a `*` wildcard at the end is allowed).
pub(crate) fn ifname_is(ingress: bool, pattern: &str, equal: bool) -> Stmt {
    let key = meta(if ingress {
        MetaKey::Oifname
    } else {
        MetaKey::Iifname
    });
    matches(
        key,
        if equal { Operator::EQ } else { Operator::NEQ },
        s(pattern),
    )
}

/// An address as a set element expression.
pub(crate) fn addr(ip: IpAddr) -> Expr {
    s(ip.to_string())
}
