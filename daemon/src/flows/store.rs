//! The node's flows: the service graph and the flow log (veil-graph) under
//! one lock, the address book that resolves conntrack entries to
//! identities, and the collector's health counters. Does no IO: entries come
//! in through [`Flows::ingest`], views go out through [`Flows::view`],
//! [`Flows::flows`] and [`Flows::health_report`].

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use veil_graph::{
    Attempt, ConnKey, Counters, DeniedAttempts, DenyLimits, FlowEvent, FlowFilter, FlowLog,
    FlowPage, FlowRecord, FlowSink, GraphView, IdentityKind, Lifecycle, LifecycleCounters,
    LifecycleLimits, Locality, Millis, RuleRef, ServiceGraph, Verdict,
};

use super::conntrack::CtEntry;
use super::resolve::Resolver;
use super::FlowOptions;
use crate::dataplane::nftables::policy::verdict_mark::RuleIdTable;

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

pub use veil_api::HealthReport;

struct State {
    /// Makes each connection one `New`, `Update`s, one `Closed`, one `Destroy`.
    lifecycle: Lifecycle,
    graph: ServiceGraph,
    log: FlowLog,
    /// Makes a denied connect one record, however many SYNs it sent.
    denies: DeniedAttempts,
}

impl State {
    /// Feeds observations through the lifecycle into the graph and the log.
    fn observe(&mut self, records: &[FlowRecord]) {
        let mut out = Vec::with_capacity(records.len() + 2);
        for r in records {
            if r.verdict == Verdict::Denied {
                if let Attempt::Repeat { first } = self.denies.observe(r) {
                    self.log.count_repeat(r, first);
                    continue;
                }
            }
            self.lifecycle.observe(r, &mut out);
        }
        self.sink(&out);
    }

    fn sink(&mut self, records: &[FlowRecord]) {
        let mut sink = (&mut self.graph, &mut self.log);
        for r in records {
            sink.record(r);
        }
    }
}

/// The node's flows: graph, log, address book and health, shared by the
/// collector thread and the API surfaces.
pub struct Flows {
    node: String,
    wireguard_port: u16,
    http_port: u16,
    state: Mutex<State>,
    resolver: Mutex<Arc<Resolver>>,
    /// Names the allow rules' ids in connections' marks.
    rule_ids: Mutex<Arc<RuleIdTable>>,
    /// The DNS proxy's allowances: a local pod's external destination is
    /// named by the name that allowed it ([`super::dns::name_by_allowance`]).
    domain_names: std::sync::RwLock<Option<Arc<dyn crate::l7::decide::DomainNames>>>,
    /// Health counters.
    pub health: Health,
    /// Counters of the policy log (denies and `Log` entries per policy, losses).
    pub policy_log: super::deny::PolicyLogCounters,
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
                lifecycle: Lifecycle::new(LifecycleLimits {
                    max_connections: opts.limits.max_connections,
                    hash_seed: opts.limits.hash_seed ^ 3,
                    ..LifecycleLimits::default()
                }),
                graph: ServiceGraph::new(opts.limits),
                log: FlowLog::new(opts.log_capacity),
                denies: DeniedAttempts::new(DenyLimits::default(), opts.limits.hash_seed ^ 5),
            }),
            resolver: Mutex::new(Arc::new(resolver)),
            rule_ids: Mutex::new(Arc::default()),
            domain_names: std::sync::RwLock::new(None),
            health: Health::default(),
            policy_log: Default::default(),
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

    /// Replaces the table naming allow rules' ids (a new policy generation).
    pub fn set_rule_ids(&self, t: Arc<RuleIdTable>) {
        *self.rule_ids.lock().expect("rule ids lock") = t;
    }

    /// Names local pods' external destinations by the DNS proxy's
    /// allowances from now on (the proxy starts after the collector).
    pub fn set_domain_names(&self, names: Arc<dyn crate::l7::decide::DomainNames>) {
        *self.domain_names.write().unwrap_or_else(|e| e.into_inner()) = Some(names);
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
            && (crate::wireguard::lanes::is_lane_port(self.wireguard_port, e.orig.dst_port)
                || crate::wireguard::lanes::is_lane_port(self.wireguard_port, e.orig.src_port))
    }

    /// Resolves and ingests conntrack events observed at `now`.
    pub fn ingest(&self, entries: &[CtEntry], now: Millis) {
        if entries.is_empty() {
            return;
        }
        let records = self.records(entries, now);
        self.state
            .lock()
            .expect("flow state lock")
            .observe(&records);
    }

    /// Ingests a complete dump of the table read at `now`: its entries, then
    /// the closing of open connections it no longer shows (their destroy
    /// event was lost).
    pub fn ingest_dump(&self, entries: &[CtEntry], now: Millis) {
        let records = self.records(entries, now);
        let mut st = self.state.lock().expect("flow state lock");
        st.lifecycle.begin_dump();
        st.observe(&records);
        let mut ended = Vec::new();
        st.lifecycle.end_dump(now, &mut ended);
        st.sink(&ended);
    }

    /// Resolves conntrack entries to flow records (Veil's own traffic left out).
    fn records(&self, entries: &[CtEntry], now: Millis) -> Vec<FlowRecord> {
        let resolver = self.resolver.lock().expect("resolver lock").clone();
        let rule_ids = self.rule_ids.lock().expect("rule ids lock").clone();
        let domain_names = self
            .domain_names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        entries
            .iter()
            .filter(|e| !self.is_infrastructure(e))
            .filter_map(|e| {
                // The responder is who answered: the backend behind a
                // destination NAT (reply tuple's source).
                let src = resolver.resolve(e.orig.src);
                let dst = resolver.resolve_destination(
                    e.orig.dst,
                    e.reply.src,
                    e.reply.src_port,
                    e.orig.protocol,
                );
                // Daemons talking to each other's HTTP server (the cluster
                // graph is merged that way) are Veil's own traffic.
                if src.identity.kind() == IdentityKind::Node
                    && dst.identity.kind() == IdentityKind::Node
                    && e.orig.protocol == veil_graph::Protocol::Tcp
                    && e.reply.src_port == self.http_port
                {
                    return None;
                }
                let pod = |r: &super::resolve::Resolved| {
                    r.local && r.identity.kind() == IdentityKind::Pod
                };
                let dst = match &domain_names {
                    Some(n) if pod(&src) => {
                        super::dns::name_by_allowance(&**n, e.orig.src, e.reply.src, dst)
                    }
                    _ => dst,
                };
                let (egress, ingress) =
                    super::verdicts::allowed_by(&rule_ids, e.mark, pod(&src), pod(&dst));
                let policy = super::verdicts::policy_text(&egress, &ingress);
                let (rule, ingress_rule) = match egress {
                    Some(e) => (Some(e), ingress),
                    None => (ingress, None),
                };
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
                    policy,
                    rule,
                    ingress_rule,
                    locality: Locality {
                        source_local: src.local,
                        destination_local: dst.local,
                    },
                })
            })
            .collect()
    }

    /// Ingests a denied attempt (a packet the policy dataplane dropped),
    /// resolved to identities as conntrack flows are.
    pub fn ingest_denied(&self, h: &super::deny::PacketHeader, rule: Arc<RuleRef>, now: Millis) {
        let resolver = self.resolver.lock().expect("resolver lock").clone();
        let src = resolver.resolve(h.src);
        let dst = resolver.resolve_destination(h.dst, h.dst, h.dst_port, h.protocol);
        let r = FlowRecord {
            time: now,
            event: FlowEvent::New,
            conn: ConnKey {
                protocol: h.protocol,
                src: h.src,
                src_port: h.src_port,
                dst: h.dst,
                dst_port: h.dst_port,
                id: 0,
            },
            source: src.identity,
            destination: dst.identity,
            counters: Counters {
                bytes_sent: h.length,
                packets_sent: 1,
                ..Counters::default()
            },
            verdict: Verdict::Denied,
            policy: Some(Arc::from(rule.to_string())),
            rule: Some(rule),
            ingress_rule: None,
            locality: Locality {
                source_local: src.local,
                destination_local: dst.local,
            },
        };
        self.ingest_records(&[r]);
    }

    /// Ingests records built elsewhere (e.g. denied attempts from the policy
    /// datapath, with their verdict and deciding rule).
    pub fn ingest_records(&self, records: &[FlowRecord]) {
        self.state.lock().expect("flow state lock").observe(records);
    }

    /// The connection lifecycle's counters (opened, closed, ...).
    pub fn lifecycle(&self) -> LifecycleCounters {
        self.state
            .lock()
            .expect("flow state lock")
            .lifecycle
            .counters()
    }

    /// The current address book.
    pub(super) fn resolver(&self) -> Arc<Resolver> {
        self.resolver.lock().expect("resolver lock").clone()
    }

    /// Adds an HTTP request (already resolved) to its edge.
    pub(super) fn ingest_http(&self, r: &veil_graph::HttpRecord) {
        self.state
            .lock()
            .expect("flow state lock")
            .graph
            .ingest_http(r);
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

    pub(super) fn with_graph<R>(&self, f: impl FnOnce(&ServiceGraph) -> R) -> R {
        f(&self.state.lock().expect("flow state lock").graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::Snapshot;
    use crate::flows::testutil::{entry, flows};
    use veil_graph::{FlowEvent, Protocol};

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
