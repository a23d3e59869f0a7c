//! Tests of the graph views and their exporters.

use super::*;
use crate::graph::ServiceGraph;
use crate::identity::Identity;
use crate::record::{ConnKey, Counters, FlowEvent, FlowRecord, Locality};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

fn sample() -> ServiceGraph {
    let f = Arc::new(Identity::pod(
        "shop",
        "frontend-0",
        "frontend",
        Default::default(),
    ));
    let a = Arc::new(Identity::pod(
        "shop",
        "a-0",
        "backend-a",
        Default::default(),
    ));
    let x = Arc::new(Identity::external("api.example.com"));
    let mut g = ServiceGraph::default();
    for (i, (s, d, port)) in [(&f, &a, 8080u16), (&f, &a, 8080), (&a, &x, 443)]
        .into_iter()
        .enumerate()
    {
        g.ingest(&FlowRecord {
            time: 1_000 + i as u64,
            event: FlowEvent::Destroy,
            conn: ConnKey {
                protocol: Protocol::Tcp,
                src: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 2)),
                src_port: 40_000 + i as u16,
                dst: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 3)),
                dst_port: port,
                id: i as u32,
            },
            source: s.clone(),
            destination: d.clone(),
            counters: Counters {
                bytes_sent: 100,
                packets_sent: 2,
                bytes_received: 1000,
                packets_received: 3,
            },
            verdict: Verdict::Allowed,
            policy: None,
            rule: None,
            ingress_rule: None,
            locality: Locality {
                source_local: true,
                destination_local: false,
            },
        });
    }
    g
}

#[test]
fn json_has_the_documented_shape() {
    let v = GraphView::of(&sample(), 2_000);
    let j = serde_json::to_value(&v).unwrap();
    assert_eq!(j["nodes"][0]["id"], "external:api.example.com");
    assert_eq!(j["nodes"][1]["id"], "shop/backend-a");
    assert_eq!(j["nodes"][1]["namespace"], "shop");
    assert_eq!(j["nodes"][1]["workload"], "backend-a");
    assert_eq!(j["nodes"][1]["kind"], "pod");
    let e = &j["edges"][1];
    assert_eq!(e["source"], "shop/frontend");
    assert_eq!(e["target"], "shop/backend-a");
    assert_eq!(e["port"], 8080);
    assert_eq!(e["protocol"], "TCP");
    assert_eq!(e["connections"], 2);
    assert_eq!(e["bytes"], 2200);
    let back: GraphView = serde_json::from_value(j).unwrap();
    assert_eq!(back, v);
}

#[test]
fn merging_sums_edges_with_the_same_key() {
    let v = GraphView::of(&sample(), 2_000);
    let m = GraphView::merge([v.clone(), v.clone()]);
    assert_eq!(m.nodes.len(), v.nodes.len());
    assert_eq!(m.edges.len(), v.edges.len());
    let e = m.edges.iter().find(|e| e.port == 8080).unwrap();
    assert_eq!(e.connections, 4);
    assert_eq!(e.bytes, 4400);
}

#[test]
fn merging_huge_counters_saturates_instead_of_overflowing() {
    let mut v = GraphView::of(&sample(), 2_000);
    for e in &mut v.edges {
        e.bytes = u64::MAX - 1;
        e.connections = u64::MAX;
    }
    let m = GraphView::merge([v.clone(), v]);
    assert!(m
        .edges
        .iter()
        .all(|e| e.bytes == u64::MAX && e.connections == u64::MAX));
    let _ = m.grafana_data();
}

#[test]
fn dot_and_text_name_every_edge() {
    let v = GraphView::of(&sample(), 2_000);
    let dot = v.to_dot();
    assert!(dot.starts_with("digraph veil {"));
    assert!(dot.contains(
        "\"shop/frontend\" -> \"shop/backend-a\" [label=\"8080/TCP\\n2 conns, 2.1KiB\"];"
    ));
    assert!(dot.contains("\"shop/backend-a\" -> \"external:api.example.com\""));
    let text = v.to_text();
    assert_eq!(text.lines().count(), 2);
    assert!(text.contains("shop/frontend") && text.contains("conns=2"));
}

#[test]
fn grafana_data_matches_its_fields() {
    let v = GraphView::of(&sample(), 2_000);
    let d = v.grafana_data();
    let f = GraphView::grafana_fields();
    for (data, fields) in [("nodes", "nodes_fields"), ("edges", "edges_fields")] {
        let names: Vec<&str> = f[fields]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["field_name"].as_str().unwrap())
            .collect();
        for item in d[data].as_array().unwrap() {
            let keys: Vec<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            for k in &keys {
                assert!(names.contains(k), "{data}: field {k} not declared");
            }
            assert_eq!(keys.len(), names.len());
        }
    }
    assert_eq!(d["edges"].as_array().unwrap().len(), 2);
    assert_eq!(d["nodes"].as_array().unwrap().len(), 3);
}

#[test]
fn dot_escapes_quotes() {
    let v = GraphView {
        nodes: vec![NodeView {
            id: "a\"b".into(),
            namespace: String::new(),
            workload: "a\"b".into(),
            kind: IdentityKind::External,
        }],
        edges: vec![],
    };
    assert!(v.to_dot().contains("\"a\\\"b\""));
}

#[test]
fn a_time_window_keeps_only_recent_edges_and_their_vertices() {
    let v = GraphView::of(&sample(), 2_000);
    let w = v.clone().since(1_002);
    assert_eq!(w.edges.len(), 1);
    assert_eq!(w.edges[0].target, "external:api.example.com");
    assert_eq!(w.nodes.len(), 2);
    assert_eq!(v.clone().since(0), v);
}

#[test]
fn http_requests_show_on_their_edge_and_merge_across_nodes() {
    let mut g = sample();
    let f = Arc::new(Identity::pod(
        "shop",
        "frontend-0",
        "frontend",
        Default::default(),
    ));
    let a = Arc::new(Identity::pod(
        "shop",
        "a-0",
        "backend-a",
        Default::default(),
    ));
    for (i, status) in [200u16, 200, 500, 403].into_iter().enumerate() {
        g.ingest_http(&crate::http::HttpRecord {
            time: 1_500 + i as u64,
            source: f.clone(),
            destination: a.clone(),
            port: 8080,
            method: "GET".into(),
            status,
            duration_us: 3_000,
            locality: Locality {
                source_local: true,
                destination_local: false,
            },
        });
    }
    let v = GraphView::of(&g, 2_000);
    let e = v.edges.iter().find(|e| e.port == 8080).unwrap();
    let h = e.http.as_ref().unwrap();
    assert_eq!((h.requests, h.errors, h.denied), (4, 1, 1));
    assert_eq!(h.p99_seconds, 0.005);
    assert!(v.edges.iter().filter(|e| e.http.is_some()).count() == 1);
    let m = GraphView::merge([v.clone(), v.clone()]);
    let e = m.edges.iter().find(|e| e.port == 8080).unwrap();
    assert_eq!(e.http.as_ref().unwrap().requests, 8);
    let d = m.grafana_data();
    let ge = d["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["detail__port"] == 8080)
        .unwrap();
    assert_eq!(ge["detail__verdict"], "allowed");
    assert!(ge["detail__http_rps"].as_f64().unwrap() > 0.0);
    let back: GraphView = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(back, m);
}

#[test]
fn denied_edges_are_red_in_grafana() {
    let mut v = GraphView::of(&sample(), 2_000);
    v.edges[0].connections = 0;
    v.edges[0].denied = 3;
    v.edges[1].denied = 1;
    let d = v.grafana_data();
    assert_eq!(d["edges"][0]["color"], "#dc2626");
    assert_eq!(d["edges"][1]["color"], "#ea580c");
}

#[test]
fn human_bytes_uses_binary_units() {
    assert_eq!(human_bytes(10), "10B");
    assert_eq!(human_bytes(1536), "1.5KiB");
}
