//! Renders veil-policy's compiled [`Program`] into the node's `inet veil`
//! table: a pure function of the program and the node's local endpoints.
//!
//! Layout (Calico's nftables mode, simplified; see docs/DESIGN.md):
//!
//! - The `forward` base chain, after the fail-closed rules and
//!   `ct state established,related accept`, jumps to [`DISPATCH_EGRESS`]
//!   and then [`DISPATCH_INGRESS`]: each holds one `iifname`/`oifname`
//!   verdict map from a local pod's host interface to a `goto` to that
//!   endpoint's chain (whose return goes back to `forward`),
//!   followed by a rule that drops packets of a pod interface that is not in
//!   the map yet (a pod is never reachable, nor reaches out, before its
//!   policy is in place). Endpoints coming and going are map element adds
//!   and deletes.
//! - Per endpoint and direction, a chain `e-<ifname>-eg` / `e-<ifname>-in`
//!   walks the endpoint's tiers in order. For each tier it clears the PASS
//!   mark bit, jumps to each selecting policy's chain while PASS is clear,
//!   returns as soon as ALLOW is set, and ends the tier with its default: a
//!   logged drop for Deny tiers, nothing for Pass tiers. Falling off the last
//!   tier is allowed.
//! - Per policy and direction, a chain `p-<hash>-eg` / `p-<hash>-in` holds
//!   its rules once, shared by every endpoint it selects. Allow sets ALLOW and
//!   returns, Pass sets PASS and returns, Deny jumps to a per-rule chain that
//!   logs to NFLOG (rate-limited) and drops, Log jumps to a per-rule chain that
//!   logs and returns.
//! - Peers are named sets: `s<id>` (pod and node selectors, addresses),
//!   `np<id>` (named ports: address . protocol . port), `n<hash>` (CIDR
//!   interval sets for `nets`/`ipBlock`, `notNets`/`except`).
//!
//! - Connections whose deciding rule has `http` are steered to veild's L7
//!   proxy in `prerouting` ([`tproxy`]), which checks each request.
//! - `domains` peers match a per-rule set that the DNS proxy fills; pods'
//!   DNS is steered to the proxy ([`dns`]).
//!
//! What it does not do: fill the `domains` sets (the DNS proxy does) or
//! check HTTP requests (the L7 proxy does). IPv6 members of selector and named-port sets are not
//! rendered (the pod network is IPv4); IPv6 CIDRs in `nets` are.

mod cache;
mod chains;
pub mod dns;
pub mod prefix;
mod render;
pub mod schema;
pub mod tproxy;
pub mod verdict_mark;

pub use cache::RenderCache;
pub use prefix::{LogPrefix, LogPrefixes};
pub use render::{render, render_cached, LocalEndpoint};

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nftables::stmt::Statement;

use super::desired::{PolicyChain, PolicyObjects};
use veil_policy::model::Protocol;
use veil_policy::net::Cidr;

/// Mark bit: the current direction's evaluation has allowed the packet.
pub const MARK_ALLOW: u32 = 0x0001_0000;
/// Mark bit: a Pass rule skipped the rest of the current tier.
pub const MARK_PASS: u32 = 0x0002_0000;
/// NFLOG group of policy denies.
pub const NFLOG_GROUP_DENY: u32 = 4243;
/// NFLOG group of `Log` rules.
pub const NFLOG_GROUP_LOG: u32 = 4244;
/// Chain dispatching egress evaluation by the pod's host interface.
pub const DISPATCH_EGRESS: &str = "policy-egress";
/// Chain dispatching ingress evaluation by the pod's host interface.
pub const DISPATCH_INGRESS: &str = "policy-ingress";
/// Verdict map of [`DISPATCH_EGRESS`]: `iifname` → endpoint chain.
pub const MAP_EGRESS: &str = "endpoints-egress";
/// Verdict map of [`DISPATCH_INGRESS`]: `oifname` → endpoint chain.
pub const MAP_INGRESS: &str = "endpoints-ingress";
/// Comment of the rule counting log entries suppressed by the rate limit.
pub const LOG_SUPPRESSED: &str = "log suppressed";
/// Comment of the rule dropping packets of a pod not programmed yet.
pub const UNPROGRAMMED: &str = "pod not programmed yet";
/// Set of every node's tunnel address (see [`render_cached`]).
pub const NODE_TUNNELS: &str = "node-tunnels";
/// Chain of an endpoint without policy in a direction: returns at once.
pub const OPEN_CHAIN: &str = "policy-open";
/// Log entries per second per rule before the kernel suppresses them.
pub const LOG_RATE_PER_SECOND: u32 = 20;
/// Burst of log entries per rule.
pub const LOG_BURST: u32 = 50;

/// An element of a named set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// An address.
    Addr(IpAddr),
    /// A network (interval sets).
    Net(Cidr),
    /// A named port: address, protocol, port.
    NamedPort(IpAddr, Protocol, u16),
}

/// The type of a named set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// `ipv4_addr`.
    Addr4,
    /// `ipv4_addr`, interval.
    Net4,
    /// `ipv6_addr`, interval.
    Net6,
    /// `ipv4_addr . inet_proto . inet_service`.
    NamedPort4,
}

/// A named set and its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    /// Its type.
    pub kind: SetKind,
    /// Its members.
    pub elements: BTreeSet<Element>,
}

/// The rendered policy: what the table manager applies, plus the NFLOG
/// prefixes in use (for the flow collector).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderedPolicy {
    /// Named sets by name.
    pub sets: BTreeMap<String, SetSpec>,
    /// Named verdict maps: `ifname` → endpoint chain, by map name.
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Regular chains by name, each a list of rules (build one from its
    /// rules' statements with [`schema::chain_of`]).
    pub chains: BTreeMap<String, PolicyChain>,
    /// Rules appended to the `forward` base chain (after established/related).
    pub forward: Vec<Vec<Statement<'static>>>,
    /// Log prefixes in use and what each names.
    pub prefixes: LogPrefixes,
    /// What the L7 proxy's steering needs ([`tproxy`]).
    pub steering: tproxy::Steering,
    /// `domains` sets and DNS steering ([`dns`]).
    pub dns: dns::DnsObjects,
}

impl RenderedPolicy {
    /// The number of rules in every chain (for metrics and benchmarks).
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(PolicyChain::len).sum::<usize>() + self.forward.len()
    }

    /// The objects the table manager applies.
    pub fn objects(&self) -> PolicyObjects {
        schema::objects(self)
    }
}
