//! The policy half of the controller (pure): the datastore's pods,
//! namespaces, nodes and policy manifests → a validated
//! [`PolicySet`] and veil-policy's incrementally compiled [`Program`].
//!
//! - A pod appearing, going or changing labels, ports or address goes
//!   through [`Compiled::update_pod`] (set membership and its own chains),
//!   a namespace through [`Compiled::update_namespace`], nodes through
//!   [`Compiled::update_nodes`]; only a change of the policies themselves
//!   recompiles the rules ([`Compiled::update_policies`]).
//! - A manifest that does not validate never enters the [`PolicySet`]: its
//!   last good version (if any) stays in force and the error (object, field,
//!   reason) is kept for `node.status`. An object that breaks the set as a
//!   whole (a policy naming a tier that does not exist, two tiers with one
//!   order) falls back to its version in force, or is left out.
//! - The generation counts changes of the program.
//!
//! A pod is in the policy cluster once it has an address: its endpoint's
//! (published by the node that wired it) or, for hostNetwork pods, its
//! node's. It does no IO.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use veil_policy::cluster::{Cluster, Node, Pod, PodPort};
use veil_policy::compile::{Compiled, Program};
use veil_policy::kinds::ObjectBody;
use veil_policy::model::Protocol;
use veil_policy::{Object, PolicyError, PolicySet};

use crate::datastore::store::{Changes, Store};
use crate::datastore::{Issue, Key, Kind};

/// One policy document and what became of it.
#[derive(Debug, Clone, Default)]
struct Source {
    origin: String,
    /// The last version that validated on its own.
    valid: Option<Object>,
    /// Why the current version does not validate.
    issue: Option<Issue>,
    /// The version in the set in force.
    in_force: Option<Object>,
}

/// The policy inputs of the cluster and the compiled program.
#[derive(Debug, Default)]
pub struct PolicyState {
    initialized: bool,
    cluster: Cluster,
    set: PolicySet,
    compiled: Compiled,
    program: Arc<Program>,
    generation: u64,
    sources: BTreeMap<Key, Source>,
    /// Objects left out of (or rolled back in) the set as a whole.
    rejected: BTreeMap<Key, Issue>,
    pod_ids: HashMap<Key, String>,
    pod_keys: HashMap<String, BTreeSet<Key>>,
    ep_ids: HashMap<Key, String>,
    ep_keys: HashMap<String, BTreeSet<Key>>,
    ns_ids: HashMap<Key, String>,
}

fn link(
    ids: &mut HashMap<Key, String>,
    keys: &mut HashMap<String, BTreeSet<Key>>,
    key: &Key,
    new: Option<String>,
    touched: &mut BTreeSet<String>,
) {
    if let Some(old) = ids.remove(key) {
        if let Some(set) = keys.get_mut(&old) {
            set.remove(key);
            if set.is_empty() {
                keys.remove(&old);
            }
        }
        touched.insert(old);
    }
    if let Some(id) = new {
        keys.entry(id.clone()).or_default().insert(key.clone());
        ids.insert(key.clone(), id.clone());
        touched.insert(id);
    }
}

fn protocol(s: &str) -> Option<Protocol> {
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn issue_of(e: &PolicyError, origin: &str) -> Issue {
    match e {
        PolicyError::Invalid {
            object,
            field,
            reason,
        } => Issue {
            object: format!("{object} ({origin})"),
            field: field.clone(),
            reason: reason.clone(),
        },
        PolicyError::UnknownKind {
            object,
            api_version,
            kind,
        } => Issue {
            object: format!("{object} ({origin})"),
            field: "kind".into(),
            reason: format!("unknown kind {kind:?} of apiVersion {api_version:?}"),
        },
    }
}

/// Whether `e` is about object `o`.
fn blames(e: &PolicyError, o: &Object) -> bool {
    let PolicyError::Invalid { object, .. } = e else {
        return false;
    };
    *object == o.key.to_string()
        || matches!(&o.body, ObjectBody::Tier(t) if *object == format!("tier {}", t.name))
}

/// Each node's tunnel address (the first host address of its first IPv4
/// pod CIDR: the source of its traffic to pods of other nodes) by the node's
/// address.
pub fn tunnels(store: &Store) -> BTreeMap<std::net::IpAddr, std::net::IpAddr> {
    store
        .nodes
        .values()
        .filter_map(|n| {
            let cidr = n.pod_cidrs.iter().find(|c| c.is_ipv4())?;
            let std::net::IpAddr::V4(net) = cidr.network() else {
                return None;
            };
            let first = std::net::Ipv4Addr::from(u32::from(net).checked_add(1)?);
            Some((n.address, std::net::IpAddr::V4(first)))
        })
        .collect()
}

impl PolicyState {
    /// Nothing known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The program in force.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }

    /// Increments each time the program changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The policy set in force.
    pub fn policy_set(&self) -> &PolicySet {
        &self.set
    }

    /// The cluster as the compiler sees it.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The compiler state (sets, program).
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// Every reason a policy is not in force as written: documents that do
    /// not parse (from the store), objects that do not validate, objects
    /// that break the set.
    pub fn errors(&self, store: &Store) -> Vec<Issue> {
        let mut v: Vec<Issue> = store
            .issues
            .iter()
            .filter(|(k, _)| k.kind == Kind::Policy)
            .map(|(_, i)| i.clone())
            .collect();
        v.extend(self.sources.values().filter_map(|s| s.issue.clone()));
        v.extend(self.rejected.values().cloned());
        v
    }

    /// Takes in what changed in the store. Returns whether the program changed.
    pub fn update(&mut self, store: &Store, changes: &Changes) -> bool {
        if !self.initialized {
            return self.initialize(store);
        }
        let mut pods = BTreeSet::new();
        let mut namespaces = BTreeSet::new();
        let mut nodes = false;
        let mut policies: BTreeMap<Key, Option<Object>> = BTreeMap::new();
        for key in &changes.keys {
            match key.kind {
                Kind::Pod => {
                    let id = store
                        .pods
                        .get(key)
                        .map(|p| format!("{}/{}", p.namespace, p.name));
                    link(&mut self.pod_ids, &mut self.pod_keys, key, id, &mut pods);
                }
                Kind::Endpoint => {
                    let id = store.endpoints.get(key).and_then(|e| {
                        Some(format!(
                            "{}/{}",
                            e.pod_namespace.as_ref()?,
                            e.pod_name.as_ref()?
                        ))
                    });
                    link(&mut self.ep_ids, &mut self.ep_keys, key, id, &mut pods);
                }
                Kind::Namespace => {
                    if let Some(old) = self.ns_ids.remove(key) {
                        namespaces.insert(old);
                    }
                    if let Some(ns) = store.namespaces.get(key) {
                        self.ns_ids.insert(key.clone(), ns.name.clone());
                        namespaces.insert(ns.name.clone());
                    }
                }
                Kind::Node => nodes = true,
                // Policy selects pods, not Services: names for the flows only.
                Kind::Service | Kind::EndpointSlice => {}
                Kind::Policy => {
                    let in_force = self.sources.get(key).and_then(|s| s.in_force.clone());
                    policies.entry(key.clone()).or_insert(in_force);
                    self.read_policy(store, key);
                }
            }
        }
        if nodes {
            let next = self.nodes_of(store);
            if next != self.cluster.nodes {
                self.cluster.nodes = next;
                self.compiled.update_nodes(&self.cluster);
            }
            // hostNetwork pods take their node's address.
            pods.extend(
                store
                    .pods
                    .values()
                    .filter(|p| p.host_network)
                    .map(|p| format!("{}/{}", p.namespace, p.name)),
            );
        }
        for ns in namespaces {
            let next = self.namespace_labels(store, &ns);
            if self.cluster.namespaces.get(&ns) != next.as_ref() {
                match next {
                    Some(l) => self.cluster.namespaces.insert(ns.clone(), l),
                    None => self.cluster.namespaces.remove(&ns),
                };
                self.compiled.update_namespace(&self.cluster, &ns);
            }
        }
        for id in pods {
            let next = self.pod_of(store, &id);
            if self.cluster.pods.get(&id) != next.as_ref() {
                match next {
                    Some(p) => self.cluster.pods.insert(id.clone(), p),
                    None => self.cluster.pods.remove(&id),
                };
                self.compiled.update_pod(&self.cluster, &id);
            }
        }
        if !policies.is_empty() {
            let changed = match self.update_set(&policies) {
                Some(changed) => changed,
                None => {
                    let next = self.build_set();
                    let changed = next != self.set;
                    self.set = next;
                    changed
                }
            };
            if changed {
                self.compiled.update_policies(&self.cluster, &self.set);
            }
        }
        self.publish(false)
    }

    /// The first time: everything from the store, one full compile.
    fn initialize(&mut self, store: &Store) -> bool {
        let mut sink = BTreeSet::new();
        for (k, p) in &store.pods {
            let id = format!("{}/{}", p.namespace, p.name);
            link(
                &mut self.pod_ids,
                &mut self.pod_keys,
                k,
                Some(id),
                &mut sink,
            );
        }
        for (k, e) in &store.endpoints {
            if let (Some(ns), Some(name)) = (&e.pod_namespace, &e.pod_name) {
                let id = format!("{ns}/{name}");
                link(&mut self.ep_ids, &mut self.ep_keys, k, Some(id), &mut sink);
            }
        }
        for (k, ns) in &store.namespaces {
            self.ns_ids.insert(k.clone(), ns.name.clone());
        }
        let keys: Vec<Key> = store.policies.keys().cloned().collect();
        for k in &keys {
            self.read_policy(store, k);
        }
        self.cluster.nodes = self.nodes_of(store);
        for ns in self.ns_ids.values().cloned().collect::<BTreeSet<_>>() {
            if let Some(l) = self.namespace_labels(store, &ns) {
                self.cluster.namespaces.insert(ns, l);
            }
        }
        for id in sink {
            if let Some(p) = self.pod_of(store, &id) {
                self.cluster.pods.insert(id, p);
            }
        }
        self.set = self.build_set();
        self.compiled = Compiled::new(&self.cluster, &self.set);
        self.initialized = true;
        self.publish(true)
    }

    fn publish(&mut self, force: bool) -> bool {
        let program = self.compiled.program();
        if !force && *program == *self.program {
            return false;
        }
        self.program = Arc::new(program.clone());
        self.generation += 1;
        true
    }

    fn read_policy(&mut self, store: &Store, key: &Key) {
        let Some(doc) = store.policies.get(key) else {
            self.sources.remove(key);
            return;
        };
        let src = self.sources.entry(key.clone()).or_default();
        src.origin = doc.origin.clone();
        match Object::from_value(&doc.manifest) {
            Ok(o) => {
                src.valid = Some(o);
                src.issue = None;
            }
            Err(e) => {
                tracing::info!(policy.origin = %doc.origin, error = %e, "policy rejected; last good version kept");
                src.issue = Some(issue_of(&e, &doc.origin));
            }
        }
    }

    /// The fast path of a change of some documents (`changed`: each one's
    /// object in force before): applies their valid objects to the set in
    /// force and deletes the objects of documents gone, without rebuilding
    /// the set. Returns whether the set changed, or `None` when the change
    /// needs [`Self::build_set`]: objects are left out of the set, a document
    /// names an object another document also names, or the set refuses the
    /// change (then the set is as before).
    fn update_set(&mut self, changed: &BTreeMap<Key, Option<Object>>) -> Option<bool> {
        if !self.rejected.is_empty() {
            return None;
        }
        let mut apply = Vec::new();
        let mut delete = Vec::new();
        for (key, old) in changed {
            let new = self.sources.get(key).and_then(|s| s.valid.as_ref());
            if new == old.as_ref() {
                continue;
            }
            let shared = |name: &veil_policy::model::ObjectKey| {
                self.sources.iter().any(|(k, s)| {
                    k != key
                        && (s.valid.as_ref().is_some_and(|o| o.key == *name)
                            || s.in_force.as_ref().is_some_and(|o| o.key == *name))
                })
            };
            if new.is_some_and(|n| shared(&n.key)) || old.as_ref().is_some_and(|o| shared(&o.key)) {
                return None;
            }
            if let Some(n) = new {
                apply.push(n.clone());
            }
            if let Some(o) = old {
                if new.is_none_or(|n| n.key != o.key) {
                    delete.push(o.clone());
                }
            }
        }
        if apply.is_empty() && delete.is_empty() {
            return Some(false);
        }
        let keys: Vec<_> = delete.iter().map(|o| o.key.clone()).collect();
        if self.set.delete(&keys).is_err() {
            return None;
        }
        if self.set.apply(apply).is_err() {
            // Put the deleted objects back (they were consistent with the rest).
            let restored = self.set.apply(delete);
            debug_assert!(restored.is_ok(), "restoring deleted objects: {restored:?}");
            return None;
        }
        for key in changed.keys() {
            if let Some(s) = self.sources.get_mut(key) {
                s.in_force = s.valid.clone();
            }
        }
        Some(true)
    }

    /// The largest consistent set: every valid object, except those that
    /// break the set (rolled back to their version in force, or left out).
    fn build_set(&mut self) -> PolicySet {
        self.rejected.clear();
        let mut chosen: BTreeMap<Key, Object> = self
            .sources
            .iter()
            .filter_map(|(k, s)| Some((k.clone(), s.valid.clone()?)))
            .collect();
        let mut rolled_back = HashSet::new();
        for _ in 0..=2 * chosen.len() {
            let mut set = PolicySet::new();
            let err = match set.apply(chosen.values().cloned()) {
                Ok(()) => {
                    for (k, s) in self.sources.iter_mut() {
                        s.in_force = chosen.get(k).cloned();
                    }
                    return set;
                }
                Err(e) => e,
            };
            let Some(key) = chosen
                .iter()
                .find(|(_, o)| blames(&err, o))
                .map(|(k, _)| k.clone())
            else {
                // Not attributable to one object: keep the set in force.
                self.rejected
                    .insert(Key::new(Kind::Policy, ""), issue_of(&err, "policy set"));
                return self.set.clone();
            };
            let src = &self.sources[&key];
            tracing::info!(policy.origin = %src.origin, error = %err, "policy rejected by the set");
            self.rejected
                .insert(key.clone(), issue_of(&err, &src.origin));
            match src.in_force.clone() {
                Some(prev)
                    if rolled_back.insert(key.clone()) && chosen.get(&key) != Some(&prev) =>
                {
                    chosen.insert(key, prev);
                }
                _ => {
                    chosen.remove(&key);
                }
            }
        }
        self.set.clone()
    }

    fn nodes_of(&self, store: &Store) -> Vec<Node> {
        let mut nodes: Vec<Node> = store
            .nodes
            .values()
            .map(|n| Node {
                name: n.name.clone(),
                labels: n.labels.clone(),
                address: n.address,
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.dedup_by(|a, b| a.name == b.name);
        nodes
    }

    fn namespace_labels(&self, store: &Store, ns: &str) -> Option<veil_policy::selector::Labels> {
        let key = self.ns_ids.iter().find(|(_, n)| *n == ns).map(|(k, _)| k)?;
        let mut labels = store.namespaces.get(key)?.labels.clone();
        labels.insert("kubernetes.io/metadata.name".into(), ns.to_string());
        Some(labels)
    }

    /// The pod `namespace/name` as the compiler sees it, if it has an address.
    fn pod_of(&self, store: &Store, id: &str) -> Option<Pod> {
        let (namespace, name) = id.split_once('/')?;
        let rec = self
            .pod_keys
            .get(id)
            .and_then(|ks| ks.iter().rev().find_map(|k| store.pods.get(k)));
        let ep = self
            .ep_keys
            .get(id)
            .and_then(|ks| ks.iter().find_map(|k| store.endpoints.get(k)));
        let node = rec
            .and_then(|r| r.node.clone())
            .or_else(|| ep.map(|e| e.node.clone()))?;
        let host_network = rec.is_some_and(|r| r.host_network);
        let ip = if host_network {
            self.cluster.node(&node)?.address
        } else {
            ep?.ips.first()?.ip()
        };
        Some(Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels: rec.map(|r| r.labels.clone()).unwrap_or_default(),
            node,
            ip,
            host_network,
            ports: rec
                .map(|r| {
                    r.ports
                        .iter()
                        .filter_map(|p| {
                            Some(PodPort {
                                name: p.name.clone(),
                                port: p.port,
                                protocol: protocol(&p.protocol)?,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}
