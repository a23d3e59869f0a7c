//! The normalised policy model every kind is converted into: tiers,
//! policies with a subject, ordered rules, peers, ports and L7 matchers.
//! Both evaluators work on this model only.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::net::Cidr;
use crate::selector::LabelSelector;

/// A transport protocol.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP (no ports).
    Icmp,
}

impl Protocol {
    /// True for the protocols with ports (TCP, UDP, SCTP).
    pub fn has_ports(self) -> bool {
        !matches!(self, Protocol::Icmp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
        })
    }
}

/// What a matching rule does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Action {
    /// Allowed for this direction.
    Allow,
    /// Denied.
    Deny,
    /// Skip the rest of the tier.
    Pass,
    /// Record and continue with the next rule.
    Log,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A tier's default when no rule of it decides.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum TierDefault {
    /// Deny.
    Deny,
    /// Continue with the next tier.
    Pass,
}

/// The direction of an evaluation: a pod's egress or ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// Traffic entering the pod.
    Ingress,
    /// Traffic leaving the pod.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Which namespaces a pod selector looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsScope {
    /// Only the namespace with this name.
    Named(String),
    /// Namespaces whose labels match (`{}`: all).
    Selector(LabelSelector),
}

/// A set of (non-hostNetwork) pods: those in `namespaces` whose labels match `pods`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodSelector {
    /// Where to look.
    pub namespaces: NsScope,
    /// Which pods there.
    pub pods: LabelSelector,
}

/// One alternative of a rule's peers; its fields are ANDed, empty fields
/// do not constrain. A peer with no field matches every address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Pods only (never hostNetwork pods).
    pub pods: Option<PodSelector>,
    /// Node addresses of nodes whose labels match.
    pub nodes: Option<LabelSelector>,
    /// The address must be in one of these.
    pub nets: Vec<Cidr>,
    /// The address must be in none of these.
    pub not_nets: Vec<Cidr>,
    /// The destination was reached through a DNS name matching one of these.
    pub domains: Vec<DomainPattern>,
}

/// A destination port condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortMatch {
    /// An inclusive range; `protocol: None` means TCP, UDP or SCTP.
    Range {
        /// The protocol, or any protocol with ports.
        protocol: Option<Protocol>,
        /// First port.
        from: u16,
        /// Last port.
        to: u16,
    },
    /// A port of the destination pod with this name; with `protocol: None`
    /// the named port's own protocol.
    Named {
        /// Required protocol, if any.
        protocol: Option<Protocol>,
        /// The port name.
        name: String,
    },
}

/// An HTTP path condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum PathMatch {
    /// The path equals this.
    Exact(String),
    /// The path starts with this.
    Prefix(String),
}

/// L7 conditions of an Allow rule; empty lists mean any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HttpMatch {
    /// Upper-case methods.
    pub methods: Vec<String>,
    /// Path conditions.
    pub paths: Vec<PathMatch>,
    /// Lower-case host names.
    pub hosts: Vec<String>,
}

/// An HTTP request as seen by the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path as sent, possibly with a query string.
    pub path: String,
    /// The Host header (possibly with a port).
    pub host: String,
}

impl HttpMatch {
    /// Whether the request satisfies every condition.
    pub fn matches(&self, req: &HttpRequest) -> bool {
        let path = req.path.split('?').next().unwrap_or("");
        let host = strip_port(&req.host).to_ascii_lowercase();
        (self.methods.is_empty() || self.methods.contains(&req.method))
            && (self.paths.is_empty()
                || self.paths.iter().any(|p| match p {
                    PathMatch::Exact(e) => path == e,
                    PathMatch::Prefix(x) => path.starts_with(x.as_str()),
                }))
            && (self.hosts.is_empty() || self.hosts.contains(&host))
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A DNS name pattern: an exact name or `*.suffix` (one or more labels in
/// front of the suffix). Stored lower-case without trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainPattern {
    /// Lower-case pattern text, `*.` included for wildcards.
    pub pattern: String,
}

impl DomainPattern {
    /// Parses and validates a pattern.
    pub fn parse(s: &str) -> Result<Self, String> {
        let p = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        if p.is_empty() || p.len() > 253 {
            return Err(format!("domain {s:?} is empty or too long"));
        }
        let labels: Vec<&str> = p.split('.').collect();
        for (i, l) in labels.iter().enumerate() {
            if *l == "*" {
                if i != 0 {
                    return Err(format!(
                        "domain {s:?}: `*` is allowed only as the whole first label"
                    ));
                }
                if labels.len() < 2 {
                    return Err(format!(
                        "domain {s:?}: `*` must be followed by at least one more label"
                    ));
                }
                continue;
            }
            if l.is_empty()
                || l.len() > 63
                || !l
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                || l.starts_with('-')
                || l.ends_with('-')
            {
                return Err(format!("domain {s:?}: {l:?} is not a valid DNS label"));
            }
        }
        Ok(Self { pattern: p })
    }

    /// Whether a queried name matches (case-insensitive, trailing dot ignored).
    pub fn matches(&self, name: &str) -> bool {
        let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        match self.pattern.strip_prefix("*.") {
            Some(suffix) => n
                .strip_suffix(suffix)
                .and_then(|front| front.strip_suffix('.'))
                .is_some_and(|front| !front.is_empty()),
            None => n == self.pattern,
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Upstream rule name (ANP/CNP), for traces.
    pub name: Option<String>,
    /// What the rule does when it matches.
    pub action: Action,
    /// Required protocol, if any.
    pub protocol: Option<Protocol>,
    /// Alternatives (ORed); empty: every address.
    pub peers: Vec<Peer>,
    /// Alternatives (ORed); empty: every port.
    pub ports: Vec<PortMatch>,
    /// L7 conditions (Allow + TCP only).
    pub http: Option<HttpMatch>,
}

/// Kinds of objects this crate understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// `networking.k8s.io/v1 NetworkPolicy`.
    K8sNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy`.
    AdminNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1 BaselineAdminNetworkPolicy`.
    BaselineAdminNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy`.
    ClusterNetworkPolicy,
    /// `veil.dev/v1alpha1 Tier`.
    Tier,
    /// `veil.dev/v1alpha1 NetworkPolicy`.
    VeilNetworkPolicy,
    /// `veil.dev/v1alpha1 GlobalNetworkPolicy`.
    GlobalNetworkPolicy,
}

impl Kind {
    /// The API group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::K8sNetworkPolicy => "networking.k8s.io",
            Kind::AdminNetworkPolicy
            | Kind::BaselineAdminNetworkPolicy
            | Kind::ClusterNetworkPolicy => "policy.networking.k8s.io",
            Kind::Tier | Kind::VeilNetworkPolicy | Kind::GlobalNetworkPolicy => "veil.dev",
        }
    }

    /// The kind name as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::K8sNetworkPolicy | Kind::VeilNetworkPolicy => "NetworkPolicy",
            Kind::AdminNetworkPolicy => "AdminNetworkPolicy",
            Kind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Kind::Tier => "Tier",
            Kind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
        }
    }

    /// Short lower-case label used in traces and messages.
    pub fn short(self) -> &'static str {
        match self {
            Kind::K8sNetworkPolicy => "networkpolicy",
            Kind::AdminNetworkPolicy => "adminnetworkpolicy",
            Kind::BaselineAdminNetworkPolicy => "baselineadminnetworkpolicy",
            Kind::ClusterNetworkPolicy => "clusternetworkpolicy",
            Kind::Tier => "tier",
            Kind::VeilNetworkPolicy => "veil networkpolicy",
            Kind::GlobalNetworkPolicy => "globalnetworkpolicy",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(self, Kind::K8sNetworkPolicy | Kind::VeilNetworkPolicy)
    }
}

/// Identifies an object: group (via kind), kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The kind (which implies the group).
    pub kind: Kind,
    /// Namespace for namespaced kinds.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// `namespace/name` or `name`.
    pub fn full_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.short(), self.full_name())
    }
}

/// A custom tier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tier {
    /// Name.
    pub name: String,
    /// Position among tiers (ascending).
    pub order: u32,
    /// What applies when no rule decides.
    pub default_action: TierDefault,
}

/// Name of the ANP / Admin CNP tier.
pub const TIER_ADMIN: &str = "admin";
/// Name of the tier of Kubernetes NetworkPolicies.
pub const TIER_DEFAULT: &str = "default";
/// Name of the BANP / Baseline CNP tier.
pub const TIER_BASELINE: &str = "baseline";

impl Tier {
    /// The three built-in tiers.
    pub fn builtins() -> [Tier; 3] {
        [
            Tier {
                name: TIER_ADMIN.into(),
                order: 100,
                default_action: TierDefault::Pass,
            },
            Tier {
                name: TIER_DEFAULT.into(),
                order: 1000,
                default_action: TierDefault::Deny,
            },
            Tier {
                name: TIER_BASELINE.into(),
                order: 10000,
                default_action: TierDefault::Pass,
            },
        ]
    }
}

/// The sort key of a policy inside its tier:
/// (order, rank before name, full name, rank after name).
pub type PolicySortKey = (i64, u8, String, u8);

/// A policy in the normalised model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Which object it came from.
    pub key: ObjectKey,
    /// Its tier's name.
    pub tier: String,
    /// Ordering inside the tier.
    pub sort_key: PolicySortKey,
    /// The pods it applies to.
    pub subject: PodSelector,
    /// Whether it selects its subjects for ingress.
    pub applies_ingress: bool,
    /// Whether it selects its subjects for egress.
    pub applies_egress: bool,
    /// Ingress rules in order.
    pub ingress: Vec<Rule>,
    /// Egress rules in order.
    pub egress: Vec<Rule>,
}

impl Policy {
    /// Whether the policy applies for this direction.
    pub fn applies(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.applies_ingress,
            Direction::Egress => self.applies_egress,
        }
    }

    /// The rules of a direction.
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_needs_a_label_in_front() {
        let p = DomainPattern::parse("*.example.org").unwrap();
        assert!(p.matches("a.example.org"));
        assert!(p.matches("a.b.EXAMPLE.org."));
        assert!(!p.matches("example.org"));
        assert!(!p.matches("aexample.org"));
    }

    #[test]
    fn exact_domain_ignores_case_and_trailing_dot() {
        let p = DomainPattern::parse("API.example.com.").unwrap();
        assert!(p.matches("api.example.com"));
        assert!(p.matches("Api.Example.Com."));
        assert!(!p.matches("x.api.example.com"));
    }

    #[test]
    fn misplaced_wildcards_are_rejected() {
        for s in ["*", "a.*.b", "*a.b", "**.b", "", "a..b"] {
            assert!(DomainPattern::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn http_paths_ignore_query_and_hosts_ignore_port() {
        let m = HttpMatch {
            methods: vec!["GET".into()],
            paths: vec![PathMatch::Exact("/healthz".into())],
            hosts: vec!["db.example".into()],
        };
        let req = |method: &str, path: &str, host: &str| HttpRequest {
            method: method.into(),
            path: path.into(),
            host: host.into(),
        };
        assert!(m.matches(&req("GET", "/healthz?x=1", "DB.example:8080")));
        assert!(!m.matches(&req("get", "/healthz", "db.example")));
        assert!(!m.matches(&req("GET", "/healthz/", "db.example")));
        assert!(!m.matches(&req("GET", "/healthz", "other")));
    }

    #[test]
    fn prefix_is_a_plain_string_prefix() {
        let m = HttpMatch {
            paths: vec![PathMatch::Prefix("/api".into())],
            ..Default::default()
        };
        let r = |p: &str| HttpRequest {
            method: "GET".into(),
            path: p.into(),
            host: "h".into(),
        };
        assert!(m.matches(&r("/apix")));
        assert!(!m.matches(&r("/ap")));
    }
}
