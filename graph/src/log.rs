//! The flow log: the most recent flow records of one node, in a bounded ring,
//! each with a sequence number so a reader can follow it (`veilctl flows
//! --follow` asks for everything after the last number it saw). Unlike the
//! graph's metrics, the log shows pod names and addresses.

use std::collections::VecDeque;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, IdentityKind};
use crate::record::{
    Counters, FlowEvent, FlowRecord, FlowSink, Millis, Protocol, RuleRef, Verdict,
};

/// One end of a logged flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEnd {
    /// Vertex id (`namespace/workload`, `node:NAME`, ...).
    pub id: String,
    /// Kind.
    pub kind: IdentityKind,
    /// Namespace (pods).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Workload, node name, external name or `world`.
    pub workload: String,
    /// Pod name (pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
    /// The Service it was reached through (`namespace/name`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl FlowEnd {
    fn new(i: &Identity, ip: IpAddr, port: u16) -> Self {
        FlowEnd {
            id: i.id().to_string(),
            kind: i.kind(),
            namespace: i.namespace().to_string(),
            workload: i.workload().to_string(),
            pod: i.pod_name().map(str::to_string),
            ip,
            port,
            service: i.service().map(str::to_string),
        }
    }

    /// Whether this end is the pod `pattern` (`name` or `namespace/name`).
    pub fn is_pod(&self, pattern: &str) -> bool {
        let Some(pod) = self.pod.as_deref() else {
            return false;
        };
        match pattern.split_once('/') {
            Some((ns, name)) => ns == self.namespace && name == pod,
            None => pattern == pod,
        }
    }

    /// Whether `pattern` names this end: its id, workload, pod name,
    /// `namespace/pod`, address, or the Service it was reached through.
    pub fn matches(&self, pattern: &str) -> bool {
        self.id == pattern
            || self.service.as_deref() == Some(pattern)
            || self.workload == pattern
            || self.pod.as_deref() == Some(pattern)
            || self.pod.as_deref().is_some_and(|p| {
                pattern
                    .strip_prefix(self.namespace.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                    == Some(p)
            })
            || self.ip.to_string() == pattern
    }
}

/// One logged flow record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowEntry {
    /// Sequence number in this node's log (starts at 1, never reused).
    pub seq: u64,
    /// When (ms since the epoch).
    pub time: Millis,
    /// What happened.
    pub event: FlowEvent,
    /// Protocol.
    pub protocol: Protocol,
    /// Initiator.
    pub source: FlowEnd,
    /// Responder.
    pub destination: FlowEnd,
    /// Counters so far.
    pub counters: Counters,
    /// Verdict.
    pub verdict: Verdict,
    /// Deciding policy and rule, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Deciding rule, structured: the denying rule, or the allowing rule of
    /// the egress (or of the ingress when only that was evaluated here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// The ingress allow rule when the same node also evaluated the egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_rule: Option<RuleRef>,
    /// The node that logged it, filled in by whoever merges logs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
}

/// Which entries a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    /// Only entries after this sequence number.
    #[serde(default)]
    pub after: u64,
    /// Only flows with either end in this namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Only flows whose source matches (see [`FlowEnd::matches`]).
    #[serde(default)]
    pub from: Option<String>,
    /// Only flows whose destination matches.
    #[serde(default)]
    pub to: Option<String>,
    /// Only flows with this verdict.
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// Only flows decided by this policy (see [`RuleRef::matches_policy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// At most this many (the newest); 0 means all that are kept.
    #[serde(default)]
    pub limit: usize,
    /// Only flows with either end this pod (`name` or `namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Only flows to this destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Only flows logged at or after this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Millis>,
}

impl FlowFilter {
    /// Whether `e` passes the filter (the sequence number and limit aside).
    pub fn accepts(&self, e: &FlowEntry) -> bool {
        if let Some(ns) = &self.namespace {
            if &e.source.namespace != ns && &e.destination.namespace != ns {
                return false;
            }
        }
        if let Some(f) = &self.from {
            if !e.source.matches(f) {
                return false;
            }
        }
        if let Some(t) = &self.to {
            if !e.destination.matches(t) {
                return false;
            }
        }
        if let Some(v) = self.verdict {
            if e.verdict != v {
                return false;
            }
        }
        if let Some(p) = &self.policy {
            if ![&e.rule, &e.ingress_rule]
                .into_iter()
                .flatten()
                .any(|r| r.matches_policy(p))
            {
                return false;
            }
        }
        if let Some(p) = &self.pod {
            if !e.source.is_pod(p) && !e.destination.is_pod(p) {
                return false;
            }
        }
        if self.port.is_some_and(|p| e.destination.port != p) {
            return false;
        }
        if self.since.is_some_and(|t| e.time < t) {
            return false;
        }
        true
    }
}

/// A page of the log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowPage {
    /// Matching entries, oldest first.
    pub flows: Vec<FlowEntry>,
    /// The newest sequence number in the log: pass it as `after` to follow.
    pub cursor: u64,
    /// Entries that left the ring before this reader saw them (after `after`).
    pub missed: u64,
}

/// The ring of recent flows.
#[derive(Debug)]
pub struct FlowLog {
    capacity: usize,
    next_seq: u64,
    entries: VecDeque<FlowEntry>,
}

impl FlowLog {
    /// A log keeping the `capacity` newest entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        FlowLog {
            capacity: capacity.max(1),
            next_seq: 1,
            entries: VecDeque::new(),
        }
    }

    /// Counts denied record `r`, a repeat of the attempt logged at `first`
    /// (see [`crate::DeniedAttempts`]), on that attempt's entry: its packets
    /// and bytes grow, no entry is added. False when the entry already left
    /// the ring.
    pub fn count_repeat(&mut self, r: &FlowRecord, first: Millis) -> bool {
        let found = self.entries.iter_mut().rev().find(|e| {
            e.verdict == Verdict::Denied
                && e.time == first
                && e.protocol == r.conn.protocol
                && e.source.ip == r.conn.src
                && e.source.port == r.conn.src_port
                && e.destination.ip == r.conn.dst
                && e.destination.port == r.conn.dst_port
        });
        match found {
            Some(e) => {
                e.counters.packets_sent += r.counters.packets_sent;
                e.counters.bytes_sent += r.counters.bytes_sent;
                true
            }
            None => false,
        }
    }

    /// The newest sequence number (0 when empty).
    pub fn cursor(&self) -> u64 {
        self.next_seq - 1
    }

    /// Entries matching `filter`.
    pub fn query(&self, filter: &FlowFilter) -> FlowPage {
        let oldest = self.entries.front().map(|e| e.seq).unwrap_or(self.next_seq);
        let missed = oldest.saturating_sub(filter.after + 1).min(self.cursor());
        let mut flows: Vec<FlowEntry> = self
            .entries
            .iter()
            .filter(|e| e.seq > filter.after && filter.accepts(e))
            .cloned()
            .collect();
        if filter.limit > 0 && flows.len() > filter.limit {
            flows.drain(..flows.len() - filter.limit);
        }
        FlowPage {
            flows,
            cursor: self.cursor(),
            missed: if filter.after == 0 { 0 } else { missed },
        }
    }
}

impl FlowSink for FlowLog {
    fn record(&mut self, r: &FlowRecord) {
        // One line when a connection opens and one when it closes: periodic
        // readings of live connections and the kernel forgetting a closed
        // one are not events worth a line (a [`crate::Lifecycle`] in front
        // makes each connection's stream one `New` and one `Closed`).
        if !r.counted_here() || matches!(r.event, FlowEvent::Update | FlowEvent::Destroy) {
            return;
        }
        let e = FlowEntry {
            seq: self.next_seq,
            time: r.time,
            event: r.event,
            protocol: r.conn.protocol,
            source: FlowEnd::new(&r.source, r.conn.src, r.conn.src_port),
            destination: FlowEnd::new(&r.destination, r.conn.dst, r.conn.dst_port),
            counters: r.counters,
            verdict: r.verdict,
            policy: r.policy.as_deref().map(str::to_string),
            rule: r.rule.as_deref().cloned(),
            ingress_rule: r.ingress_rule.as_deref().cloned(),
            node: String::new(),
        };
        self.next_seq += 1;
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ConnKey, Locality};
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    fn rec(i: u16, src: &str, dst_ns: &str, verdict: Verdict) -> FlowRecord {
        FlowRecord {
            time: u64::from(i),
            event: FlowEvent::New,
            conn: ConnKey {
                protocol: Protocol::Tcp,
                src: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 2)),
                src_port: 1000 + i,
                dst: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 3)),
                dst_port: 80,
                id: 0,
            },
            source: Arc::new(Identity::pod(
                "shop",
                format!("{src}-0"),
                src,
                Default::default(),
            )),
            destination: Arc::new(Identity::pod(dst_ns, "db-0", "db", Default::default())),
            counters: Counters::default(),
            verdict,
            policy: None,
            rule: None,
            ingress_rule: None,
            locality: Locality {
                source_local: true,
                destination_local: true,
            },
        }
    }

    #[test]
    fn following_with_the_cursor_returns_only_new_entries() {
        let mut log = FlowLog::new(100);
        log.record(&rec(1, "frontend", "shop", Verdict::Allowed));
        let p = log.query(&FlowFilter::default());
        assert_eq!((p.flows.len(), p.cursor), (1, 1));
        log.record(&rec(2, "frontend", "shop", Verdict::Allowed));
        let p = log.query(&FlowFilter {
            after: p.cursor,
            ..Default::default()
        });
        assert_eq!(p.flows.len(), 1);
        assert_eq!(p.flows[0].seq, 2);
        assert_eq!(p.missed, 0);
    }

    #[test]
    fn the_ring_drops_the_oldest_and_reports_what_a_follower_missed() {
        let mut log = FlowLog::new(3);
        for i in 0..10 {
            log.record(&rec(i, "frontend", "shop", Verdict::Allowed));
        }
        let p = log.query(&FlowFilter {
            after: 2,
            ..Default::default()
        });
        assert_eq!(
            p.flows.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(p.missed, 5);
    }

    #[test]
    fn periodic_updates_are_not_logged() {
        let mut log = FlowLog::new(10);
        let mut r = rec(1, "frontend", "shop", Verdict::Allowed);
        r.event = FlowEvent::Update;
        log.record(&r);
        assert_eq!(log.cursor(), 0);
    }

    #[test]
    fn filters_by_namespace_ends_and_verdict() {
        let mut log = FlowLog::new(100);
        log.record(&rec(1, "frontend", "shop", Verdict::Allowed));
        log.record(&rec(2, "batch", "other", Verdict::Denied));
        let q = |f: FlowFilter| log.query(&f).flows.len();
        assert_eq!(
            q(FlowFilter {
                namespace: Some("other".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            q(FlowFilter {
                namespace: Some("shop".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            q(FlowFilter {
                from: Some("shop/frontend".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            q(FlowFilter {
                from: Some("frontend-0".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            q(FlowFilter {
                from: Some("shop/frontend-0".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            q(FlowFilter {
                to: Some("10.244.0.3".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            q(FlowFilter {
                verdict: Some(Verdict::Denied),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            q(FlowFilter {
                limit: 1,
                ..Default::default()
            }),
            1
        );
        for (f, n) in [
            (
                FlowFilter {
                    pod: Some("frontend-0".into()),
                    ..Default::default()
                },
                1,
            ),
            (
                FlowFilter {
                    pod: Some("shop/frontend-0".into()),
                    ..Default::default()
                },
                1,
            ),
            (
                FlowFilter {
                    pod: Some("other/frontend-0".into()),
                    ..Default::default()
                },
                0,
            ),
            (
                FlowFilter {
                    pod: Some("db-0".into()),
                    ..Default::default()
                },
                2,
            ),
            (
                FlowFilter {
                    port: Some(80),
                    ..Default::default()
                },
                2,
            ),
            (
                FlowFilter {
                    port: Some(81),
                    ..Default::default()
                },
                0,
            ),
            (
                FlowFilter {
                    since: Some(2),
                    ..Default::default()
                },
                1,
            ),
        ] {
            assert_eq!(q(f.clone()), n, "{f:?}");
        }
    }

    #[test]
    fn a_denied_attempt_is_logged_by_the_node_that_dropped_it_and_filtered_by_policy() {
        let mut log = FlowLog::new(10);
        let mut r = rec(1, "frontend", "shop", Verdict::Denied);
        // Ingress deny on the destination's node: the source is a remote pod.
        r.locality.source_local = false;
        r.rule = Some(Arc::new(RuleRef {
            tier: "security".into(),
            kind: "knp".into(),
            policy: Some("shop/deny-db".into()),
            rule: Some(2),
            direction: "ingress".into(),
        }));
        log.record(&r);
        let mut allowed = rec(2, "frontend", "shop", Verdict::Allowed);
        allowed.locality.source_local = false;
        log.record(&allowed);
        let all = log.query(&FlowFilter::default());
        assert_eq!(
            all.flows.len(),
            1,
            "the allowed one counts on the source's node"
        );
        assert_eq!(
            all.flows[0].rule.as_ref().unwrap().to_string(),
            "security/knp:shop/deny-db#2 ingress"
        );
        for (p, n) in [
            ("deny-db", 1),
            ("shop/deny-db", 1),
            ("knp:shop/deny-db", 1),
            ("other", 0),
        ] {
            let f = FlowFilter {
                policy: Some(p.into()),
                ..Default::default()
            };
            assert_eq!(log.query(&f).flows.len(), n, "{p}");
        }
        let json = serde_json::to_string(&all.flows[0]).unwrap();
        let back: FlowEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, all.flows[0]);
        // An entry of an older daemon, without `rule`, still parses.
        let old = json.replace(
            &format!(",\"rule\":{}", serde_json::to_string(&back.rule).unwrap()),
            "",
        );
        assert!(!old.contains("rule"), "{old}");
        assert_eq!(serde_json::from_str::<FlowEntry>(&old).unwrap().rule, None);
    }
}
