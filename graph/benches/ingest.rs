//! Graph ingest benchmarks: flow records per second into a [`ServiceGraph`]
//! (one core), and the memory that 100,000 edges take (printed, from the
//! process's resident set size before and after building them).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use veil_graph::{
    ConnKey, Counters, FlowEvent, FlowRecord, GraphLimits, Identity, Locality, Protocol,
    ServiceGraph, Verdict,
};

/// A realistic stream: 200 workloads each calling 5 others on one of 4 ports
/// (about 4,000 edges), each connection a New then a Destroy event (what
/// conntrack reports for short connections).
fn records(n: usize) -> Vec<FlowRecord> {
    stream(n, 5)
}

/// Like [`records`] but every source calls `fanout` destinations.
fn stream(n: usize, fanout: u64) -> Vec<FlowRecord> {
    let ids: Vec<Arc<Identity>> = (0..200)
        .map(|i| {
            Arc::new(Identity::pod(
                format!("ns{}", i % 10),
                format!("w{i}-0"),
                format!("w{i}"),
                BTreeMap::new(),
            ))
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0u32;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = &ids[(x % 200) as usize];
        let d = &ids[((x % 200) as usize + 1 + ((x >> 16) % fanout) as usize) % 200];
        let port = [80u16, 443, 8080, 5432][((x >> 32) % 4) as usize];
        let conn = ConnKey {
            protocol: Protocol::Tcp,
            src: IpAddr::V4(Ipv4Addr::from(0x0af4_0000 | (x as u32 & 0xffff))),
            src_port: (i % 60_000) as u16,
            dst: IpAddr::V4(Ipv4Addr::from(0x0af4_0000 | ((x >> 16) as u32 & 0xffff))),
            dst_port: port,
            id: i,
        };
        for (k, event) in [FlowEvent::New, FlowEvent::Destroy].into_iter().enumerate() {
            out.push(FlowRecord {
                time: u64::from(i) + k as u64,
                event,
                conn,
                source: s.clone(),
                destination: d.clone(),
                counters: Counters {
                    bytes_sent: 300 * k as u64,
                    packets_sent: 5 * k as u64,
                    bytes_received: 4000 * k as u64,
                    packets_received: 5 * k as u64,
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
        i += 1;
    }
    out
}

fn ingest(c: &mut Criterion) {
    let recs = records(200_000);
    let mut group = c.benchmark_group("graph");
    group.throughput(Throughput::Elements(recs.len() as u64));
    group.sample_size(10);
    group.bench_function("ingest_200k_records", |b| {
        b.iter(|| {
            let mut g = ServiceGraph::default();
            for r in &recs {
                g.ingest(r);
            }
            black_box(g.edge_count())
        })
    });
    // Worst case: 160,000 distinct edges against the default cap of 20,000,
    // so that ingest keeps evicting.
    let churn = stream(200_000, 199);
    group.bench_function("ingest_200k_records_edge_churn", |b| {
        b.iter(|| {
            let mut g = ServiceGraph::default();
            for r in &churn {
                g.ingest(r);
            }
            black_box(g.edge_count())
        })
    });
    group.finish();
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Not a timing: prints the resident memory of a graph of 100,000 edges.
fn memory_per_100k_edges(_c: &mut Criterion) {
    let ids: Vec<Arc<Identity>> = (0..400)
        .map(|i| {
            Arc::new(Identity::pod(
                "ns",
                format!("w{i}-0"),
                format!("w{i}"),
                BTreeMap::new(),
            ))
        })
        .collect();
    let before = rss_bytes();
    let mut g = ServiceGraph::new(GraphLimits {
        max_edges: 200_000,
        max_connections: 1,
        hash_seed: 1,
    });
    let mut n = 0u32;
    'outer: for s in &ids {
        for d in &ids {
            if g.edge_count() >= 100_000 {
                break 'outer;
            }
            n += 1;
            g.ingest(&FlowRecord {
                time: u64::from(n),
                event: FlowEvent::Destroy,
                conn: ConnKey {
                    protocol: Protocol::Tcp,
                    src: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 1)),
                    src_port: 1,
                    dst: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 2)),
                    dst_port: 80,
                    id: n,
                },
                source: s.clone(),
                destination: d.clone(),
                counters: Counters::default(),
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
    }
    let after = rss_bytes();
    println!(
        "graph/memory: {} edges, {} vertices: {:.1} MiB resident ({} bytes per edge)",
        g.edge_count(),
        g.vertex_count(),
        (after.saturating_sub(before)) as f64 / (1024.0 * 1024.0),
        after.saturating_sub(before) / g.edge_count().max(1) as u64
    );
    black_box(&g);
}

criterion_group!(benches, ingest, memory_per_100k_edges);
criterion_main!(benches);
