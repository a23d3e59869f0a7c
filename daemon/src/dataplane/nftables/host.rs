//! Host endpoint protection: the node's own service ports (veild's HTTP
//! port, the WireGuard port) are closed to pods unless a policy allows it,
//! as Calico's failsafe ports are open to the node's operators only.
//!
//! Rules at the top of the `input` base chain of `inet veil`:
//! - a packet from a local pod's interface (`veil*` but `veil-wg`) with the
//!   node's tunnel address as its source is dropped (no pod speaks as the node);
//! - a packet from a local pod to a protected port goes through the pod's
//!   egress policy ([`HOST_CHAIN`] jumps to the policy's egress dispatch with
//!   the ALLOW mark cleared) and is accepted only when a rule explicitly
//!   allowed it; otherwise it is counted and dropped. A pod with no policy, or
//!   whose policy is not in the kernel yet, does not reach them;
//! - through `veil-wg`, the tunnel address's protected ports take only the
//!   peers' tunnel addresses (the first host address of each node's pod CIDR,
//!   as `saddr & hostmask == 1`: pod CIDRs have one size in a cluster), so
//!   pods on other nodes do not reach the node-to-node API.
//!
//! It does not decide what the HTTP server serves to whom (that is
//! `crate::http::access`), nor protect the underlay address from other
//! machines (the operator's firewall does).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, SetItem,
};
use nftables::stmt::{Counter, JumpTarget, Mangle, Match, Operator, Statement};

use super::desired::{PolicyObjects, PolicyRule};
use super::policy::{DISPATCH_EGRESS, MARK_ALLOW};

/// The regular chain evaluating a local pod's egress policy for a packet to
/// the node itself.
pub const HOST_CHAIN: &str = "host-endpoint";

/// What the node protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProtection {
    /// The node's pod CIDR (its first host is the tunnel address).
    pub pod_cidr: IpNetwork,
    /// Protected TCP ports (veild's HTTP port).
    pub tcp_ports: Vec<u16>,
    /// Protected UDP ports (the WireGuard port).
    pub udp_ports: Vec<u16>,
}

type Stmt = Statement<'static>;
type Expr = Expression<'static>;

fn s(v: impl Into<String>) -> Expr {
    Expression::String(v.into().into())
}

fn meta(key: MetaKey) -> Expr {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expr {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn is(left: Expr, op: Operator, right: Expr) -> Stmt {
    Statement::Match(Match { left, right, op })
}

fn ports(p: &[u16]) -> Expr {
    Expression::Named(NamedExpression::Set(
        p.iter()
            .map(|p| SetItem::Element(Expression::Number(u32::from(*p))))
            .collect(),
    ))
}

fn mark_and(mask: u32) -> Expr {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(
        meta(MetaKey::Mark),
        Expression::Number(mask),
    )))
}

fn from_local_pod() -> Vec<Stmt> {
    vec![
        is(meta(MetaKey::Iifname), Operator::EQ, s("veil*")),
        is(meta(MetaKey::Iifname), Operator::NEQ, s("veil-wg")),
    ]
}

fn rule(statements: Vec<Stmt>, comment: &str) -> PolicyRule {
    PolicyRule {
        statements,
        comment: Some(comment.to_string()),
    }
}

/// The node's tunnel address and the host part mask of its pod CIDR.
fn tunnel_and_hostmask(cidr: IpNetwork) -> Option<(IpAddr, IpAddr, IpAddr)> {
    let IpNetwork::V4(v4) = cidr else { return None };
    let net = u32::from(v4.network());
    let hostmask = if v4.prefix() == 0 {
        u32::MAX
    } else {
        u32::MAX >> v4.prefix()
    };
    Some((
        IpAddr::V4((net + 1).into()),
        IpAddr::V4(hostmask.into()),
        IpAddr::V4(1u32.into()),
    ))
}

/// Rules prepended to the `input` base chain.
pub fn input_rules(h: &HostProtection) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    let tunnel = tunnel_and_hostmask(h.pod_cidr);
    if let Some((tunnel, _, _)) = tunnel {
        let mut st = from_local_pod();
        st.push(is(
            payload("ip", "saddr"),
            Operator::EQ,
            s(tunnel.to_string()),
        ));
        st.push(Statement::Drop(None));
        out.push(rule(st, "no pod speaks as the node's tunnel address"));
    }
    for (proto, list) in [("tcp", &h.tcp_ports), ("udp", &h.udp_ports)] {
        if list.is_empty() {
            continue;
        }
        let base = || {
            let mut st = from_local_pod();
            st.push(is(meta(MetaKey::L4proto), Operator::EQ, s(proto)));
            st.push(is(payload("th", "dport"), Operator::EQ, ports(list)));
            st
        };
        let mut jump = base();
        jump.push(Statement::Jump(JumpTarget {
            target: HOST_CHAIN.into(),
        }));
        out.push(rule(
            jump,
            "pods to the node's service ports: their egress policy decides",
        ));
        let mut allow = base();
        allow.push(is(
            mark_and(MARK_ALLOW),
            Operator::EQ,
            Expression::Number(MARK_ALLOW),
        ));
        allow.push(Statement::Accept(None));
        out.push(rule(
            allow,
            "pods to the node's service ports: allowed by a policy",
        ));
        let mut deny = base();
        deny.push(Statement::Counter(Counter::Anonymous(None)));
        deny.push(Statement::Drop(None));
        out.push(rule(
            deny,
            "pods to the node's service ports: no policy allows it",
        ));
        if let Some((tunnel, mask, first)) = tunnel {
            let st = vec![
                is(meta(MetaKey::Iifname), Operator::EQ, s("veil-wg")),
                is(payload("ip", "daddr"), Operator::EQ, s(tunnel.to_string())),
                is(meta(MetaKey::L4proto), Operator::EQ, s(proto)),
                is(payload("th", "dport"), Operator::EQ, ports(list)),
                is(
                    Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                        payload("ip", "saddr"),
                        s(mask.to_string()),
                    ))),
                    Operator::NEQ,
                    s(first.to_string()),
                ),
                Statement::Counter(Counter::Anonymous(None)),
                Statement::Drop(None),
            ];
            out.push(rule(
                st,
                "through veil-wg only peers' tunnel addresses reach the node API",
            ));
        }
    }
    out
}

/// The rules of [`HOST_CHAIN`]: clear ALLOW, then the pod's egress dispatch
/// when `policy` has one (without it nothing allows, so the packet drops).
pub fn chain_rules(policy: &PolicyObjects) -> Vec<PolicyRule> {
    let mut out = vec![rule(
        vec![Statement::Mangle(Mangle {
            key: meta(MetaKey::Mark),
            value: mark_and(!MARK_ALLOW),
        })],
        "a packet to the node starts unallowed",
    )];
    if policy.chains.contains_key(DISPATCH_EGRESS) {
        out.push(rule(
            vec![Statement::Jump(JumpTarget {
                target: DISPATCH_EGRESS.into(),
            })],
            "the pod's egress policy",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> HostProtection {
        HostProtection {
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
            tcp_ports: vec![9590],
            udp_ports: vec![51820],
        }
    }

    #[test]
    fn every_protected_protocol_gets_policy_then_allow_then_drop() {
        let rules = input_rules(&h());
        let comments: Vec<_> = rules.iter().map(|r| r.comment.clone().unwrap()).collect();
        assert_eq!(comments.len(), 1 + 2 * 4, "{comments:#?}");
        let json = serde_json::to_string(&rules.iter().map(|r| &r.statements).collect::<Vec<_>>())
            .unwrap();
        assert!(json.contains("\"10.244.2.1\""), "{json}");
        assert!(json.contains("\"0.0.0.255\""), "{json}");
        assert!(json.contains("9590") && json.contains("51820"));
    }

    #[test]
    fn without_a_policy_dispatch_nothing_allows() {
        assert_eq!(chain_rules(&PolicyObjects::default()).len(), 1);
        let mut p = PolicyObjects::default();
        p.chains.insert(DISPATCH_EGRESS.into(), Default::default());
        assert_eq!(chain_rules(&p).len(), 2);
    }
}
