//! The Kubernetes datastore (`veild --datastore kube`): one kube-rs watcher
//! per kind (Nodes, Namespaces, Pods, Services, EndpointSlices ([`services`]), NetworkPolicy, AdminNetworkPolicy,
//! BaselineAdminNetworkPolicy, ClusterNetworkPolicy, and veil.dev Tier,
//! NetworkPolicy, GlobalNetworkPolicy), translated ([`reflect`]) into the
//! datastore's [`Event`]s and fed to the same [`super::store::Store`] (the
//! reflector store) as the local datastore's.
//!
//! - A kind whose CRD is not installed (404 on list) is skipped with one log
//!   line; its watcher keeps retrying with backoff and picks it up when the
//!   CRD appears.
//! - Watch errors (410 Gone, disconnects) relist with backoff
//!   ([`watch_backoff`]: 0.5 s doubling to 10 s, plus jitter, back to 0.5 s
//!   after any event received). Meanwhile nothing is emitted, so the node
//!   keeps enforcing the last known state.
//! - What `veild` publishes: only its Node's `veil.dev/` annotations (the
//!   WireGuard key and endpoint, [`node`]). Local endpoints are not written
//!   to the API server (kubelet reports pod IPs); they go straight into the
//!   watch so that the node knows its own pods before kubelet reports them.
//! - Status of veil.dev policies and Events for invalid ones are written by
//!   the daemon holding a Lease ([`status`], [`lease`]).
//!
//! Every API call this module makes is listed in [`API_ACCESS`]; a test
//! compares that table with the ClusterRole in deploy/.
//!
//! It does not interpret policies beyond checking that they parse (the
//! controller compiles them), and never talks to the API from the CNI plugin.

mod access;
pub mod convert;
pub mod lease;
pub mod node;
pub mod reflect;
pub mod services;
pub mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc::{self, UnboundedSender};

pub use self::access::{ApiAccess, API_ACCESS};
use self::reflect::{KindReflector, SyncGate};
use self::status::{StatusItem, StatusMsg};
use super::{Datastore, DatastoreError, EndpointRecord, Event, EventStream, Key, Kind, NodeRecord};

/// A policy kind read as a dynamic object.
#[derive(Debug, Clone, Copy)]
pub struct PolicyKind {
    /// API group.
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Resource (plural).
    pub plural: &'static str,
    /// Whether a CRD provides it (absent CRD: skipped, picked up later).
    pub crd: bool,
    /// Whether Veil writes its status (veil.dev kinds).
    pub status: bool,
    /// `plural.group`: the kind's name in logs and in the sync gate.
    pub id: &'static str,
}

impl PolicyKind {
    /// `group/version`.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// The kube-rs resource description.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}

const fn policy_kind(
    id: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    crd: bool,
    status: bool,
) -> PolicyKind {
    PolicyKind {
        group,
        version,
        kind,
        plural,
        crd,
        status,
        id,
    }
}

/// Every policy kind watched.
pub const POLICY_KINDS: &[PolicyKind] = &[
    policy_kind(
        "networkpolicies.networking.k8s.io",
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        false,
        false,
    ),
    policy_kind(
        "adminnetworkpolicies.policy.networking.k8s.io",
        "policy.networking.k8s.io",
        "v1alpha1",
        "AdminNetworkPolicy",
        "adminnetworkpolicies",
        true,
        false,
    ),
    policy_kind(
        "baselineadminnetworkpolicies.policy.networking.k8s.io",
        "policy.networking.k8s.io",
        "v1alpha1",
        "BaselineAdminNetworkPolicy",
        "baselineadminnetworkpolicies",
        true,
        false,
    ),
    policy_kind(
        "clusternetworkpolicies.policy.networking.k8s.io",
        "policy.networking.k8s.io",
        "v1alpha2",
        "ClusterNetworkPolicy",
        "clusternetworkpolicies",
        true,
        false,
    ),
    policy_kind(
        "tiers.veil.dev",
        "veil.dev",
        "v1alpha1",
        "Tier",
        "tiers",
        true,
        true,
    ),
    policy_kind(
        "networkpolicies.veil.dev",
        "veil.dev",
        "v1alpha1",
        "NetworkPolicy",
        "networkpolicies",
        true,
        true,
    ),
    policy_kind(
        "globalnetworkpolicies.veil.dev",
        "veil.dev",
        "v1alpha1",
        "GlobalNetworkPolicy",
        "globalnetworkpolicies",
        true,
        true,
    ),
];

/// How to reach the API server and where the status Lease lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// A kubeconfig file; `None`: in-cluster (or `KUBECONFIG`, `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the status Lease (the DaemonSet's namespace).
    pub lease_namespace: String,
}

/// Why talking to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable client configuration.
    #[error("kubernetes client configuration ({source_of}): {reason}")]
    Config {
        /// In-cluster, or the kubeconfig's path.
        source_of: String,
        /// Why.
        reason: String,
    },
    /// An API call failed.
    #[error("kubernetes API: {what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// This node's Node object lacks something Veil needs.
    #[error("node {node}: {field}: {reason}")]
    Node {
        /// Node name.
        node: String,
        /// Field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl From<KubeError> for DatastoreError {
    fn from(e: KubeError) -> Self {
        DatastoreError::Kube(e.to_string())
    }
}

/// A client from a kubeconfig file, or in-cluster / inferred.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| KubeError::Config {
                source_of: path.display().to_string(),
                reason: e.to_string(),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Config {
                    source_of: path.display().to_string(),
                    reason: e.to_string(),
                })?
        }
        None => kube::Config::infer().await.map_err(|e| KubeError::Config {
            source_of: "in-cluster or KUBECONFIG".into(),
            reason: e.to_string(),
        })?,
    };
    Client::try_from(config).map_err(|source| KubeError::Api {
        what: "building the client".into(),
        source,
    })
}

/// The datastore backed by the Kubernetes API.
pub struct KubeDatastore {
    client: Client,
    node_name: String,
    lease_namespace: String,
    runtime: tokio::runtime::Handle,
    /// Endpoints this node published (replayed into every new watch).
    local: Mutex<BTreeMap<Key, EndpointRecord>>,
    /// Senders of the live watches (local endpoints go straight in).
    watches: Mutex<Vec<UnboundedSender<Event>>>,
}

impl KubeDatastore {
    /// A datastore over `client` for node `node_name`. Must be called from
    /// within a tokio runtime (its tasks run there).
    pub fn new(client: Client, node_name: &str, lease_namespace: &str) -> Self {
        KubeDatastore {
            client,
            node_name: node_name.to_string(),
            lease_namespace: lease_namespace.to_string(),
            runtime: tokio::runtime::Handle::current(),
            local: Mutex::new(BTreeMap::new()),
            watches: Mutex::new(Vec::new()),
        }
    }

    fn broadcast(&self, event: Event) {
        let mut w = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|tx| tx.send(event.clone()).is_ok());
    }

    fn local_key(&self, container_id: &str, ifname: &str) -> Key {
        Key::new(
            Kind::Endpoint,
            format!("local/{}/{container_id}/{ifname}", self.node_name),
        )
    }
}

/// The retry delays of every watch: 0.5 s doubling to 10 s, each plus a
/// random jitter up to itself, never giving up, and back to 0.5 s after any
/// event received. kube-rs's default (client-go's: up to 30 s, reset only
/// after 120 s without errors) would keep a node up to a minute behind
/// after an outage: a reconnect waits its 30 s and the `410 Gone` that
/// follows it (history compacted meanwhile) another 30 s. The jitter keeps
/// the nodes of a cluster from retrying in step.
pub fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(500))
        .with_max_delay(std::time::Duration::from_secs(10))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// Kind names, as in logs and in the sync gate.
const KIND_NODES: &str = "nodes";
const KIND_NAMESPACES: &str = "namespaces";
const KIND_PODS: &str = "pods";
const KIND_SERVICES: &str = "services";
const KIND_ENDPOINT_SLICES: &str = "endpointslices.discovery.k8s.io";

fn is_not_found(e: &watcher::Error) -> bool {
    let err = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(s) => return s.code == 404,
        watcher::Error::NoResourceVersion => return false,
    };
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

/// Runs one kind's watch stream into `tx` until the receiver is gone.
/// `optional`: a 404 means the CRD is absent (logged once, counted as synced).
pub async fn run_kind<K, S, C>(
    name: &'static str,
    optional: bool,
    stream: S,
    convert: C,
    tx: UnboundedSender<Event>,
    gate: Arc<SyncGate>,
) where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    C: Fn(&K) -> Vec<(Key, convert::Outcome)>,
{
    let mut reflector = KindReflector::new();
    let mut absent_logged = false;
    let mut out = Vec::new();
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(ev) => {
                if reflector.on_event(ev, &convert, &mut out) {
                    tracing::debug!(kind = name, objects = reflector.len(), "kubernetes: listed");
                    if absent_logged {
                        tracing::info!(kind = name, "kubernetes: CRD now installed, watching");
                        absent_logged = false;
                    }
                    gate.done(name);
                }
                for e in out.drain(..) {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
            }
            Err(e) if optional && is_not_found(&e) => {
                if !absent_logged {
                    tracing::info!(
                        kind = name,
                        "kubernetes: CRD not installed: kind skipped until it appears"
                    );
                    absent_logged = true;
                }
                gate.done(name);
            }
            Err(e) => {
                tracing::warn!(kind = name, error = %e, "kubernetes: watch failed; keeping the last known state, retrying with backoff");
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

impl Datastore for KubeDatastore {
    fn watch(&self) -> Result<EventStream, DatastoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut names = vec![
            KIND_NODES,
            KIND_NAMESPACES,
            KIND_PODS,
            KIND_SERVICES,
            KIND_ENDPOINT_SLICES,
        ];
        names.extend(POLICY_KINDS.iter().map(|k| k.id));
        let gate = Arc::new(SyncGate::new(names, tx.clone()));
        let cfg = watcher::Config::default;
        let c = &self.client;
        let rt = &self.runtime;
        rt.spawn(run_kind(
            KIND_NODES,
            false,
            watcher(Api::<Node>::all(c.clone()), cfg()).backoff(watch_backoff()),
            convert::node,
            tx.clone(),
            gate.clone(),
        ));
        rt.spawn(run_kind(
            KIND_NAMESPACES,
            false,
            watcher(Api::<Namespace>::all(c.clone()), cfg()).backoff(watch_backoff()),
            convert::namespace,
            tx.clone(),
            gate.clone(),
        ));
        rt.spawn(run_kind(
            KIND_PODS,
            false,
            watcher(Api::<Pod>::all(c.clone()), cfg()).backoff(watch_backoff()),
            convert::pod,
            tx.clone(),
            gate.clone(),
        ));
        rt.spawn(run_kind(
            KIND_SERVICES,
            false,
            watcher(Api::<Service>::all(c.clone()), cfg()).backoff(watch_backoff()),
            services::service,
            tx.clone(),
            gate.clone(),
        ));
        rt.spawn(run_kind(
            KIND_ENDPOINT_SLICES,
            false,
            watcher(Api::<EndpointSlice>::all(c.clone()), cfg()).backoff(watch_backoff()),
            services::endpoint_slice,
            tx.clone(),
            gate.clone(),
        ));
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        for pk in POLICY_KINDS {
            let ar = pk.api_resource();
            let api = Api::<DynamicObject>::all_with(c.clone(), &ar);
            let status_tx = status_tx.clone();
            let stream = watcher(api, cfg())
                .backoff(watch_backoff())
                .inspect(move |ev| {
                    if let Some(m) = ev.as_ref().ok().and_then(|ev| status_message(pk, ev)) {
                        let _ = status_tx.send(m);
                    }
                });
            let convert = move |obj: &DynamicObject| policy_outcome(pk, obj);
            rt.spawn(run_kind(
                pk.id,
                pk.crd,
                stream,
                convert,
                tx.clone(),
                gate.clone(),
            ));
        }
        rt.spawn(status::run(
            self.client.clone(),
            lease::LeaseElector::new(
                self.client.clone(),
                &self.lease_namespace,
                status::LEASE_NAME,
                &self.node_name,
            ),
            self.node_name.clone(),
            status_rx,
            tx.clone(),
        ));
        {
            let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in local.iter() {
                let _ = tx.send(Event::Applied(
                    k.clone(),
                    super::Resource::Endpoint(v.clone()),
                ));
            }
        }
        self.watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        Ok(rx)
    }

    fn put_node(&self, rec: &NodeRecord) -> Result<(), DatastoreError> {
        if rec.name != self.node_name {
            return Err(DatastoreError::InvalidName(rec.name.clone()));
        }
        let api = Api::<Node>::all(self.client.clone());
        let name = self.node_name.clone();
        let annotations = node::veil_annotations(rec);
        self.runtime.spawn(async move {
            if let Err(e) = node::patch_annotations(&api, &name, &annotations).await {
                tracing::error!(node = %name, error = %e, "kubernetes: publishing the node's annotations");
            }
        });
        Ok(())
    }

    fn put_endpoint(&self, endpoint: &EndpointRecord) -> Result<(), DatastoreError> {
        let key = self.local_key(&endpoint.container_id, &endpoint.ifname);
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), endpoint.clone());
        self.broadcast(Event::Applied(
            key,
            super::Resource::Endpoint(endpoint.clone()),
        ));
        Ok(())
    }

    fn delete_endpoint(
        &self,
        _node: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), DatastoreError> {
        let key = self.local_key(container_id, ifname);
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.broadcast(Event::Deleted(key));
        Ok(())
    }
}

/// A policy object's outcome (its document, or why it is invalid).
pub fn policy_outcome(pk: &PolicyKind, obj: &DynamicObject) -> Vec<(Key, convert::Outcome)> {
    let (key, result) = convert::policy(&pk.api_version(), pk.kind, pk.plural, pk.group, obj);
    vec![(key, Some(result.map(super::Resource::Policy)))]
}

/// What the status writer must hear of a watcher event of a veil.dev kind:
/// an object seen (with whether it parses), or an object gone.
pub fn status_message(pk: &PolicyKind, event: &watcher::Event<DynamicObject>) -> Option<StatusMsg> {
    if !pk.status {
        return None;
    }
    match event {
        watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
            let (key, result) =
                convert::policy(&pk.api_version(), pk.kind, pk.plural, pk.group, obj);
            Some(StatusMsg::Set(Box::new(StatusItem {
                kind: *pk,
                origin: key.name,
                namespace: obj.namespace(),
                name: obj.name_any(),
                uid: obj.uid(),
                generation: obj.metadata.generation,
                verdict: result.map(|_| ()),
                current: obj.data.get("status").cloned(),
            })))
        }
        watcher::Event::Delete(obj) => Some(StatusMsg::Gone(convert::policy_origin(
            pk.plural,
            pk.group,
            obj.namespace().as_deref(),
            &obj.name_any(),
        ))),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_api;
