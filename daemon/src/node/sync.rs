//! The glue from the datastore to the controller: applies the watch's events
//! to the [`Store`], runs the [`Controller`] on what changed and publishes
//! the results on watch channels: the cluster [`Snapshot`] (flows,
//! WireGuard) and the [`Desired`] state (the dataplane). Also keeps the local
//! endpoints' labels and published records in line with the datastore.
//!
//! The controller stays pure; this is where its inputs are gathered (the
//! event stream, the endpoint table) and its output is shared.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::context::NodeContext;
use crate::controller::{Controller, Desired, LocalEndpoint};
use crate::datastore::store::{Changes, Store};
use crate::datastore::{DatastoreError, EndpointRecord, EventStream, SharedDatastore, Snapshot};
use crate::endpoints::{EndpointState, EndpointTable};

/// What the glue publishes.
pub struct Published {
    /// The cluster state as lists; changes when the datastore changes.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The desired state of this node's dataplane.
    pub desired: watch::Receiver<Arc<Desired>>,
}

fn local_endpoints(table: &EndpointTable) -> Vec<LocalEndpoint> {
    table
        .list()
        .into_iter()
        .map(|e| LocalEndpoint {
            pod: match (&e.pod_namespace, &e.pod_name) {
                (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
                _ => None,
            },
            container_id: e.container_id.clone(),
            ifname: e.ifname.clone(),
            host_ifname: e.host_ifname.clone(),
            ips: e.ips.clone(),
            ready: e.state == EndpointState::Ready,
        })
        .collect()
}

/// Receives events until the first [`Event::Synced`], applying them.
async fn initial_sync(rx: &mut EventStream, store: &mut Store) -> Result<Changes, DatastoreError> {
    let mut changes = Changes::default();
    while !store.synced {
        match rx.recv().await {
            Some(e) => store.apply(e, &mut changes),
            None => {
                return Err(DatastoreError::Io {
                    path: "datastore watch".into(),
                    source: std::io::Error::other("the watch ended before its initial listing"),
                })
            }
        }
    }
    Ok(changes)
}

/// Starts the watch, waits for its initial listing, runs the controller once,
/// and keeps both up to date in a task. `endpoints_changed` is told when the
/// endpoint table changes.
pub async fn start(
    datastore: &SharedDatastore,
    node: &str,
    endpoints: Arc<EndpointTable>,
    endpoints_changed: Arc<Notify>,
) -> Result<Published, DatastoreError> {
    let mut rx = datastore.watch()?;
    let mut store = Store::new();
    let changes = initial_sync(&mut rx, &mut store).await?;
    let mut ctrl = Controller::new(node);
    ctrl.on_changes(&store, &changes);
    for i in store.issues.values() {
        tracing::warn!(object = %i.object, field = %i.field, reason = %i.reason, "datastore object not readable");
    }
    let (snap_tx, snapshots) = watch::channel(Arc::new(store.snapshot()));
    let (desired_tx, desired) =
        watch::channel(Arc::new(ctrl.desired(&store, local_endpoints(&endpoints))));
    tokio::spawn(async move {
        loop {
            let mut changes = Changes::default();
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => store.apply(e, &mut changes),
                    None => return,
                },
                _ = endpoints_changed.notified() => {}
            }
            // Take the whole burst at once.
            while let Ok(e) = rx.try_recv() {
                store.apply(e, &mut changes);
            }
            if !changes.keys.is_empty() || changes.issues {
                for k in &changes.keys {
                    tracing::debug!(key = %k, "datastore change");
                }
                // Compiling may take a while: keep the runtime's other tasks going.
                let changed = tokio::task::block_in_place(|| ctrl.on_changes(&store, &changes));
                if changed {
                    tracing::info!(
                        generation = ctrl.policy().generation(),
                        "policy program updated"
                    );
                }
                let _ = snap_tx.send(Arc::new(store.snapshot()));
            }
            let next = ctrl.desired(&store, local_endpoints(&endpoints));
            desired_tx.send_if_modified(|d| {
                let same = d.generation == next.generation
                    && d.endpoints == next.endpoints
                    && d.policy_errors == next.policy_errors
                    && d.synced == next.synced
                    && d.tunnels == next.tunnels;
                if !same {
                    *d = Arc::new(next);
                }
                !same
            });
            if snap_tx.is_closed() && desired_tx.is_closed() {
                return;
            }
        }
    });
    Ok(Published { snapshots, desired })
}

/// Keeps local endpoints' labels and published records in line with the datastore.
pub(super) async fn resync(ctx: NodeContext) {
    let mut rx = ctx.snapshots.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        let snap = rx.borrow_and_update().clone();
        for ep in ctx.endpoints.list() {
            if let (Some(ns), Some(name)) = (&ep.pod_namespace, &ep.pod_name) {
                if let Some(p) = snap.pod(ns, name) {
                    ctx.endpoints.set_labels(ns, name, &p.labels);
                }
            }
            if ep.state == EndpointState::Ready {
                let published = snap.endpoints.iter().any(|r| {
                    r.node == ctx.config.node_name
                        && r.container_id == ep.container_id
                        && r.ifname == ep.ifname
                        && r.ips == ep.ips
                });
                if !published {
                    let rec = EndpointRecord {
                        node: ctx.config.node_name.clone(),
                        container_id: ep.container_id.clone(),
                        ifname: ep.ifname.clone(),
                        pod_namespace: ep.pod_namespace.clone(),
                        pod_name: ep.pod_name.clone(),
                        ips: ep.ips.clone(),
                    };
                    let _ = ctx.datastore.put_endpoint(&rec);
                }
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}
