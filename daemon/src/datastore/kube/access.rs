//! The table of every Kubernetes API call the kube datastore makes, which
//! deploy/rbac/veil-node.yaml must grant exactly (a test compares them in
//! both directions). It makes no call itself.

/// One (API group, resource, verb) this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiAccess {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Resource (plural, with `/subresource` if any).
    pub resource: &'static str,
    /// Verb.
    pub verb: &'static str,
}

const fn access(group: &'static str, resource: &'static str, verb: &'static str) -> ApiAccess {
    ApiAccess {
        group,
        resource,
        verb,
    }
}

/// Every API call of the kube datastore. deploy/rbac/veil.yaml must grant
/// each (test `deploy_rbac_grants_every_api_call_of_the_kube_datastore`).
pub const API_ACCESS: &[ApiAccess] = &[
    // Watchers: list + watch of every kind.
    access("", "nodes", "list"),
    access("", "nodes", "watch"),
    access("", "namespaces", "list"),
    access("", "namespaces", "watch"),
    access("", "pods", "list"),
    access("", "pods", "watch"),
    access("", "services", "list"),
    access("", "services", "watch"),
    access("discovery.k8s.io", "endpointslices", "list"),
    access("discovery.k8s.io", "endpointslices", "watch"),
    access("networking.k8s.io", "networkpolicies", "list"),
    access("networking.k8s.io", "networkpolicies", "watch"),
    access("policy.networking.k8s.io", "adminnetworkpolicies", "list"),
    access("policy.networking.k8s.io", "adminnetworkpolicies", "watch"),
    access(
        "policy.networking.k8s.io",
        "baselineadminnetworkpolicies",
        "list",
    ),
    access(
        "policy.networking.k8s.io",
        "baselineadminnetworkpolicies",
        "watch",
    ),
    access("policy.networking.k8s.io", "clusternetworkpolicies", "list"),
    access(
        "policy.networking.k8s.io",
        "clusternetworkpolicies",
        "watch",
    ),
    access("veil.dev", "tiers", "list"),
    access("veil.dev", "tiers", "watch"),
    access("veil.dev", "networkpolicies", "list"),
    access("veil.dev", "networkpolicies", "watch"),
    access("veil.dev", "globalnetworkpolicies", "list"),
    access("veil.dev", "globalnetworkpolicies", "watch"),
    // Start-up (its own Node's address and pod CIDR) and the annotations.
    access("", "nodes", "get"),
    access("", "nodes", "patch"),
    // Status, by the Lease holder.
    access("veil.dev", "tiers/status", "patch"),
    access("veil.dev", "networkpolicies/status", "patch"),
    access("veil.dev", "globalnetworkpolicies/status", "patch"),
    access("coordination.k8s.io", "leases", "get"),
    access("coordination.k8s.io", "leases", "create"),
    access("coordination.k8s.io", "leases", "update"),
    // Events for invalid policies (kube-rs's Recorder creates, then patches a series).
    access("events.k8s.io", "events", "create"),
    access("events.k8s.io", "events", "patch"),
];
