//! CustomResourceDefinitions of the `veil.dev` kinds, generated from the
//! Rust types of [`crate::kinds`] (OpenAPI v3 structural schemas, plus CEL
//! validation rules for what a schema cannot say). The YAML is checked in
//! under deploy/crds/ and a test fails when it is stale.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Value};

use crate::kinds::{GlobalNetworkPolicySpec, NetworkPolicySpec, TierSpec};
use crate::status::PolicyStatus;

fn schema_of<T: JsonSchema>() -> Value {
    let settings = SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let mut v = settings
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    clean(&mut v);
    v
}

fn is_null_branch(v: &Value) -> bool {
    v.get("nullable").is_some() && v.get("type").is_none()
        || v.get("enum") == Some(&json!([null]))
        || v.get("type") == Some(&json!("null"))
}

/// Rewrites what a Kubernetes structural schema does not take: titles,
/// non-Kubernetes formats, `additionalProperties: false`, `anyOf` with a
/// null branch (options), `oneOf` of single-value string enums.
fn clean(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (_, x) in m.iter_mut() {
                clean(x);
            }
            if let Some(Value::Array(branches)) = m.get("anyOf").cloned() {
                let rest: Vec<&Value> = branches.iter().filter(|b| !is_null_branch(b)).collect();
                if rest.len() == 1 && branches.len() == 2 {
                    m.remove("anyOf");
                    if let Value::Object(inner) = rest[0] {
                        for (k, x) in inner {
                            if !m.contains_key(k) {
                                m.insert(k.clone(), x.clone());
                            }
                        }
                    }
                }
            }
            if let Some(Value::Array(branches)) = m.get("oneOf").cloned() {
                let values: Option<Vec<Value>> = branches
                    .iter()
                    .map(|b| match b.get("enum") {
                        Some(Value::Array(e))
                            if e.len() == 1 && b.get("type") == Some(&json!("string")) =>
                        {
                            Some(e[0].clone())
                        }
                        _ => None,
                    })
                    .collect();
                if let Some(values) = values {
                    m.remove("oneOf");
                    m.insert("type".into(), json!("string"));
                    m.insert("enum".into(), Value::Array(values));
                }
            }
            if m.get("additionalProperties") == Some(&Value::Bool(false)) {
                m.remove("additionalProperties");
            }
            m.remove("title");
            m.remove("$schema");
            m.remove("components");
            m.remove("definitions");
            if let Some(Value::String(f)) = m.get("format") {
                if !["int32", "int64"].contains(&f.as_str()) {
                    m.remove("format");
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(clean),
        _ => {}
    }
}

fn add_rules(v: &mut Value, path: &[&str], rules: Value) {
    let mut cur = v;
    for p in path {
        cur = match cur {
            Value::Object(m) => {
                if *p == "[]" {
                    match m.get_mut("items") {
                        Some(x) => x,
                        None => return,
                    }
                } else {
                    match m.get_mut("properties").and_then(|x| x.get_mut(*p)) {
                        Some(x) => x,
                        None => return,
                    }
                }
            }
            _ => return,
        };
    }
    if let Value::Object(m) = cur {
        m.insert("x-kubernetes-validations".into(), rules);
    }
}

fn rule_validations(spec: &mut Value) {
    let rule_rules = json!([
        {"rule": "!has(self.http) || (self.action == 'Allow' && has(self.protocol) && self.protocol == 'TCP')",
         "message": "http is allowed only on Allow rules with protocol TCP"},
        {"rule": "!has(self.destination) || !has(self.destination.domains) || size(self.destination.domains) == 0 || self.action == 'Allow'",
         "message": "domains are allowed only in Allow rules"}
    ]);
    add_rules(spec, &["ingress", "[]"], rule_rules);
    add_rules(
        spec,
        &["ingress", "[]", "http", "paths", "[]"],
        json!([{"rule": "has(self.exact) != has(self.prefix)", "message": "needs exactly one of exact and prefix"}]),
    );
    add_rules(
        spec,
        &["egress", "[]", "http", "paths", "[]"],
        json!([{"rule": "has(self.exact) != has(self.prefix)", "message": "needs exactly one of exact and prefix"}]),
    );
    add_rules(
        spec,
        &["egress", "[]"],
        json!([
            {"rule": "!has(self.http) || (self.action == 'Allow' && has(self.protocol) && self.protocol == 'TCP')",
             "message": "http is allowed only on Allow rules with protocol TCP"},
            {"rule": "!has(self.destination) || !has(self.destination.domains) || size(self.destination.domains) == 0 || self.action == 'Allow'",
             "message": "domains are allowed only in Allow rules"},
            {"rule": "!has(self.source)", "message": "an egress rule takes no source"}
        ]),
    );
    if let Value::Object(m) = spec {
        let mut rules = vec![json!({
            "rule": "!has(self.tier) || !(self.tier in ['admin', 'baseline'])",
            "message": "veil policies cannot be placed in tier admin or baseline"
        })];
        if let Some(Value::Array(old)) = m.remove("x-kubernetes-validations") {
            rules.extend(old);
        }
        m.insert("x-kubernetes-validations".into(), Value::Array(rules));
    }
}

fn crd(kind: &str, plural: &str, scope: &str, spec: Value, root_rules: Option<Value>) -> Value {
    let mut root = json!({
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": schema_of::<PolicyStatus>(),
        }
    });
    if let (Some(r), Value::Object(m)) = (root_rules, &mut root) {
        m.insert("x-kubernetes-validations".into(), r);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.veil.dev")},
        "spec": {
            "group": "veil.dev",
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_ascii_lowercase(),
            },
            "scope": scope,
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": root},
                "subresources": {"status": {}},
            }]
        }
    })
}

/// The CRDs as (file name, YAML text), in a stable order.
pub fn crds() -> Vec<(String, String)> {
    let mut tier = schema_of::<TierSpec>();
    if let Value::Object(m) = &mut tier {
        m.insert(
            "x-kubernetes-validations".into(),
            json!([{"rule": "!(self.order in [100, 1000, 10000])",
                    "message": "orders 100, 1000 and 10000 are taken by the built-in tiers"}]),
        );
    }
    let mut np = schema_of::<NetworkPolicySpec>();
    rule_validations(&mut np);
    let mut gnp = schema_of::<GlobalNetworkPolicySpec>();
    rule_validations(&mut gnp);
    let docs = [
        (
            "veil.dev_tiers.yaml",
            crd(
                "Tier",
                "tiers",
                "Cluster",
                tier,
                Some(
                    json!([{"rule": "!(self.metadata.name in ['admin', 'default', 'baseline'])",
                             "message": "admin, default and baseline are reserved tier names"}]),
                ),
            ),
        ),
        (
            "veil.dev_networkpolicies.yaml",
            crd("NetworkPolicy", "networkpolicies", "Namespaced", np, None),
        ),
        (
            "veil.dev_globalnetworkpolicies.yaml",
            crd(
                "GlobalNetworkPolicy",
                "globalnetworkpolicies",
                "Cluster",
                gnp,
                None,
            ),
        ),
    ];
    docs.into_iter()
        .map(|(name, v)| {
            let body = serde_yaml::to_string(&v).unwrap_or_default();
            (
                name.to_string(),
                format!("# Generated by veil-policy (crd.rs) from the Rust types; do not edit.\n# Refresh: VEIL_UPDATE_GOLDEN=1 cargo test -p veil-policy --test crds\n{body}"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_key(v: &Value, key: &str) -> bool {
        match v {
            Value::Object(m) => m.contains_key(key) || m.values().any(|x| has_key(x, key)),
            Value::Array(a) => a.iter().any(|x| has_key(x, key)),
            _ => false,
        }
    }

    #[test]
    fn schemas_are_inline_and_typed() {
        for v in [
            schema_of::<TierSpec>(),
            schema_of::<NetworkPolicySpec>(),
            schema_of::<GlobalNetworkPolicySpec>(),
        ] {
            assert!(!has_key(&v, "$ref"), "{v}");
            assert_eq!(v["type"], "object");
        }
        let np = schema_of::<NetworkPolicySpec>();
        assert_eq!(
            np["properties"]["ingress"]["items"]["properties"]["destination"]["properties"]
                ["ports"]["items"]["x-kubernetes-int-or-string"],
            true
        );
        assert!(np["properties"].get("namespaceSelector").is_none());
        let t = schema_of::<TierSpec>();
        assert_eq!(t["properties"]["order"]["maximum"], 65535);
    }

    #[test]
    fn every_crd_names_its_group_and_kind() {
        let c = crds();
        assert_eq!(c.len(), 3);
        for (_, y) in c {
            assert!(y.contains("group: veil.dev"));
            assert!(y.contains("openAPIV3Schema"));
            assert!(y.contains("subresources:\n      status: {}"), "{y}");
        }
    }
}
