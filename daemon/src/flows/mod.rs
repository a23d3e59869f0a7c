//! The flow collector: conntrack events (new, destroy) and periodic dumps of
//! the node's connection table, resolved to identities and fed to the node's
//! [`ServiceGraph`] and [`FlowLog`] (veil-graph). Serves them as HTTP routes
//! (`/api/v1/graph`, `/api/graph/fields`, `/api/graph/data`, `/api/health`,
//! `/ui`), socket methods (`graph.get`, `flows.list`, `flows.health`) and
//! Prometheus series (`veil_flows_total`, `veil_flow_bytes_total`, ...).
//!
//! Data flow: kernel → [`conntrack::ConntrackSource`] (a dedicated thread in
//! the daemon's network namespace, which is the node's) → [`Flows::ingest`]
//! (resolve both ends with [`resolve::Resolver`], apply the count-once rule,
//! feed the graph and the log under one lock, per datagram). DNS answers
//! crossing the node (NFLOG, [`dns`]) name the external addresses they gave.
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

pub mod conntrack;
pub mod dns;
mod http;
mod metrics;
pub mod resolve;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use veil_graph::{
    ConnKey, FlowFilter, FlowLog, FlowPage, FlowRecord, FlowSink, GraphCounters, GraphLimits,
    GraphView, IdentityKind, Locality, Millis, ServiceGraph, Verdict,
};

use crate::context::NodeContext;
use conntrack::{ConntrackSource, CtEntry, NetlinkConntrack, Received};
use resolve::{NamedNetwork, Resolver};

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The conntrack socket could not be opened or subscribed.
    #[error("flow collector: {0}")]
    Source(#[from] conntrack::SourceError),
    /// An option is malformed.
    #[error("flow collector: {0}")]
    Option(String),
    /// Turned off by `VEIL_FLOWS=off`.
    #[error("flow collector disabled (VEIL_FLOWS=off)")]
    Disabled,
    /// The collector thread could not be started.
    #[error("flow collector: cannot start thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Collector options (environment: `VEIL_FLOWS=off`, `VEIL_FLOW_DUMP_SECONDS`,
/// `VEIL_EXTERNAL_NETWORKS=name=cidr,...`, `VEIL_FLOW_MAX_EDGES`,
/// `VEIL_FLOW_HOST_NETNS`).
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
    /// Defaults overridden by the `VEIL_FLOW_*` / `VEIL_EXTERNAL_NETWORKS` environment.
    pub fn from_env() -> Result<Self, FlowError> {
        let mut o = FlowOptions::default();
        if let Ok(v) = std::env::var("VEIL_FLOW_DUMP_SECONDS") {
            let s: f64 = v
                .parse()
                .ok()
                .filter(|s: &f64| *s > 0.0 && *s < 86_400.0)
                .ok_or_else(|| {
                    FlowError::Option(format!(
                        "VEIL_FLOW_DUMP_SECONDS={v:?}: expected seconds between 0 and 86400"
                    ))
                })?;
            o.dump_interval = Duration::from_secs_f64(s);
        }
        if let Ok(v) = std::env::var("VEIL_EXTERNAL_NETWORKS") {
            for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                o.networks
                    .push(part.parse().map_err(|e: resolve::BadNamedNetwork| {
                        FlowError::Option(format!("VEIL_EXTERNAL_NETWORKS: {e}"))
                    })?);
            }
        }
        if let Ok(v) = std::env::var("VEIL_FLOW_MAX_EDGES") {
            o.limits.max_edges = v.parse().ok().filter(|n: &usize| *n > 0).ok_or_else(|| {
                FlowError::Option(format!(
                    "VEIL_FLOW_MAX_EDGES={v:?}: expected a positive number"
                ))
            })?;
        }
        o.host_netns = std::env::var("VEIL_FLOW_HOST_NETNS").is_ok_and(|v| v == "1" || v == "true");
        Ok(o)
    }
}

/// Collector health counters.
#[derive(Debug, Default)]
pub struct Health {
    /// Conntrack events received.
    pub events: AtomicU64,
    /// Overruns: times the kernel dropped events (each one or more).
    pub lost: AtomicU64,
    /// Dumps completed.
    pub dumps: AtomicU64,
    /// Dump or receive errors.
    pub errors: AtomicU64,
}

/// A snapshot of [`Health`] and the graph's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Node name.
    pub node: String,
    /// Conntrack events received.
    pub events: u64,
    /// Overruns (lost events, at least one each).
    pub lost: u64,
    /// Dumps completed.
    pub dumps: u64,
    /// Receive or dump errors.
    pub errors: u64,
    /// Connections tracked now.
    pub tracked_connections: u64,
    /// Edges now.
    pub edges: u64,
    /// The graph's counters.
    pub graph: GraphCounters,
}

struct State {
    graph: ServiceGraph,
    log: FlowLog,
}

/// The node's flows: graph, log, address book and health, shared by the
/// collector thread and the API surfaces.
pub struct Flows {
    node: String,
    wireguard_port: u16,
    http_port: u16,
    state: Mutex<State>,
    resolver: Mutex<Arc<Resolver>>,
    /// Health counters.
    pub health: Health,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

impl Flows {
    /// Empty flows for node `node`.
    /// `wireguard_port` and `http_port` are the daemons' own ports: their
    /// traffic between nodes is not a flow.
    pub fn new(
        node: &str,
        wireguard_port: u16,
        http_port: u16,
        resolver: Resolver,
        opts: &FlowOptions,
    ) -> Self {
        Flows {
            node: node.to_string(),
            wireguard_port,
            http_port,
            state: Mutex::new(State {
                graph: ServiceGraph::new(opts.limits),
                log: FlowLog::new(opts.log_capacity),
            }),
            resolver: Mutex::new(Arc::new(resolver)),
            health: Health::default(),
        }
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Replaces the address book (keeping learnt DNS names).
    pub fn set_resolver(&self, mut r: Resolver) {
        let mut cur = self.resolver.lock().expect("resolver lock");
        r.keep_dns_from(&cur);
        *cur = Arc::new(r);
    }

    /// Records that `name` resolved to `ips` (for the DNS proxy): flows to
    /// those addresses then show as `external:NAME`.
    pub fn learn_dns(&self, name: &str, ips: &[IpAddr]) {
        let r = self.resolver.lock().expect("resolver lock").clone();
        r.learn_dns(name, ips);
    }

    fn is_infrastructure(&self, e: &CtEntry) -> bool {
        let lo = |ip: IpAddr| ip.is_loopback();
        if lo(e.orig.src) || lo(e.orig.dst) {
            return true;
        }
        // WireGuard's own UDP between nodes carries the pod flows we already see.
        e.orig.protocol == veil_graph::Protocol::Udp
            && (e.orig.dst_port == self.wireguard_port || e.orig.src_port == self.wireguard_port)
    }

    /// Resolves and ingests conntrack entries observed at `now`.
    pub fn ingest(&self, entries: &[CtEntry], now: Millis) {
        if entries.is_empty() {
            return;
        }
        let resolver = self.resolver.lock().expect("resolver lock").clone();
        let records: Vec<FlowRecord> = entries
            .iter()
            .filter(|e| !self.is_infrastructure(e))
            .filter_map(|e| {
                // The responder is who answered: the backend behind a
                // destination NAT (reply tuple's source).
                let src = resolver.resolve(e.orig.src);
                let dst = resolver.resolve(e.reply.src);
                // Daemons talking to each other's HTTP server (the cluster
                // graph is merged that way) are Veil's own traffic.
                if src.identity.kind() == IdentityKind::Node
                    && dst.identity.kind() == IdentityKind::Node
                    && e.orig.protocol == veil_graph::Protocol::Tcp
                    && e.reply.src_port == self.http_port
                {
                    return None;
                }
                Some(FlowRecord {
                    time: now,
                    event: e.event,
                    conn: ConnKey {
                        protocol: e.orig.protocol,
                        src: e.orig.src,
                        src_port: e.orig.src_port,
                        dst: e.reply.src,
                        dst_port: e.reply.src_port,
                        id: e.id,
                    },
                    source: src.identity,
                    destination: dst.identity,
                    counters: e.counters,
                    verdict: Verdict::Allowed,
                    policy: None,
                    locality: Locality {
                        source_local: src.local,
                        destination_local: dst.local,
                    },
                })
            })
            .collect();
        let mut st = self.state.lock().expect("flow state lock");
        let State { graph, log } = &mut *st;
        let mut sink = (graph, log);
        for r in &records {
            sink.record(r);
        }
    }

    /// Ingests records built elsewhere (e.g. denied attempts from the policy
    /// datapath, with their verdict and deciding rule).
    pub fn ingest_records(&self, records: &[FlowRecord]) {
        let mut st = self.state.lock().expect("flow state lock");
        let State { graph, log } = &mut *st;
        let mut sink = (graph, log);
        for r in records {
            sink.record(r);
        }
    }

    /// Forgets edges idle since `before`.
    pub fn expire(&self, before: Millis) -> usize {
        self.state
            .lock()
            .expect("flow state lock")
            .graph
            .expire(before)
    }

    /// This node's graph at `now`.
    pub fn view(&self, now: Millis) -> GraphView {
        GraphView::of(&self.state.lock().expect("flow state lock").graph, now)
    }

    /// The flow log, filtered; entries carry this node's name.
    pub fn flows(&self, filter: &FlowFilter) -> FlowPage {
        let mut p = self
            .state
            .lock()
            .expect("flow state lock")
            .log
            .query(filter);
        for f in &mut p.flows {
            f.node = self.node.clone();
        }
        p
    }

    /// Health now.
    pub fn health_report(&self) -> HealthReport {
        let st = self.state.lock().expect("flow state lock");
        HealthReport {
            node: self.node.clone(),
            events: self.health.events.load(Ordering::Relaxed),
            lost: self.health.lost.load(Ordering::Relaxed),
            dumps: self.health.dumps.load(Ordering::Relaxed),
            errors: self.health.errors.load(Ordering::Relaxed),
            tracked_connections: st.graph.tracked_connections() as u64,
            edges: st.graph.edge_count() as u64,
            graph: st.graph.counters(),
        }
    }

    fn with_graph<R>(&self, f: impl FnOnce(&ServiceGraph) -> R) -> R {
        f(&self.state.lock().expect("flow state lock").graph)
    }
}

/// Drives a [`ConntrackSource`] into [`Flows`]: events as they come, a dump
/// every `dump_interval` and after every overrun, expiry of idle edges.
pub struct Collector<S: ConntrackSource> {
    source: S,
    flows: Arc<Flows>,
    dump_interval: Duration,
    expire_after: Duration,
    last_dump: Option<Instant>,
    dump_due: bool,
}

impl<S: ConntrackSource> Collector<S> {
    /// A collector; the first [`Collector::step`] dumps the table.
    pub fn new(source: S, flows: Arc<Flows>, opts: &FlowOptions) -> Self {
        Collector {
            source,
            flows,
            dump_interval: opts.dump_interval,
            expire_after: opts.expire_after,
            last_dump: None,
            dump_due: true,
        }
    }

    /// One round: receive for at most `wait`, then dump if due.
    pub fn step(&mut self, wait: Duration) {
        match self.source.recv(wait) {
            Ok(Received::Entries(v)) => {
                self.flows
                    .health
                    .events
                    .fetch_add(v.len() as u64, Ordering::Relaxed);
                self.flows.ingest(&v, now_ms());
            }
            Ok(Received::Overrun) => {
                self.flows.health.lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "conntrack events lost (receive buffer overrun); re-reading the table"
                );
                self.dump_due = true;
            }
            Ok(Received::Timeout) => {}
            Err(e) => {
                self.flows.health.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "conntrack receive");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let due = self.dump_due
            || self
                .last_dump
                .is_none_or(|t| t.elapsed() >= self.dump_interval);
        if due {
            self.dump_due = false;
            self.last_dump = Some(Instant::now());
            match self.source.dump() {
                Ok(v) => {
                    self.flows.health.dumps.fetch_add(1, Ordering::Relaxed);
                    let now = now_ms();
                    self.flows.ingest(&v, now);
                    self.flows
                        .expire(now.saturating_sub(self.expire_after.as_millis() as Millis));
                }
                Err(e) => {
                    self.flows.health.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "conntrack dump");
                }
            }
        }
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
    Resolver::new(
        &ctx.config.node_name,
        ctx.config.node_address,
        &snap,
        &ctx.endpoints.list(),
        networks,
    )
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

/// Starts the collector with options from the environment (`VEIL_FLOWS=off`
/// turns it off: no flows, graph nor flow metrics on this node).
pub fn start(ctx: &NodeContext) -> Result<FlowHandle, FlowError> {
    if std::env::var("VEIL_FLOWS").is_ok_and(|v| v == "off" || v == "0" || v == "false") {
        return Err(FlowError::Disabled);
    }
    start_with(ctx, FlowOptions::from_env()?)
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
            loop {
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

/// Parameters of `graph.get`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GraphParams {}

/// Answer of `graph.get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphReply {
    /// The node that answered.
    pub node: String,
    /// Its graph.
    pub graph: GraphView,
    /// Its collector's health.
    pub health: HealthReport,
}

/// Registers routes, socket methods and metrics of `flows` on `ctx`.
pub fn register(ctx: &NodeContext, flows: Arc<Flows>) {
    let f = flows.clone();
    ctx.api
        .register("graph.get", move |_p: Option<GraphParams>| {
            let f = f.clone();
            async move {
                Ok(GraphReply {
                    node: f.node().to_string(),
                    graph: f.view(now_ms()),
                    health: f.health_report(),
                })
            }
        });
    let f = flows.clone();
    ctx.api
        .register("flows.list", move |p: Option<FlowFilter>| {
            let f = f.clone();
            async move { Ok(f.flows(&p.unwrap_or_default())) }
        });
    let f = flows.clone();
    ctx.api
        .register("flows.health", move |_p: Option<GraphParams>| {
            let f = f.clone();
            async move { Ok(f.health_report()) }
        });
    ctx.metrics
        .lock()
        .expect("metrics lock")
        .register_collector(Box::new(metrics::FlowMetrics(flows.clone())));
    let peers = http::Peers::from_context(ctx);
    ctx.add_routes(http::routes(flows, peers));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::Snapshot;
    use crate::endpoints::{Endpoint, EndpointState};
    use conntrack::Tuple;
    use std::collections::VecDeque;
    use veil_graph::{Counters, FlowEvent, Protocol};

    struct Fake {
        script: VecDeque<Received>,
        table: Vec<CtEntry>,
        dumps: usize,
    }

    impl ConntrackSource for Fake {
        fn recv(&mut self, _t: Duration) -> Result<Received, conntrack::SourceError> {
            Ok(self.script.pop_front().unwrap_or(Received::Timeout))
        }
        fn dump(&mut self) -> Result<Vec<CtEntry>, conntrack::SourceError> {
            self.dumps += 1;
            Ok(self.table.clone())
        }
    }

    fn ep(ns: &str, name: &str, ip: &str) -> Endpoint {
        Endpoint {
            container_id: name.into(),
            ifname: "eth0".into(),
            netns: String::new(),
            host_ifname: String::new(),
            ips: vec![format!("{ip}/32").parse().unwrap()],
            daemon_ipam: true,
            pod_namespace: Some(ns.into()),
            pod_name: Some(name.into()),
            network: String::new(),
            labels: Default::default(),
            state: EndpointState::Ready,
        }
    }

    fn entry(
        event: FlowEvent,
        src: &str,
        sport: u16,
        dst: &str,
        dport: u16,
        id: u32,
        bytes: u64,
    ) -> CtEntry {
        let t = Tuple {
            protocol: Protocol::Tcp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: sport,
            dst_port: dport,
        };
        CtEntry {
            event,
            orig: t,
            reply: Tuple {
                protocol: Protocol::Tcp,
                src: t.dst,
                dst: t.src,
                src_port: dport,
                dst_port: sport,
            },
            counters: Counters {
                bytes_sent: bytes,
                packets_sent: 1,
                bytes_received: bytes,
                packets_received: 1,
            },
            id,
        }
    }

    fn flows() -> Arc<Flows> {
        let local = vec![
            ep("shop", "frontend-7d4b9c8f6d-x2x9z", "10.244.1.2"),
            ep("shop", "backend-a-0", "10.244.1.3"),
        ];
        let r = Resolver::new(
            "n1",
            "198.18.0.1".parse().unwrap(),
            &Snapshot::default(),
            &local,
            &["api=203.0.113.0/24".parse().unwrap()],
        );
        Arc::new(Flows::new("n1", 51820, 9590, r, &FlowOptions::default()))
    }

    #[test]
    fn events_become_edges_between_workloads() {
        let f = flows();
        let fake = Fake {
            script: VecDeque::from([
                Received::Entries(vec![
                    entry(
                        FlowEvent::New,
                        "10.244.1.2",
                        40000,
                        "10.244.1.3",
                        8080,
                        1,
                        0,
                    ),
                    entry(
                        FlowEvent::New,
                        "10.244.1.3",
                        40001,
                        "203.0.113.10",
                        443,
                        2,
                        0,
                    ),
                ]),
                Received::Entries(vec![entry(
                    FlowEvent::Destroy,
                    "10.244.1.2",
                    40000,
                    "10.244.1.3",
                    8080,
                    1,
                    500,
                )]),
            ]),
            table: vec![],
            dumps: 0,
        };
        let mut c = Collector::new(fake, f.clone(), &FlowOptions::default());
        c.step(Duration::ZERO);
        c.step(Duration::ZERO);
        let v = f.view(now_ms());
        let edges: Vec<(String, String, u16, u64, u64)> = v
            .edges
            .iter()
            .map(|e| {
                (
                    e.source.clone(),
                    e.target.clone(),
                    e.port,
                    e.connections,
                    e.bytes,
                )
            })
            .collect();
        assert_eq!(
            edges,
            vec![
                ("shop/backend-a".into(), "external:api".into(), 443, 1, 0),
                (
                    "shop/frontend".into(),
                    "shop/backend-a".into(),
                    8080,
                    1,
                    1000
                ),
            ]
        );
        assert_eq!(f.health_report().events, 3);
        assert_eq!(f.flows(&FlowFilter::default()).flows.len(), 3);
    }

    #[test]
    fn an_overrun_is_counted_and_triggers_a_dump_that_recovers_state() {
        let f = flows();
        let fake = Fake {
            script: VecDeque::from([Received::Timeout, Received::Overrun]),
            table: vec![entry(
                FlowEvent::Update,
                "10.244.1.2",
                40000,
                "10.244.1.3",
                8080,
                9,
                70,
            )],
            dumps: 0,
        };
        let mut c = Collector::new(fake, f.clone(), &FlowOptions::default());
        c.step(Duration::ZERO); // first step dumps
        assert_eq!(c.source.dumps, 1);
        c.step(Duration::ZERO); // overrun: dump again at once
        assert_eq!(c.source.dumps, 2);
        let h = f.health_report();
        assert_eq!(h.lost, 1);
        let v = f.view(now_ms());
        assert_eq!(v.edges.len(), 1);
        assert_eq!(v.edges[0].connections, 1);
        assert_eq!(v.edges[0].bytes, 140);
    }

    #[test]
    fn loopback_and_wireguard_underlay_are_not_flows() {
        let f = flows();
        f.ingest(
            &[
                entry(FlowEvent::New, "127.0.0.1", 1, "127.0.0.1", 9590, 1, 0),
                {
                    let mut e = entry(
                        FlowEvent::New,
                        "198.18.0.1",
                        51820,
                        "198.18.0.2",
                        51820,
                        2,
                        0,
                    );
                    e.orig.protocol = Protocol::Udp;
                    e
                },
            ],
            1,
        );
        assert!(f.view(1).edges.is_empty());
    }

    #[test]
    fn daemons_fetching_each_others_graph_are_not_a_flow() {
        let f = flows();
        let r = Resolver::new(
            "n1",
            "198.18.0.1".parse().unwrap(),
            &Snapshot {
                nodes: vec![crate::datastore::NodeRecord {
                    name: "n2".into(),
                    address: "198.18.0.2".parse().unwrap(),
                    pod_cidrs: vec![],
                    labels: Default::default(),
                    annotations: Default::default(),
                }],
                ..Default::default()
            },
            &[],
            &[],
        );
        f.set_resolver(r);
        f.ingest(
            &[entry(
                FlowEvent::New,
                "198.18.0.1",
                40000,
                "198.18.0.2",
                9590,
                1,
                0,
            )],
            1,
        );
        assert!(f.view(1).edges.is_empty());
        f.ingest(
            &[entry(
                FlowEvent::New,
                "198.18.0.1",
                40001,
                "198.18.0.2",
                22,
                2,
                0,
            )],
            1,
        );
        assert_eq!(
            f.view(1).edges.len(),
            1,
            "other node-to-node traffic is a flow"
        );
    }

    #[test]
    fn a_service_address_resolves_to_the_backend_that_answered() {
        let f = flows();
        let mut e = entry(FlowEvent::New, "10.244.1.2", 40000, "10.96.0.10", 80, 1, 0);
        e.reply.src = "10.244.1.3".parse().unwrap();
        e.reply.src_port = 8080;
        f.ingest(&[e], 1);
        let v = f.view(1);
        assert_eq!(
            (v.edges[0].target.as_str(), v.edges[0].port),
            ("shop/backend-a", 8080)
        );
    }
}
