//! The flow collector: conntrack events (new, destroy) and periodic dumps of
//! the node's connection table, resolved to identities and fed to the node's
//! [`veil_graph::ServiceGraph`] and [`veil_graph::FlowLog`]. Serves them as HTTP routes
//! (`/api/v1/graph`, `/api/graph/fields`, `/api/graph/data`, `/api/health`,
//! `/ui`), socket methods (`graph.get`, `flows.list`, `flows.health`) and
//! Prometheus series (`veil_flows_total`, `veil_flow_bytes_total`, ...).
//!
//! Data flow: kernel → [`conntrack::ConntrackSource`] (a dedicated thread in
//! the daemon's network namespace, which is the node's) → [`Flows::ingest`]
//! (resolve both ends with [`resolve::Resolver`], apply the count-once rule,
//! feed the graph and the log under one lock, per datagram). DNS answers
//! crossing the node (NFLOG, [`dns`]) name the external addresses they gave.
//! Packets the policy dataplane denied (NFLOG, [`deny`]) become flow records
//! with verdict `denied` and the rule that decided.
//!
//! Invariants:
//! - Every event the kernel could not deliver (ENOBUFS) is counted in
//!   `veil_flow_events_lost_total` (one per overrun: the kernel does not say
//!   how many) and triggers a dump that re-reads the table.
//! - Metric labels are workloads, namespaces, port, protocol and verdict,
//!   never addresses or pod names; the series are bounded by the graph's
//!   edge cap and edges idle for 15 minutes are forgotten.
//! - Accounting (`nf_conntrack_acct`) and the dataplane's rules that make
//!   conntrack track the namespace are set in the daemon's namespace only,
//!   and never in the machine's initial namespace unless
//!   `VEIL_FLOW_HOST_NETNS=1` says the daemon owns the host (hostNetwork).
//! - WireGuard's own UDP between nodes and loopback traffic are not flows.
//!
//! Each connection becomes exactly one `new` and one `closed` flow record
//! (a [`veil_graph::Lifecycle`] in front of the graph and the log; a dump
//! closes open connections it no longer shows). HTTP requests from the L7
//! proxy come in through [`l7::HttpRecordSink`].
//!
//! Parts: `store` (the node's flows, no IO), `collector` (the loop),
//! [`conntrack`] (the netlink socket), `ctnetlink` (message codec, through
//! `netlink-packet-netfilter`), [`dns`] (NFLOG), [`resolve`] (address book),
//! [`l7`] (HTTP request records), [`services`] (Service names), `http`, `ui` and `metrics` (the surfaces). Options come from
//! [`crate::config::FlowConfig`]; nothing here reads the environment.

mod collector;
pub mod conntrack;
mod ctnetlink;
pub mod deny;
pub mod dns;
mod http;
#[cfg(test)]
mod interleave_tests;
pub mod l7;
mod metrics;
pub mod resolve;
pub mod services;
mod store;
#[cfg(test)]
mod testutil;
mod ui;
pub mod verdicts;

use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_graph::{FlowFilter, GraphLimits};

use crate::config::FlowConfig;
use crate::context::NodeContext;
use conntrack::NetlinkConntrack;
use resolve::{NamedNetwork, Resolver};

pub use collector::Collector;
pub use l7::{HttpRecordSink, HttpRequest};
pub use store::{now_ms, Flows, Health, HealthReport};

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The conntrack socket could not be opened or subscribed.
    #[error("flow collector: {0}")]
    Source(#[from] conntrack::SourceError),
    /// Turned off by `VEIL_FLOWS=off`.
    #[error("flow collector disabled (VEIL_FLOWS=off)")]
    Disabled,
    /// The collector thread could not be started.
    #[error("flow collector: cannot start thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Collector options: the configurable ones come from [`FlowConfig`]
/// (`VEIL_FLOW_DUMP_SECONDS`, `VEIL_EXTERNAL_NETWORKS`, `VEIL_FLOW_MAX_EDGES`,
/// `VEIL_FLOW_HOST_NETNS`), the rest are fixed.
#[derive(Debug, Clone)]
pub struct FlowOptions {
    /// How often the whole table is read (long-lived connections' counters).
    pub dump_interval: Duration,
    /// Operator-named external networks.
    pub networks: Vec<NamedNetwork>,
    /// Graph caps.
    pub limits: GraphLimits,
    /// Flow log length.
    pub log_capacity: usize,
    /// Event socket receive buffer.
    pub receive_buffer: usize,
    /// Edges idle this long are forgotten.
    pub expire_after: Duration,
    /// Set accounting and the conntrack table in the initial namespace too.
    pub host_netns: bool,
}

impl Default for FlowOptions {
    fn default() -> Self {
        FlowOptions {
            dump_interval: Duration::from_secs(10),
            networks: Vec::new(),
            limits: GraphLimits {
                hash_seed: rand::random(),
                ..GraphLimits::default()
            },
            log_capacity: 10_000,
            receive_buffer: 32 << 20,
            expire_after: Duration::from_secs(15 * 60),
            host_netns: false,
        }
    }
}

impl FlowOptions {
    /// Defaults overridden by the daemon's configuration.
    pub fn from_config(c: &FlowConfig) -> Self {
        let mut o = FlowOptions {
            dump_interval: c.dump_interval,
            networks: c.external_networks.clone(),
            host_netns: c.host_netns,
            ..FlowOptions::default()
        };
        if let Some(n) = c.max_edges {
            o.limits.max_edges = n;
        }
        o
    }
}

/// What [`start`] returns: the shared flows (for the DNS proxy and the
/// policy datapath to add to).
#[derive(Debug, Clone)]
pub struct FlowHandle {
    /// The node's flows.
    pub flows: Arc<Flows>,
    /// The collector wants the dataplane's flow-logging rules (connection
    /// tracking, DNS answers to NFLOG group [`dns::NFLOG_GROUP`]).
    pub track_connections: bool,
}

fn resolver_of(ctx: &NodeContext, networks: &[NamedNetwork]) -> Resolver {
    let snap = ctx.snapshots.borrow().clone();
    let local = ctx.endpoints.list();
    let mut r = Resolver::new(
        &ctx.config.node_name,
        ctx.config.node_address,
        &snap,
        &local,
        networks,
    );
    r.add_local_node_address(ctx.endpoints.node_tunnel_address());
    r.set_services(services::ServiceBook::new(&snap, &local));
    r
}

/// Whether this process may be in the machine's initial network namespace:
/// true unless its namespace differs from PID 1's, or (when PID 1's is not
/// readable, as in containers) it is one of the named namespaces of
/// `/run/netns` (`ip netns`), as in the lab and the tests.
fn in_initial_netns() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata("/proc/self/ns/net") else {
        return true;
    };
    let same = |m: &std::fs::Metadata| m.ino() == me.ino() && m.dev() == me.dev();
    if let Ok(init) = std::fs::metadata("/proc/1/ns/net") {
        return same(&init);
    }
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| same(&m)));
    !named
}

/// Turns on conntrack accounting in the current namespace, and says whether
/// the collector wants the dataplane's flow-logging rules (`ct state new`
/// tracking, DNS answers to NFLOG) in `inet veil`: not in the machine's
/// initial namespace unless asked.
fn prepare_namespace(opts: &FlowOptions) -> bool {
    if in_initial_netns() && !opts.host_netns {
        tracing::warn!("flow collector in the machine's initial network namespace: not enabling conntrack accounting nor tracking (set VEIL_FLOW_HOST_NETNS=1 when veild owns the host)");
        return false;
    }
    if let Err(e) = std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1") {
        tracing::warn!(error = %e, "cannot enable conntrack accounting: byte counts will be zero");
    }
    true
}

/// Starts the collector with the options of the daemon's configuration
/// (`VEIL_FLOWS=off` turns it off: no flows, graph nor flow metrics on this node).
pub fn start(ctx: &NodeContext) -> Result<FlowHandle, FlowError> {
    if !ctx.config.flows.enabled {
        return Err(FlowError::Disabled);
    }
    start_with(ctx, FlowOptions::from_config(&ctx.config.flows))
}

/// Starts the collector: opens conntrack in the daemon's namespace, registers
/// routes, socket methods and metrics on `ctx`, and runs the collector thread
/// until `ctx.shutdown`.
pub fn start_with(ctx: &NodeContext, opts: FlowOptions) -> Result<FlowHandle, FlowError> {
    let track_connections = prepare_namespace(&opts);
    let source = NetlinkConntrack::open(opts.receive_buffer)?;
    tracing::info!(
        receive_buffer = source.receive_buffer(),
        "flow collector subscribed to conntrack events"
    );
    let flows = Arc::new(Flows::new(
        &ctx.config.node_name,
        ctx.config.wireguard_port,
        ctx.config.http_listen.port(),
        resolver_of(ctx, &opts.networks),
        &opts,
    ));
    register(ctx, flows.clone());

    let mut collector = Collector::new(source, flows.clone(), &opts);
    let ctx2 = ctx.clone();
    let networks = opts.networks.clone();
    let f2 = flows.clone();
    std::thread::Builder::new()
        .name("veil-flows".into())
        .spawn(move || {
            let mut snapshots = ctx2.snapshots.clone();
            let mut shutdown = ctx2.shutdown.clone();
            let mut last_refresh = Instant::now();
            let mut prefixes = ctx2.log_prefixes.clone();
            f2.set_rule_ids(prefixes.borrow_and_update().rule_ids());
            loop {
                if prefixes.has_changed().unwrap_or(false) {
                    f2.set_rule_ids(prefixes.borrow_and_update().rule_ids());
                }
                if *shutdown.borrow_and_update() {
                    break;
                }
                // Endpoints change without a snapshot change (a pod just
                // wired): refresh the address book every 2 s or on change.
                if snapshots.has_changed().unwrap_or(false)
                    || last_refresh.elapsed() >= Duration::from_secs(2)
                {
                    snapshots.borrow_and_update();
                    f2.set_resolver(resolver_of(&ctx2, &networks));
                    last_refresh = Instant::now();
                }
                collector.step(Duration::from_millis(500));
            }
            tracing::debug!("flow collector stopped");
        })
        .map_err(FlowError::Thread)?;
    let f4 = flows.clone();
    let shutdown = ctx.shutdown.clone();
    let prefixes = ctx.log_prefixes.clone();
    std::thread::Builder::new()
        .name("veil-flows-deny".into())
        .spawn(move || deny::run(f4, prefixes, || *shutdown.borrow()))
        .map_err(FlowError::Thread)?;
    let f3 = flows.clone();
    let shutdown = ctx.shutdown.clone();
    std::thread::Builder::new()
        .name("veil-flows-dns".into())
        .spawn(move || dns::run(f3, || *shutdown.borrow()))
        .map_err(FlowError::Thread)?;
    Ok(FlowHandle {
        flows,
        track_connections,
    })
}

pub use veil_api::{GraphParams, GraphReply};

/// Registers routes, socket methods and metrics of `flows` on `ctx`.
pub fn register(ctx: &NodeContext, flows: Arc<Flows>) {
    let f = flows.clone();
    ctx.api.register(
        veil_api::method::GRAPH_GET,
        move |_p: Option<GraphParams>| {
            let f = f.clone();
            async move {
                Ok(GraphReply {
                    node: f.node().to_string(),
                    graph: f.view(now_ms()),
                    health: f.health_report(),
                })
            }
        },
    );
    let f = flows.clone();
    ctx.api.register(
        veil_api::method::FLOWS_LIST,
        move |p: Option<FlowFilter>| {
            let f = f.clone();
            async move { Ok(f.flows(&p.unwrap_or_default())) }
        },
    );
    let f = flows.clone();
    ctx.api.register(
        veil_api::method::FLOWS_HEALTH,
        move |_p: Option<GraphParams>| {
            let f = f.clone();
            async move { Ok(f.health_report()) }
        },
    );
    ctx.metrics
        .lock()
        .expect("metrics lock")
        .register_collector(Box::new(metrics::FlowMetrics(flows.clone())));
    let peers = http::Peers::from_context(ctx);
    ctx.add_routes(http::routes(flows, peers));
    ctx.add_routes(ui::routes());
}
