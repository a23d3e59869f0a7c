//! Unit tests of the service graph: counting each connection once, byte
//! growth, workload aggregation, denied attempts, the memory caps and
//! expiry.

use super::*;
use crate::record::Locality;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

fn pod(ns: &str, w: &str) -> Arc<Identity> {
    Arc::new(Identity::pod(ns, format!("{w}-0"), w, BTreeMap::new()))
}

fn rec(
    t: Millis,
    event: FlowEvent,
    sport: u16,
    src: &Arc<Identity>,
    dst: &Arc<Identity>,
    bytes: u64,
) -> FlowRecord {
    FlowRecord {
        time: t,
        event,
        conn: ConnKey {
            protocol: Protocol::Tcp,
            src: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 2)),
            src_port: sport,
            dst: IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2)),
            dst_port: 8080,
            id: u32::from(sport),
        },
        source: src.clone(),
        destination: dst.clone(),
        counters: Counters {
            bytes_sent: bytes,
            packets_sent: 1,
            bytes_received: bytes * 2,
            packets_received: 1,
        },
        verdict: Verdict::Allowed,
        policy: None,
        rule: None,
        ingress_rule: None,
        locality: Locality {
            source_local: true,
            destination_local: false,
        },
    }
}

#[test]
fn new_update_destroy_count_one_connection_and_byte_growth() {
    let (f, b) = (pod("d", "frontend"), pod("d", "backend"));
    let mut g = ServiceGraph::default();
    g.ingest(&rec(1_000, FlowEvent::New, 40000, &f, &b, 0));
    g.ingest(&rec(2_000, FlowEvent::Update, 40000, &f, &b, 100));
    assert_eq!(g.edges().next().unwrap().2.active, 1);
    g.ingest(&rec(3_000, FlowEvent::Destroy, 40000, &f, &b, 150));
    let (s, d, e) = g.edges().next().unwrap();
    assert_eq!(
        (s.identity.id(), d.identity.id()),
        ("d/frontend", "d/backend")
    );
    assert_eq!(e.connections, 1);
    assert_eq!(e.active, 0);
    assert_eq!(e.counters.bytes_sent, 150);
    assert_eq!(e.counters.bytes_received, 300);
    assert_eq!((e.first_seen, e.last_seen), (1_000, 3_000));
    assert_eq!(g.tracked_connections(), 0);
}

#[test]
fn a_closed_connection_is_not_active_and_its_destroy_counts_nothing_more() {
    let (f, b) = (pod("d", "frontend"), pod("d", "backend"));
    let mut g = ServiceGraph::default();
    g.ingest(&rec(1_000, FlowEvent::New, 7, &f, &b, 0));
    g.ingest(&rec(2_000, FlowEvent::Closed, 7, &f, &b, 100));
    let e = g.edges().next().unwrap().2;
    assert_eq!(
        (e.connections, e.active, e.counters.bytes_sent),
        (1, 0, 100)
    );
    g.ingest(&rec(3_000, FlowEvent::Update, 7, &f, &b, 100));
    g.ingest(&rec(9_000, FlowEvent::Destroy, 7, &f, &b, 100));
    let e = g.edges().next().unwrap().2;
    assert_eq!(
        (e.connections, e.active, e.counters.bytes_sent),
        (1, 0, 100)
    );
    assert_eq!(g.tracked_connections(), 0);
    // Seen first when already closed (a dump of a TIME_WAIT entry).
    g.ingest(&rec(10_000, FlowEvent::Closed, 8, &f, &b, 50));
    let e = g.edges().next().unwrap().2;
    assert_eq!((e.connections, e.active), (2, 0));
}

#[test]
fn a_repeated_new_event_is_not_a_second_connection() {
    let (f, b) = (pod("d", "frontend"), pod("d", "backend"));
    let mut g = ServiceGraph::default();
    g.ingest(&rec(1_000, FlowEvent::New, 1, &f, &b, 10));
    g.ingest(&rec(1_000, FlowEvent::New, 1, &f, &b, 10));
    let e = g.edges().next().unwrap().2;
    assert_eq!((e.connections, e.active, e.counters.bytes_sent), (1, 1, 10));
}

#[test]
fn a_destroy_without_new_counts_the_whole_connection() {
    let (f, b) = (pod("d", "frontend"), pod("d", "backend"));
    let mut g = ServiceGraph::default();
    g.ingest(&rec(1_000, FlowEvent::Destroy, 1, &f, &b, 10));
    let e = g.edges().next().unwrap().2;
    assert_eq!((e.connections, e.active, e.counters.bytes_sent), (1, 0, 10));
}

#[test]
fn pods_of_one_workload_share_a_vertex_and_ports_split_edges() {
    let b = pod("d", "backend");
    let f1 = Arc::new(Identity::pod(
        "d",
        "frontend-x2x9z",
        "frontend",
        BTreeMap::new(),
    ));
    let f2 = Arc::new(Identity::pod(
        "d",
        "frontend-b2b4z",
        "frontend",
        BTreeMap::new(),
    ));
    let mut g = ServiceGraph::default();
    g.ingest(&rec(1, FlowEvent::New, 1, &f1, &b, 1));
    g.ingest(&rec(1, FlowEvent::New, 2, &f2, &b, 1));
    let mut r = rec(1, FlowEvent::New, 3, &f2, &b, 1);
    r.conn.dst_port = 9090;
    g.ingest(&r);
    assert_eq!(g.vertex_count(), 2);
    assert_eq!(g.edge_count(), 2);
    let e8080 = g.edges().find(|e| e.2.port == 8080).unwrap().2;
    assert_eq!(e8080.connections, 2);
}

#[test]
fn records_another_node_counts_are_ignored() {
    let (f, b) = (pod("d", "frontend"), pod("d", "backend"));
    let mut g = ServiceGraph::default();
    let mut r = rec(1, FlowEvent::New, 1, &f, &b, 1);
    r.locality = Locality {
        source_local: false,
        destination_local: true,
    };
    g.ingest(&r);
    assert_eq!(g.edge_count(), 0);
    assert_eq!(g.counters().not_counted_here, 1);
}

#[test]
fn denied_attempts_are_counted_apart_with_their_policy() {
    let (f, b) = (pod("d", "frontend"), pod("d", "db"));
    let mut g = ServiceGraph::default();
    let mut r = rec(1, FlowEvent::New, 1, &f, &b, 0);
    r.verdict = Verdict::Denied;
    r.policy = Some(Arc::from("d/deny-db#0"));
    g.ingest(&r);
    let e = g.edges().next().unwrap().2;
    assert_eq!((e.connections, e.denied), (0, 1));
    assert_eq!(e.policy.as_deref(), Some("d/deny-db#0"));
    assert_eq!(g.tracked_connections(), 0);
}

#[test]
fn the_edge_cap_evicts_the_stalest_and_counts_it() {
    let f = pod("d", "frontend");
    let mut g = ServiceGraph::new(GraphLimits {
        max_edges: 8,
        max_connections: 1000,
        hash_seed: 7,
    });
    for i in 0..20u16 {
        let b = pod("d", &format!("b{i}"));
        g.ingest(&rec(u64::from(i), FlowEvent::Destroy, i, &f, &b, 1));
    }
    assert!(g.edge_count() <= 8);
    assert!(g.counters().evicted_edges >= 12);
    // The newest edge survives.
    assert!(g.edges().any(|e| e.1.identity.id() == "d/b19"));
    assert!(!g.edges().any(|e| e.1.identity.id() == "d/b0"));
}

#[test]
fn the_connection_cap_evicts_the_stalest_and_fixes_active() {
    let (f, b) = (pod("d", "frontend"), pod("d", "backend"));
    let mut g = ServiceGraph::new(GraphLimits {
        max_edges: 10,
        max_connections: 16,
        hash_seed: 7,
    });
    for i in 0..100u16 {
        g.ingest(&rec(u64::from(i), FlowEvent::New, i, &f, &b, 1));
    }
    assert!(g.tracked_connections() <= 16);
    let e = g.edges().next().unwrap().2;
    assert_eq!(e.connections, 100);
    assert_eq!(e.active as usize, g.tracked_connections());
    assert_eq!(
        g.counters().evicted_connections as usize + g.tracked_connections(),
        100
    );
}

#[test]
fn a_connection_whose_identity_changes_moves_its_active_count() {
    let (f, b, c) = (pod("d", "frontend"), pod("d", "backend"), pod("d", "other"));
    let mut g = ServiceGraph::default();
    g.ingest(&rec(1, FlowEvent::New, 1, &f, &b, 1));
    g.ingest(&rec(2, FlowEvent::Update, 1, &f, &c, 2));
    let active: Vec<(String, u64)> = g
        .edges()
        .map(|e| (e.1.identity.id().to_string(), e.2.active))
        .collect();
    assert!(active.contains(&("d/backend".to_string(), 0)));
    assert!(active.contains(&("d/other".to_string(), 1)));
    g.ingest(&rec(3, FlowEvent::Destroy, 1, &f, &b, 3));
    assert_eq!(g.edges().map(|e| e.2.active).sum::<u64>(), 0);
}

#[test]
fn a_connection_to_world_later_named_moves_to_the_named_edge() {
    let f = pod("d", "frontend");
    let world = Arc::new(Identity::world());
    let api = Arc::new(Identity::external("api.example.com"));
    let mut g = ServiceGraph::default();
    g.ingest(&rec(1, FlowEvent::New, 1, &f, &world, 10));
    g.ingest(&rec(2, FlowEvent::New, 2, &f, &api, 10));
    g.ingest(&rec(3, FlowEvent::Update, 1, &f, &api, 30));
    let edges: Vec<(String, u64, u64, u64)> = g
        .edges()
        .map(|e| {
            (
                e.1.identity.id().to_string(),
                e.2.connections,
                e.2.active,
                e.2.counters.bytes_sent,
            )
        })
        .collect();
    assert_eq!(
        edges,
        vec![("external:api.example.com".to_string(), 2, 2, 40)]
    );
}

#[test]
fn expire_forgets_idle_edges_and_vertices() {
    let (f, b) = (pod("d", "frontend"), pod("d", "backend"));
    let mut g = ServiceGraph::default();
    g.ingest(&rec(1_000, FlowEvent::Destroy, 1, &f, &b, 1));
    assert_eq!(g.expire(500), 0);
    assert_eq!(g.expire(5_000), 1);
    assert_eq!((g.edge_count(), g.vertex_count()), (0, 0));
}

proptest::proptest! {
    /// Whatever order and repetition the events of a set of connections
    /// arrive in, each connection is counted once, active never exceeds
    /// the tracked connections, and bytes never exceed the final counters.
    #[test]
    fn each_connection_counts_once(events in proptest::collection::vec((0u16..20, 0u8..4, 0u64..1000), 1..200)) {
        let (f, b) = (pod("d", "frontend"), pod("d", "backend"));
        let mut g = ServiceGraph::default();
        let mut seen = std::collections::HashSet::new();
        let mut destroyed = std::collections::HashSet::new();
        let mut max_bytes = std::collections::HashMap::new();
        let mut closed = std::collections::HashSet::new();
        for (t, (conn, ev, bytes)) in events.iter().enumerate() {
            if destroyed.contains(conn) { continue; }
            let ev = match ev { 0 => FlowEvent::New, 1 => FlowEvent::Update, 2 => FlowEvent::Closed, _ => FlowEvent::Destroy };
            if ev == FlowEvent::Destroy { destroyed.insert(*conn); }
            if ev == FlowEvent::Closed { closed.insert(*conn); }
            seen.insert(*conn);
            let m: &mut u64 = max_bytes.entry(*conn).or_default();
            *m = (*m).max(*bytes);
            g.ingest(&rec(t as u64, ev, *conn, &f, &b, *bytes));
        }
        let e = g.edges().next().unwrap().2;
        proptest::prop_assert_eq!(e.connections as usize, seen.len());
        let open = seen.iter().filter(|c| !destroyed.contains(c) && !closed.contains(c)).count();
        proptest::prop_assert_eq!(e.active as usize, open);
        proptest::prop_assert!(e.counters.bytes_sent <= max_bytes.values().sum::<u64>());
    }
}

#[test]
fn a_hundred_thousand_distinct_edges_stay_under_the_configured_cap() {
    // 400 × 250 workload pairs: 100,000 distinct edges, newest last.
    let ids: Vec<Arc<Identity>> = (0..400).map(|i| pod("ns", &format!("w{i}"))).collect();
    let mut g = ServiceGraph::new(GraphLimits {
        max_edges: 20_000,
        max_connections: 1_000,
        hash_seed: 7,
    });
    let mut n: u64 = 0;
    for s in &ids {
        for d in &ids[..250] {
            n += 1;
            g.ingest(&rec(n, FlowEvent::Destroy, (n % 60_000) as u16, s, d, 1));
            assert!(
                g.edge_count() <= 20_000,
                "{} edges after {n}",
                g.edge_count()
            );
        }
    }
    assert_eq!(n, 100_000);
    let c = g.counters();
    assert_eq!(c.evicted_edges + g.edge_count() as u64, 100_000);
    assert!(g.edge_count() > 20_000 * 7 / 8, "{}", g.edge_count());
    // The newest edge is kept, the oldest went.
    let last = (ids[399].id().to_string(), ids[249].id().to_string());
    let first = (ids[0].id().to_string(), ids[0].id().to_string());
    let kept: Vec<(String, String)> = g
        .edges()
        .map(|(s, d, _)| (s.identity.id().to_string(), d.identity.id().to_string()))
        .collect();
    assert!(kept.contains(&last));
    assert!(!kept.contains(&first));
}
