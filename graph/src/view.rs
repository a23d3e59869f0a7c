//! A serialisable snapshot of a graph ([`GraphView`]), what every surface
//! shows: the JSON of `/api/v1/graph` and `veilctl graph --format json`, and
//! from it Graphviz DOT, plain text and the Grafana Node Graph API data
//! source format. Views of several nodes merge into the cluster's view by
//! summing edges with the same (source, target, port, protocol); that is
//! right because each connection is counted by one node only.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::graph::ServiceGraph;
use crate::http::HttpView;
use crate::identity::IdentityKind;
use crate::record::{Millis, Protocol, Verdict};
use crate::window::Rate;

/// A vertex of the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// `namespace/workload`, `node:NAME`, `external:NAME` or `world`.
    pub id: String,
    /// Namespace (empty unless a pod workload).
    pub namespace: String,
    /// Workload, node name, external name or `world`.
    pub workload: String,
    /// Kind.
    pub kind: IdentityKind,
}

/// An edge of the view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeView {
    /// Source vertex id.
    pub source: String,
    /// Target vertex id.
    pub target: String,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Connections (allowed).
    pub connections: u64,
    /// Connections open now.
    pub active: u64,
    /// Denied attempts.
    pub denied: u64,
    /// `denied` when every attempt was denied, else `allowed`.
    pub verdict: Verdict,
    /// Bytes both ways.
    pub bytes: u64,
    /// Bytes source → target.
    pub bytes_sent: u64,
    /// Bytes target → source.
    pub bytes_received: u64,
    /// Packets source → target.
    pub packets_sent: u64,
    /// Packets target → source.
    pub packets_received: u64,
    /// First seen (ms since the epoch).
    pub first_seen: Millis,
    /// Last seen (ms since the epoch).
    pub last_seen: Millis,
    /// Rates over the last minute.
    pub rate_1m: Rate,
    /// Rates over the last 15 minutes.
    pub rate_15m: Rate,
    /// Policy (and rule) that decided the latest flow, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// HTTP requests on this edge, when an L7 proxy reported some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpView>,
    /// The Service (`namespace/name`) the target was reached through, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl EdgeView {
    /// The key edges merge on.
    pub fn key(&self) -> (String, String, u16, Protocol) {
        (
            self.source.clone(),
            self.target.clone(),
            self.port,
            self.protocol,
        )
    }

    /// A stable id: `source->target:port/PROTO`.
    pub fn id(&self) -> String {
        format!(
            "{}->{}:{}/{}",
            self.source, self.target, self.port, self.protocol
        )
    }
}

/// The graph as shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GraphView {
    /// Vertices, sorted by id.
    pub nodes: Vec<NodeView>,
    /// Edges, sorted by (source, target, port, protocol).
    pub edges: Vec<EdgeView>,
}

impl GraphView {
    /// The view of `graph` at `now` (rates are over windows ending at `now`).
    pub fn of(graph: &ServiceGraph, now: Millis) -> GraphView {
        let mut nodes: BTreeMap<String, NodeView> = BTreeMap::new();
        let mut edges = Vec::with_capacity(graph.edge_count());
        for (s, t, e) in graph.edges() {
            for v in [s, t] {
                let i = &v.identity;
                nodes.entry(i.id().to_string()).or_insert_with(|| NodeView {
                    id: i.id().to_string(),
                    namespace: i.namespace().to_string(),
                    workload: i.workload().to_string(),
                    kind: i.kind(),
                });
            }
            edges.push(EdgeView {
                source: s.identity.id().to_string(),
                target: t.identity.id().to_string(),
                port: e.port,
                protocol: e.protocol,
                connections: e.connections,
                active: e.active,
                denied: e.denied,
                verdict: verdict_of(e.connections, e.denied),
                bytes: e.counters.bytes(),
                bytes_sent: e.counters.bytes_sent,
                bytes_received: e.counters.bytes_received,
                packets_sent: e.counters.packets_sent,
                packets_received: e.counters.packets_received,
                first_seen: e.first_seen,
                last_seen: e.last_seen,
                rate_1m: e.minute.rate(now),
                rate_15m: e.quarter.rate(now),
                policy: e.policy.as_deref().map(str::to_string),
                http: e.http.as_ref().map(|h| h.view(now)),
                service: e.service.as_deref().map(str::to_string),
            });
        }
        let mut v = GraphView {
            nodes: nodes.into_values().collect(),
            edges,
        };
        v.sort();
        v
    }

    fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.id.cmp(&b.id));
        self.edges.sort_by(|a, b| {
            (&a.source, &a.target, a.port, a.protocol)
                .cmp(&(&b.source, &b.target, b.port, b.protocol))
        });
    }

    /// The union of several views (one per node): vertices by id, edges
    /// summed by (source, target, port, protocol).
    pub fn merge<I: IntoIterator<Item = GraphView>>(views: I) -> GraphView {
        let mut nodes: BTreeMap<String, NodeView> = BTreeMap::new();
        let mut edges: BTreeMap<(String, String, u16, Protocol), EdgeView> = BTreeMap::new();
        for v in views {
            for n in v.nodes {
                nodes.entry(n.id.clone()).or_insert(n);
            }
            for e in v.edges {
                match edges.get_mut(&e.key()) {
                    None => {
                        edges.insert(e.key(), e);
                    }
                    Some(m) => {
                        m.connections = m.connections.saturating_add(e.connections);
                        m.active = m.active.saturating_add(e.active);
                        m.denied = m.denied.saturating_add(e.denied);
                        m.verdict = verdict_of(m.connections, m.denied);
                        m.bytes = m.bytes.saturating_add(e.bytes);
                        m.bytes_sent = m.bytes_sent.saturating_add(e.bytes_sent);
                        m.bytes_received = m.bytes_received.saturating_add(e.bytes_received);
                        m.packets_sent = m.packets_sent.saturating_add(e.packets_sent);
                        m.packets_received = m.packets_received.saturating_add(e.packets_received);
                        m.first_seen = m.first_seen.min(e.first_seen);
                        if e.last_seen >= m.last_seen && e.policy.is_some() {
                            m.policy = e.policy.clone();
                        }
                        if m.service.is_none()
                            || (e.last_seen >= m.last_seen && e.service.is_some())
                        {
                            m.service = e.service.clone();
                        }
                        m.last_seen = m.last_seen.max(e.last_seen);
                        match (&mut m.http, &e.http) {
                            (Some(a), Some(b)) => a.merge(b),
                            (None, Some(b)) => m.http = Some(b.clone()),
                            _ => {}
                        }
                        for (a, b) in [(&mut m.rate_1m, &e.rate_1m), (&mut m.rate_15m, &e.rate_15m)]
                        {
                            a.connections_per_second += b.connections_per_second;
                            a.bytes_per_second += b.bytes_per_second;
                        }
                    }
                }
            }
        }
        let mut v = GraphView {
            nodes: nodes.into_values().collect(),
            edges: edges.into_values().collect(),
        };
        v.sort();
        v
    }

    /// Only the edges seen since `t` (ms since the epoch) and their vertices:
    /// the graph of a time window (last 5 minutes, last hour). Counts stay
    /// the edges' totals; the rates are the windows' own.
    pub fn since(mut self, t: Millis) -> GraphView {
        self.edges.retain(|e| e.last_seen >= t);
        let used: std::collections::BTreeSet<&str> = self
            .edges
            .iter()
            .flat_map(|e| [e.source.as_str(), e.target.as_str()])
            .collect();
        let nodes = std::mem::take(&mut self.nodes)
            .into_iter()
            .filter(|n| used.contains(n.id.as_str()))
            .collect();
        self.nodes = nodes;
        self
    }

    /// Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut s =
            String::from("digraph veil {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
        for n in &self.nodes {
            let (shape, label) = match n.kind {
                IdentityKind::Pod => ("box", format!("{}\\n{}", n.workload, n.namespace)),
                IdentityKind::Node => ("box3d", format!("node {}", n.workload)),
                IdentityKind::External => ("ellipse", n.workload.clone()),
                IdentityKind::World => ("ellipse", "world".to_string()),
            };
            let _ = writeln!(
                s,
                "  \"{}\" [shape={shape}, label=\"{}\"];",
                dot_escape(&n.id),
                dot_escape_label(&label)
            );
        }
        for e in &self.edges {
            let color = if e.verdict == Verdict::Denied {
                ", color=red"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "  \"{}\" -> \"{}\" [label=\"{}/{}\\n{} conns, {}\"{color}];",
                dot_escape(&e.source),
                dot_escape(&e.target),
                e.port,
                e.protocol,
                e.connections,
                human_bytes(e.bytes)
            );
        }
        s.push_str("}\n");
        s
    }

    /// Plain text: one line per edge, then the vertices without edges.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        if self.edges.is_empty() {
            s.push_str("no flows seen\n");
            return s;
        }
        let w_src = self.edges.iter().map(|e| e.source.len()).max().unwrap_or(0);
        let w_dst = self.edges.iter().map(|e| e.target.len()).max().unwrap_or(0);
        for e in &self.edges {
            let _ = writeln!(
                s,
                "{:<w_src$} -> {:<w_dst$}  {:>5}/{:<4} conns={} active={} denied={} bytes={} ({} sent, {} received) rate_1m={:.2}/s",
                e.source,
                e.target,
                e.port,
                e.protocol,
                e.connections,
                e.active,
                e.denied,
                human_bytes(e.bytes),
                human_bytes(e.bytes_sent),
                human_bytes(e.bytes_received),
                e.rate_1m.connections_per_second,
            );
            if let Some(svc) = &e.service {
                s.pop();
                let _ = writeln!(s, " service={svc}");
            }
        }
        s
    }

    /// The Grafana Node Graph API data source's `/api/graph/data` body.
    pub fn grafana_data(&self) -> serde_json::Value {
        let mut inbound: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for e in &self.edges {
            let x = inbound.entry(e.target.as_str()).or_default();
            x.0 = x.0.saturating_add(e.connections);
            x.1 = x.1.saturating_add(e.bytes);
        }
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|n| {
                let (c, b) = inbound.get(n.id.as_str()).copied().unwrap_or_default();
                serde_json::json!({
                    "id": n.id,
                    "title": n.workload,
                    "subTitle": if n.namespace.is_empty() { n.kind.as_str().to_string() } else { n.namespace.clone() },
                    "mainStat": format!("{c} conns in"),
                    "secondaryStat": b,
                    "detail__kind": n.kind.as_str(),
                })
            })
            .collect();
        let edges: Vec<serde_json::Value> = self
            .edges
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.id(),
                    "source": e.source,
                    "target": e.target,
                    "mainStat": format!("{}/{} {} conns", e.port, e.protocol, e.connections),
                    "secondaryStat": e.bytes,
                    "detail__port": e.port,
                    "detail__protocol": e.protocol.to_string(),
                    "detail__active": e.active,
                    "detail__denied": e.denied,
                    "detail__rate_1m": e.rate_1m.connections_per_second,
                    "detail__verdict": e.verdict.as_str(),
                    "detail__policy": e.policy.clone().unwrap_or_default(),
                    "detail__http_rps": e.http.as_ref().map_or(0.0, |h| h.requests_per_second),
                    "detail__http_errors_per_second": e.http.as_ref().map_or(0.0, |h| h.errors_per_second),
                    "detail__http_p99_seconds": e.http.as_ref().map_or(0.0, |h| h.p99_seconds),
                    "color": edge_color(e),
                })
            })
            .collect();
        serde_json::json!({ "nodes": nodes, "edges": edges })
    }

    /// The Grafana Node Graph API data source's `/api/graph/fields` body.
    pub fn grafana_fields() -> serde_json::Value {
        serde_json::json!({
            "nodes_fields": [
                {"field_name": "id", "type": "string"},
                {"field_name": "title", "type": "string"},
                {"field_name": "subTitle", "type": "string"},
                {"field_name": "mainStat", "type": "string"},
                {"field_name": "secondaryStat", "type": "number", "displayName": "bytes in"},
                {"field_name": "detail__kind", "type": "string", "displayName": "kind"},
            ],
            "edges_fields": [
                {"field_name": "id", "type": "string"},
                {"field_name": "source", "type": "string"},
                {"field_name": "target", "type": "string"},
                {"field_name": "mainStat", "type": "string"},
                {"field_name": "secondaryStat", "type": "number", "displayName": "bytes"},
                {"field_name": "detail__port", "type": "number", "displayName": "port"},
                {"field_name": "detail__protocol", "type": "string", "displayName": "protocol"},
                {"field_name": "detail__active", "type": "number", "displayName": "active connections"},
                {"field_name": "detail__denied", "type": "number", "displayName": "denied attempts"},
                {"field_name": "detail__rate_1m", "type": "number", "displayName": "connections/s (1 min)"},
                {"field_name": "detail__verdict", "type": "string", "displayName": "verdict"},
                {"field_name": "detail__policy", "type": "string", "displayName": "deciding policy"},
                {"field_name": "detail__http_rps", "type": "number", "displayName": "HTTP requests/s (1 min)"},
                {"field_name": "detail__http_errors_per_second", "type": "number", "displayName": "HTTP errors/s (1 min)"},
                {"field_name": "detail__http_p99_seconds", "type": "number", "displayName": "HTTP p99 (s)"},
                {"field_name": "color", "type": "string", "displayName": "verdict colour"},
            ]
        })
    }
}

/// The colour an edge is drawn in: red when every attempt was denied,
/// orange when some were, grey otherwise (Grafana's Node Graph and `/ui`).
pub fn edge_color(e: &EdgeView) -> &'static str {
    match (e.connections, e.denied) {
        (0, d) if d > 0 => "#dc2626",
        (_, d) if d > 0 => "#ea580c",
        _ => "#6b7280",
    }
}

fn verdict_of(connections: u64, denied: u64) -> Verdict {
    if connections == 0 && denied > 0 {
        Verdict::Denied
    } else {
        Verdict::Allowed
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', " ")
}

/// Like [`dot_escape`] but keeps the `\n` line breaks we put in labels.
fn dot_escape_label(s: &str) -> String {
    s.split("\\n")
        .map(dot_escape)
        .collect::<Vec<_>>()
        .join("\\n")
}

/// `1536` → `1.5KiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests;
