//! Property test of the flow records over random interleavings of what the
//! kernel does (connections opening, carrying bytes, closing into TIME_WAIT,
//! being destroyed), what the event socket delivers (in order, late, or lost
//! to an overrun) and the periodic dumps: every connection the collector saw
//! gets exactly one `new` and one `closed` log entry, and the graph counts
//! it once and ends with nothing active.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use veil_graph::{FlowEvent, FlowFilter};

use super::conntrack::CtEntry;
use super::testutil::{entry, flows};

#[derive(Debug, Clone)]
enum Op {
    /// A connection opens (NEW event queued).
    Open,
    /// Connection `i % live` carries bytes (no event).
    Traffic(usize, u64),
    /// Connection `i % live` enters TIME_WAIT (no event).
    Close(usize),
    /// Connection `i % all` is destroyed (DESTROY event queued).
    Destroy(usize),
    /// The collector reads up to `n` queued events.
    Deliver(usize),
    /// The queue overruns: queued events are lost, the collector dumps.
    Overrun,
    /// A periodic dump.
    Dump,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Open),
        2 => (any::<usize>(), 1u64..5000).prop_map(|(i, b)| Op::Traffic(i, b)),
        2 => any::<usize>().prop_map(Op::Close),
        2 => any::<usize>().prop_map(Op::Destroy),
        3 => (1usize..6).prop_map(Op::Deliver),
        1 => Just(Op::Overrun),
        2 => Just(Op::Dump),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    port: u16,
    id: u32,
    bytes: u64,
    time_wait: bool,
}

impl Conn {
    fn entry(&self, event: FlowEvent) -> CtEntry {
        entry(
            event,
            "10.244.1.2",
            self.port,
            "10.244.1.3",
            8080,
            self.id,
            self.bytes,
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn every_seen_connection_opens_once_and_closes_once(ops in proptest::collection::vec(op(), 1..80)) {
        let f = flows();
        let mut table: Vec<Conn> = Vec::new();
        let mut queue: VecDeque<CtEntry> = VecDeque::new();
        let mut seen: BTreeMap<u16, ()> = BTreeMap::new();
        let mut now = 1_000u64;
        let mut next = 0u16;
        let dump = |table: &[Conn], now: u64, seen: &mut BTreeMap<u16, ()>| {
            let v: Vec<CtEntry> = table
                .iter()
                .map(|c| c.entry(if c.time_wait { FlowEvent::Closed } else { FlowEvent::Update }))
                .collect();
            for c in table {
                seen.insert(c.port, ());
            }
            f.ingest_dump(&v, now);
        };
        let deliver = |queue: &mut VecDeque<CtEntry>, n: usize, now: u64, seen: &mut BTreeMap<u16, ()>| {
            let v: Vec<CtEntry> = (0..n).map_while(|_| queue.pop_front()).collect();
            for e in &v {
                seen.insert(e.orig.src_port, ());
            }
            f.ingest(&v, now);
        };
        // Half a second per step: the collector reads its queue every 0.5 s
        // and dumps every 10 s, so no event waits as long as a tombstone
        // lives (60 s) in this model either.
        for o in ops {
            now += 500;
            match o {
                Op::Open => {
                    next += 1;
                    let c = Conn { port: 30_000 + next, id: u32::from(next), bytes: 60, time_wait: false };
                    queue.push_back(c.entry(FlowEvent::New));
                    table.push(c);
                }
                Op::Traffic(i, b) => {
                    let live: Vec<usize> = (0..table.len()).filter(|&j| !table[j].time_wait).collect();
                    if !live.is_empty() {
                        table[live[i % live.len()]].bytes += b;
                    }
                }
                Op::Close(i) => {
                    let live: Vec<usize> = (0..table.len()).filter(|&j| !table[j].time_wait).collect();
                    if !live.is_empty() {
                        table[live[i % live.len()]].time_wait = true;
                    }
                }
                Op::Destroy(i) => {
                    if !table.is_empty() {
                        let c = table.remove(i % table.len());
                        queue.push_back(c.entry(FlowEvent::Destroy));
                    }
                }
                Op::Deliver(n) => deliver(&mut queue, n, now, &mut seen),
                Op::Overrun => {
                    queue.clear();
                    dump(&table, now, &mut seen);
                }
                Op::Dump => dump(&table, now, &mut seen),
            }
        }
        // Everything ends: the rest of the queue is read, every connection is
        // destroyed and its event read, dumps run past the tombstones' life.
        deliver(&mut queue, usize::MAX, now, &mut seen);
        for c in table.drain(..) {
            queue.push_back(c.entry(FlowEvent::Destroy));
        }
        now += 1_000;
        deliver(&mut queue, usize::MAX, now, &mut seen);
        for _ in 0..3 {
            now += 60_000;
            dump(&[], now, &mut seen);
        }

        let log = f.flows(&FlowFilter::default()).flows;
        let mut per: BTreeMap<u16, (usize, usize)> = BTreeMap::new();
        for e in &log {
            let x = per.entry(e.source.port).or_default();
            match e.event {
                FlowEvent::New => x.0 += 1,
                FlowEvent::Closed => x.1 += 1,
                other => prop_assert!(false, "logged {other:?}"),
            }
        }
        for port in seen.keys() {
            prop_assert_eq!(per.get(port).copied(), Some((1, 1)), "connection :{}", port);
        }
        prop_assert_eq!(per.len(), seen.len(), "only connections seen are logged");
        let v = f.view(now);
        let conns: u64 = v.edges.iter().map(|e| e.connections).sum();
        prop_assert_eq!(conns, seen.len() as u64);
        prop_assert!(v.edges.iter().all(|e| e.active == 0), "{:?}", v.edges);
    }
}
