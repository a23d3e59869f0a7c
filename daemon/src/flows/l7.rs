//! HTTP request records from the L7 proxy: the type the proxy fills in for
//! every request it forwards or refuses ([`HttpRequest`]), and the trait it
//! reports them through ([`HttpRecordSink`], implemented by [`Flows`]).
//! Each record is resolved to identities like a connection and added to the
//! edge (client workload, server workload, port, TCP) of the service graph:
//! requests, server errors, L7 denies (403 from the node), a latency
//! histogram. `/api/v1/graph`, `/ui`, Grafana's Node Graph and the
//! `veil_http_*` series show them.
//!
//! This module does not proxy anything and does no IO.

use std::net::SocketAddr;
use std::time::Duration;

use veil_graph::{HttpRecord, Locality, Millis};

use super::Flows;

/// One HTTP request as the L7 proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// When the answer went back (ms since the epoch).
    pub time: Millis,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The server's address and port (after any service NAT).
    pub server: SocketAddr,
    /// Request method.
    pub method: String,
    /// Response status (403 when an L7 rule refused it; 0 when no answer
    /// came from the server).
    pub status: u16,
    /// Request to response.
    pub duration: Duration,
}

/// Where the L7 proxy reports requests.
pub trait HttpRecordSink: Send + Sync {
    /// Takes one request.
    fn record_http(&self, r: &HttpRequest);
}

impl HttpRecordSink for Flows {
    fn record_http(&self, r: &HttpRequest) {
        let resolver = self.resolver();
        let src = resolver.resolve(r.client.ip());
        let dst = resolver.resolve(r.server.ip());
        let rec = HttpRecord {
            time: r.time,
            source: src.identity,
            destination: dst.identity,
            port: r.server.port(),
            method: r.method.clone(),
            status: r.status,
            duration_us: u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX),
            locality: Locality {
                source_local: src.local,
                destination_local: dst.local,
            },
        };
        self.ingest_http(&rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::testutil::flows;

    #[test]
    fn requests_land_on_the_edge_between_the_workloads() {
        let f = flows();
        for status in [200, 200, 503] {
            f.record_http(&HttpRequest {
                time: 1_000,
                client: "10.244.1.2:40000".parse().unwrap(),
                server: "10.244.1.3:8080".parse().unwrap(),
                method: "GET".into(),
                status,
                duration: Duration::from_millis(4),
            });
        }
        let v = f.view(1_000);
        assert_eq!(v.edges.len(), 1);
        let e = &v.edges[0];
        assert_eq!(
            (e.source.as_str(), e.target.as_str(), e.port),
            ("shop/frontend", "shop/backend-a", 8080)
        );
        let h = e.http.as_ref().expect("http figures");
        assert_eq!((h.requests, h.errors), (3, 1));
        assert_eq!(h.p99_seconds, 0.005);
    }
}
