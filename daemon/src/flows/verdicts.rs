//! Names the rules that allowed a connection, from its conntrack mark and
//! the dataplane's id table (`dataplane::nftables::policy::verdict_mark`).
//!
//! Only the directions this node evaluated are named: the egress of a local
//! pod source and the ingress of a local pod destination. A direction whose
//! field is empty while the mark's open bit is set had no policy selecting
//! its pod. A direction with neither (a connection older than the policy, or
//! a node without policy enforcement) is left unnamed. Does no IO.

use std::sync::Arc;

use veil_graph::{RuleRef, ALLOW_END_OF_TIERS, ALLOW_NO_POLICY, ALLOW_UNKNOWN_RULE};
use veil_policy::model::Direction;

use crate::dataplane::nftables::policy::prefix::kind_code;
use crate::dataplane::nftables::policy::verdict_mark::{open, Allowed, RuleIdTable};

fn dir_name(d: Direction) -> String {
    match d {
        Direction::Egress => "egress".into(),
        Direction::Ingress => "ingress".into(),
    }
}

/// The flow record's form of what allowed direction `d`.
pub fn rule_ref(a: &Allowed, d: Direction) -> RuleRef {
    let default = |kind: &str| RuleRef {
        tier: String::new(),
        kind: kind.to_string(),
        policy: None,
        rule: None,
        direction: dir_name(d),
    };
    match a {
        Allowed::Rule(r) => RuleRef {
            tier: r.tier.clone(),
            kind: kind_code(r.policy.kind).to_string(),
            policy: Some(r.policy.full_name()),
            rule: Some(r.rule),
            direction: dir_name(d),
        },
        Allowed::EndOfTiers => default(ALLOW_END_OF_TIERS),
        Allowed::NoPolicy => default(ALLOW_NO_POLICY),
        Allowed::Unknown(_) => default(ALLOW_UNKNOWN_RULE),
    }
}

/// What allowed each direction this node evaluated: `(egress, ingress)`.
/// `source_pod` / `destination_pod`: that end is a pod of this node.
pub fn allowed_by(
    table: &RuleIdTable,
    mark: u32,
    source_pod: bool,
    destination_pod: bool,
) -> (Option<Arc<RuleRef>>, Option<Arc<RuleRef>>) {
    let (e, i) = table.decode(mark);
    let name = |evaluated: bool, a: Option<Allowed>, d: Direction| {
        if !evaluated {
            return None;
        }
        let a = match a {
            Some(a) => a,
            None if open(mark) => Allowed::NoPolicy,
            None => return None,
        };
        Some(Arc::new(rule_ref(&a, d)))
    };
    (
        name(source_pod, e, Direction::Egress),
        name(destination_pod, i, Direction::Ingress),
    )
}

/// The record's `policy` text: each named rule, egress first.
pub fn policy_text(e: &Option<Arc<RuleRef>>, i: &Option<Arc<RuleRef>>) -> Option<Arc<str>> {
    let parts: Vec<String> = [e, i]
        .into_iter()
        .flatten()
        .map(|r| r.to_string())
        .collect();
    (!parts.is_empty()).then(|| Arc::from(parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::nftables::policy::verdict_mark::{
        RuleIds, CT_INGRESS_SHIFT, CT_OPEN, ID_END_OF_TIERS,
    };
    use veil_policy::model::{Kind, ObjectKey};

    fn table() -> (RuleIdTable, u16) {
        let mut ids = RuleIds::default();
        let id = ids.id(
            Direction::Ingress,
            "default",
            &ObjectKey {
                kind: Kind::K8sNetworkPolicy,
                namespace: Some("shop".into()),
                name: "allow-web".into(),
            },
            1,
        );
        (ids.table().clone(), id)
    }

    #[test]
    fn a_same_node_connection_names_both_directions() {
        let (t, id) = table();
        let mark = u32::from(ID_END_OF_TIERS) | (u32::from(id) << CT_INGRESS_SHIFT);
        let (e, i) = allowed_by(&t, mark, true, true);
        assert_eq!(
            e.as_deref().unwrap().to_string(),
            "default allow: every tier passed (egress)"
        );
        assert_eq!(
            i.as_deref().unwrap().to_string(),
            "default/knp:shop/allow-web#1 ingress"
        );
        assert_eq!(
            policy_text(&e, &i).as_deref(),
            Some("default allow: every tier passed (egress), default/knp:shop/allow-web#1 ingress")
        );
    }

    #[test]
    fn an_empty_field_with_the_open_bit_is_a_pod_no_policy_selects() {
        let (t, id) = table();
        let mark = CT_OPEN | (u32::from(id) << CT_INGRESS_SHIFT);
        let (e, i) = allowed_by(&t, mark, true, true);
        assert_eq!(e.as_deref().unwrap().kind, ALLOW_NO_POLICY);
        assert!(i.as_deref().unwrap().matches_policy("allow-web"));
        // Only the directions evaluated here are named.
        assert_eq!(allowed_by(&t, mark, false, true).0, None);
        // No stamp at all: nothing is claimed.
        assert_eq!(allowed_by(&t, 0, true, true), (None, None));
    }
}
