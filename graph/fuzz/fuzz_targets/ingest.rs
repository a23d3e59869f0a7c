//! Fuzz target: an arbitrary stream of flow events (decoded from the input
//! bytes, 8 bytes per event) into a small-capped graph and flow log, and the
//! same stream through a [`Lifecycle`] into a second graph and log. Checks
//! the graph's invariants after every event, that the lifecycle opens and
//! closes each connection at most once, and that every export works.
#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use veil_graph::{
    ConnKey, Counters, FlowEvent, FlowFilter, FlowLog, FlowRecord, FlowSink, GraphLimits,
    GraphView, Identity, Lifecycle, LifecycleLimits, Locality, Protocol, ServiceGraph, Verdict,
};

fuzz_target!(|data: &[u8]| {
    let ids: Vec<Arc<Identity>> = vec![
        Arc::new(Identity::pod_from_metadata(
            "a",
            "web-7d4b9c8f6d-x2x9z",
            BTreeMap::new(),
            None,
        )),
        Arc::new(Identity::pod("a", "db-0", "db", BTreeMap::new())),
        Arc::new(Identity::pod("b", "x", "x", BTreeMap::new())),
        Arc::new(Identity::node("n1")),
        Arc::new(Identity::external("api.example.com")),
        Arc::new(Identity::world()),
    ];
    let limits = GraphLimits {
        max_edges: 7,
        max_connections: 13,
        hash_seed: 3,
    };
    let mut g = ServiceGraph::new(limits);
    let mut log = FlowLog::new(5);
    let mut lc = Lifecycle::new(LifecycleLimits {
        max_connections: 13,
        tombstone_ms: 5_000,
        hash_seed: 3,
    });
    let mut g2 = ServiceGraph::new(limits);
    let mut log2 = FlowLog::new(5);
    // Per connection: (opened, closed) as the lifecycle emitted them.
    let mut seen: std::collections::HashMap<ConnKey, (u32, u32)> = Default::default();
    let mut out = Vec::new();
    let mut time = 0u64;
    for c in data.chunks_exact(8) {
        time += u64::from(c[0] & 0x0f) * 997;
        let event = match c[0] >> 6 {
            0 => FlowEvent::New,
            1 => FlowEvent::Update,
            2 => FlowEvent::Closed,
            _ => FlowEvent::Destroy,
        };
        let r = FlowRecord {
            time,
            event,
            conn: ConnKey {
                protocol: Protocol::from_number(c[1] % 20),
                src: IpAddr::V4(Ipv4Addr::new(10, 244, 0, c[2] & 7)),
                src_port: u16::from(c[3] & 15),
                dst: IpAddr::V4(Ipv4Addr::new(10, 244, 1, c[2] >> 5)),
                dst_port: u16::from(c[4] & 3) * 80,
                id: u32::from(c[5] & 7),
            },
            source: ids[usize::from(c[6] >> 4) % ids.len()].clone(),
            destination: ids[usize::from(c[6] & 15) % ids.len()].clone(),
            counters: Counters {
                bytes_sent: u64::from(c[7]) << (c[1] >> 2),
                packets_sent: u64::from(c[7] >> 4),
                bytes_received: u64::from(c[7]).wrapping_mul(1 << (c[4] >> 3)),
                packets_received: u64::from(c[7] & 15),
            },
            verdict: if c[5] & 0x80 != 0 {
                Verdict::Denied
            } else {
                Verdict::Allowed
            },
            policy: (c[5] & 0x40 != 0).then(|| Arc::from("a/p#1")),
            rule: None,
            ingress_rule: None,
            locality: Locality {
                source_local: c[0] & 0x10 != 0,
                destination_local: c[0] & 0x20 != 0,
            },
        };
        (&mut g, &mut log).record(&r);
        out.clear();
        if c[1] & 0x80 != 0 {
            // A dump that shows only this entry.
            lc.begin_dump();
            lc.observe(&r, &mut out);
            lc.end_dump(time, &mut out);
        } else {
            lc.observe(&r, &mut out);
        }
        for o in &out {
            if o.verdict == Verdict::Denied {
                continue;
            }
            let x = seen.entry(o.conn).or_default();
            match o.event {
                FlowEvent::New => {
                    // Reopened only after it was closed and forgotten (or
                    // evicted to stay under the cap).
                    assert!(
                        x.0 == x.1 || lc.counters().evicted > 0,
                        "{:?} opened twice",
                        o.conn
                    );
                    x.0 += 1;
                }
                FlowEvent::Closed => {
                    x.1 += 1;
                    assert!(x.1 <= x.0, "{:?} closed without being open", o.conn);
                }
                _ => assert!(x.0 > 0, "{:?} update before open", o.conn),
            }
            (&mut g2, &mut log2).record(o);
        }
        assert!(lc.tracked() <= 13);
        assert!(g2.edge_count() <= limits.max_edges);
        assert!(g.edge_count() <= limits.max_edges);
        assert!(g.tracked_connections() <= limits.max_connections);
        let active: u64 = g.edges().map(|e| e.2.active).sum();
        assert!(active as usize <= g.tracked_connections());
    }
    let v = GraphView::of(&g, time);
    let j = serde_json::to_string(&v).expect("view serialises");
    let back: GraphView = serde_json::from_str(&j).expect("view parses back");
    assert_eq!(back.edges.len(), v.edges.len());
    let m = GraphView::merge([v.clone(), back]);
    assert_eq!(m.edges.len(), v.edges.len());
    let _ = v.to_dot();
    let _ = v.to_text();
    let _ = v.grafana_data();
    let page = log.query(&FlowFilter {
        after: 2,
        ..Default::default()
    });
    assert!(page.flows.len() <= 5);
    if g.expire(time + 1) > 0 {
        assert!(g.edges().all(|e| e.2.active > 0));
    }
});
