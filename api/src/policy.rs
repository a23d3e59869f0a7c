//! The answer of `policy.list`: the tiers and policies of a node's compiled
//! policy program, with the generation they belong to. Field names are
//! camelCase on the wire. It does not carry the rules themselves (only their
//! number) nor the policy errors (those are in `node.status`).

use serde::{Deserialize, Serialize};

/// What `policy.list` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyList {
    /// Node name.
    pub node: String,
    /// Generation of the program these tiers and policies belong to.
    pub generation: u64,
    /// Every tier, in order.
    pub tiers: Vec<TierEntry>,
    /// Every policy in force, in evaluation order (tier, then policy order).
    pub policies: Vec<PolicyEntry>,
}

/// One tier of the program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierEntry {
    /// Name.
    pub name: String,
    /// Position among tiers (ascending).
    pub order: u32,
    /// What applies when no rule of the tier decides (`Pass`, `Deny`, ...).
    pub default_action: String,
}

/// One policy in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntry {
    /// Name of its tier.
    pub tier: String,
    /// Order of its tier.
    pub tier_order: u32,
    /// Position in the program's evaluation order (0-based).
    pub position: u32,
    /// Kind (`NetworkPolicy`, `AdminNetworkPolicy`, ...).
    pub kind: String,
    /// API group of the kind.
    pub group: String,
    /// Namespace, for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Number of ingress rules.
    pub ingress_rules: u32,
    /// Number of egress rules.
    pub egress_rules: u32,
    /// Number of this node's endpoints it selects (in either direction).
    pub local_endpoints: u32,
}

impl PolicyEntry {
    /// `namespace/name` or `name`.
    pub fn full_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_list_is_camel_case_and_omits_a_missing_namespace() {
        let l = PolicyList {
            node: "n".into(),
            generation: 4,
            tiers: vec![TierEntry {
                name: "default".into(),
                order: 1000,
                default_action: "Deny".into(),
            }],
            policies: vec![PolicyEntry {
                tier: "default".into(),
                tier_order: 1000,
                position: 0,
                kind: "GlobalNetworkPolicy".into(),
                group: "veil.dev".into(),
                namespace: None,
                name: "g".into(),
                ingress_rules: 1,
                egress_rules: 0,
                local_endpoints: 2,
            }],
        };
        let s = serde_json::to_string(&l).unwrap();
        assert_eq!(
            s,
            r#"{"node":"n","generation":4,"tiers":[{"name":"default","order":1000,"defaultAction":"Deny"}],"policies":[{"tier":"default","tierOrder":1000,"position":0,"kind":"GlobalNetworkPolicy","group":"veil.dev","name":"g","ingressRules":1,"egressRules":0,"localEndpoints":2}]}"#
        );
        assert_eq!(serde_json::from_str::<PolicyList>(&s).unwrap(), l);
        assert_eq!(l.policies[0].full_name(), "g");
    }
}
