//! Flow records: what a collector feeds the graph, one per connection event,
//! and the rule that makes a connection seen on two nodes count once.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, IdentityKind};

/// Milliseconds since the Unix epoch. The graph never reads a clock: every
/// operation takes the time as an argument.
pub type Millis = u64;

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP or ICMPv6.
    Icmp,
    /// Any other IP protocol number.
    Other(u8),
}

impl Protocol {
    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Self {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            1 | 58 => Protocol::Icmp,
            n => Protocol::Other(n),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::Icmp => f.write_str("ICMP"),
            Protocol::Other(n) => write!(f, "IP-{n}"),
        }
    }
}

/// A protocol name that is not `TCP`, `UDP`, `SCTP`, `ICMP` or `IP-<number>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}: expected TCP, UDP, SCTP, ICMP or IP-<number>")]
pub struct ParseProtocolError(pub String);

impl FromStr for Protocol {
    type Err = ParseProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            "ICMP" => Ok(Protocol::Icmp),
            other => other
                .strip_prefix("IP-")
                .and_then(|n| n.parse::<u8>().ok())
                .map(Protocol::from_number)
                .ok_or_else(|| ParseProtocolError(s.to_string())),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What policy decided for a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Let through (the default while nothing denies).
    Allowed,
    /// Dropped or rejected by a policy.
    Denied,
}

impl Verdict {
    /// `allowed` or `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verdict name that is neither `allowed` nor `denied`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown verdict {0:?}: expected allowed or denied")]
pub struct ParseVerdictError(pub String);

impl FromStr for Verdict {
    type Err = ParseVerdictError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "allowed" | "allow" | "forwarded" => Ok(Verdict::Allowed),
            "denied" | "deny" | "dropped" => Ok(Verdict::Denied),
            _ => Err(ParseVerdictError(s.to_string())),
        }
    }
}

/// `kind` of an allow that no rule decided: no policy selects the pod in
/// that direction (Kubernetes allows a pod no policy selects).
pub const ALLOW_NO_POLICY: &str = "no-policy";
/// `kind` of an allow that no rule decided: every tier passed the packet and
/// none denied it (the default allow at the end of the tiers).
pub const ALLOW_END_OF_TIERS: &str = "end-of-tiers";
/// `kind` of an allow by a rule the node cannot name (its id table overflowed).
pub const ALLOW_UNKNOWN_RULE: &str = "unknown-rule";

/// The policy rule that decided a flow: from the dataplane's NFLOG prefix
/// for denies, from the connection's conntrack mark for allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleRef {
    /// Tier of the deciding rule.
    pub tier: String,
    /// Policy kind code (`gnp`, `knp`, `anp`, ...); empty for the tier's
    /// default; for an allow without a rule, [`ALLOW_NO_POLICY`],
    /// [`ALLOW_END_OF_TIERS`] or [`ALLOW_UNKNOWN_RULE`] (tier empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Policy name, `namespace/name` when namespaced; `None` for the tier's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Rule index in the policy's rules of that direction; `None` for the tier's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// `egress` (checked for the source) or `ingress` (for the destination).
    pub direction: String,
}

impl RuleRef {
    /// Whether `pattern` names this rule's policy: its name, `namespace/name`,
    /// `kind:name`, or the tier's name with `default` (`security/default`).
    pub fn matches_policy(&self, pattern: &str) -> bool {
        match &self.policy {
            Some(p) => {
                p == pattern
                    || p.rsplit('/').next() == Some(pattern)
                    || format!("{}:{p}", self.kind) == pattern
            }
            None if self.is_default_allow() => pattern == self.kind,
            None => pattern == "default" || pattern == format!("{}/default", self.tier),
        }
    }

    /// Whether this names an allow that no rule decided (see [`ALLOW_NO_POLICY`]).
    pub fn is_default_allow(&self) -> bool {
        self.policy.is_none()
            && [ALLOW_NO_POLICY, ALLOW_END_OF_TIERS, ALLOW_UNKNOWN_RULE]
                .contains(&self.kind.as_str())
    }
}

impl fmt::Display for RuleRef {
    /// `security/gnp:block-db#2 egress`, or `security/default ingress` for a
    /// tier's default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.policy, self.rule) {
            (None, _) if self.kind == ALLOW_NO_POLICY => {
                write!(f, "no policy selects the pod ({})", self.direction)
            }
            (None, _) if self.kind == ALLOW_END_OF_TIERS => {
                write!(f, "default allow: every tier passed ({})", self.direction)
            }
            (None, _) if self.kind == ALLOW_UNKNOWN_RULE => {
                write!(f, "an allow rule the node cannot name ({})", self.direction)
            }
            (Some(p), Some(r)) => {
                write!(f, "{}/{}:{p}#{r} {}", self.tier, self.kind, self.direction)
            }
            (Some(p), None) => write!(f, "{}/{}:{p} {}", self.tier, self.kind, self.direction),
            _ => write!(f, "{}/default {}", self.tier, self.direction),
        }
    }
}

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowEvent {
    /// The connection started.
    New,
    /// A periodic reading of a live connection (its counters so far).
    Update,
    /// The connection closed but the kernel still holds it (TCP TIME_WAIT
    /// or CLOSE): final counters, no longer active, a `Destroy` follows.
    Closed,
    /// The connection ended (its final counters).
    Destroy,
}

/// The 5-tuple of a connection as its initiator sent it, plus the kernel's id
/// for it (conntrack id; 0 when unknown) so that a reused tuple is a new
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnKey {
    /// Protocol.
    pub protocol: Protocol,
    /// Initiator address.
    pub src: IpAddr,
    /// Initiator port (0 for port-less protocols).
    pub src_port: u16,
    /// Responder address (after any destination NAT).
    pub dst: IpAddr,
    /// Responder port.
    pub dst_port: u16,
    /// Kernel connection id (conntrack id), 0 when unknown.
    pub id: u32,
}

/// Byte and packet counters of a connection since it started, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Bytes from initiator to responder.
    pub bytes_sent: u64,
    /// Packets from initiator to responder.
    pub packets_sent: u64,
    /// Bytes from responder to initiator.
    pub bytes_received: u64,
    /// Packets from responder to initiator.
    pub packets_received: u64,
}

impl Counters {
    /// `self - earlier`, each field saturating at 0 (a counter never goes back;
    /// if it seems to, the connection was replaced and nothing is counted).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
            packets_sent: self.packets_sent.saturating_sub(earlier.packets_sent),
            bytes_received: self.bytes_received.saturating_sub(earlier.bytes_received),
            packets_received: self
                .packets_received
                .saturating_sub(earlier.packets_received),
        }
    }

    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes_sent.saturating_add(self.bytes_received)
    }

    fn add(&mut self, o: &Counters) {
        self.bytes_sent = self.bytes_sent.saturating_add(o.bytes_sent);
        self.packets_sent = self.packets_sent.saturating_add(o.packets_sent);
        self.bytes_received = self.bytes_received.saturating_add(o.bytes_received);
        self.packets_received = self.packets_received.saturating_add(o.packets_received);
    }

    /// The larger of each field (what a never-decreasing counter has reached).
    pub fn max(&self, o: &Counters) -> Counters {
        Counters {
            bytes_sent: self.bytes_sent.max(o.bytes_sent),
            packets_sent: self.packets_sent.max(o.packets_sent),
            bytes_received: self.bytes_received.max(o.bytes_received),
            packets_received: self.packets_received.max(o.packets_received),
        }
    }

    /// Adds `o` to `self`, saturating.
    pub fn accumulate(&mut self, o: &Counters) {
        self.add(o)
    }
}

/// Which ends of a flow belong to the node that observed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locality {
    /// The initiator is a pod of this node, or this node itself.
    pub source_local: bool,
    /// The responder is a pod of this node, or this node itself.
    pub destination_local: bool,
}

impl Locality {
    /// Whether the observing node is the one that counts this flow.
    ///
    /// **Rule (count once):** a connection is counted by the node of its
    /// initiator when the initiator is in the cluster (a pod, or the node
    /// itself), and by the node of its responder when the initiator is
    /// outside the cluster (external or world). A connection from a pod on
    /// node A to a pod on node B crosses the conntrack tables of both A and B;
    /// only A counts it. Connections with neither end local (transit) are
    /// counted by nobody here.
    ///
    /// A denied attempt is seen only by the node whose policy dropped it, so
    /// that node counts it (see [`FlowRecord::counted_here`]).
    pub fn counts(&self, source: &Identity) -> bool {
        if self.source_local {
            return true;
        }
        self.destination_local
            && matches!(source.kind(), IdentityKind::External | IdentityKind::World)
    }
}

/// One observation of a connection, fed to a [`FlowSink`].
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRecord {
    /// When it was observed.
    pub time: Millis,
    /// What happened.
    pub event: FlowEvent,
    /// The connection.
    pub conn: ConnKey,
    /// The initiator.
    pub source: Arc<Identity>,
    /// The responder (the backend behind a service address when the collector
    /// saw the destination NAT).
    pub destination: Arc<Identity>,
    /// Counters since the connection started (cumulative, as the kernel keeps them).
    pub counters: Counters,
    /// What policy decided (always [`Verdict::Allowed`] until enforcement reports drops).
    pub verdict: Verdict,
    /// The policy and rule that decided, e.g. `security/gnp:deny-db#2 egress`, when known.
    pub policy: Option<Arc<str>>,
    /// The same, structured: the denying rule, or for an allowed connection
    /// the rule that allowed its source's egress (or, when this node did
    /// not evaluate the egress, its destination's ingress).
    pub rule: Option<Arc<RuleRef>>,
    /// For an allowed connection whose both ends this node evaluated (both
    /// pods local), the rule that allowed the destination's ingress (`rule`
    /// is then the egress one).
    pub ingress_rule: Option<Arc<RuleRef>>,
    /// Which ends are local to the observing node.
    pub locality: Locality,
}

impl FlowRecord {
    /// Whether the observing node counts this record: the count-once rule of
    /// [`Locality::counts`] for connections, always for denied attempts
    /// (only the node that dropped the packet sees them).
    pub fn counted_here(&self) -> bool {
        self.verdict == Verdict::Denied || self.locality.counts(&self.source)
    }
}

/// Where flow records go. The graph, the flow log, and a tee of both are sinks.
pub trait FlowSink {
    /// Takes one record.
    fn record(&mut self, record: &FlowRecord);
}

impl<A: FlowSink, B: FlowSink> FlowSink for (A, B) {
    fn record(&mut self, record: &FlowRecord) {
        self.0.record(record);
        self.1.record(record);
    }
}

impl<S: FlowSink + ?Sized> FlowSink for &mut S {
    fn record(&mut self, record: &FlowRecord) {
        (**self).record(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_cross_node_flow_counts_only_on_the_initiators_node() {
        let src = Identity::pod("a", "f", "f", BTreeMap::new());
        let on_a = Locality {
            source_local: true,
            destination_local: false,
        };
        let on_b = Locality {
            source_local: false,
            destination_local: true,
        };
        assert!(on_a.counts(&src));
        assert!(!on_b.counts(&src));
    }

    #[test]
    fn an_inbound_external_flow_counts_on_the_responders_node() {
        let on_b = Locality {
            source_local: false,
            destination_local: true,
        };
        assert!(on_b.counts(&Identity::world()));
        assert!(on_b.counts(&Identity::external("x.example")));
        assert!(!on_b.counts(&Identity::node("other")));
        assert!(!Locality::default().counts(&Identity::world()));
    }

    #[test]
    fn protocols_and_verdicts_round_trip_through_text() {
        for p in [
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Sctp,
            Protocol::Icmp,
            Protocol::Other(47),
        ] {
            assert_eq!(p.to_string().parse::<Protocol>().unwrap(), p);
        }
        assert!("htp".parse::<Protocol>().is_err());
        assert_eq!("denied".parse::<Verdict>().unwrap(), Verdict::Denied);
        assert!("maybe".parse::<Verdict>().is_err());
    }

    #[test]
    fn counters_since_never_go_negative() {
        let a = Counters {
            bytes_sent: 10,
            packets_sent: 1,
            bytes_received: 5,
            packets_received: 1,
        };
        let b = Counters {
            bytes_sent: 4,
            packets_sent: 2,
            bytes_received: 9,
            packets_received: 0,
        };
        let d = b.since(&a);
        assert_eq!(
            d,
            Counters {
                bytes_sent: 0,
                packets_sent: 1,
                bytes_received: 4,
                packets_received: 0
            }
        );
    }
}
