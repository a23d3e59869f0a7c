//! The collector loop: drives a [`ConntrackSource`] into [`Flows`]. Events
//! are ingested as they come; the whole table is dumped every
//! `dump_interval` and after every overrun; idle edges are expired after
//! each dump. Does not open sockets nor start threads (`start` does).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_graph::Millis;

use super::conntrack::{ConntrackSource, Received};
use super::store::{now_ms, Flows};
use super::FlowOptions;

/// Drives a [`ConntrackSource`] into [`Flows`]: events as they come, a dump
/// every `dump_interval` and after every overrun, expiry of idle edges.
pub struct Collector<S: ConntrackSource> {
    source: S,
    flows: Arc<Flows>,
    dump_interval: Duration,
    expire_after: Duration,
    last_dump: Option<Instant>,
    dump_due: bool,
}

impl<S: ConntrackSource> Collector<S> {
    /// A collector; the first [`Collector::step`] dumps the table.
    pub fn new(source: S, flows: Arc<Flows>, opts: &FlowOptions) -> Self {
        Collector {
            source,
            flows,
            dump_interval: opts.dump_interval,
            expire_after: opts.expire_after,
            last_dump: None,
            dump_due: true,
        }
    }

    /// One round: receive for at most `wait`, then dump if due.
    pub fn step(&mut self, wait: Duration) {
        match self.source.recv(wait) {
            Ok(Received::Entries(v)) => {
                self.flows
                    .health
                    .events
                    .fetch_add(v.len() as u64, Ordering::Relaxed);
                self.flows.ingest(&v, now_ms());
            }
            Ok(Received::Overrun) => {
                self.flows.health.lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "conntrack events lost (receive buffer overrun); re-reading the table"
                );
                self.dump_due = true;
            }
            Ok(Received::Timeout) => {}
            Err(e) => {
                self.flows.health.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "conntrack receive");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let due = self.dump_due
            || self
                .last_dump
                .is_none_or(|t| t.elapsed() >= self.dump_interval);
        if due {
            self.dump_due = false;
            self.last_dump = Some(Instant::now());
            match self.source.dump() {
                Ok(v) => {
                    self.flows.health.dumps.fetch_add(1, Ordering::Relaxed);
                    let now = now_ms();
                    self.flows.ingest_dump(&v, now);
                    self.flows
                        .expire(now.saturating_sub(self.expire_after.as_millis() as Millis));
                }
                Err(e) => {
                    self.flows.health.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "conntrack dump");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::testutil::{entry, flows, Fake};
    use std::collections::VecDeque;
    use veil_graph::{FlowEvent, FlowFilter};

    #[test]
    fn events_become_edges_between_workloads() {
        let f = flows();
        let fake = Fake {
            script: VecDeque::from([
                Received::Entries(vec![
                    entry(
                        FlowEvent::New,
                        "10.244.1.2",
                        40000,
                        "10.244.1.3",
                        8080,
                        1,
                        0,
                    ),
                    entry(
                        FlowEvent::New,
                        "10.244.1.3",
                        40001,
                        "203.0.113.10",
                        443,
                        2,
                        0,
                    ),
                ]),
                Received::Entries(vec![entry(
                    FlowEvent::Destroy,
                    "10.244.1.2",
                    40000,
                    "10.244.1.3",
                    8080,
                    1,
                    500,
                )]),
            ]),
            // The first step's dump reads the table as the kernel holds it
            // then: both connections live (a dump that does not show a
            // connection closes it).
            table: vec![
                entry(
                    FlowEvent::Update,
                    "10.244.1.2",
                    40000,
                    "10.244.1.3",
                    8080,
                    1,
                    0,
                ),
                entry(
                    FlowEvent::Update,
                    "10.244.1.3",
                    40001,
                    "203.0.113.10",
                    443,
                    2,
                    0,
                ),
            ],
            dumps: 0,
        };
        let mut c = Collector::new(fake, f.clone(), &FlowOptions::default());
        c.step(Duration::ZERO);
        c.step(Duration::ZERO);
        let v = f.view(now_ms());
        let edges: Vec<(String, String, u16, u64, u64)> = v
            .edges
            .iter()
            .map(|e| {
                (
                    e.source.clone(),
                    e.target.clone(),
                    e.port,
                    e.connections,
                    e.bytes,
                )
            })
            .collect();
        assert_eq!(
            edges,
            vec![
                ("shop/backend-a".into(), "external:api".into(), 443, 1, 0),
                (
                    "shop/frontend".into(),
                    "shop/backend-a".into(),
                    8080,
                    1,
                    1000
                ),
            ]
        );
        assert_eq!(f.health_report().events, 3);
        assert_eq!(f.flows(&FlowFilter::default()).flows.len(), 3);
    }

    #[test]
    fn an_overrun_is_counted_and_triggers_a_dump_that_recovers_state() {
        let f = flows();
        let fake = Fake {
            script: VecDeque::from([Received::Timeout, Received::Overrun]),
            table: vec![entry(
                FlowEvent::Update,
                "10.244.1.2",
                40000,
                "10.244.1.3",
                8080,
                9,
                70,
            )],
            dumps: 0,
        };
        let mut c = Collector::new(fake, f.clone(), &FlowOptions::default());
        c.step(Duration::ZERO); // first step dumps
        assert_eq!(c.source.dumps, 1);
        c.step(Duration::ZERO); // overrun: dump again at once
        assert_eq!(c.source.dumps, 2);
        let h = f.health_report();
        assert_eq!(h.lost, 1);
        let v = f.view(now_ms());
        assert_eq!(v.edges.len(), 1);
        assert_eq!(v.edges[0].connections, 1);
        assert_eq!(v.edges[0].bytes, 140);
    }
}
