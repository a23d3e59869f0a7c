//! Connection lifecycles: turns what a collector observes (conntrack events
//! that may be lost or arrive after a dump, and periodic dumps that show the
//! same connection again and again, a closed TCP connection for as long as
//! the kernel holds it in TIME_WAIT) into a clean stream per connection:
//!
//! ```text
//! New (once) → Update (zero or more) → Closed (once) → Destroy (once, housekeeping)
//! ```
//!
//! so that the [`crate::FlowLog`] (which logs `New` and `Closed`) holds
//! exactly one *opened* and one *closed* record per connection, and the
//! [`crate::ServiceGraph`] counts it once and stops counting it active when
//! it closes.
//!
//! Rules:
//! - The first observation of a connection, whatever its kind, opens it (a
//!   connection whose `New` event was lost is opened by the dump that shows
//!   it, or by its `Destroy`).
//! - The first `Closed` (a dump of TIME_WAIT/CLOSE) or `Destroy` closes it;
//!   later observations are absorbed by a tombstone kept until its
//!   `Destroy`, or for [`LifecycleLimits::tombstone_ms`] after the last time
//!   it was seen (a queued `Destroy` is read within that time).
//! - After a complete dump ([`Lifecycle::end_dump`]), an open connection the
//!   dump did not show has ended while its `Destroy` was lost: it is closed
//!   with the last counters seen. (Events read before a dump were emitted
//!   before the dump read the table, so a connection they opened and that
//!   still lives is in the dump.)
//! - Denied attempts (not connections) pass through unchanged.
//! - Memory is bounded by [`LifecycleLimits::max_connections`]; beyond it the
//!   stalest eighth is forgotten (counted in [`LifecycleCounters`]).
//!
//! Pure: time is an argument, no IO.

use std::collections::HashMap;

use crate::hash::SeededState;
use crate::record::{ConnKey, Counters, FlowEvent, FlowRecord, Millis, Verdict};

/// Limits of a [`Lifecycle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleLimits {
    /// Most connections (open, or closed and awaiting their `Destroy`) kept.
    pub max_connections: usize,
    /// How long a closed connection's tombstone outlives its last sighting.
    pub tombstone_ms: Millis,
    /// Hash seed (see [`crate::hash`]).
    pub hash_seed: u64,
}

impl Default for LifecycleLimits {
    fn default() -> Self {
        LifecycleLimits {
            max_connections: 262_144,
            tombstone_ms: 60_000,
            hash_seed: 0,
        }
    }
}

/// Health counters of a [`Lifecycle`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LifecycleCounters {
    /// Connections opened.
    pub opened: u64,
    /// Connections closed.
    pub closed: u64,
    /// Of those, closed because a dump no longer showed them (their
    /// `Destroy` event was lost).
    pub closed_by_dump: u64,
    /// Repeated observations of closed connections absorbed.
    pub absorbed: u64,
    /// Connections forgotten to stay under the cap.
    pub evicted: u64,
}

#[derive(Debug, Clone)]
struct Conn {
    /// The latest record (identities, counters) of the connection.
    last: FlowRecord,
    open: bool,
    last_seen: Millis,
    /// Dump generation that last showed it.
    dump: u64,
}

/// The lifecycle tracker (see the module documentation).
#[derive(Debug)]
pub struct Lifecycle {
    limits: LifecycleLimits,
    conns: HashMap<ConnKey, Conn, SeededState>,
    dump: u64,
    in_dump: bool,
    counters: LifecycleCounters,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new(LifecycleLimits::default())
    }
}

fn with_event(r: &FlowRecord, event: FlowEvent, counters: Counters, time: Millis) -> FlowRecord {
    FlowRecord {
        event,
        counters,
        time,
        ..r.clone()
    }
}

impl Lifecycle {
    /// An empty tracker.
    pub fn new(limits: LifecycleLimits) -> Self {
        Lifecycle {
            limits: LifecycleLimits {
                max_connections: limits.max_connections.max(1),
                ..limits
            },
            conns: HashMap::with_hasher(SeededState::with_seed(limits.hash_seed as usize)),
            dump: 0,
            in_dump: false,
            counters: LifecycleCounters::default(),
        }
    }

    /// Health counters.
    pub fn counters(&self) -> LifecycleCounters {
        self.counters
    }

    /// Connections tracked (open or tombstoned).
    pub fn tracked(&self) -> usize {
        self.conns.len()
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.conns.values().filter(|c| c.open).count()
    }

    /// Observes one record; appends the normalized records to `out`.
    pub fn observe(&mut self, r: &FlowRecord, out: &mut Vec<FlowRecord>) {
        if r.verdict == Verdict::Denied {
            out.push(r.clone());
            return;
        }
        let dump = if self.in_dump { self.dump } else { 0 };
        let Some(c) = self.conns.get_mut(&r.conn) else {
            self.counters.opened += 1;
            out.push(with_event(r, FlowEvent::New, r.counters, r.time));
            match r.event {
                FlowEvent::New | FlowEvent::Update => {
                    self.insert(r, true, dump);
                }
                FlowEvent::Closed => {
                    self.counters.closed += 1;
                    out.push(with_event(r, FlowEvent::Closed, r.counters, r.time));
                    self.insert(r, false, dump);
                }
                FlowEvent::Destroy => {
                    self.counters.closed += 1;
                    out.push(with_event(r, FlowEvent::Closed, r.counters, r.time));
                    out.push(with_event(r, FlowEvent::Destroy, r.counters, r.time));
                }
            }
            return;
        };
        let counters = c.last.counters.max(&r.counters);
        c.last_seen = c.last_seen.max(r.time);
        if dump != 0 {
            c.dump = dump;
        }
        if !c.open {
            if r.event == FlowEvent::Destroy {
                out.push(with_event(r, FlowEvent::Destroy, counters, r.time));
                self.conns.remove(&r.conn);
            } else {
                self.counters.absorbed += 1;
            }
            return;
        }
        // Identities may have been refined (a DNS name learnt): keep the latest.
        c.last = FlowRecord {
            counters,
            ..r.clone()
        };
        match r.event {
            FlowEvent::New | FlowEvent::Update => {
                out.push(with_event(r, FlowEvent::Update, counters, r.time));
            }
            FlowEvent::Closed => {
                c.open = false;
                self.counters.closed += 1;
                out.push(with_event(r, FlowEvent::Closed, counters, r.time));
            }
            FlowEvent::Destroy => {
                self.counters.closed += 1;
                out.push(with_event(r, FlowEvent::Closed, counters, r.time));
                out.push(with_event(r, FlowEvent::Destroy, counters, r.time));
                self.conns.remove(&r.conn);
            }
        }
    }

    fn insert(&mut self, r: &FlowRecord, open: bool, dump: u64) {
        if self.conns.len() >= self.limits.max_connections {
            self.evict();
        }
        self.conns.insert(
            r.conn,
            Conn {
                last: r.clone(),
                open,
                last_seen: r.time,
                dump,
            },
        );
    }

    fn evict(&mut self) {
        let mut by_age: Vec<(Millis, ConnKey)> =
            self.conns.iter().map(|(k, c)| (c.last_seen, *k)).collect();
        let n = (by_age.len() / 8).max(1).min(by_age.len());
        if n == 0 {
            return;
        }
        by_age.select_nth_unstable_by_key(n - 1, |e| e.0);
        for (_, k) in &by_age[..n] {
            if self.conns.remove(k).is_some() {
                self.counters.evicted += 1;
            }
        }
    }

    /// A complete dump of the table starts: the records observed until
    /// [`Lifecycle::end_dump`] are its entries.
    pub fn begin_dump(&mut self) {
        self.dump += 1;
        self.in_dump = true;
    }

    /// The dump begun last is complete, read at `now`: open connections it did
    /// not show are closed, and tombstones older than the limit are dropped
    /// (with a `Destroy` for the graph). Appends those records to `out`.
    pub fn end_dump(&mut self, now: Millis, out: &mut Vec<FlowRecord>) {
        if !self.in_dump {
            return;
        }
        self.in_dump = false;
        let dump = self.dump;
        let ttl = self.limits.tombstone_ms;
        let mut gone = Vec::new();
        for (k, c) in self.conns.iter_mut() {
            if c.open && c.dump != dump {
                c.open = false;
                c.last_seen = now;
                self.counters.closed += 1;
                self.counters.closed_by_dump += 1;
                out.push(with_event(&c.last, FlowEvent::Closed, c.last.counters, now));
            } else if !c.open && c.last_seen.saturating_add(ttl) < now {
                out.push(with_event(
                    &c.last,
                    FlowEvent::Destroy,
                    c.last.counters,
                    now,
                ));
                gone.push(*k);
            }
        }
        for k in gone {
            self.conns.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::record::{Locality, Protocol};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    fn rec(t: Millis, event: FlowEvent, id: u32, bytes: u64) -> FlowRecord {
        FlowRecord {
            time: t,
            event,
            conn: ConnKey {
                protocol: Protocol::Tcp,
                src: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 2)),
                src_port: 40_000,
                dst: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 3)),
                dst_port: 80,
                id,
            },
            source: Arc::new(Identity::world()),
            destination: Arc::new(Identity::world()),
            counters: Counters {
                bytes_sent: bytes,
                ..Counters::default()
            },
            verdict: Verdict::Allowed,
            policy: None,
            rule: None,
            ingress_rule: None,
            locality: Locality::default(),
        }
    }

    fn events(out: &[FlowRecord]) -> Vec<FlowEvent> {
        out.iter().map(|r| r.event).collect()
    }

    #[test]
    fn a_time_wait_connection_seen_by_many_dumps_closes_once() {
        let mut l = Lifecycle::default();
        let mut out = Vec::new();
        l.observe(&rec(0, FlowEvent::New, 1, 0), &mut out);
        for i in 1..=6 {
            l.begin_dump();
            l.observe(&rec(i * 10_000, FlowEvent::Closed, 1, 500), &mut out);
            l.end_dump(i * 10_000, &mut out);
        }
        l.observe(&rec(70_000, FlowEvent::Destroy, 1, 500), &mut out);
        use FlowEvent::*;
        assert_eq!(events(&out), vec![New, Closed, Destroy]);
        assert_eq!(out[1].counters.bytes_sent, 500);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn a_connection_missing_from_a_dump_is_closed_and_its_late_destroy_absorbed() {
        let mut l = Lifecycle::default();
        let mut out = Vec::new();
        l.observe(&rec(0, FlowEvent::New, 1, 0), &mut out);
        l.begin_dump();
        l.observe(&rec(5, FlowEvent::Update, 1, 300), &mut out);
        l.end_dump(5, &mut out);
        l.begin_dump();
        l.end_dump(10, &mut out);
        l.observe(&rec(11, FlowEvent::Destroy, 1, 400), &mut out);
        use FlowEvent::*;
        assert_eq!(events(&out), vec![New, Update, Closed, Destroy]);
        assert_eq!(out[2].counters.bytes_sent, 300);
        assert_eq!(l.counters().closed_by_dump, 1);
    }

    #[test]
    fn a_connection_seen_only_at_its_destroy_opens_and_closes() {
        let mut l = Lifecycle::default();
        let mut out = Vec::new();
        l.observe(&rec(3, FlowEvent::Destroy, 9, 70), &mut out);
        use FlowEvent::*;
        assert_eq!(events(&out), vec![New, Closed, Destroy]);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn tombstones_expire_after_their_last_sighting() {
        let mut l = Lifecycle::new(LifecycleLimits {
            tombstone_ms: 100,
            ..Default::default()
        });
        let mut out = Vec::new();
        l.observe(&rec(0, FlowEvent::Closed, 1, 1), &mut out);
        l.begin_dump();
        l.end_dump(50, &mut out);
        assert_eq!(l.tracked(), 1);
        l.begin_dump();
        l.end_dump(200, &mut out);
        assert_eq!(l.tracked(), 0);
        assert_eq!(out.last().unwrap().event, FlowEvent::Destroy);
    }

    #[test]
    fn denied_attempts_pass_through() {
        let mut l = Lifecycle::default();
        let mut out = Vec::new();
        let mut r = rec(0, FlowEvent::New, 0, 60);
        r.verdict = Verdict::Denied;
        l.observe(&r, &mut out);
        l.observe(&r, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn the_cap_evicts_the_stalest() {
        let mut l = Lifecycle::new(LifecycleLimits {
            max_connections: 16,
            ..Default::default()
        });
        let mut out = Vec::new();
        for i in 0..40 {
            l.observe(&rec(u64::from(i), FlowEvent::New, i, 0), &mut out);
        }
        assert!(l.tracked() <= 16);
        assert!(l.counters().evicted >= 24);
    }
}
