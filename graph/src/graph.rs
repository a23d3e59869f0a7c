//! The service graph: a petgraph of identities (vertices, one per workload,
//! node, external name or `world`) and edges keyed by (source vertex,
//! destination vertex, destination port, protocol), fed with flow records.
//!
//! Invariants:
//! - A connection is counted once: once per [`ConnKey`] (5-tuple + kernel id)
//!   in this graph, and once in the cluster by the
//!   [`Locality::counts`](crate::record::Locality::counts) rule.
//! - Byte and packet totals only grow: each record adds the growth of the
//!   connection's counters since the previous record of that connection.
//! - Memory is bounded: at most `max_edges` edges and `max_connections`
//!   tracked connections; beyond, the stalest (least recently seen) eighth is
//!   evicted at once and counted in [`GraphCounters`].

use std::collections::HashMap;
use std::sync::Arc;

use petgraph::stable_graph::{EdgeIndex, NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};

use crate::hash::SeededState;
use crate::http::{HttpRecord, HttpStats};
use crate::identity::Identity;
use crate::record::{
    ConnKey, Counters, FlowEvent, FlowRecord, FlowSink, Millis, Protocol, Verdict,
};
use crate::window::{FifteenMinutes, OneMinute};

/// Limits of a [`ServiceGraph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphLimits {
    /// Most edges kept.
    pub max_edges: usize,
    /// Most live connections tracked (for byte deltas and active counts).
    pub max_connections: usize,
    /// Seed of the maps' hash; pick it at random where tuples come from the
    /// network (see [`crate::hash`]).
    pub hash_seed: u64,
}

impl Default for GraphLimits {
    fn default() -> Self {
        GraphLimits {
            max_edges: 20_000,
            max_connections: 262_144,
            hash_seed: 0,
        }
    }
}

/// Health counters of a graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GraphCounters {
    /// Records received.
    pub records: u64,
    /// Records ignored because another node counts them (see [`crate::Locality::counts`]).
    pub not_counted_here: u64,
    /// Edges evicted to stay under the edge cap.
    pub evicted_edges: u64,
    /// Tracked connections evicted to stay under the connection cap.
    pub evicted_connections: u64,
}

/// A vertex: an identity aggregated to its workload.
#[derive(Debug, Clone)]
pub struct Vertex {
    /// The identity that first created the vertex (its id, kind, namespace and
    /// workload are those of every identity mapped to it).
    pub identity: Arc<Identity>,
    /// Last time a record touched the vertex.
    pub last_seen: Millis,
}

/// What an edge carries.
#[derive(Debug, Clone)]
pub struct EdgeStats {
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Connections seen (allowed).
    pub connections: u64,
    /// Connections open now.
    pub active: u64,
    /// Denied attempts.
    pub denied: u64,
    /// Bytes and packets each way.
    pub counters: Counters,
    /// First record.
    pub first_seen: Millis,
    /// Latest record.
    pub last_seen: Millis,
    /// The policy (and rule) that decided the latest record, when known.
    pub policy: Option<Arc<str>>,
    /// The Service the latest record's destination was reached through, when known.
    pub service: Option<Arc<str>>,
    /// The last minute.
    pub minute: OneMinute,
    /// The last 15 minutes.
    pub quarter: FifteenMinutes,
    /// HTTP requests, when an L7 proxy reported some.
    pub http: Option<Box<HttpStats>>,
}

type EdgeKey = (NodeIndex, NodeIndex, u16, Protocol);

#[derive(Debug, Clone, Copy)]
struct Tracked {
    edge: EdgeKey,
    counters: Counters,
    last_seen: Millis,
    /// False once the connection closed (TCP TIME_WAIT, CLOSE) while the
    /// kernel still holds it: no longer active, not yet destroyed.
    open: bool,
}

/// The service dependency graph of one observer (a node).
#[derive(Debug)]
pub struct ServiceGraph {
    limits: GraphLimits,
    graph: StableDiGraph<Vertex, EdgeStats>,
    vertices: HashMap<String, NodeIndex, SeededState>,
    edges: HashMap<EdgeKey, EdgeIndex, SeededState>,
    conns: HashMap<ConnKey, Tracked, SeededState>,
    counters: GraphCounters,
}

impl Default for ServiceGraph {
    fn default() -> Self {
        ServiceGraph::new(GraphLimits::default())
    }
}

impl ServiceGraph {
    /// An empty graph with these limits (each at least 1).
    pub fn new(limits: GraphLimits) -> Self {
        ServiceGraph {
            limits: GraphLimits {
                max_edges: limits.max_edges.max(1),
                max_connections: limits.max_connections.max(1),
                hash_seed: limits.hash_seed,
            },
            graph: StableDiGraph::default(),
            vertices: HashMap::with_hasher(SeededState::with_seed(limits.hash_seed as usize)),
            edges: HashMap::with_hasher(SeededState::with_seed((limits.hash_seed ^ 1) as usize)),
            conns: HashMap::with_hasher(SeededState::with_seed((limits.hash_seed ^ 2) as usize)),
            counters: GraphCounters::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> GraphLimits {
        self.limits
    }

    /// Health counters.
    pub fn counters(&self) -> GraphCounters {
        self.counters
    }

    /// Number of vertices.
    pub fn vertex_count(&self) -> usize {
        self.graph.node_count()
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// Connections tracked now.
    pub fn tracked_connections(&self) -> usize {
        self.conns.len()
    }

    /// The underlying petgraph (read-only).
    pub fn petgraph(&self) -> &StableDiGraph<Vertex, EdgeStats> {
        &self.graph
    }

    /// Every edge as (source vertex, destination vertex, stats).
    pub fn edges(&self) -> impl Iterator<Item = (&Vertex, &Vertex, &EdgeStats)> {
        self.graph
            .edge_references()
            .map(|e| (&self.graph[e.source()], &self.graph[e.target()], e.weight()))
    }

    fn is_world(&self, ix: NodeIndex) -> bool {
        self.graph
            .node_weight(ix)
            .is_some_and(|v| v.identity.kind() == crate::IdentityKind::World)
    }

    fn vertex(&mut self, id: &Arc<Identity>, now: Millis) -> NodeIndex {
        if let Some(&ix) = self.vertices.get(id.id()) {
            let v = &mut self.graph[ix];
            v.last_seen = v.last_seen.max(now);
            return ix;
        }
        let ix = self.graph.add_node(Vertex {
            identity: id.clone(),
            last_seen: now,
        });
        self.vertices.insert(id.id().to_string(), ix);
        ix
    }

    fn edge(&mut self, key: EdgeKey, now: Millis) -> EdgeIndex {
        if let Some(&ix) = self.edges.get(&key) {
            return ix;
        }
        if self.edges.len() >= self.limits.max_edges {
            self.evict_edges();
        }
        let ix = self.graph.add_edge(
            key.0,
            key.1,
            EdgeStats {
                port: key.2,
                protocol: key.3,
                connections: 0,
                active: 0,
                denied: 0,
                counters: Counters::default(),
                first_seen: now,
                last_seen: now,
                policy: None,
                service: None,
                minute: OneMinute::default(),
                quarter: FifteenMinutes::default(),
                http: None,
            },
        );
        self.edges.insert(key, ix);
        ix
    }

    /// Removes the stalest eighth of the edges (at least one). Vertices are
    /// kept (they are few and cheap), so indices held by the caller stay valid.
    fn evict_edges(&mut self) {
        let mut by_age: Vec<(Millis, EdgeKey)> = self
            .edges
            .iter()
            .map(|(k, &ix)| (self.graph[ix].last_seen, *k))
            .collect();
        let n = (by_age.len() / 8).max(1).min(by_age.len());
        if n == 0 {
            return;
        }
        by_age.select_nth_unstable_by_key(n - 1, |e| e.0);
        for (_, key) in &by_age[..n] {
            if let Some(ix) = self.edges.remove(key) {
                self.graph.remove_edge(ix);
                self.counters.evicted_edges += 1;
            }
        }
        // Tracked connections of evicted edges stay: their next record
        // re-creates the edge (without counting the connection again).
    }

    fn evict_connections(&mut self) {
        let mut by_age: Vec<(Millis, ConnKey)> =
            self.conns.iter().map(|(k, t)| (t.last_seen, *k)).collect();
        let n = (by_age.len() / 8).max(1).min(by_age.len());
        if n == 0 {
            return;
        }
        by_age.select_nth_unstable_by_key(n - 1, |e| e.0);
        for (_, key) in &by_age[..n] {
            if let Some(t) = self.conns.remove(key) {
                self.counters.evicted_connections += 1;
                if !t.open {
                    continue;
                }
                if let Some(&ix) = self.edges.get(&t.edge) {
                    let e = &mut self.graph[ix];
                    e.active = e.active.saturating_sub(1);
                }
            }
        }
    }

    /// Forgets vertices that have had no edge and no record since `before`,
    /// and edges not seen since `before`. Returns how many edges went.
    pub fn expire(&mut self, before: Millis) -> usize {
        let stale: Vec<EdgeKey> = self
            .edges
            .iter()
            .filter(|(_, &ix)| {
                let e = &self.graph[ix];
                e.last_seen < before && e.active == 0
            })
            .map(|(k, _)| *k)
            .collect();
        for k in &stale {
            if let Some(ix) = self.edges.remove(k) {
                self.graph.remove_edge(ix);
            }
        }
        let lonely: Vec<NodeIndex> = self
            .graph
            .node_indices()
            .filter(|&ix| {
                self.graph[ix].last_seen < before
                    && self
                        .graph
                        .edges_directed(ix, petgraph::Direction::Outgoing)
                        .next()
                        .is_none()
                    && self
                        .graph
                        .edges_directed(ix, petgraph::Direction::Incoming)
                        .next()
                        .is_none()
            })
            .collect();
        for ix in lonely {
            if let Some(v) = self.graph.remove_node(ix) {
                self.vertices.remove(v.identity.id());
            }
        }
        // Tracked connections whose edge went are dropped too.
        let edges = &self.edges;
        self.conns
            .retain(|_, t| edges.contains_key(&t.edge) || t.last_seen >= before);
        stale.len()
    }

    /// Adds one HTTP request to the edge (source, destination, port, TCP),
    /// under the same count-once rule as connections.
    pub fn ingest_http(&mut self, r: &HttpRecord) {
        if !r.locality.counts(&r.source) {
            return;
        }
        let src = self.vertex(&r.source, r.time);
        let dst = self.vertex(&r.destination, r.time);
        let eix = self.edge((src, dst, r.port, Protocol::Tcp), r.time);
        let e = &mut self.graph[eix];
        e.last_seen = e.last_seen.max(r.time);
        e.http.get_or_insert_with(Default::default).add(r);
    }

    /// Ingests one record (see [`FlowSink`]).
    pub fn ingest(&mut self, r: &FlowRecord) {
        self.counters.records += 1;
        if !r.counted_here() {
            self.counters.not_counted_here += 1;
            return;
        }
        let now = r.time;
        let src = self.vertex(&r.source, now);
        let dst = self.vertex(&r.destination, now);
        let key: EdgeKey = (src, dst, r.conn.dst_port, r.conn.protocol);
        let eix = self.edge(key, now);
        if let Some(svc) = r.destination.service() {
            let e = &mut self.graph[eix];
            if e.service.as_deref() != Some(svc) {
                e.service = Some(Arc::from(svc));
            }
        }
        if r.verdict == Verdict::Denied {
            let e = &mut self.graph[eix];
            e.denied += 1;
            e.last_seen = e.last_seen.max(now);
            if r.policy.is_some() {
                e.policy = r.policy.clone();
            }
            return;
        }

        // Connection bookkeeping: how much is new since the last record of
        // this connection, whether it is a new connection, whether it is open.
        // A connection counts as active while it is tracked and open; a
        // tracked connection whose identities changed (an address reused by
        // another pod, a late identity resolution) moves to the new edge.
        let prev = self
            .conns
            .get(&r.conn)
            .map(|t| (t.edge, t.open, t.counters));
        // A connection first seen with an unnamed end (`world`, e.g. before
        // the DNS answer that names it was read) and now named moves to the
        // named edge entirely: connection, bytes and all. Other identity
        // changes move only the active count.
        let refined = prev.and_then(|(old, _, c)| {
            (old != key
                && ((self.is_world(old.0) && !self.is_world(key.0))
                    || (self.is_world(old.1) && !self.is_world(key.1))))
            .then_some((old, c))
        });
        if let Some((old, c)) = refined {
            if let Some(&ix) = self.edges.get(&old) {
                let e = &mut self.graph[ix];
                e.connections = e.connections.saturating_sub(1);
                e.counters = e.counters.since(&c);
                if e.connections == 0 && e.denied == 0 && e.active <= 1 {
                    self.edges.remove(&old);
                    self.graph.remove_edge(ix);
                }
            }
        }
        let delta = match (prev, refined) {
            (Some((_, _, c)), None) => r.counters.since(&c),
            _ => r.counters,
        };
        let new_conn = prev.is_none() || refined.is_some();
        let next_open = match r.event {
            FlowEvent::Destroy => None,
            FlowEvent::Closed => Some(false),
            FlowEvent::New | FlowEvent::Update => Some(prev.is_none_or(|p| p.1)),
        };
        match next_open {
            None => {
                self.conns.remove(&r.conn);
            }
            Some(open) => {
                if let Some(t) = self.conns.get_mut(&r.conn) {
                    t.counters = t.counters.max(&r.counters);
                    t.last_seen = now;
                    t.edge = key;
                    t.open = open;
                } else {
                    if self.conns.len() >= self.limits.max_connections {
                        self.evict_connections();
                    }
                    self.conns.insert(
                        r.conn,
                        Tracked {
                            edge: key,
                            counters: r.counters,
                            last_seen: now,
                            open,
                        },
                    );
                }
            }
        }
        if let Some((old, true, _)) = prev {
            if let Some(&ix) = self.edges.get(&old) {
                let e = &mut self.graph[ix];
                e.active = e.active.saturating_sub(1);
            }
        }
        // Connection eviction never removes edges: `eix` is still valid.
        let e = &mut self.graph[eix];
        e.counters.accumulate(&delta);
        if new_conn {
            e.connections += 1;
        }
        if next_open == Some(true) {
            e.active += 1;
        }
        e.last_seen = e.last_seen.max(now);
        if r.policy.is_some() {
            e.policy = r.policy.clone();
        }
        let bytes = delta.bytes();
        let c = u32::from(new_conn);
        if c > 0 || bytes > 0 {
            e.minute.add(now, c, bytes);
            e.quarter.add(now, c, bytes);
        }
    }
}

impl FlowSink for ServiceGraph {
    fn record(&mut self, record: &FlowRecord) {
        self.ingest(record)
    }
}

#[cfg(test)]
mod tests;
