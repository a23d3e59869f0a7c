//! The dataplane-neutral program: tiers, policies, rules, sets and the
//! chains of each endpoint, plus the set-membership primitives (dense
//! address ids and per-set bitmaps) that the compiler and the interpreter
//! share. It does not compile or interpret anything.

use std::net::IpAddr;

use super::{FxHashMap, FxHashSet};
use crate::model::{
    Action, DomainPattern, HttpMatch, ObjectKey, PodSelector, Protocol, TierDefault,
};
use crate::net::Cidr;
use crate::selector::LabelSelector;

/// Index of a set in [`Program::sets`].
pub type SetId = u32;

/// What a set contains, and the key it is shared by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SetKey {
    /// Addresses of the (non-hostNetwork) pods a selector selects.
    Pods(PodSelector),
    /// Addresses of the nodes whose labels match.
    Nodes(LabelSelector),
    /// (address, protocol, port) of every port with this name (pods; node
    /// addresses for hostNetwork pods).
    NamedPort(String),
}

/// A set and its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    /// Its key.
    pub key: SetKey,
    /// Members of `Pods` and `Nodes` sets.
    pub addrs: FxHashSet<IpAddr>,
    /// Members of `NamedPort` sets.
    pub ports: FxHashSet<(IpAddr, Protocol, u16)>,
}

/// A compiled peer: fields ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CPeer {
    /// The address must be in this pod set.
    pub pods: Option<SetId>,
    /// The address must be in this node set.
    pub nodes: Option<SetId>,
    /// The address must be in one of these.
    pub nets: Vec<Cidr>,
    /// The address must be in none of these.
    pub not_nets: Vec<Cidr>,
    /// The flow must have been resolved from a matching name.
    pub domains: Vec<DomainPattern>,
}

/// A compiled port condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CPort {
    /// A range; `None`: TCP, UDP or SCTP.
    Range {
        /// Protocol.
        protocol: Option<Protocol>,
        /// First port.
        from: u16,
        /// Last port.
        to: u16,
    },
    /// (destination, protocol, port) must be in the set.
    Named {
        /// Required protocol.
        protocol: Option<Protocol>,
        /// A `NamedPort` set.
        set: SetId,
    },
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CRule {
    /// Index in the policy's rule list.
    pub index: usize,
    /// Prefilter: bit `1 << protocol` for each protocol the rule can match.
    pub proto_mask: u8,
    /// Prefilter: every port the rule can match lies in `port_lo..=port_hi`.
    pub port_lo: u16,
    /// See `port_lo`.
    pub port_hi: u16,
    /// The prefilter is the whole port condition (no ports, or one range).
    pub ports_exact: bool,
    /// Set when the peers are exactly one pod set: the peer check is one
    /// bitmap lookup.
    pub peer_fast: Option<SetId>,
    /// Action.
    pub action: Action,
    /// Required protocol.
    pub protocol: Option<Protocol>,
    /// Alternatives; empty: any address.
    pub peers: Vec<CPeer>,
    /// Alternatives; empty: any port.
    pub ports: Vec<CPort>,
    /// L7 conditions.
    pub http: Option<HttpMatch>,
}

/// A compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CPolicy {
    /// The object.
    pub key: ObjectKey,
    /// Index in [`Program::tiers`].
    pub tier: u32,
    /// Who it applies to.
    pub subject: PodSelector,
    /// Applies for ingress.
    pub applies_ingress: bool,
    /// Applies for egress.
    pub applies_egress: bool,
    /// Ingress rules: `start..end` in [`Program::rules`].
    pub ingress: (u32, u32),
    /// Egress rules: `start..end` in [`Program::rules`].
    pub egress: (u32, u32),
}

/// A tier of the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierInfo {
    /// Name.
    pub name: String,
    /// Order.
    pub order: u32,
    /// Default.
    pub default_action: TierDefault,
}

/// One tier of an endpoint's chain and the policies (indices into
/// [`Program::policies`], in evaluation order) selecting it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTier {
    /// Index in [`Program::tiers`].
    pub tier: u32,
    /// Policies in order.
    pub policies: Vec<u32>,
    /// For each of `policies`, its rules of this chain's direction
    /// (`start..end` in [`Program::rules`]), so the walk touches only rules.
    pub rules: Vec<(u32, u32)>,
}

/// The program of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointProgram {
    /// `namespace/name`.
    pub pod: String,
    /// Node name.
    pub node: String,
    /// Address.
    pub ip: IpAddr,
    /// Ingress chain.
    pub ingress: Vec<ChainTier>,
    /// Egress chain.
    pub egress: Vec<ChainTier>,
}

/// The dataplane-neutral program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Program {
    /// Every tier, in order.
    pub tiers: Vec<TierInfo>,
    /// Every policy, in global evaluation order (tier, then policy order).
    pub policies: Vec<CPolicy>,
    /// Every rule, policy by policy (see [`CPolicy::ingress`]).
    pub rules: Vec<CRule>,
    /// Sets by id (`None`: freed).
    pub sets: Vec<Option<IpSet>>,
    /// Endpoints by address.
    pub endpoints: FxHashMap<IpAddr, EndpointProgram>,
    /// Node addresses → node name.
    pub nodes: FxHashMap<IpAddr, String>,
    /// Dense ids of the addresses of pods and nodes (never reused).
    pub addr_ids: FxHashMap<IpAddr, u32>,
    /// By address id: the (`NamedPort` set, protocol, port) listening there.
    pub named_by_addr: Vec<Vec<(SetId, Protocol, u16)>>,
    /// By set id: membership of `Pods`/`Nodes` sets as a bitmap over
    /// address ids ([`Program::addr_ids`]), for the interpreter.
    pub set_bits: Vec<Vec<u64>>,
}

impl Program {
    /// The endpoints on one node (what that node's dataplane renders).
    pub fn node_endpoints<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a EndpointProgram> {
        self.endpoints.values().filter(move |e| e.node == node)
    }

    pub(super) fn addr_id(&mut self, ip: IpAddr) -> u32 {
        if let Some(&i) = self.addr_ids.get(&ip) {
            return i;
        }
        let i = self.addr_ids.len() as u32;
        self.addr_ids.insert(ip, i);
        self.named_by_addr.push(Vec::new());
        i
    }

    pub(super) fn insert_addr(&mut self, set: SetId, ip: IpAddr) {
        let id = self.addr_id(ip) as usize;
        if let Some(Some(s)) = self.sets.get_mut(set as usize) {
            s.addrs.insert(ip);
            if self.set_bits.len() <= set as usize {
                self.set_bits.resize(set as usize + 1, Vec::new());
            }
            let bits = &mut self.set_bits[set as usize];
            if bits.len() <= id / 64 {
                bits.resize(id / 64 + 1, 0);
            }
            bits[id / 64] |= 1 << (id % 64);
        }
    }

    pub(super) fn remove_addr(&mut self, set: SetId, ip: IpAddr) {
        let Some(&id) = self.addr_ids.get(&ip) else {
            return;
        };
        let id = id as usize;
        if let Some(Some(s)) = self.sets.get_mut(set as usize) {
            s.addrs.remove(&ip);
            if let Some(w) = self
                .set_bits
                .get_mut(set as usize)
                .and_then(|b| b.get_mut(id / 64))
            {
                *w &= !(1 << (id % 64));
            }
        }
    }
}
