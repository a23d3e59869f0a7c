//! Prometheus series of the flow collector, encoded from the graph at scrape
//! time (so the series are exactly the graph's edges, bounded by its cap).
//! Labels: source/destination namespace and workload, destination port,
//! protocol, verdict; never addresses or pod names.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::Flows;

/// The collector registered on the daemon's registry.
#[derive(Debug)]
pub(super) struct FlowMetrics(pub(super) Arc<Flows>);

type Labels = Vec<(&'static str, String)>;

impl Collector for FlowMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Gather under the lock, encode after.
        let rows: Vec<(Labels, u64, u64, u64, u64, u64, u64)> = self.0.with_graph(|g| {
            g.edges()
                .map(|(s, d, e)| {
                    let mut labels: Labels = vec![
                        ("source_namespace", s.identity.namespace().to_string()),
                        ("source_workload", s.identity.workload().to_string()),
                        ("destination_namespace", d.identity.namespace().to_string()),
                        ("destination_workload", d.identity.workload().to_string()),
                        ("destination_kind", d.identity.kind().as_str().to_string()),
                        ("destination_port", e.port.to_string()),
                        ("protocol", e.protocol.to_string()),
                    ];
                    // One Service per edge at most: bounded like the edges.
                    if let Some(svc) = &e.service {
                        labels.push(("destination_service", svc.to_string()));
                    }
                    (
                        labels,
                        e.connections,
                        e.denied,
                        e.counters.bytes_sent,
                        e.counters.bytes_received,
                        e.counters.packets_sent + e.counters.packets_received,
                        e.active,
                    )
                })
                .collect()
        });
        let with = |l: &Labels, extra: (&'static str, &str)| -> Labels {
            let mut l = l.clone();
            l.push((extra.0, extra.1.to_string()));
            l
        };
        {
            let mut m = encoder.encode_descriptor(
                "veil_flows",
                "Connections seen per edge (allowed) and attempts denied, counted once in the cluster",
                None,
                MetricType::Counter,
            )?;
            for (l, conns, denied, ..) in &rows {
                ConstCounter::new(*conns)
                    .encode(m.encode_family(&with(l, ("verdict", "allowed")))?)?;
                if *denied > 0 {
                    ConstCounter::new(*denied)
                        .encode(m.encode_family(&with(l, ("verdict", "denied")))?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "veil_flow_bytes",
                "Bytes per edge, by direction (sent: source to destination)",
                None,
                MetricType::Counter,
            )?;
            for (l, _, _, sent, received, ..) in &rows {
                let l = with(l, ("verdict", "allowed"));
                ConstCounter::new(*sent)
                    .encode(m.encode_family(&with(&l, ("direction", "sent")))?)?;
                ConstCounter::new(*received)
                    .encode(m.encode_family(&with(&l, ("direction", "received")))?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "veil_flow_packets",
                "Packets per edge, both ways",
                None,
                MetricType::Counter,
            )?;
            for (l, _, _, _, _, packets, _) in &rows {
                ConstCounter::new(*packets)
                    .encode(m.encode_family(&with(l, ("verdict", "allowed")))?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "veil_flow_active_connections",
                "Connections open now per edge",
                None,
                MetricType::Gauge,
            )?;
            for (l, _, _, _, _, _, active) in &rows {
                ConstGauge::new(*active as i64)
                    .encode(m.encode_family(&with(l, ("verdict", "allowed")))?)?;
            }
        }
        {
            let by_policy = self
                .0
                .policy_log
                .by_policy
                .lock()
                .expect("policy log lock")
                .clone();
            for (name, help, action) in [
                ("veil_policy_denies", "Packets denied per policy rule's tier, policy and direction (NFLOG, rate-limited per rule in the kernel)", "deny"),
                ("veil_policy_logged", "Packets seen by Log rules per tier, policy and direction (NFLOG, rate-limited per rule in the kernel)", "log"),
            ] {
                let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for ((a, tier, policy, direction), v) in &by_policy {
                    if *a != action {
                        continue;
                    }
                    let l: Labels = vec![
                        ("tier", tier.clone()),
                        ("policy", policy.clone()),
                        ("direction", direction.clone()),
                    ];
                    ConstCounter::new(*v).encode(m.encode_family(&l)?)?;
                }
            }
        }
        encode_http(&self.0, &mut encoder)?;
        let lc = self.0.lifecycle();
        for (name, help, v) in [
            (
                "veil_flow_connections_opened",
                "Connections opened (one flow record each)",
                lc.opened,
            ),
            (
                "veil_flow_connections_closed",
                "Connections closed (one flow record each)",
                lc.closed,
            ),
        ] {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(m)?;
        }
        let h = self.0.health_report();
        for (name, help, v) in [
            (
                "veil_flow_events",
                "Conntrack events received",
                self.0.health.events.load(Ordering::Relaxed),
            ),
            (
                "veil_flow_events_lost",
                "Conntrack event overruns (ENOBUFS): each lost one or more events",
                self.0.health.lost.load(Ordering::Relaxed),
            ),
            (
                "veil_policy_log_lost",
                "Policy log (NFLOG) receive buffer overruns (ENOBUFS): each lost one or more entries",
                self.0.policy_log.lost.load(Ordering::Relaxed),
            ),
            (
                "veil_policy_log_unattributed",
                "Policy log (NFLOG) entries whose prefix or packet could not be read",
                self.0.policy_log.unattributed.load(Ordering::Relaxed),
            ),
            (
                "veil_flow_dumps",
                "Conntrack table dumps completed",
                h.dumps,
            ),
            (
                "veil_flow_collector_errors",
                "Conntrack receive or dump errors",
                h.errors,
            ),
            (
                "veil_flow_evicted_edges",
                "Graph edges evicted to stay under the cap",
                h.graph.evicted_edges,
            ),
            (
                "veil_flow_evicted_connections",
                "Tracked connections evicted to stay under the cap",
                h.graph.evicted_connections,
            ),
        ] {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(m)?;
        }
        for (name, help, v) in [
            (
                "veil_flow_tracked_connections",
                "Connections tracked by the collector now",
                h.tracked_connections,
            ),
            (
                "veil_flow_graph_edges",
                "Edges in this node's graph now",
                h.edges,
            ),
        ] {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v as i64).encode(m)?;
        }
        Ok(())
    }
}

/// The HTTP series of the edges that have L7 data: requests, errors and
/// L7 denies (counters) and latency (histogram), per edge.
fn encode_http(flows: &Flows, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let rows: Vec<(Labels, veil_graph::HttpStats)> = flows.with_graph(|g| {
        g.edges()
            .filter_map(|(s, d, e)| {
                let h = e.http.as_deref()?.clone();
                let labels: Labels = vec![
                    ("source_namespace", s.identity.namespace().to_string()),
                    ("source_workload", s.identity.workload().to_string()),
                    ("destination_namespace", d.identity.namespace().to_string()),
                    ("destination_workload", d.identity.workload().to_string()),
                    ("destination_port", e.port.to_string()),
                ];
                Some((labels, h))
            })
            .collect()
    });
    for (name, help, pick) in [
        (
            "veil_http_requests",
            "HTTP requests per edge (L7 proxy)",
            (|h: &veil_graph::HttpStats| h.requests) as fn(&veil_graph::HttpStats) -> u64,
        ),
        (
            "veil_http_errors",
            "HTTP requests per edge answered 5xx or not at all",
            |h| h.errors,
        ),
        (
            "veil_http_denied",
            "HTTP requests per edge refused by an L7 rule (403 from the node)",
            |h| h.denied,
        ),
    ] {
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (l, h) in &rows {
            ConstCounter::new(pick(h)).encode(m.encode_family(l)?)?;
        }
    }
    let mut m = encoder.encode_descriptor(
        "veil_http_request_duration_seconds",
        "HTTP request latency per edge (request to response, at the L7 proxy)",
        None,
        MetricType::Histogram,
    )?;
    for (l, h) in &rows {
        // Per-bucket counts: the encoder makes them cumulative.
        let buckets: Vec<(f64, u64)> = veil_graph::LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.buckets.iter().copied())
            .collect();
        m.encode_family(l)?.encode_histogram::<Labels>(
            h.latency_sum,
            h.requests,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::resolve::Resolver;
    use crate::flows::FlowOptions;
    use prometheus_client::registry::Registry;
    use veil_graph::{
        ConnKey, Counters, FlowEvent, FlowRecord, Identity, Locality, Protocol, Verdict,
    };

    #[test]
    fn series_carry_workloads_not_addresses_nor_pod_names() {
        let r = Resolver::new(
            "n1",
            "198.18.0.1".parse().unwrap(),
            &Default::default(),
            &[],
            &[],
        );
        let f = Arc::new(Flows::new("n1", 51820, 9590, r, &FlowOptions::default()));
        f.ingest_records(&[FlowRecord {
            time: 1,
            event: FlowEvent::Destroy,
            conn: ConnKey {
                protocol: Protocol::Tcp,
                src: "10.244.1.2".parse().unwrap(),
                src_port: 40000,
                dst: "10.244.1.3".parse().unwrap(),
                dst_port: 8080,
                id: 1,
            },
            source: Arc::new(Identity::pod(
                "shop",
                "frontend-x2x9z",
                "frontend",
                Default::default(),
            )),
            destination: Arc::new(Identity::pod(
                "shop",
                "backend-0",
                "backend",
                Default::default(),
            )),
            counters: Counters {
                bytes_sent: 10,
                packets_sent: 1,
                bytes_received: 20,
                packets_received: 1,
            },
            verdict: Verdict::Allowed,
            policy: None,
            rule: None,
            ingress_rule: None,
            locality: Locality {
                source_local: true,
                destination_local: true,
            },
        }]);
        let mut reg = Registry::default();
        reg.register_collector(Box::new(FlowMetrics(f)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("veil_flows_total{source_namespace=\"shop\",source_workload=\"frontend\",destination_namespace=\"shop\",destination_workload=\"backend\",destination_kind=\"pod\",destination_port=\"8080\",protocol=\"TCP\",verdict=\"allowed\"} 1"), "{out}");
        assert!(out.contains("direction=\"received\"} 20"), "{out}");
        assert!(out.contains("veil_flow_events_lost_total 0"), "{out}");
        assert!(
            !out.contains("10.244.") && !out.contains("x2x9z") && !out.contains("backend-0"),
            "{out}"
        );
    }

    #[test]
    fn the_grafana_dashboard_queries_only_series_we_export() {
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/grafana/veil-flows.json"))
                .expect("dashboard is JSON");
        let r = Resolver::new(
            "n1",
            "198.18.0.1".parse().unwrap(),
            &Default::default(),
            &[],
            &[],
        );
        let f = Arc::new(Flows::new("n1", 51820, 9590, r, &FlowOptions::default()));
        let mut rec = FlowRecord {
            time: 1,
            event: FlowEvent::New,
            conn: ConnKey {
                protocol: Protocol::Tcp,
                src: "10.244.1.2".parse().unwrap(),
                src_port: 1,
                dst: "10.244.1.3".parse().unwrap(),
                dst_port: 80,
                id: 1,
            },
            source: Arc::new(Identity::pod("a", "x", "x", Default::default())),
            destination: Arc::new(Identity::pod("a", "y", "y", Default::default())),
            counters: Counters::default(),
            verdict: Verdict::Allowed,
            policy: None,
            rule: None,
            ingress_rule: None,
            locality: Locality {
                source_local: true,
                destination_local: true,
            },
        };
        f.ingest_records(&[rec.clone()]);
        rec.verdict = Verdict::Denied;
        f.ingest_records(&[rec]);
        let mut syn = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 244, 1, 2, 10, 244, 1, 3,
        ];
        syn.extend_from_slice(&[0x9c, 0x40, 0, 80]);
        syn.extend_from_slice(&[0; 16]);
        let t = Default::default();
        f.ingest_policy_log("D|E|security|gnp:block-db|2", &syn, &t, 2);
        f.ingest_policy_log("L|E|security|gnp:audit|0", &syn, &t, 2);
        f.ingest_http(&veil_graph::HttpRecord {
            time: 3,
            source: Arc::new(Identity::pod("a", "x", "x", Default::default())),
            destination: Arc::new(Identity::pod("a", "y", "y", Default::default())),
            port: 80,
            method: "GET".into(),
            status: 503,
            duration_us: 2_000,
            locality: Locality {
                source_local: true,
                destination_local: true,
            },
        });
        let mut reg = Registry::default();
        reg.register_collector(Box::new(FlowMetrics(f)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        let panels = dash["panels"].as_array().expect("panels");
        assert!(panels.iter().any(|p| p["type"] == "nodeGraph"
            && p["datasource"]["type"] == "hamedkarbasi93-nodegraphapi-datasource"));
        let mut ids: Vec<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), panels.len(), "panel ids are unique");
        let mut checked = 0;
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                for name in expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("veil_"))
                {
                    assert!(
                        out.lines().any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])),
                        "panel {:?} queries {name}, which veild does not export",
                        p["title"]
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 15, "only {checked} series checked");
        assert!(out.contains("veil_http_request_duration_seconds_bucket{le=\"0.0025\",source_namespace=\"a\",source_workload=\"x\",destination_namespace=\"a\",destination_workload=\"y\",destination_port=\"80\"} 1"), "{out}");
        assert!(out.contains("veil_http_request_duration_seconds_bucket{le=\"+Inf\",source_namespace=\"a\",source_workload=\"x\",destination_namespace=\"a\",destination_workload=\"y\",destination_port=\"80\"} 1"), "{out}");
    }
}
