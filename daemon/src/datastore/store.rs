//! The store: the datastore's objects in keyed maps, kept current by
//! applying watch [`Event`]s, with the keys each event changed.
//!
//! It is the "reflector store" half of the datastore: any watch (local
//! directory, Kubernetes) feeds it, and consumers read values by key and
//! learn which keys changed ([`Changes`]). An [`Event::Invalid`] records an
//! issue and keeps the object's last good value. It does no IO.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    EndpointRecord, EndpointSliceRecord, Event, Issue, Key, Kind, NamespaceRecord, NodeRecord,
    PodRecord, PolicyDocument, Resource, ServiceRecord, Snapshot,
};

/// The objects of a datastore, by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Store {
    /// Nodes.
    pub nodes: BTreeMap<Key, NodeRecord>,
    /// Namespaces.
    pub namespaces: BTreeMap<Key, NamespaceRecord>,
    /// Pods.
    pub pods: BTreeMap<Key, PodRecord>,
    /// Endpoints of every node.
    pub endpoints: BTreeMap<Key, EndpointRecord>,
    /// Services.
    pub services: BTreeMap<Key, ServiceRecord>,
    /// Endpoint slices.
    pub endpoint_slices: BTreeMap<Key, EndpointSliceRecord>,
    /// Policy manifests.
    pub policies: BTreeMap<Key, PolicyDocument>,
    /// Objects that could not be read, and why.
    pub issues: BTreeMap<Key, Issue>,
    /// Whether the initial listing is complete.
    pub synced: bool,
}

/// What a batch of events changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys whose value was created, changed or removed.
    pub keys: BTreeSet<Key>,
    /// Whether the issues changed.
    pub issues: bool,
    /// Whether this batch completed the initial listing.
    pub synced: bool,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.issues && !self.synced
    }
}

fn put<V: PartialEq>(map: &mut BTreeMap<Key, V>, key: &Key, value: V) -> bool {
    if map.get(key) == Some(&value) {
        return false;
    }
    map.insert(key.clone(), value);
    true
}

impl Store {
    /// An empty, unsynced store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event, recording what it changed in `changes`.
    pub fn apply(&mut self, event: Event, changes: &mut Changes) {
        match event {
            Event::Applied(key, value) => {
                if key.kind != value.kind() {
                    // A watch bug, not bad input: keep the store consistent.
                    tracing::warn!(%key, kind = value.kind().as_str(), "event of the wrong kind ignored");
                    return;
                }
                if self.issues.remove(&key).is_some() {
                    changes.issues = true;
                }
                let changed = match value {
                    Resource::Node(v) => put(&mut self.nodes, &key, v),
                    Resource::Namespace(v) => put(&mut self.namespaces, &key, v),
                    Resource::Pod(v) => put(&mut self.pods, &key, v),
                    Resource::Endpoint(v) => put(&mut self.endpoints, &key, v),
                    Resource::Service(v) => put(&mut self.services, &key, v),
                    Resource::EndpointSlice(v) => put(&mut self.endpoint_slices, &key, v),
                    Resource::Policy(v) => put(&mut self.policies, &key, v),
                };
                if changed {
                    changes.keys.insert(key);
                }
            }
            Event::Deleted(key) => {
                if self.issues.remove(&key).is_some() {
                    changes.issues = true;
                }
                let removed = match key.kind {
                    Kind::Node => self.nodes.remove(&key).is_some(),
                    Kind::Namespace => self.namespaces.remove(&key).is_some(),
                    Kind::Pod => self.pods.remove(&key).is_some(),
                    Kind::Endpoint => self.endpoints.remove(&key).is_some(),
                    Kind::Service => self.services.remove(&key).is_some(),
                    Kind::EndpointSlice => self.endpoint_slices.remove(&key).is_some(),
                    Kind::Policy => self.policies.remove(&key).is_some(),
                };
                if removed {
                    changes.keys.insert(key);
                }
            }
            Event::Invalid(key, issue) => {
                if self.issues.get(&key) != Some(&issue) {
                    self.issues.insert(key, issue);
                    changes.issues = true;
                }
            }
            Event::Synced => {
                if !self.synced {
                    self.synced = true;
                    changes.synced = true;
                }
            }
        }
    }

    /// Applies a batch of events and returns what they changed.
    pub fn apply_all(&mut self, events: impl IntoIterator<Item = Event>) -> Changes {
        let mut changes = Changes::default();
        for e in events {
            self.apply(e, &mut changes);
        }
        changes
    }

    /// The issues as messages, in key order.
    pub fn issue_messages(&self) -> Vec<String> {
        self.issues.values().map(|i| i.to_string()).collect()
    }

    /// The whole state as lists.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.nodes.values().cloned().collect(),
            namespaces: self.namespaces.values().cloned().collect(),
            pods: self.pods.values().cloned().collect(),
            endpoints: self.endpoints.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            endpoint_slices: self.endpoint_slices.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            errors: self.issue_messages(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str) -> Resource {
        Resource::Pod(PodRecord {
            namespace: "shop".into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            node: Some("n1".into()),
            host_network: false,
            service_account: None,
            ports: vec![],
        })
    }

    fn key(name: &str) -> Key {
        Key::new(Kind::Pod, name)
    }

    fn issue(reason: &str) -> Issue {
        Issue {
            object: "pods/shop/web.yaml".into(),
            field: "labels".into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn applied_object_is_stored_and_reported_changed() {
        let mut s = Store::new();
        let c = s.apply_all([
            Event::Applied(key("shop/web"), pod("web", "a")),
            Event::Synced,
        ]);
        assert!(c.keys.contains(&key("shop/web")));
        assert!(c.synced && s.synced);
        assert_eq!(s.snapshot().pod("shop", "web").unwrap().labels["app"], "a");
    }

    #[test]
    fn reapplying_the_same_value_changes_nothing() {
        let mut s = Store::new();
        s.apply_all([Event::Applied(key("shop/web"), pod("web", "a"))]);
        let c = s.apply_all([Event::Applied(key("shop/web"), pod("web", "a"))]);
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn modified_object_replaces_the_old_value() {
        let mut s = Store::new();
        s.apply_all([Event::Applied(key("shop/web"), pod("web", "a"))]);
        let c = s.apply_all([Event::Applied(key("shop/web"), pod("web", "b"))]);
        assert_eq!(c.keys.len(), 1);
        assert_eq!(s.pods[&key("shop/web")].labels["app"], "b");
    }

    #[test]
    fn deleted_object_is_removed_and_deleting_it_again_changes_nothing() {
        let mut s = Store::new();
        s.apply_all([Event::Applied(key("shop/web"), pod("web", "a"))]);
        let c = s.apply_all([Event::Deleted(key("shop/web"))]);
        assert!(c.keys.contains(&key("shop/web")));
        assert!(s.pods.is_empty());
        assert!(s.apply_all([Event::Deleted(key("shop/web"))]).is_empty());
    }

    #[test]
    fn parse_error_keeps_the_last_good_value_until_fixed() {
        let mut s = Store::new();
        s.apply_all([Event::Applied(key("shop/web"), pod("web", "a"))]);
        let c = s.apply_all([Event::Invalid(key("shop/web"), issue("bad"))]);
        assert!(c.issues && c.keys.is_empty());
        assert_eq!(
            s.pods[&key("shop/web")].labels["app"],
            "a",
            "last good kept"
        );
        assert_eq!(s.snapshot().errors, vec!["pods/shop/web.yaml: labels: bad"]);
        // Fixed: the issue goes and the new value is in.
        let c = s.apply_all([Event::Applied(key("shop/web"), pod("web", "b"))]);
        assert!(c.issues && c.keys.contains(&key("shop/web")));
        assert!(s.issues.is_empty());
        assert_eq!(s.pods[&key("shop/web")].labels["app"], "b");
    }

    #[test]
    fn deleting_an_invalid_object_clears_its_issue() {
        let mut s = Store::new();
        s.apply_all([Event::Invalid(key("shop/web"), issue("bad"))]);
        assert!(s.pods.is_empty());
        let c = s.apply_all([Event::Deleted(key("shop/web"))]);
        assert!(c.issues);
        assert!(s.issues.is_empty());
    }

    #[test]
    fn value_of_the_wrong_kind_is_ignored() {
        let mut s = Store::new();
        let c = s.apply_all([Event::Applied(Key::new(Kind::Node, "x"), pod("web", "a"))]);
        assert!(c.is_empty());
        assert!(s.nodes.is_empty() && s.pods.is_empty());
    }
}
