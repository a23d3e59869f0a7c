//! The manifests of every supported kind, as serde types that reject
//! unknown fields, and their validation and conversion into the
//! normalised [`crate::model`]. The `veil.dev` types are also the source of
//! the CustomResourceDefinitions (see [`crate::crd`]).
//!
//! One file per API family: `k8s` (networking.k8s.io NetworkPolicy), `anp`
//! (AdminNetworkPolicy, BaselineAdminNetworkPolicy and the spec they share
//! with ClusterNetworkPolicy), `cnp` (ClusterNetworkPolicy v1alpha2
//! `protocols`), `veil` (Tier, NetworkPolicy, GlobalNetworkPolicy), and
//! `common` (metadata, ports, the field checks they all use). Every type is
//! re-exported here. This file reads the envelope (apiVersion, kind,
//! metadata) and hands the spec to its family.

mod anp;
mod cnp;
mod common;
mod k8s;
mod veil;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use anp::{
    AnpPeer, AnpPort, AnpPortNumber, AnpPortRange, AnpRule, AnpSpec, AnpSubject, NamespacedPods,
};
pub use cnp::{CnpPort, CnpPortRange, CnpProtocol, CnpProtocolPorts};
pub use common::{
    is_dns_label, is_dns_subdomain, is_port_name, IntOrString, ObjectMeta, PolicyType,
};
pub use k8s::{IpBlock, K8sEgressRule, K8sIngressRule, K8sNetworkPolicySpec, K8sPeer, K8sPort};
pub use veil::{
    EntityRule, GlobalNetworkPolicySpec, HttpPath, HttpRule, NetworkPolicySpec, TierSpec, VeilRule,
};

use crate::error::PolicyError;
use crate::model::{Kind, ObjectKey, Policy, Tier};

/// A manifest: apiVersion, kind, metadata, spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Manifest<S> {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: S,
}

/// A parsed, validated object of a supported kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Kind and identity.
    pub key: ObjectKey,
    /// Metadata as given.
    pub metadata: ObjectMeta,
    /// The content.
    pub body: ObjectBody,
}

/// The spec of an [`Object`], by kind.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // few objects, never in hot paths
pub enum ObjectBody {
    /// A Tier (already validated).
    Tier(Tier),
    /// Any policy kind, normalised.
    Policy(Policy),
}

impl Object {
    /// Parses one YAML document.
    pub fn from_yaml(text: &str) -> Result<Object, PolicyError> {
        let v: serde_yaml::Value = serde_yaml::from_str(text)
            .map_err(|e| PolicyError::invalid("manifest", "(document)", e.to_string()))?;
        Object::from_value(&v)
    }

    /// Parses and validates a manifest given as a YAML value.
    pub fn from_value(v: &serde_yaml::Value) -> Result<Object, PolicyError> {
        let str_field = |f: &str| v.get(f).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let api_version = str_field("apiVersion");
        let kind_s = str_field("kind");
        let meta_name = v
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        let kind = match (api_version.as_str(), kind_s.as_str()) {
            ("networking.k8s.io/v1", "NetworkPolicy") => Kind::K8sNetworkPolicy,
            ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy") => Kind::AdminNetworkPolicy,
            ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy") => {
                Kind::BaselineAdminNetworkPolicy
            }
            ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => {
                Kind::ClusterNetworkPolicy
            }
            ("veil.dev/v1alpha1", "Tier") => Kind::Tier,
            ("veil.dev/v1alpha1", "NetworkPolicy") => Kind::VeilNetworkPolicy,
            ("veil.dev/v1alpha1", "GlobalNetworkPolicy") => Kind::GlobalNetworkPolicy,
            _ => {
                return Err(PolicyError::UnknownKind {
                    object: meta_name,
                    api_version,
                    kind: kind_s,
                })
            }
        };
        let label = format!("{} {}", kind.short(), meta_name);
        match kind {
            Kind::K8sNetworkPolicy => {
                let m: Manifest<K8sNetworkPolicySpec> = decode(v, &label)?;
                let key = key_of(kind, &m.metadata, &label)?;
                let p = k8s::k8s_policy(&key, &m.spec)?;
                Ok(Object {
                    key,
                    metadata: m.metadata,
                    body: ObjectBody::Policy(p),
                })
            }
            Kind::AdminNetworkPolicy
            | Kind::BaselineAdminNetworkPolicy
            | Kind::ClusterNetworkPolicy => {
                let m: Manifest<AnpSpec> = decode(v, &label)?;
                let key = key_of(kind, &m.metadata, &label)?;
                let p = anp::anp_policy(&key, &m.spec)?;
                Ok(Object {
                    key,
                    metadata: m.metadata,
                    body: ObjectBody::Policy(p),
                })
            }
            Kind::Tier => {
                let m: Manifest<TierSpec> = decode(v, &label)?;
                let key = key_of(kind, &m.metadata, &label)?;
                let t = veil::tier_of(&key, &m.spec)?;
                Ok(Object {
                    key,
                    metadata: m.metadata,
                    body: ObjectBody::Tier(t),
                })
            }
            Kind::VeilNetworkPolicy => {
                let m: Manifest<NetworkPolicySpec> = decode(v, &label)?;
                let key = key_of(kind, &m.metadata, &label)?;
                let p = veil::network_policy(&key, &m.spec)?;
                Ok(Object {
                    key,
                    metadata: m.metadata,
                    body: ObjectBody::Policy(p),
                })
            }
            Kind::GlobalNetworkPolicy => {
                let m: Manifest<GlobalNetworkPolicySpec> = decode(v, &label)?;
                let key = key_of(kind, &m.metadata, &label)?;
                let p = veil::global_network_policy(&key, &m.spec)?;
                Ok(Object {
                    key,
                    metadata: m.metadata,
                    body: ObjectBody::Policy(p),
                })
            }
        }
    }
}

fn decode<T: DeserializeOwned>(v: &serde_yaml::Value, label: &str) -> Result<T, PolicyError> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "(object)".to_string()
        } else {
            path
        };
        PolicyError::invalid(label, path, e.into_inner().to_string())
    })
}

fn key_of(kind: Kind, meta: &ObjectMeta, label: &str) -> Result<ObjectKey, PolicyError> {
    if !is_dns_subdomain(&meta.name) {
        return Err(PolicyError::invalid(
            label,
            "metadata.name",
            format!(
                "{:?} is not a valid name (lower-case DNS subdomain)",
                meta.name
            ),
        ));
    }
    if kind.namespaced() {
        let ns = meta.namespace.clone().unwrap_or_default();
        if !is_dns_label(&ns) {
            return Err(PolicyError::invalid(
                label,
                "metadata.namespace",
                "a namespaced object needs a valid namespace",
            ));
        }
        Ok(ObjectKey {
            kind,
            namespace: Some(ns),
            name: meta.name.clone(),
        })
    } else {
        if meta.namespace.is_some() {
            return Err(PolicyError::invalid(
                label,
                "metadata.namespace",
                format!("{} is cluster-scoped and takes no namespace", kind.name()),
            ));
        }
        Ok(ObjectKey {
            kind,
            namespace: None,
            name: meta.name.clone(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The error message of a manifest that must be rejected.
    pub(crate) fn err(y: &str) -> String {
        Object::from_yaml(y).unwrap_err().to_string()
    }

    #[test]
    fn unknown_field_is_rejected_with_its_path() {
        let e = err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}, ingress: [{fromm: []}]}\n");
        assert!(e.contains("networkpolicy a"), "{e}");
        assert!(e.contains("spec.ingress[0]"), "{e}");
        assert!(e.contains("fromm"), "{e}");
    }

    #[test]
    fn unknown_kind_is_rejected() {
        let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {}\n");
        assert!(e.contains("unknown kind"), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        for y in [
            "",
            "[]",
            "42",
            "apiVersion: 3",
            "kind: {}",
            "apiVersion: veil.dev/v1alpha1\nkind: Tier\n",
            "apiVersion: veil.dev/v1alpha1\nkind: Tier\nmetadata: {name: x}\nspec: {order: -1}",
        ] {
            let _ = Object::from_yaml(y);
        }
    }
}
