//! What every part of the daemon shares: configuration, datastore, the cluster
//! snapshot, the desired state, the local endpoint table, the metrics registry, the socket API and
//! the HTTP routes. Parts (WireGuard, flows, ...) receive a [`NodeContext`] at
//! start-up and register their methods, metrics and routes on it.

use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::api::ApiRegistry;
use crate::config::Config;
use crate::controller::Desired;
use crate::dataplane::nftables::policy::LogPrefixes;
use crate::datastore::{SharedDatastore, Snapshot};
use crate::endpoints::EndpointTable;

/// Shared daemon state handed to every part.
#[derive(Clone)]
pub struct NodeContext {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// The datastore.
    pub datastore: SharedDatastore,
    /// The latest cluster snapshot; changes when the datastore changes.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The desired state of this node's dataplane (policy program, local
    /// endpoints), from the controller.
    pub desired: watch::Receiver<Arc<Desired>>,
    /// What the kernel holds of the policy program (generation, endpoints).
    pub policy_applied: watch::Receiver<Arc<crate::node::policy_sync::AppliedPolicy>>,
    /// The NFLOG prefixes of the policy in force (deny and log attribution).
    pub log_prefixes: watch::Receiver<Arc<LogPrefixes>>,
    /// This node's endpoints.
    pub endpoints: Arc<EndpointTable>,
    /// Prometheus registry encoded on `/metrics`.
    pub metrics: Arc<Mutex<Registry>>,
    /// Methods served on the unix socket.
    pub api: ApiRegistry,
    /// Extra HTTP routes merged into the server (register before it starts).
    pub routes: Arc<Mutex<Vec<axum::Router>>>,
    /// Becomes `true` when the daemon shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl NodeContext {
    /// Adds HTTP routes to the daemon's server.
    pub fn add_routes(&self, router: axum::Router) {
        self.routes.lock().expect("routes lock").push(router);
    }
}
