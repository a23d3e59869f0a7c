//! This node's Node object: what `veild` reads from it at start-up (its
//! address, pod CIDR and labels, so that no flag has to repeat them) and
//! what it writes there (only its `veil.dev/` annotations: the WireGuard
//! public key and endpoint, patched again when the key rotates).
//!
//! It never changes anything else on the Node.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::Api;

use super::{convert, KubeError};
use crate::datastore::{NodeRecord, Resource};

/// What start-up needs from this node's Node object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// InternalIP (or ExternalIP).
    pub address: IpAddr,
    /// `spec.podCIDRs` (the first one of this node's family is the pod CIDR).
    pub pod_cidrs: Vec<IpNetwork>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// Reads the facts from a Node object.
pub fn facts_of(n: &Node) -> Result<NodeFacts, KubeError> {
    let name = kube::ResourceExt::name_any(n);
    let mut outcomes = convert::node(n);
    match outcomes.pop().and_then(|(_, o)| o) {
        Some(Ok(Resource::Node(rec))) => {
            if rec.pod_cidrs.is_empty() {
                return Err(KubeError::Node {
                    node: name,
                    field: "spec.podCIDRs",
                    reason: "empty: the controller manager allocates node CIDRs only with --allocate-node-cidrs (or give --pod-cidr)".into(),
                });
            }
            Ok(NodeFacts {
                address: rec.address,
                pod_cidrs: rec.pod_cidrs,
                labels: rec.labels,
            })
        }
        Some(Err(issue)) => Err(KubeError::Node {
            node: name,
            field: "status",
            reason: issue.to_string(),
        }),
        _ => Err(KubeError::Node {
            node: name,
            field: "(object)",
            reason: "not readable".into(),
        }),
    }
}

/// Fetches this node's facts (verb `get` on nodes).
pub async fn fetch_facts(api: &Api<Node>, name: &str) -> Result<NodeFacts, KubeError> {
    let n = api.get(name).await.map_err(|source| KubeError::Api {
        what: format!("get node {name}"),
        source,
    })?;
    facts_of(&n)
}

/// The `veil.dev/` annotations of a record (the only ones `veild` writes).
pub fn veil_annotations(rec: &NodeRecord) -> BTreeMap<String, String> {
    rec.annotations
        .iter()
        .filter(|(k, _)| k.starts_with("veil.dev/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Merge-patches the annotations onto the Node (verb `patch` on nodes):
/// other annotations and every other field stay as they are.
pub async fn patch_annotations(
    api: &Api<Node>,
    name: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<(), KubeError> {
    let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| KubeError::Api {
            what: format!("patch node {name} annotations"),
            source,
        })?;
    tracing::info!(node = %name, keys = ?annotations.keys().collect::<Vec<_>>(), "kubernetes: node annotations published");
    Ok(())
}

/// Fills what `--datastore kube` takes from the cluster rather than from
/// flags: the node name from `NODE_NAME` (downward API), and the address,
/// pod CIDR and labels from the Node object. Flags given explicitly win.
/// Does nothing for another datastore.
pub async fn complete_flags(flags: &mut crate::config::Flags) -> Result<(), KubeError> {
    if flags.datastore.as_deref() != Some("kube") {
        return Ok(());
    }
    if flags.node_name.is_none() {
        flags.node_name = std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty());
    }
    let Some(name) = flags.node_name.clone() else {
        return Err(KubeError::Node {
            node: "?".into(),
            field: "NODE_NAME",
            reason: "not set (downward API spec.nodeName, or --node-name)".into(),
        });
    };
    let client = super::client(flags.kubeconfig.as_deref()).await?;
    let facts = fetch_facts(&Api::<Node>::all(client), &name).await?;
    fill_flags(flags, &facts);
    Ok(())
}

/// Puts the Node's facts into the flags that were not given.
pub fn fill_flags(flags: &mut crate::config::Flags, facts: &NodeFacts) {
    if flags.node_address.is_none() {
        flags.node_address = Some(facts.address);
    }
    if flags.pod_cidr.is_none() {
        let same_family = facts
            .pod_cidrs
            .iter()
            .find(|c| c.is_ipv4() == facts.address.is_ipv4());
        flags.pod_cidr = same_family.or(facts.pod_cidrs.first()).copied();
    }
    let given: Vec<String> = flags
        .node_labels
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
        .collect();
    for (k, v) in &facts.labels {
        if !given.contains(k) {
            flags.node_labels.push(format!("{k}={v}"));
        }
    }
}
