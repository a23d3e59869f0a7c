//! One denied record per denied attempt: a client whose connect is dropped
//! retransmits its SYN (after 1 s, 2 s, 4 s, ...), and each copy is logged
//! by the dataplane. [`DeniedAttempts`] tells the first packet of an attempt
//! from a repeat: a packet of the same 5-tuple less than `window` after the
//! previous one is the same attempt, whose record then counts the packet
//! instead of a new record appearing.
//!
//! Pure: time comes in as an argument. Memory is bounded by `max_entries`
//! (the oldest attempt is forgotten first). It does not look at allowed
//! connections (conntrack already makes each one a single connection).

use std::collections::HashMap;
use std::net::IpAddr;

use crate::hash::SeededState;
use crate::record::{FlowRecord, Millis, Protocol};

/// The 5-tuple of a denied packet.
type Tuple = (Protocol, IpAddr, u16, IpAddr, u16);

/// Limits of [`DeniedAttempts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyLimits {
    /// Packets of one 5-tuple closer than this are one attempt (ms). The
    /// default, 35 s, covers TCP's SYN retransmits up to the 32 s gap.
    pub window: Millis,
    /// Attempts remembered at most.
    pub max_entries: usize,
}

impl Default for DenyLimits {
    fn default() -> Self {
        DenyLimits {
            window: 35_000,
            max_entries: 4096,
        }
    }
}

/// Whether a denied record starts an attempt or repeats one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The first packet of an attempt: record it.
    New,
    /// A repeat of the attempt first recorded at `first`: count it on that record.
    Repeat {
        /// The time of the attempt's record.
        first: Millis,
    },
}

/// Recent denied attempts by 5-tuple.
#[derive(Debug)]
pub struct DeniedAttempts {
    limits: DenyLimits,
    /// 5-tuple → (time of its record, time of its last packet).
    recent: HashMap<Tuple, (Millis, Millis), SeededState>,
    /// Repeats folded into an earlier record so far.
    pub repeats: u64,
}

impl DeniedAttempts {
    /// An empty tracker.
    pub fn new(limits: DenyLimits, seed: u64) -> Self {
        DeniedAttempts {
            limits: DenyLimits {
                max_entries: limits.max_entries.max(1),
                ..limits
            },
            recent: HashMap::with_hasher(SeededState::with_seed(seed as usize)),
            repeats: 0,
        }
    }

    /// Classifies denied record `r` (observed at `r.time`).
    pub fn observe(&mut self, r: &FlowRecord) -> Attempt {
        let t = (
            r.conn.protocol,
            r.conn.src,
            r.conn.src_port,
            r.conn.dst,
            r.conn.dst_port,
        );
        let now = r.time;
        if let Some((first, last)) = self.recent.get_mut(&t) {
            if now.saturating_sub(*last) < self.limits.window {
                *last = (*last).max(now);
                self.repeats += 1;
                return Attempt::Repeat { first: *first };
            }
        }
        if self.recent.len() >= self.limits.max_entries && !self.recent.contains_key(&t) {
            let window = self.limits.window;
            self.recent
                .retain(|_, (_, last)| now.saturating_sub(*last) < window);
            if self.recent.len() >= self.limits.max_entries {
                if let Some(oldest) = self.recent.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k) {
                    self.recent.remove(&oldest);
                }
            }
        }
        self.recent.insert(t, (now, now));
        Attempt::New
    }

    /// Attempts remembered.
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    /// True when none is remembered.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ConnKey, Counters, FlowEvent, Locality, Verdict};
    use crate::Identity;
    use std::sync::Arc;

    fn denied(t: Millis, sport: u16) -> FlowRecord {
        FlowRecord {
            time: t,
            event: FlowEvent::New,
            conn: ConnKey {
                protocol: Protocol::Tcp,
                src: "10.244.1.2".parse().unwrap(),
                src_port: sport,
                dst: "10.244.1.3".parse().unwrap(),
                dst_port: 5432,
                id: 0,
            },
            source: Arc::new(Identity::world()),
            destination: Arc::new(Identity::world()),
            counters: Counters {
                bytes_sent: 60,
                packets_sent: 1,
                ..Counters::default()
            },
            verdict: Verdict::Denied,
            policy: None,
            rule: None,
            ingress_rule: None,
            locality: Locality::default(),
        }
    }

    #[test]
    fn syn_retransmits_of_one_connect_are_one_attempt() {
        let mut d = DeniedAttempts::new(DenyLimits::default(), 1);
        assert_eq!(d.observe(&denied(1_000, 40000)), Attempt::New);
        // Retransmits at +1 s, +3 s, +7 s, +15 s, +31 s: each gap < 35 s.
        for t in [2_000, 4_000, 8_000, 16_000, 32_000, 64_000] {
            assert_eq!(
                d.observe(&denied(t, 40000)),
                Attempt::Repeat { first: 1_000 },
                "at {t}"
            );
        }
        assert_eq!(d.repeats, 6);
        // Another source port is another connect.
        assert_eq!(d.observe(&denied(64_500, 40001)), Attempt::New);
    }

    #[test]
    fn the_same_tuple_after_a_quiet_window_is_a_new_attempt() {
        let mut d = DeniedAttempts::new(DenyLimits::default(), 1);
        assert_eq!(d.observe(&denied(0, 40000)), Attempt::New);
        assert_eq!(d.observe(&denied(35_000, 40000)), Attempt::New);
        assert_eq!(
            d.observe(&denied(36_000, 40000)),
            Attempt::Repeat { first: 35_000 }
        );
    }

    #[test]
    fn memory_is_bounded_forgetting_the_oldest_attempt() {
        let mut d = DeniedAttempts::new(
            DenyLimits {
                window: 35_000,
                max_entries: 3,
            },
            1,
        );
        for (i, p) in [1u16, 2, 3, 4].iter().enumerate() {
            assert_eq!(d.observe(&denied(i as Millis, *p)), Attempt::New);
        }
        assert_eq!(d.len(), 3);
        // Port 1 (the oldest) was forgotten: a new attempt again.
        assert_eq!(d.observe(&denied(10, 1)), Attempt::New);
        assert_eq!(d.observe(&denied(11, 4)), Attempt::Repeat { first: 3 });
    }
}
