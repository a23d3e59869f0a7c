//! Denied attempts and `Log` rule entries from the policy dataplane: packets
//! logged to NFLOG groups [`NFLOG_GROUP_DENY`] (a Deny rule or a tier's
//! default deny dropped them) and [`NFLOG_GROUP_LOG`] (a `Log` rule saw
//! them), each with a prefix naming the rule ([`LogPrefix`]).
//!
//! Denies become flow records with verdict `denied` and the deciding rule
//! ([`RuleRef`]), resolved to identities as conntrack flows are. `Log`
//! entries are counted only (per policy, `veil_policy_logged_total`): they
//! do not change the verdict and the connection shows as a conntrack flow.
//!
//! The pure parts ([`parse_header`], [`rule_ref`]) are unit tested; the
//! socket loop is [`run`]. Does not read the kernel's "log suppressed"
//! counters (what the per-rule rate limit dropped).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use veil_graph::{Protocol, RuleRef};
use veil_policy::model::Direction;

use super::dns::{nflog_packets, open_nflog};
use super::store::now_ms;
use super::Flows;
use crate::dataplane::nftables::policy::prefix::{LogAction, LogPrefix, LogPrefixes};
use crate::dataplane::nftables::policy::{NFLOG_GROUP_DENY, NFLOG_GROUP_LOG};

/// Bytes copied of each logged packet: an IPv6 header and a TCP header with
/// options fit.
pub const COPY_RANGE: u32 = 128;
/// Most (action, tier, policy, direction) series kept; more are counted
/// under policy `other`.
const MAX_SERIES: usize = 4096;

/// The addresses, protocol and ports of a logged packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Protocol.
    pub protocol: Protocol,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 for port-less protocols).
    pub src_port: u16,
    /// Destination port (0 for port-less protocols).
    pub dst_port: u16,
    /// Packet length from the IP header.
    pub length: u64,
}

/// Parses the IPv4 or IPv6 header and the L4 ports of a packet. `None` for
/// anything too short or not IP. IPv6 extension headers are not walked (the
/// ports are then 0).
pub fn parse_header(p: &[u8]) -> Option<PacketHeader> {
    let (proto, src, dst, l4, length) = match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < 20 {
                return None;
            }
            let a = |o: usize| IpAddr::V4(Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]));
            let len = u64::from(u16::from_be_bytes([p[2], p[3]]));
            (p[9], a(12), a(16), p.get(ihl..).unwrap_or(&[]), len)
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let a = |o: usize| {
                let b: [u8; 16] = p[o..o + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let len = 40 + u64::from(u16::from_be_bytes([p[4], p[5]]));
            (p[6], a(8), a(24), &p[40..], len)
        }
        _ => return None,
    };
    let protocol = Protocol::from_number(proto);
    let (src_port, dst_port) = match protocol {
        Protocol::Tcp | Protocol::Udp | Protocol::Sctp if l4.len() >= 4 => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        _ => (0, 0),
    };
    Some(PacketHeader {
        protocol,
        src,
        dst,
        src_port,
        dst_port,
        length,
    })
}

/// The flow record's form of the rule a prefix names.
pub fn rule_ref(p: &LogPrefix) -> RuleRef {
    RuleRef {
        tier: p.tier.clone(),
        // The kind's code as the prefix writes it: `<code>:<name>|<rule>`.
        kind: match &p.policy {
            Some(_) => p
                .long_form()
                .rsplit('|')
                .nth(1)
                .and_then(|s| s.split_once(':'))
                .map(|(c, _)| c.to_string())
                .unwrap_or_default(),
            None => String::new(),
        },
        policy: p.policy.as_ref().map(|k| k.full_name()),
        rule: p.rule,
        direction: match p.direction {
            Direction::Egress => "egress".into(),
            Direction::Ingress => "ingress".into(),
        },
    }
}

/// Series key: action, tier, `kind:policy` (or `default`), direction.
pub type SeriesKey = (&'static str, String, String, String);

/// Counters of the policy log.
#[derive(Debug, Default)]
pub struct PolicyLogCounters {
    /// Entries per (action, tier, policy, direction).
    pub by_policy: Mutex<BTreeMap<SeriesKey, u64>>,
    /// Entries whose prefix or packet could not be read.
    pub unattributed: AtomicU64,
    /// Times the NFLOG socket's buffer overran (ENOBUFS): each lost one or more entries.
    pub lost: AtomicU64,
}

impl PolicyLogCounters {
    fn count(&self, p: &LogPrefix, r: &RuleRef) {
        let action = match p.action {
            LogAction::Deny => "deny",
            LogAction::Log => "log",
        };
        let policy = match &r.policy {
            Some(n) => format!("{}:{n}", r.kind),
            None => "default".into(),
        };
        let mut m = self.by_policy.lock().expect("policy log lock");
        let mut key = (action, r.tier.clone(), policy, r.direction.clone());
        if m.len() >= MAX_SERIES && !m.contains_key(&key) {
            key.1 = "other".into();
            key.2 = "other".into();
        }
        *m.entry(key).or_insert(0) += 1;
    }
}

impl Flows {
    /// Ingests one NFLOG entry of the policy groups: a deny becomes a flow
    /// record with verdict `denied` and its rule; a `Log` entry is counted.
    /// Unreadable prefixes or packets are counted, never fatal.
    pub fn ingest_policy_log(&self, prefix: &str, packet: &[u8], table: &LogPrefixes, now: u64) {
        let (Some(p), Some(h)) = (table.lookup(prefix), parse_header(packet)) else {
            self.policy_log.unattributed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(prefix, "unattributed policy log entry");
            return;
        };
        let r = rule_ref(&p);
        self.policy_log.count(&p, &r);
        if p.action == LogAction::Deny {
            self.ingest_denied(&h, Arc::new(r), now);
        }
    }
}

/// Reads the policy NFLOG groups into `flows` until `stop` says so, with the
/// prefix table of `prefixes`. Never fails the daemon: without NFLOG, denies
/// are not attributed.
pub fn run(
    flows: Arc<Flows>,
    prefixes: watch::Receiver<Arc<LogPrefixes>>,
    stop: impl Fn() -> bool,
) {
    let groups = [NFLOG_GROUP_DENY as u16, NFLOG_GROUP_LOG as u16];
    let sock = match open_nflog(&groups, COPY_RANGE, 8 << 20) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read policy denies (NFLOG): denied flows are not recorded");
            return;
        }
    };
    let mut buf = vec![0u8; 1 << 16];
    while !stop() {
        let n = match sock.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                flows.policy_log.lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("policy log entries lost (NFLOG receive buffer overrun)");
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) || e.raw_os_error() == Some(libc::EINTR) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading policy denies (NFLOG)");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let table = prefixes.borrow().clone();
        let now = now_ms();
        for p in nflog_packets(&buf[..n.min(buf.len())]) {
            flows.ingest_policy_log(&p.prefix, &p.payload, &table, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::testutil::flows;
    use veil_graph::{FlowFilter, Verdict};
    use veil_policy::model::{Kind, ObjectKey};

    fn syn(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p
    }

    #[test]
    fn a_tcp_header_gives_addresses_and_ports() {
        let h = parse_header(&syn([10, 244, 1, 2], 40000, [10, 244, 1, 3], 5432)).unwrap();
        assert_eq!(h.protocol, Protocol::Tcp);
        assert_eq!(h.src, "10.244.1.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            (h.src_port, h.dst, h.dst_port, h.length),
            (40000, "10.244.1.3".parse().unwrap(), 5432, 40)
        );
        let mut icmp = syn([10, 244, 1, 2], 0, [10, 244, 1, 3], 0);
        icmp[9] = 1;
        assert_eq!(parse_header(&icmp).unwrap().dst_port, 0);
    }

    #[test]
    fn truncated_or_non_ip_packets_are_rejected_without_panic() {
        let p = syn([10, 244, 1, 2], 1, [10, 244, 1, 3], 2);
        for cut in 0..p.len() {
            let _ = parse_header(&p[..cut]);
        }
        assert!(parse_header(&p[..19]).is_none());
        assert!(parse_header(&[0x15; 40]).is_none());
        assert!(parse_header(&[]).is_none());
    }

    #[test]
    fn a_deny_prefix_becomes_a_denied_record_naming_tier_policy_and_rule() {
        let f = flows();
        let t = LogPrefixes::default();
        f.ingest_policy_log(
            "D|E|security|gnp:block-db|2",
            &syn([10, 244, 1, 2], 40000, [10, 244, 1, 3], 8080),
            &t,
            5,
        );
        let page = f.flows(&FlowFilter {
            verdict: Some(Verdict::Denied),
            ..Default::default()
        });
        assert_eq!(page.flows.len(), 1);
        let e = &page.flows[0];
        assert_eq!(e.source.id, "shop/frontend");
        assert_eq!(e.destination.id, "shop/backend-a");
        assert_eq!(e.destination.port, 8080);
        let r = e.rule.as_ref().unwrap();
        assert_eq!(
            (
                r.tier.as_str(),
                r.kind.as_str(),
                r.policy.as_deref(),
                r.rule,
                r.direction.as_str()
            ),
            ("security", "gnp", Some("block-db"), Some(2), "egress")
        );
        assert_eq!(e.policy.as_deref(), Some("security/gnp:block-db#2 egress"));
        let v = f.view(5);
        assert_eq!(v.edges.len(), 1);
        assert_eq!(v.edges[0].verdict, Verdict::Denied);
        // The tier's default deny.
        f.ingest_policy_log(
            "D|I|default|default",
            &syn([10, 244, 1, 2], 40001, [10, 244, 1, 3], 8080),
            &t,
            6,
        );
        let last = f.flows(&FlowFilter::default()).flows.pop().unwrap();
        assert_eq!(last.policy.as_deref(), Some("default/default ingress"));
        // Its SYN retransmitted (1 s, then 2 s later): the same attempt, one
        // record counting three packets, one denied attempt on the edge.
        for t in [1_006, 3_006] {
            f.ingest_policy_log(
                "D|I|default|default",
                &syn([10, 244, 1, 2], 40001, [10, 244, 1, 3], 8080),
                &LogPrefixes::default(),
                t,
            );
        }
        let all = f.flows(&FlowFilter::default()).flows;
        assert_eq!(all.len(), 2, "{all:#?}");
        assert_eq!(all[1].counters.packets_sent, 3);
        assert_eq!(all[1].counters.bytes_sent, 3 * all[0].counters.bytes_sent);
        assert_eq!(f.view(3_006).edges[0].denied, 2);
        let m = f.policy_log.by_policy.lock().unwrap().clone();
        assert_eq!(
            m.get(&(
                "deny",
                "security".into(),
                "gnp:block-db".into(),
                "egress".into()
            )),
            Some(&1)
        );
    }

    #[test]
    fn a_hashed_prefix_is_resolved_through_the_table() {
        let f = flows();
        let p = LogPrefix {
            action: LogAction::Deny,
            direction: Direction::Ingress,
            tier: "a-rather-long-tier-name-for-security".into(),
            policy: Some(ObjectKey {
                kind: Kind::VeilNetworkPolicy,
                namespace: Some("shop".into()),
                name: "and-an-even-longer-policy-name-that-overflows".into(),
            }),
            rule: Some(4),
        };
        let mut t = LogPrefixes::default();
        let s = t.intern(p);
        assert!(s.contains('#'));
        f.ingest_policy_log(&s, &syn([10, 244, 1, 2], 1, [10, 244, 1, 3], 80), &t, 1);
        let e = f.flows(&FlowFilter::default()).flows.pop().unwrap();
        let r = e.rule.unwrap();
        assert_eq!(r.kind, "vnp");
        assert_eq!(
            r.policy.as_deref(),
            Some("shop/and-an-even-longer-policy-name-that-overflows")
        );
        assert_eq!(r.rule, Some(4));
        // Without the table, the same prefix names nothing: counted only.
        f.ingest_policy_log(
            &s,
            &syn([10, 244, 1, 2], 2, [10, 244, 1, 3], 80),
            &LogPrefixes::default(),
            2,
        );
        assert_eq!(f.policy_log.unattributed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn garbage_prefixes_and_packets_are_counted_not_recorded() {
        let f = flows();
        let t = LogPrefixes::default();
        let good = syn([10, 244, 1, 2], 1, [10, 244, 1, 3], 80);
        for (prefix, pkt) in [
            ("", &good[..]),
            ("D|E|t|zzz:x|1", &good[..]),
            ("\u{fffd}garbage|||", &good[..]),
            ("D|E|security|gnp:block-db|2", &good[..10]),
        ] {
            f.ingest_policy_log(prefix, pkt, &t, 1);
        }
        assert_eq!(f.policy_log.unattributed.load(Ordering::Relaxed), 4);
        assert!(f.flows(&FlowFilter::default()).flows.is_empty());
    }

    #[test]
    fn log_entries_are_counted_only() {
        let f = flows();
        f.ingest_policy_log(
            "L|E|security|gnp:audit|0",
            &syn([10, 244, 1, 2], 1, [10, 244, 1, 3], 80),
            &LogPrefixes::default(),
            1,
        );
        assert!(f.flows(&FlowFilter::default()).flows.is_empty());
        let m = f.policy_log.by_policy.lock().unwrap().clone();
        assert_eq!(
            m.get(&(
                "log",
                "security".into(),
                "gnp:audit".into(),
                "egress".into()
            )),
            Some(&1)
        );
    }
}
