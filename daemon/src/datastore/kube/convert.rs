//! Kubernetes objects to datastore [`Resource`]s: what each watched kind
//! contributes to the [`super::super::store::Store`], under which [`Key`].
//!
//! - A Node gives a [`NodeRecord`] (InternalIP, `spec.podCIDRs`, labels and
//!   only the `veil.dev/` annotations).
//! - A Namespace gives a [`NamespaceRecord`].
//! - A Pod gives a [`PodRecord`] and, when it has addresses and is neither
//!   hostNetwork nor finished, an [`EndpointRecord`] from `status.podIPs`
//!   (so that pods of other nodes have addresses).
//! - A policy object of any kind is cut down to apiVersion, kind,
//!   metadata (name, namespace, labels) and spec (the policy parser rejects
//!   unknown fields, and status, managedFields... are none of its business),
//!   then validated: an invalid one becomes an [`Issue`] (the store keeps
//!   its last good version).
//!
//! Pure: no client, no IO.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::DynamicObject;
use kube::ResourceExt;

use crate::datastore::{
    EndpointRecord, Issue, Key, Kind, NamespaceRecord, NodeRecord, PodPort, PodRecord,
    PolicyDocument, Resource,
};

/// What one Kubernetes object means for one key: a value, an unreadable
/// object, or nothing (the key must not exist, e.g. a pod without address
/// has no endpoint).
pub type Outcome = Option<Result<Resource, Issue>>;

/// The annotation prefix kept on nodes (the rest is not Veil's business).
const VEIL_ANNOTATION_PREFIX: &str = "veil.dev/";

/// The key of a Node.
pub fn node_key(name: &str) -> Key {
    Key::new(Kind::Node, name)
}

/// The keys and values a Node gives.
pub fn node(n: &Node) -> Vec<(Key, Outcome)> {
    let name = n.name_any();
    let key = node_key(&name);
    let issue = |field: &str, reason: String| Issue {
        object: format!("node {name}"),
        field: field.into(),
        reason,
    };
    let addresses = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let address = addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .chain(addresses.iter().filter(|a| a.type_ == "ExternalIP"))
        .find_map(|a| a.address.parse::<IpAddr>().ok());
    let Some(address) = address else {
        return vec![(
            key,
            Some(Err(issue(
                "status.addresses",
                "no InternalIP (nor ExternalIP) address".into(),
            ))),
        )];
    };
    let mut pod_cidrs = Vec::new();
    let spec = n.spec.as_ref();
    let texts: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(v) if !v.is_empty() => v.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    for t in texts {
        match t.parse::<IpNetwork>() {
            Ok(c) => pod_cidrs.push(c),
            Err(e) => {
                return vec![(
                    key,
                    Some(Err(issue("spec.podCIDRs", format!("{t:?}: {e}")))),
                )]
            }
        }
    }
    let annotations = n
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with(VEIL_ANNOTATION_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let rec = NodeRecord {
        name,
        address,
        pod_cidrs,
        labels: n.labels().clone(),
        annotations,
    };
    vec![(key, Some(Ok(Resource::Node(rec))))]
}

/// The keys and values a Namespace gives.
pub fn namespace(ns: &Namespace) -> Vec<(Key, Outcome)> {
    let name = ns.name_any();
    let mut labels = ns.labels().clone();
    labels.remove("kubernetes.io/metadata.name");
    vec![(
        Key::new(Kind::Namespace, name.clone()),
        Some(Ok(Resource::Namespace(NamespaceRecord { name, labels }))),
    )]
}

/// The key of a pod's record.
pub fn pod_key(namespace: &str, name: &str) -> Key {
    Key::new(Kind::Pod, format!("{namespace}/{name}"))
}

/// The key of the endpoint a pod's status gives.
pub fn pod_endpoint_key(namespace: &str, name: &str) -> Key {
    Key::new(Kind::Endpoint, format!("pod/{namespace}/{name}"))
}

/// The keys and values a Pod gives: its record and its endpoint.
pub fn pod(p: &Pod) -> Vec<(Key, Outcome)> {
    let namespace = p.namespace().unwrap_or_default();
    let name = p.name_any();
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let node = spec.and_then(|s| s.node_name.clone());
    let mut ports = Vec::new();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for cp in c.ports.as_deref().unwrap_or_default() {
            let Ok(port) = u16::try_from(cp.container_port) else {
                continue;
            };
            ports.push(PodPort {
                port,
                protocol: cp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                name: cp.name.clone(),
            });
        }
    }
    let rec = PodRecord {
        namespace: namespace.clone(),
        name: name.clone(),
        labels: p.labels().clone(),
        node: node.clone(),
        host_network,
        service_account: spec.and_then(|s| s.service_account_name.clone()),
        ports,
    };
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    let finished = matches!(phase, "Succeeded" | "Failed");
    let mut ips: Vec<IpNetwork> = Vec::new();
    let listed = status.and_then(|s| s.pod_ips.as_ref());
    let texts: Vec<&str> = match listed {
        Some(v) if !v.is_empty() => v.iter().map(|i| i.ip.as_str()).collect(),
        _ => status
            .and_then(|s| s.pod_ip.as_deref())
            .into_iter()
            .collect(),
    };
    for t in texts {
        if let Ok(ip) = t.parse::<IpAddr>() {
            ips.push(IpNetwork::from(ip));
        }
    }
    let endpoint = match (&node, host_network || finished || ips.is_empty()) {
        (Some(node), false) => Some(Ok(Resource::Endpoint(EndpointRecord {
            node: node.clone(),
            container_id: p.uid().unwrap_or_default(),
            ifname: "eth0".into(),
            pod_namespace: Some(namespace.clone()),
            pod_name: Some(name.clone()),
            ips,
        }))),
        _ => None,
    };
    vec![
        (pod_key(&namespace, &name), Some(Ok(Resource::Pod(rec)))),
        (pod_endpoint_key(&namespace, &name), endpoint),
    ]
}

/// The origin (and key name) of a policy object: `plural.group/namespace/name`.
pub fn policy_origin(plural: &str, group: &str, namespace: Option<&str>, name: &str) -> String {
    let res = if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    };
    match namespace {
        Some(ns) => format!("{res}/{ns}/{name}"),
        None => format!("{res}/{name}"),
    }
}

/// The manifest the policy parser reads: apiVersion, kind, metadata (name,
/// namespace, labels) and spec, nothing else.
pub fn strip_policy(api_version: &str, kind: &str, obj: &DynamicObject) -> serde_json::Value {
    let mut metadata = serde_json::Map::new();
    metadata.insert("name".into(), obj.name_any().into());
    if let Some(ns) = obj.namespace() {
        metadata.insert("namespace".into(), ns.into());
    }
    if !obj.labels().is_empty() {
        let labels: serde_json::Map<String, serde_json::Value> = obj
            .labels()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        metadata.insert("labels".into(), labels.into());
    }
    let mut out = serde_json::Map::new();
    out.insert("apiVersion".into(), api_version.into());
    out.insert("kind".into(), kind.into());
    out.insert("metadata".into(), metadata.into());
    out.insert(
        "spec".into(),
        obj.data
            .get("spec")
            .cloned()
            .unwrap_or_else(|| serde_json::Value::Object(Default::default())),
    );
    serde_json::Value::Object(out)
}

/// A policy object checked by the policy parser: its document, or why it
/// is not valid (object, field, reason).
pub fn policy(
    api_version: &str,
    kind: &str,
    plural: &str,
    group: &str,
    obj: &DynamicObject,
) -> (Key, Result<PolicyDocument, Issue>) {
    let origin = policy_origin(plural, group, obj.namespace().as_deref(), &obj.name_any());
    let key = Key::new(Kind::Policy, origin.clone());
    let stripped = strip_policy(api_version, kind, obj);
    let manifest: serde_yaml::Value = match serde_yaml::to_value(&stripped) {
        Ok(v) => v,
        Err(e) => {
            return (
                key,
                Err(Issue {
                    object: origin,
                    field: "(object)".into(),
                    reason: e.to_string(),
                }),
            )
        }
    };
    match veil_policy::Object::from_value(&manifest) {
        Ok(_) => (key, Ok(PolicyDocument { origin, manifest })),
        Err(e) => {
            let (field, reason) = match e {
                veil_policy::PolicyError::Invalid { field, reason, .. } => (field, reason),
                other => ("kind".to_string(), other.to_string()),
            };
            (
                key,
                Err(Issue {
                    object: origin,
                    field,
                    reason,
                }),
            )
        }
    }
}
