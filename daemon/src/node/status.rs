//! `node.status`: what the node reports about itself (address, CIDR, MTU,
//! readiness, endpoints, datastore problems, policy generation and errors).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use veil_api::ApiError;

use crate::context::NodeContext;
use crate::controller::Desired;
use crate::endpoints::EndpointState;

pub use veil_api::{EndpointStatus, NodeStatus};

/// Registers `node.status`.
pub(super) fn register_status(
    ctx: &NodeContext,
    desired: tokio::sync::watch::Receiver<Arc<Desired>>,
    ready: Arc<AtomicBool>,
    mtu: u32,
) {
    let c = ctx.clone();
    ctx.api.register(
        veil_api::method::NODE_STATUS,
        move |_: serde_json::Value| {
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
                    policy_applied_generation: *c.policy_applied.borrow(),
                    dataplane_error: None,
                })
            }
        },
    );
}
