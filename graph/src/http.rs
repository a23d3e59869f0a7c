//! HTTP (L7) statistics of an edge: requests, server errors, a latency
//! histogram with fixed bounds (so that the views of several nodes merge
//! exactly and p99 is read from the merged buckets) and a one-minute rate.
//! An L7 proxy reports each request as an [`HttpRecord`];
//! [`crate::ServiceGraph::ingest_http`] adds it to the edge of its
//! (source, destination, port, TCP).
//!
//! Pure: no clock (the record carries its time), no IO.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::record::{Locality, Millis};
use crate::window::OneMinute;

/// Upper bounds of the latency buckets, in seconds (the last bucket is +Inf).
pub const LATENCY_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One HTTP request seen by an L7 proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRecord {
    /// When the answer was sent (ms since the epoch).
    pub time: Millis,
    /// The client.
    pub source: Arc<Identity>,
    /// The server.
    pub destination: Arc<Identity>,
    /// Server port.
    pub port: u16,
    /// Request method.
    pub method: String,
    /// Response status; 0 when no response came (connection failed).
    pub status: u16,
    /// Time from request to response, in microseconds.
    pub duration_us: u64,
    /// Which ends are local to the observing node (count-once rule as for
    /// connections: [`Locality::counts`]).
    pub locality: Locality,
}

impl HttpRecord {
    /// A server error (5xx) or no response at all.
    pub fn is_error(&self) -> bool {
        self.status == 0 || self.status >= 500
    }
}

/// What an edge keeps of its HTTP requests.
#[derive(Debug, Clone, Default)]
pub struct HttpStats {
    /// Requests.
    pub requests: u64,
    /// Server errors (5xx) and requests without an answer.
    pub errors: u64,
    /// Requests denied by an L7 rule (HTTP 403 from the node).
    pub denied: u64,
    /// Latency histogram: counts per [`LATENCY_BOUNDS`] bucket, then +Inf.
    pub buckets: [u64; LATENCY_BOUNDS.len() + 1],
    /// Sum of latencies, seconds.
    pub latency_sum: f64,
    /// Requests (as "connections") and errors (as "bytes") in the last minute.
    pub minute: OneMinute,
}

impl HttpStats {
    /// Adds one request.
    pub fn add(&mut self, r: &HttpRecord) {
        self.requests += 1;
        let err = r.is_error();
        if err {
            self.errors += 1;
        }
        if r.status == 403 {
            self.denied += 1;
        }
        let secs = r.duration_us as f64 / 1e6;
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i] += 1;
        self.latency_sum += secs;
        self.minute.add(r.time, 1, u64::from(err));
    }

    /// The view at `now`.
    pub fn view(&self, now: Millis) -> HttpView {
        let (req, err) = self.minute.totals(now);
        let span = OneMinute::SPAN_MS as f64 / 1000.0;
        let mut v = HttpView {
            requests: self.requests,
            errors: self.errors,
            denied: self.denied,
            requests_per_second: req as f64 / span,
            errors_per_second: err as f64 / span,
            buckets: self.buckets.to_vec(),
            latency_sum: self.latency_sum,
            p99_seconds: 0.0,
        };
        v.p99_seconds = v.quantile(0.99);
        v
    }
}

/// HTTP figures of an edge as shown (JSON of `/api/v1/graph`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpView {
    /// Requests.
    pub requests: u64,
    /// Server errors and requests without an answer.
    pub errors: u64,
    /// Requests denied by an L7 rule.
    #[serde(default)]
    pub denied: u64,
    /// Requests per second over the last minute.
    pub requests_per_second: f64,
    /// Errors per second over the last minute.
    pub errors_per_second: f64,
    /// Latency histogram over [`LATENCY_BOUNDS`] then +Inf.
    pub buckets: Vec<u64>,
    /// Sum of latencies, seconds.
    pub latency_sum: f64,
    /// 99th percentile latency, seconds (upper bound of its bucket).
    pub p99_seconds: f64,
}

impl HttpView {
    /// The upper bound of the bucket holding quantile `q` (the largest finite
    /// bound when it falls in +Inf; 0 without requests).
    pub fn quantile(&self, q: f64) -> f64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return LATENCY_BOUNDS
                    .get(i)
                    .copied()
                    .unwrap_or(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1]);
            }
        }
        LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1]
    }

    /// Adds another node's figures for the same edge.
    pub fn merge(&mut self, o: &HttpView) {
        self.requests = self.requests.saturating_add(o.requests);
        self.errors = self.errors.saturating_add(o.errors);
        self.denied = self.denied.saturating_add(o.denied);
        self.requests_per_second += o.requests_per_second;
        self.errors_per_second += o.errors_per_second;
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize(o.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a = a.saturating_add(*b);
        }
        self.latency_sum += o.latency_sum;
        self.p99_seconds = self.quantile(0.99);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: Millis, status: u16, ms: u64) -> HttpRecord {
        HttpRecord {
            time: t,
            source: Arc::new(Identity::world()),
            destination: Arc::new(Identity::world()),
            port: 80,
            method: "GET".into(),
            status,
            duration_us: ms * 1000,
            locality: Locality::default(),
        }
    }

    #[test]
    fn p99_rates_and_errors_come_from_the_requests() {
        let mut s = HttpStats::default();
        for i in 0..99 {
            s.add(&rec(1_000 + i, 200, 2));
        }
        s.add(&rec(2_000, 503, 700));
        let v = s.view(2_000);
        assert_eq!((v.requests, v.errors), (100, 1));
        assert_eq!(v.p99_seconds, 0.0025);
        assert!((v.requests_per_second - 100.0 / 60.0).abs() < 1e-9);
        s.add(&rec(2_001, 200, 900));
        assert_eq!(s.view(2_001).p99_seconds, 1.0);
    }

    #[test]
    fn merged_views_take_p99_from_the_merged_buckets() {
        let mut a = HttpStats::default();
        let mut b = HttpStats::default();
        for i in 0..50 {
            a.add(&rec(i, 200, 1));
            b.add(&rec(i, 200, 200));
        }
        let mut m = a.view(100);
        m.merge(&b.view(100));
        assert_eq!(m.requests, 100);
        assert_eq!(m.p99_seconds, 0.25);
        assert_eq!(m.quantile(0.5), 0.001);
    }
}
