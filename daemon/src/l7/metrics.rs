//! Per-edge L7 metrics of the proxy, with bounded cardinality: edges are
//! (source namespace/workload, destination namespace/workload), methods are
//! the standard ones or `OTHER`, statuses are classes (`2xx`...), and no
//! path, address or pod name is ever a label. At most [`MAX_EDGES`] edges
//! get series of their own; later ones share the edge `other/other`.
//!
//! Series: `veil_l7_requests_total` (edge, method, status class),
//! `veil_l7_request_duration_seconds` (edge; histogram),
//! `veil_l7_denied_requests_total` (edge, method) and
//! `veil_l7_connections_closed_total` (reason: not HTTP/1.1, bad request,
//! denied at L4, upstream unreachable).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Most edges with series of their own.
pub const MAX_EDGES: usize = 2048;

/// The methods kept as labels; any other is `OTHER`.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Source and destination workloads of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Edge {
    /// Source namespace (`node` or `world` outside pods).
    pub src_namespace: String,
    /// Source workload.
    pub src_workload: String,
    /// Destination namespace.
    pub dst_namespace: String,
    /// Destination workload.
    pub dst_workload: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    #[prometheus(flatten)]
    edge: Edge,
    method: String,
    status_class: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeniedLabels {
    #[prometheus(flatten)]
    edge: Edge,
    method: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClosedLabels {
    reason: String,
}

fn latency() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

/// The proxy's metrics.
#[derive(Clone)]
pub struct L7Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<Edge, Histogram, fn() -> Histogram>,
    denied: Family<DeniedLabels, Counter>,
    closed: Family<ClosedLabels, Counter>,
    edges: Arc<Mutex<HashSet<Edge>>>,
}

impl Default for L7Metrics {
    fn default() -> Self {
        L7Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency),
            denied: Family::default(),
            closed: Family::default(),
            edges: Arc::default(),
        }
    }
}

/// A method as a label.
pub fn method_label(m: &str) -> &'static str {
    METHODS
        .iter()
        .find(|x| **x == m)
        .copied()
        .unwrap_or("OTHER")
}

/// One edge's series for one connection: the histogram and the counters it
/// used are kept, so a request costs an atomic add and an observation,
/// never a label set built, hashed and looked up.
pub struct EdgeSeries {
    metrics: L7Metrics,
    edge: Edge,
    latency: Histogram,
    /// (method label, status class) → its counter; a connection uses one or
    /// two.
    requests: Mutex<Vec<(&'static str, u16, Counter)>>,
}

impl EdgeSeries {
    /// The edge of these series.
    pub fn edge(&self) -> &Edge {
        &self.edge
    }

    fn counter(&self, method: &'static str, class: u16) -> Counter {
        let mut known = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, c)) = known.iter().find(|(m, k, _)| *m == method && *k == class) {
            return c.clone();
        }
        let c = self
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                edge: self.edge.clone(),
                method: method.to_string(),
                status_class: format!("{class}xx"),
            })
            .clone();
        known.push((method, class, c.clone()));
        c
    }

    /// A request answered by the application (or by the proxy with `status`).
    pub fn request(&self, method: &str, status: u16, seconds: f64) {
        self.counter(method_label(method), status / 100).inc();
        self.latency.observe(seconds);
    }

    /// A request denied with 403.
    pub fn denied(&self, method: &str) {
        self.metrics
            .denied
            .get_or_create(&DeniedLabels {
                edge: self.edge.clone(),
                method: method_label(method).to_string(),
            })
            .inc();
        self.request(method, 403, 0.0);
    }
}

/// A status as its class (`2xx`).
pub fn status_class(status: u16) -> String {
    format!("{}xx", status / 100)
}

impl L7Metrics {
    /// Registers the series on `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "veil_l7_requests",
            "HTTP requests through the L7 proxy by edge, method and status class",
            self.requests.clone(),
        );
        r.register(
            "veil_l7_request_duration_seconds",
            "Time from a request's headers to the response's headers, by edge",
            self.latency.clone(),
        );
        r.register(
            "veil_l7_denied_requests",
            "Requests answered 403 by the L7 proxy, by edge and method",
            self.denied.clone(),
        );
        r.register(
            "veil_l7_connections_closed",
            "Steered connections the L7 proxy closed, by reason",
            self.closed.clone(),
        );
    }

    /// `edge`, or the shared overflow edge once [`MAX_EDGES`] are known.
    pub fn bounded(&self, edge: Edge) -> Edge {
        let mut known = self.edges.lock().expect("edges lock");
        if known.contains(&edge) {
            return edge;
        }
        if known.len() < MAX_EDGES {
            known.insert(edge.clone());
            return edge;
        }
        Edge {
            src_namespace: "other".into(),
            src_workload: "other".into(),
            dst_namespace: "other".into(),
            dst_workload: "other".into(),
        }
    }

    /// The series of `edge` (see [`L7Metrics::bounded`]), for one connection.
    pub fn series(&self, edge: Edge) -> EdgeSeries {
        EdgeSeries {
            latency: self.latency.get_or_create(&edge).clone(),
            metrics: self.clone(),
            edge,
            requests: Mutex::default(),
        }
    }

    /// A request answered by the application (or by the proxy with `status`).
    pub fn request(&self, edge: &Edge, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                edge: edge.clone(),
                method: method_label(method).to_string(),
                status_class: status_class(status),
            })
            .inc();
        self.latency.get_or_create(edge).observe(seconds);
    }

    /// A request denied with 403.
    pub fn denied(&self, edge: &Edge, method: &str) {
        self.denied
            .get_or_create(&DeniedLabels {
                edge: edge.clone(),
                method: method_label(method).to_string(),
            })
            .inc();
        self.request(edge, method, 403, 0.0);
    }

    /// A connection closed by the proxy, for `reason`.
    pub fn closed(&self, reason: &str) {
        self.closed
            .get_or_create(&ClosedLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(i: usize) -> Edge {
        Edge {
            src_namespace: "a".into(),
            src_workload: format!("w{i}"),
            dst_namespace: "b".into(),
            dst_workload: "x".into(),
        }
    }

    #[test]
    fn edges_beyond_the_cap_share_one_series_and_methods_are_bounded() {
        let m = L7Metrics::default();
        for i in 0..MAX_EDGES {
            assert_eq!(m.bounded(edge(i)), edge(i));
        }
        assert_eq!(m.bounded(edge(MAX_EDGES)).src_workload, "other");
        assert_eq!(m.bounded(edge(3)), edge(3));
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("get"), "OTHER");
        assert_eq!(method_label("BREW"), "OTHER");
        assert_eq!(status_class(403), "4xx");
    }

    #[test]
    fn a_connections_series_count_as_the_shared_ones() {
        let m = L7Metrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        let s = m.series(edge(1));
        for _ in 0..3 {
            s.request("GET", 200, 0.001);
        }
        s.request("BREW", 503, 0.001);
        s.denied("POST");
        m.series(edge(1)).request("GET", 204, 0.001);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        let e = "src_namespace=\"a\",src_workload=\"w1\",dst_namespace=\"b\",dst_workload=\"x\"";
        for line in [
            format!("veil_l7_requests_total{{{e},method=\"GET\",status_class=\"2xx\"}} 4"),
            format!("veil_l7_requests_total{{{e},method=\"OTHER\",status_class=\"5xx\"}} 1"),
            format!("veil_l7_requests_total{{{e},method=\"POST\",status_class=\"4xx\"}} 1"),
            format!("veil_l7_denied_requests_total{{{e},method=\"POST\"}} 1"),
            format!("veil_l7_request_duration_seconds_count{{{e}}} 6"),
        ] {
            assert!(out.contains(&line), "{line} in {out}");
        }
    }

    #[test]
    fn series_are_encoded_without_paths() {
        let m = L7Metrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.request(&edge(1), "GET", 200, 0.002);
        m.denied(&edge(1), "POST");
        m.closed("not HTTP/1.1");
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
        assert!(s.contains("veil_l7_requests_total{src_namespace=\"a\",src_workload=\"w1\",dst_namespace=\"b\",dst_workload=\"x\",method=\"GET\",status_class=\"2xx\"} 1"), "{s}");
        assert!(s.contains("veil_l7_denied_requests_total{"), "{s}");
        assert!(
            s.contains("veil_l7_request_duration_seconds_bucket{"),
            "{s}"
        );
        assert!(
            s.contains("veil_l7_connections_closed_total{reason=\"not HTTP/1.1\"} 1"),
            "{s}"
        );
    }
}
