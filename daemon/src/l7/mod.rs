//! The node's transparent HTTP proxy: L7 policy without sidecars.
//!
//! nftables steers exactly the new TCP connections whose deciding rule has
//! `http` (on the source's egress, the destination's ingress, or both) to
//! the listener here (`dataplane::nftables::policy::tproxy`: `tproxy` to
//! `127.0.0.1:15001`, fwmark `0x04000000`, routing table 7331). For each
//! connection the proxy asks the policy program in force which rules decide
//! it ([`veil_policy::compile::Program::connection_rules`]) and checks every
//! request against every one of them ([`conn`]): allowed requests go to the
//! original destination from the client pod's own address (`IP_TRANSPARENT`),
//! denied ones get 403 naming the policy and rule. Per-edge metrics are in
//! [`metrics`]; denied requests and closed connections are also recorded as
//! denied flows.
//!
//! One proxy does the work: the source's node when it steers (its proxy
//! checks the destination's ingress `http` rules too, and marks its upstream
//! connection with DSCP 45, which the destination's node trusts only on
//! `veil-wg` and clears from anything else); otherwise the destination's.
//!
//! Fail closed: the steering rules are kernel state; with no listener (veild
//! down) a steered connection is refused with a reset. A restart loses only
//! the connections in flight. Bounded: at most [`Limits::max_connections`]
//! connections, headers of at most [`Limits::max_header_bytes`] read within
//! [`Limits::header_timeout`].
//!
//! It does not do TLS, HTTP/2, or IPv6.

pub mod conn;
pub mod decide;
pub mod metrics;
pub mod net;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use veil_graph::{Protocol as GraphProtocol, RuleRef};
use veil_policy::compile::{L7Rule, Program};

use crate::context::NodeContext;
use crate::controller::Desired;
use crate::datastore::Snapshot;
use crate::flows::deny::PacketHeader;
use crate::flows::{Flows, HttpRecordSink, HttpRequest as FlowHttpRequest};
use metrics::{Edge, L7Metrics};

pub use net::NetError;

/// The proxy's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Largest request head (hyper's read buffer; at least 8192).
    pub max_header_bytes: usize,
    /// Most header fields in a request.
    pub max_headers: usize,
    /// Time to send a request's head (slowloris), also between requests.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_384,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// What every connection shares.
pub struct Shared {
    /// The policy program in force.
    pub desired: watch::Receiver<Arc<Desired>>,
    /// The cluster (workload names of the metrics' edges).
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Metrics.
    pub metrics: L7Metrics,
    /// The node's flows, when the collector runs.
    pub flows: Option<Arc<Flows>>,
    /// The DNS allowances (`domains` peers), when the DNS proxy runs.
    pub names: Option<Arc<dyn decide::DomainNames>>,
    /// Bounds.
    pub limits: Limits,
}

impl Shared {
    /// The workloads of a connection's two ends.
    pub fn edge(&self, program: &Program, src: SocketAddr, dst: SocketAddr) -> Edge {
        let snap = self.snapshots.borrow().clone();
        let who = |ip| -> (String, String) {
            if let Some(ep) = program.endpoints.get(&ip) {
                let (ns, name) = ep.pod.split_once('/').unwrap_or(("", &ep.pod));
                let labels = snap
                    .pod(ns, name)
                    .map(|p| p.labels.clone())
                    .unwrap_or_default();
                return (
                    ns.to_string(),
                    veil_graph::derive_workload(&labels, None, name),
                );
            }
            if let Some(n) = program.nodes.get(&ip) {
                return ("node".into(), n.clone());
            }
            ("world".into(), "world".into())
        };
        let (src_namespace, src_workload) = who(src.ip());
        let (dst_namespace, dst_workload) = who(dst.ip());
        Edge {
            src_namespace,
            src_workload,
            dst_namespace,
            dst_workload,
        }
    }

    /// Records one answered (or refused) request on the graph's edge, so
    /// that `/api/v1/graph`, `/ui` and the `veil_http_*` series show it.
    pub fn record_request(
        &self,
        client: SocketAddr,
        server: SocketAddr,
        method: &str,
        status: u16,
        duration: Duration,
    ) {
        let Some(flows) = &self.flows else { return };
        flows.record_http(&FlowHttpRequest {
            time: crate::flows::now_ms(),
            client,
            server,
            method: method.to_string(),
            status,
            duration,
        });
    }

    /// Records a denied request or closed connection as a denied flow.
    pub fn record_denied(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        rule: Option<&L7Rule>,
        what: &str,
    ) {
        let Some(flows) = &self.flows else { return };
        let rule = match rule {
            Some(r) => {
                let (kind, name) = r.policy.split_once(' ').unwrap_or(("", &r.policy));
                RuleRef {
                    tier: r.tier.clone(),
                    kind: kind.to_string(),
                    policy: Some(name.to_string()),
                    rule: Some(r.index),
                    direction: r.direction.to_string().to_lowercase(),
                }
            }
            None => RuleRef {
                tier: "l7".into(),
                kind: String::new(),
                policy: None,
                rule: None,
                direction: "ingress".into(),
            },
        };
        tracing::debug!(src = %src, dst = %dst, what, "L7 denied flow recorded");
        let h = PacketHeader {
            protocol: GraphProtocol::Tcp,
            src: src.ip(),
            dst: dst.ip(),
            src_port: src.port(),
            dst_port: dst.port(),
            length: 0,
        };
        flows.ingest_denied(&h, Arc::new(rule), crate::flows::now_ms());
    }
}

/// Why the proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    /// Its sockets or routing.
    #[error(transparent)]
    Net(#[from] NetError),
}

/// Starts the proxy: the routing rule and table, the listener, the accept
/// loop (until shutdown) on the proxy's own thread, and the metrics on
/// `ctx`'s registry.
///
/// The proxy runs on a thread of its own (`veil-l7`) with a current-thread
/// runtime: a connection's readiness is seen and its task polled on the same
/// thread, so a request costs no wake-up of another thread (the daemon's
/// shared runtime would move it between workers and wake one per hop).
pub async fn start(
    ctx: &NodeContext,
    flows: Option<Arc<Flows>>,
    names: Option<Arc<dyn decide::DomainNames>>,
    limits: Limits,
) -> Result<(), L7Error> {
    net::install_routing().await?;
    let listener = net::listener_std(net::listen_addr())?;
    let metrics = L7Metrics::default();
    metrics.register(&mut ctx.metrics.lock().expect("metrics lock"));
    let shared = Arc::new(Shared {
        desired: ctx.desired.clone(),
        snapshots: ctx.snapshots.clone(),
        metrics,
        flows,
        names,
        limits,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetError::Socket {
            what: "runtime",
            source,
        })?;
    let shutdown = ctx.shutdown.clone();
    std::thread::Builder::new()
        .name("veil-l7".into())
        .spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => serve(l, shared, shutdown).await,
                    // Fail closed: no listener, steered connections are reset.
                    Err(e) => tracing::error!(error = %e, "L7 proxy: listener registration"),
                }
            });
        })
        .map_err(|source| NetError::Socket {
            what: "thread",
            source,
        })?;
    tracing::info!(listen = %net::listen_addr(), "L7 proxy listening");
    Ok(())
}

/// Accepts connections until shutdown.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "L7 proxy accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.metrics.closed("too many connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let sh = shared.clone();
        tokio::spawn(async move {
            conn::handle(stream, peer, sh).await;
            drop(slot);
        });
    }
}
