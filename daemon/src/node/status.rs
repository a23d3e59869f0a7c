//! `node.status`: what the node reports about itself (address, CIDR, MTU,
//! readiness, endpoints, datastore problems, policy generation and errors).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use veil_api::ApiError;

use crate::context::NodeContext;
use crate::controller::Desired;
use crate::datastore::Issue;
use crate::endpoints::EndpointState;

/// What `status` answers about the node.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// Underlay address.
    pub address: String,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// Pod MTU.
    pub mtu: u32,
    /// Ready.
    pub ready: bool,
    /// Endpoints.
    pub endpoints: Vec<EndpointStatus>,
    /// Problems the datastore reported.
    pub datastore_errors: Vec<String>,
    /// Generation of the policy program (increments when it changes).
    #[serde(default)]
    pub policy_generation: u64,
    /// Why policies are not in force as written (object, field, reason).
    #[serde(default)]
    pub policy_errors: Vec<Issue>,
}

/// One endpoint in `status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// `namespace/name` or container ID.
    pub pod: String,
    /// Addresses.
    pub ips: Vec<String>,
    /// Host veth.
    pub host_ifname: String,
    /// pending / ready.
    pub state: String,
}

/// Registers `node.status`.
pub(super) fn register_status(
    ctx: &NodeContext,
    desired: tokio::sync::watch::Receiver<Arc<Desired>>,
    ready: Arc<AtomicBool>,
    mtu: u32,
) {
    let c = ctx.clone();
    ctx.api
        .register("node.status", move |_: serde_json::Value| {
            let c = c.clone();
            let ready = ready.clone();
            let desired = desired.borrow().clone();
            async move {
                let snap = c.snapshots.borrow().clone();
                Ok::<_, ApiError>(NodeStatus {
                    node: c.config.node_name.clone(),
                    address: c.config.node_address.to_string(),
                    pod_cidr: c.config.pod_cidr.to_string(),
                    mtu,
                    ready: ready.load(Ordering::SeqCst),
                    endpoints: c
                        .endpoints
                        .list()
                        .into_iter()
                        .map(|e| EndpointStatus {
                            pod: e.display_name(),
                            ips: e.ips.iter().map(|i| i.ip().to_string()).collect(),
                            host_ifname: e.host_ifname.clone(),
                            state: match e.state {
                                EndpointState::Pending => "pending".into(),
                                EndpointState::Ready => "ready".into(),
                            },
                        })
                        .collect(),
                    datastore_errors: snap.errors.clone(),
                    policy_generation: desired.generation,
                    policy_errors: desired.policy_errors.clone(),
                })
            }
        });
}
