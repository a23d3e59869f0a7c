//! Identities: what an address is, for the graph. A pod (namespace, pod,
//! workload, labels), a node, an external host named by DNS or by an
//! operator-named CIDR, or the catch-all `world`. Vertices of the graph are
//! identities aggregated to the workload: every pod of `default/frontend`
//! is the one vertex `default/frontend`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Label that names a workload first.
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
/// Label that names a workload when [`LABEL_APP_NAME`] is absent.
pub const LABEL_APP: &str = "app";
/// Id of the catch-all vertex for addresses outside the cluster that have no name.
pub const WORLD: &str = "world";

/// What kind of thing a vertex is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// A workload made of pods.
    Pod,
    /// A cluster node (host network).
    Node,
    /// A host outside the cluster known by a DNS name or an operator-named CIDR.
    External,
    /// Every other address outside the cluster.
    World,
}

impl IdentityKind {
    /// Lower-case name (`pod`, `node`, `external`, `world`).
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Pod => "pod",
            IdentityKind::Node => "node",
            IdentityKind::External => "external",
            IdentityKind::World => "world",
        }
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One end of a flow.
///
/// The vertex id is derived once at construction: `namespace/workload` for
/// pods, `node:NAME` for nodes, `external:NAME` for named external hosts and
/// `world` for the rest. Build identities with the constructors; the fields
/// are read-only through accessors so that the id cannot drift from them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    kind: IdentityKind,
    namespace: String,
    workload: String,
    pod: Option<String>,
    labels: BTreeMap<String, String>,
    id: String,
    /// The Service this end was reached through (`namespace/name`), when the
    /// collector knows one; not part of the vertex id.
    service: Option<String>,
}

impl Identity {
    /// A pod. `workload` is usually [`derive_workload`]'s answer.
    pub fn pod(
        namespace: impl Into<String>,
        pod: impl Into<String>,
        workload: impl Into<String>,
        labels: BTreeMap<String, String>,
    ) -> Self {
        let namespace = namespace.into();
        let workload = workload.into();
        let id = format!("{namespace}/{workload}");
        Identity {
            kind: IdentityKind::Pod,
            namespace,
            workload,
            pod: Some(pod.into()),
            labels,
            id,
            service: None,
        }
    }

    /// A pod whose workload is derived from its labels, owner and name.
    pub fn pod_from_metadata(
        namespace: impl Into<String>,
        pod: &str,
        labels: BTreeMap<String, String>,
        owner: Option<&str>,
    ) -> Self {
        let workload = derive_workload(&labels, owner, pod);
        Identity::pod(namespace, pod, workload, labels)
    }

    /// A cluster node.
    pub fn node(name: impl Into<String>) -> Self {
        let workload = name.into();
        let id = format!("node:{workload}");
        Identity {
            kind: IdentityKind::Node,
            namespace: String::new(),
            workload,
            pod: None,
            labels: BTreeMap::new(),
            id,
            service: None,
        }
    }

    /// An external host known by `name` (a DNS name, or an operator's CIDR name).
    pub fn external(name: impl Into<String>) -> Self {
        let workload = name.into();
        let id = format!("external:{workload}");
        Identity {
            kind: IdentityKind::External,
            namespace: String::new(),
            workload,
            pod: None,
            labels: BTreeMap::new(),
            id,
            service: None,
        }
    }

    /// The catch-all for unnamed addresses outside the cluster.
    pub fn world() -> Self {
        Identity {
            kind: IdentityKind::World,
            namespace: String::new(),
            workload: WORLD.to_string(),
            pod: None,
            labels: BTreeMap::new(),
            id: WORLD.to_string(),
            service: None,
        }
    }

    /// The same end, reached through the Service `service` (`namespace/name`).
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// The Service this end was reached through, when known.
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// The vertex id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Kind.
    pub fn kind(&self) -> IdentityKind {
        self.kind
    }

    /// Namespace (empty unless a pod).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Workload (pods), node name, external name, or `world`.
    pub fn workload(&self) -> &str {
        &self.workload
    }

    /// Pod name, for pods.
    pub fn pod_name(&self) -> Option<&str> {
        self.pod.as_deref()
    }

    /// Labels (pods).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// Whether the identity is inside the cluster (a pod or a node).
    pub fn in_cluster(&self) -> bool {
        matches!(self.kind, IdentityKind::Pod | IdentityKind::Node)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// Characters Kubernetes uses for generated name suffixes
/// (`k8s.io/apimachinery/pkg/util/rand`: no vowels, no 0, 1, 3).
const K8S_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn is_generated(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| K8S_ALPHABET.contains(&b))
}

/// The workload a pod belongs to: its `app.kubernetes.io/name` label, else its
/// `app` label, else its owner's name (a Deployment's ReplicaSet owner resolved
/// by the caller, a StatefulSet, a DaemonSet...), else its name without the
/// suffixes that controllers generate:
/// `web-7d4b9c8f6d-x2x9z` (Deployment) → `web`, `agent-x2x9z` (DaemonSet, Job)
/// → `agent`, `db-0` (StatefulSet) → `db`. Empty label values are ignored.
pub fn derive_workload(
    labels: &BTreeMap<String, String>,
    owner: Option<&str>,
    pod_name: &str,
) -> String {
    for key in [LABEL_APP_NAME, LABEL_APP] {
        if let Some(v) = labels.get(key) {
            if !v.is_empty() {
                return v.clone();
            }
        }
    }
    if let Some(o) = owner {
        if !o.is_empty() {
            return o.to_string();
        }
    }
    strip_generated_suffixes(pod_name).to_string()
}

/// `pod_name` without the controller-generated suffixes (see [`derive_workload`]).
/// Never returns an empty string for a non-empty name.
pub fn strip_generated_suffixes(pod_name: &str) -> &str {
    let Some((rest, last)) = pod_name.rsplit_once('-') else {
        return pod_name;
    };
    if rest.is_empty() {
        return pod_name;
    }
    let random = last.len() == 5 && is_generated(last);
    // Deployment: a pod-template-hash segment before the random suffix.
    if random {
        if let Some((base, hash)) = rest.rsplit_once('-') {
            if !base.is_empty()
                && (6..=10).contains(&hash.len())
                && is_generated(hash)
                && hash.bytes().any(|b| b.is_ascii_digit())
            {
                return base;
            }
        }
    }
    // StatefulSet ordinal.
    if !last.is_empty() && last.len() <= 5 && last.bytes().all(|b| b.is_ascii_digit()) {
        return rest;
    }
    // Random 5-character suffix (ReplicaSet, DaemonSet, Job pods).
    if random {
        return rest;
    }
    pod_name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn workload_prefers_app_kubernetes_io_name_then_app() {
        let l = labels(&[(LABEL_APP_NAME, "shop"), (LABEL_APP, "other")]);
        assert_eq!(derive_workload(&l, Some("rs"), "x-1"), "shop");
        let l = labels(&[(LABEL_APP, "other")]);
        assert_eq!(derive_workload(&l, Some("rs"), "x-1"), "other");
    }

    #[test]
    fn workload_falls_back_to_owner_then_name() {
        let l = labels(&[(LABEL_APP, "")]);
        assert_eq!(derive_workload(&l, Some("cache"), "x-1"), "cache");
        assert_eq!(derive_workload(&l, None, "web-7d4b9c8f6d-x2x9z"), "web");
    }

    #[test]
    fn strips_deployment_daemonset_and_statefulset_suffixes() {
        assert_eq!(strip_generated_suffixes("web-7d4b9c8f6d-x2x9z"), "web");
        assert_eq!(strip_generated_suffixes("my-api-5f6c8b9d7-bq2zt"), "my-api");
        assert_eq!(strip_generated_suffixes("agent-x2x9z"), "agent");
        assert_eq!(strip_generated_suffixes("db-0"), "db");
        assert_eq!(strip_generated_suffixes("db-12"), "db");
    }

    #[test]
    fn keeps_names_without_generated_suffixes() {
        assert_eq!(strip_generated_suffixes("frontend"), "frontend");
        assert_eq!(strip_generated_suffixes("backend-a"), "backend-a");
        assert_eq!(strip_generated_suffixes("redis-cache"), "redis-cache");
        assert_eq!(strip_generated_suffixes("api-v2"), "api-v2");
        assert_eq!(strip_generated_suffixes("-x2x9z"), "-x2x9z");
        assert_eq!(strip_generated_suffixes(""), "");
        // A vowel is never generated.
        assert_eq!(strip_generated_suffixes("web-hello"), "web-hello");
    }

    #[test]
    fn ids_name_the_kind() {
        assert_eq!(
            Identity::pod("ns", "p-1", "p", BTreeMap::new()).id(),
            "ns/p"
        );
        assert_eq!(Identity::node("n1").id(), "node:n1");
        assert_eq!(
            Identity::external("example.com").id(),
            "external:example.com"
        );
        assert_eq!(Identity::world().id(), "world");
        assert!(Identity::node("n1").in_cluster());
        assert!(!Identity::world().in_cluster());
    }

    proptest::proptest! {
        #[test]
        fn stripping_never_empties_nor_grows(name in "[a-z0-9-]{0,30}") {
            let s = strip_generated_suffixes(&name);
            proptest::prop_assert!(name.starts_with(s));
            proptest::prop_assert!(name.is_empty() || !s.is_empty());
        }

        #[test]
        fn deployment_pods_strip_to_their_base(base in "[a-z]{1,8}(-[a-z]{1,8})?", hash in "[bcdfghjklmnpqrstvwxz2456789]{5,9}[2456789]", sfx in "[bcdfghjklmnpqrstvwxz2456789]{5}") {
            let name = format!("{base}-{hash}-{sfx}");
            proptest::prop_assert_eq!(strip_generated_suffixes(&name), base.as_str());
        }
    }
}
