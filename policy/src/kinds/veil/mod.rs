//! The `veil.dev/v1alpha1` kinds: Tier, NetworkPolicy (namespaced) and
//! GlobalNetworkPolicy (cluster-scoped), with ordered tiers, Allow/Deny/
//! Pass/Log rules, nets and notNets, domains and L7 HTTP conditions. Their
//! spec types are also the source of the CRDs (see [`crate::crd`]).
//!
//! This file holds the spec types and the policy-level checks (tier, order,
//! types); the `rule` module converts the rules. It does not parse the
//! manifest envelope (see the parent module).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{check_selector, is_dns_label, IntOrString, PolicyType};
use crate::error::PolicyError;
use crate::model::{
    Action, NsScope, ObjectKey, PodSelector, Policy, Protocol, Tier, TierDefault, TIER_ADMIN,
    TIER_BASELINE, TIER_DEFAULT,
};
use crate::selector::LabelSelector;

mod rule;

use rule::veil_rule;

/// `spec` of a `veil.dev/v1alpha1 Tier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TierSpec {
    /// Position among tiers, 1..65535, unique; 100, 1000 and 10000 are taken.
    #[schemars(range(min = 1, max = 65535))]
    pub order: u32,
    /// What applies when no rule of the tier decides (default Deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<TierDefault>,
}

/// `spec` of a `veil.dev/v1alpha1 NetworkPolicy` (namespaced).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Tier name (default `default`; `admin` and `baseline` are not allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Order inside the tier (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
    /// Which pods of the namespace it applies to (omitted: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Directions it applies to (default: those that have rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<PolicyType>>,
    /// Ingress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<VeilRule>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<VeilRule>,
}

/// `spec` of a `veil.dev/v1alpha1 GlobalNetworkPolicy` (cluster-scoped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GlobalNetworkPolicySpec {
    /// Tier name (default `default`; `admin` and `baseline` are not allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Order inside the tier (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
    /// Which namespaces' pods it applies to (omitted: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Which of their pods (omitted: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Directions it applies to (default: those that have rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<PolicyType>>,
    /// Ingress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<VeilRule>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<VeilRule>,
}

/// A rule of a veil policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VeilRule {
    /// Allow, Deny, Pass or Log.
    pub action: Action,
    /// TCP, UDP, SCTP or ICMP; omitted: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The peer of an ingress rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRule>,
    /// The peer and ports of an egress rule; only `ports` in an ingress rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRule>,
    /// L7 conditions (Allow rules with protocol TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRule>,
}

/// One side of a veil rule; fields are ANDed, list entries ORed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntityRule {
    /// Pods whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Pods of namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses inside one of these CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    /// Addresses outside all of these CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<String>,
    /// Ports: numbers, `"a:b"` ranges or port names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<IntOrString>,
    /// DNS names (egress Allow destinations only); `*.x.y` wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

/// L7 HTTP conditions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    /// Upper-case methods (omitted: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path conditions (omitted: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<HttpPath>,
    /// Exact host names (omitted: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// A path condition: exactly one of `exact` and `prefix`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPath {
    /// The path equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

pub(in crate::kinds) fn tier_of(key: &ObjectKey, spec: &TierSpec) -> Result<Tier, PolicyError> {
    let obj = key.to_string();
    if [TIER_ADMIN, TIER_DEFAULT, TIER_BASELINE].contains(&key.name.as_str()) {
        return Err(PolicyError::invalid(
            &obj,
            "metadata.name",
            format!("{:?} is a reserved tier name", key.name),
        ));
    }
    if !is_dns_label(&key.name) {
        return Err(PolicyError::invalid(
            &obj,
            "metadata.name",
            "a tier name must be a DNS label",
        ));
    }
    if !(1..=65535).contains(&spec.order) {
        return Err(PolicyError::invalid(
            &obj,
            "spec.order",
            format!("{} is out of range 1..65535", spec.order),
        ));
    }
    if [100, 1000, 10000].contains(&spec.order) {
        return Err(PolicyError::invalid(
            &obj,
            "spec.order",
            format!(
                "order {} is taken by a built-in tier (admin 100, default 1000, baseline 10000)",
                spec.order
            ),
        ));
    }
    Ok(Tier {
        name: key.name.clone(),
        order: spec.order,
        default_action: spec.default_action.unwrap_or(TierDefault::Deny),
    })
}

/// Converts a `veil.dev` NetworkPolicy: its subject is pods of its own
/// namespace.
pub(in crate::kinds) fn network_policy(
    key: &ObjectKey,
    s: &NetworkPolicySpec,
) -> Result<Policy, PolicyError> {
    veil_policy(
        key,
        VeilCommon {
            tier: &s.tier,
            order: s.order,
            subject: PodSelector {
                namespaces: NsScope::Named(key.namespace.clone().unwrap_or_default()),
                pods: s.selector.clone().unwrap_or_default(),
            },
            types: &s.types,
            ingress: &s.ingress,
            egress: &s.egress,
        },
    )
}

/// Converts a `veil.dev` GlobalNetworkPolicy: its subject is pods of the
/// namespaces its `namespaceSelector` selects.
pub(in crate::kinds) fn global_network_policy(
    key: &ObjectKey,
    s: &GlobalNetworkPolicySpec,
) -> Result<Policy, PolicyError> {
    let ns = s.namespace_selector.clone().unwrap_or_default();
    check_selector(&key.to_string(), "spec.namespaceSelector", &ns)?;
    veil_policy(
        key,
        VeilCommon {
            tier: &s.tier,
            order: s.order,
            subject: PodSelector {
                namespaces: NsScope::Selector(ns),
                pods: s.selector.clone().unwrap_or_default(),
            },
            types: &s.types,
            ingress: &s.ingress,
            egress: &s.egress,
        },
    )
}

struct VeilCommon<'a> {
    tier: &'a Option<String>,
    order: Option<u32>,
    subject: PodSelector,
    types: &'a Option<Vec<PolicyType>>,
    ingress: &'a [VeilRule],
    egress: &'a [VeilRule],
}

fn veil_policy(key: &ObjectKey, c: VeilCommon<'_>) -> Result<Policy, PolicyError> {
    let obj = key.to_string();
    let tier = c.tier.clone().unwrap_or_else(|| TIER_DEFAULT.to_string());
    if tier == TIER_ADMIN || tier == TIER_BASELINE {
        return Err(PolicyError::invalid(
            &obj,
            "spec.tier",
            format!("veil policies cannot be placed in tier {tier:?}"),
        ));
    }
    if !is_dns_label(&tier) {
        return Err(PolicyError::invalid(
            &obj,
            "spec.tier",
            format!("{tier:?} is not a valid tier name"),
        ));
    }
    check_selector(&obj, "spec.selector", &c.subject.pods)?;
    let (applies_ingress, applies_egress) = match c.types {
        Some(t) => {
            if t.is_empty() {
                return Err(PolicyError::invalid(
                    &obj,
                    "spec.types",
                    "must list Ingress and/or Egress",
                ));
            }
            (
                t.contains(&PolicyType::Ingress),
                t.contains(&PolicyType::Egress),
            )
        }
        None => (!c.ingress.is_empty(), !c.egress.is_empty()),
    };
    if !applies_ingress && !c.ingress.is_empty() {
        return Err(PolicyError::invalid(
            &obj,
            "spec.ingress",
            "has rules but types does not list Ingress",
        ));
    }
    if !applies_egress && !c.egress.is_empty() {
        return Err(PolicyError::invalid(
            &obj,
            "spec.egress",
            "has rules but types does not list Egress",
        ));
    }
    let own_ns = match &key.namespace {
        Some(ns) => NsScope::Named(ns.clone()),
        None => NsScope::Selector(LabelSelector::all()),
    };
    let mut ingress = Vec::new();
    for (i, r) in c.ingress.iter().enumerate() {
        ingress.push(veil_rule(
            &obj,
            &format!("spec.ingress[{i}]"),
            r,
            false,
            &own_ns,
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in c.egress.iter().enumerate() {
        egress.push(veil_rule(
            &obj,
            &format!("spec.egress[{i}]"),
            r,
            true,
            &own_ns,
        )?);
    }
    Ok(Policy {
        key: key.clone(),
        tier,
        sort_key: (i64::from(c.order.unwrap_or(1000)), 0, key.full_name(), 1),
        subject: c.subject,
        applies_ingress,
        applies_egress,
        ingress,
        egress,
    })
}

#[cfg(test)]
mod tests {
    use crate::kinds::tests::err;
    use crate::kinds::{Object, ObjectBody};

    #[test]
    fn http_on_deny_rule_is_rejected() {
        let e = err("apiVersion: veil.dev/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {ingress: [{action: Deny, protocol: TCP, http: {methods: [GET]}}]}\n");
        assert!(e.contains("spec.ingress[0].http"), "{e}");
    }

    #[test]
    fn http_needs_tcp() {
        let e = err("apiVersion: veil.dev/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {ingress: [{action: Allow, http: {methods: [GET]}}]}\n");
        assert!(e.contains("protocol: TCP"), "{e}");
    }

    #[test]
    fn reserved_tier_names_are_rejected() {
        let e = err("apiVersion: veil.dev/v1alpha1\nkind: Tier\nmetadata: {name: admin}\nspec: {order: 5}\n");
        assert!(e.contains("reserved"), "{e}");
        let e = err(
            "apiVersion: veil.dev/v1alpha1\nkind: Tier\nmetadata: {name: t}\nspec: {order: 1000}\n",
        );
        assert!(e.contains("built-in"), "{e}");
    }

    #[test]
    fn domains_with_selector_are_rejected() {
        let e = err("apiVersion: veil.dev/v1alpha1\nkind: GlobalNetworkPolicy\nmetadata: {name: a}\nspec: {egress: [{action: Allow, destination: {domains: [a.b], selector: {}}}]}\n");
        assert!(e.contains("domains"), "{e}");
    }

    #[test]
    fn veil_ports_accept_ranges_and_names() {
        let o = Object::from_yaml("apiVersion: veil.dev/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {ingress: [{action: Allow, destination: {ports: [80, \"8000:8080\", http]}}]}\n").unwrap();
        let ObjectBody::Policy(p) = o.body else {
            panic!()
        };
        assert_eq!(p.ingress[0].ports.len(), 3);
        let e = err("apiVersion: veil.dev/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {ingress: [{action: Allow, destination: {ports: [\"9:8\"]}}]}\n");
        assert!(e.contains("ends before"), "{e}");
    }
}
