//! What the renderer keeps from one render to the next, so that a change
//! costs what it changes: per policy and direction, the rules it was rendered
//! from and what came out (its chains, the sets and log prefixes they use);
//! per endpoint and direction, the walk it was rendered from and its chain.
//! An entry is reused only when its inputs are equal, and the chains it
//! holds are shared ([`PolicyChain`]), so an unchanged chain is the same
//! allocation in the next render and the table manager skips it at the cost
//! of a pointer comparison. Entries not used by a render are dropped.
//!
//! It renders nothing itself: [`super::render_cached`] does.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use veil_policy::compile::CRule;
use veil_policy::model::Direction;
use veil_policy::net::Cidr;

use super::prefix::LogPrefix;
use super::SetSpec;
use crate::dataplane::nftables::desired::PolicyChain;

/// A named set a policy's chains refer to (replayed on a cache hit, since
/// set members come from the program of the render, not from the cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SetUse {
    /// `s<id>`.
    Addr(u32),
    /// `np<id>`.
    NamedPort(u32),
    /// An interval set of these networks (IPv6 when `true`).
    Net(bool, Vec<Cidr>),
    /// A set with these members (nodes' tunnel addresses).
    Fixed(String, SetSpec),
    /// A `domains` rule's set (filled by the DNS proxy).
    Domain(String),
}

/// One policy in one direction, as last rendered.
#[derive(Debug, Clone)]
pub(super) struct PolicyEntry {
    /// The tier name it was rendered in (it is in its log prefixes).
    pub tier: String,
    /// The compiled rules it was rendered from.
    pub rules: Vec<CRule>,
    /// Its chains: the policy chain first, then its deny and log chains.
    pub chains: Vec<(String, PolicyChain)>,
    /// The log prefixes its chains use.
    pub prefixes: Vec<LogPrefix>,
    /// The sets its chains use.
    pub sets: Vec<SetUse>,
}

/// One tier of an endpoint's walk: the chains it jumps to, and its deny
/// chain when the tier's default is Deny.
pub(super) type TierWalk = (Vec<String>, Option<String>);

/// One endpoint in one direction, as last rendered.
#[derive(Debug, Clone)]
pub(super) struct EndpointEntry {
    /// The walk it was rendered from.
    pub walk: Vec<TierWalk>,
    /// Its chain.
    pub chain: PolicyChain,
}

/// The renderer's memory between renders.
#[derive(Debug, Default)]
pub struct RenderCache {
    pub(super) policies: HashMap<(String, Direction), PolicyEntry>,
    pub(super) endpoints: HashMap<(String, Direction), EndpointEntry>,
    /// The nodes' tunnel addresses the policies were rendered with.
    pub(super) tunnels: BTreeMap<IpAddr, IpAddr>,
    /// Whether a render through this cache had `http` rules: connections
    /// the L7 proxy took then may still be open ([`super::tproxy::remember`]).
    pub(super) l7_seen: bool,
    /// Ids of allow rules in connections' marks ([`super::verdict_mark`]).
    pub(super) rule_ids: super::verdict_mark::RuleIds,
}

impl RenderCache {
    /// An empty cache (the first render through it renders everything).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of policy chains and endpoint chains remembered.
    pub fn len(&self) -> (usize, usize) {
        (self.policies.len(), self.endpoints.len())
    }
}
