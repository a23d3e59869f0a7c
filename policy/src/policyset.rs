//! The set of objects in force: custom tiers and policies of every kind,
//! updated by applying and deleting objects, always consistent (every
//! policy's tier exists, tier orders are unique). An update that would make
//! it inconsistent is rejected as a whole and changes nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::PolicyError;
use crate::kinds::{Object, ObjectBody};
use crate::model::{Kind, ObjectKey, Policy, Tier};

/// The tiers and policies in force.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    tiers: BTreeMap<String, Tier>,
    policies: BTreeMap<ObjectKey, Policy>,
    /// Per policy, the revision it was applied with (see [`Self::revision`]).
    revisions: BTreeMap<ObjectKey, u64>,
}

/// Revisions are unique in the process: two sets never give one revision to
/// different contents.
static NEXT_REVISION: AtomicU64 = AtomicU64::new(1);

impl PartialEq for PolicySet {
    /// Equal contents (revisions aside).
    fn eq(&self, other: &Self) -> bool {
        self.tiers == other.tiers && self.policies == other.policies
    }
}

impl PolicySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates or replaces objects (matched by kind, namespace and name).
    /// All or nothing: on error the set is unchanged. Costs what it changes:
    /// only the objects given are checked against the set (applying never
    /// removes a tier, so the policies already in force stay valid).
    pub fn apply(&mut self, objects: impl IntoIterator<Item = Object>) -> Result<(), PolicyError> {
        let mut tiers: BTreeMap<String, Tier> = BTreeMap::new();
        let mut policies: BTreeMap<ObjectKey, Policy> = BTreeMap::new();
        for o in objects {
            match o.body {
                ObjectBody::Tier(t) => {
                    tiers.insert(t.name.clone(), t);
                }
                ObjectBody::Policy(p) => {
                    policies.insert(o.key, p);
                }
            }
        }
        self.check_apply(&tiers, &policies)?;
        self.tiers.extend(tiers);
        for (k, p) in policies {
            let rev = NEXT_REVISION.fetch_add(1, Ordering::Relaxed);
            self.revisions.insert(k.clone(), rev);
            self.policies.insert(k, p);
        }
        Ok(())
    }

    /// Whether adding `tiers` and `policies` keeps the set consistent.
    fn check_apply(
        &self,
        tiers: &BTreeMap<String, Tier>,
        policies: &BTreeMap<ObjectKey, Policy>,
    ) -> Result<(), PolicyError> {
        if !tiers.is_empty() {
            // Orders of the tiers after the update, the new ones checked.
            let mut orders: BTreeMap<u32, &str> = self
                .tiers
                .values()
                .filter(|t| !tiers.contains_key(&t.name))
                .map(|t| (t.order, t.name.as_str()))
                .collect();
            for t in tiers.values() {
                if let Some(other) = orders.insert(t.order, &t.name) {
                    return Err(PolicyError::invalid(
                        format!("tier {}", t.name),
                        "spec.order",
                        format!("order {} is already used by tier {other}", t.order),
                    ));
                }
            }
        }
        for p in policies.values() {
            let builtin = Tier::builtins().iter().any(|t| t.name == p.tier);
            if !builtin && !self.tiers.contains_key(&p.tier) && !tiers.contains_key(&p.tier) {
                return Err(PolicyError::invalid(
                    p.key.to_string(),
                    "spec.tier",
                    format!("tier {:?} does not exist", p.tier),
                ));
            }
        }
        Ok(())
    }

    /// Deletes objects. All or nothing: on error the set is unchanged.
    pub fn delete(&mut self, keys: &[ObjectKey]) -> Result<(), PolicyError> {
        for (i, k) in keys.iter().enumerate() {
            let found = if k.kind == Kind::Tier {
                self.tiers.contains_key(&k.name)
            } else {
                self.policies.contains_key(k)
            };
            if !found || keys[..i].contains(k) {
                return Err(PolicyError::invalid(
                    k.to_string(),
                    "metadata.name",
                    "no such object to delete",
                ));
            }
        }
        for k in keys.iter().filter(|k| k.kind == Kind::Tier) {
            let user = self
                .policies
                .values()
                .find(|p| p.tier == k.name && !keys.contains(&p.key));
            if let Some(p) = user {
                return Err(PolicyError::invalid(
                    k.to_string(),
                    "metadata.name",
                    format!("cannot delete: tier is still named by {}", p.key),
                ));
            }
        }
        for k in keys {
            if k.kind == Kind::Tier {
                self.tiers.remove(&k.name);
            } else {
                self.policies.remove(k);
                self.revisions.remove(k);
            }
        }
        Ok(())
    }

    /// Every tier, built-in ones included, in ascending order.
    pub fn tiers(&self) -> Vec<Tier> {
        let mut v: Vec<Tier> = Tier::builtins().into_iter().collect();
        v.extend(self.tiers.values().cloned());
        v.sort_by_key(|t| t.order);
        v
    }

    /// The custom tiers by name.
    pub fn custom_tiers(&self) -> &BTreeMap<String, Tier> {
        &self.tiers
    }

    /// The revision of a policy: unique in the process to the policy as
    /// applied, so an equal revision means an equal policy (a different one
    /// may still be an equal policy applied again).
    pub fn revision(&self, key: &ObjectKey) -> Option<u64> {
        self.revisions.get(key).copied()
    }

    /// The policies, by key.
    pub fn policies(&self) -> &BTreeMap<ObjectKey, Policy> {
        &self.policies
    }

    /// The policies of one tier, in evaluation order.
    pub fn tier_policies(&self, tier: &str) -> Vec<&Policy> {
        let mut v: Vec<&Policy> = self.policies.values().filter(|p| p.tier == tier).collect();
        v.sort_by(|a, b| a.sort_key.cmp(&b.sort_key));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(y: &str) -> Object {
        Object::from_yaml(y).unwrap()
    }

    #[test]
    fn policy_naming_missing_tier_is_rejected_and_set_unchanged() {
        let mut s = PolicySet::new();
        let e = s
            .apply([obj("apiVersion: veil.dev/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {tier: nope}\n")])
            .unwrap_err();
        assert!(
            e.to_string().contains("tier \"nope\" does not exist"),
            "{e}"
        );
        assert!(s.policies().is_empty());
    }

    #[test]
    fn duplicate_tier_order_is_rejected() {
        let mut s = PolicySet::new();
        let e = s
            .apply([
                obj("apiVersion: veil.dev/v1alpha1\nkind: Tier\nmetadata: {name: a}\nspec: {order: 5}\n"),
                obj("apiVersion: veil.dev/v1alpha1\nkind: Tier\nmetadata: {name: b}\nspec: {order: 5}\n"),
            ])
            .unwrap_err();
        assert!(e.to_string().contains("already used"), "{e}");
    }

    #[test]
    fn deleting_a_tier_in_use_is_rejected() {
        let mut s = PolicySet::new();
        s.apply([
            obj("apiVersion: veil.dev/v1alpha1\nkind: Tier\nmetadata: {name: a}\nspec: {order: 5}\n"),
            obj("apiVersion: veil.dev/v1alpha1\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec: {tier: a}\n"),
        ])
        .unwrap();
        let key = ObjectKey {
            kind: Kind::Tier,
            namespace: None,
            name: "a".into(),
        };
        let e = s.delete(&[key]).unwrap_err();
        assert!(e.to_string().contains("still named"), "{e}");
        assert_eq!(s.custom_tiers().len(), 1);
    }
}
