//! The compiler: turns the cluster and the policies into a
//! dataplane-neutral [`Program`], and keeps it up to date incrementally.
//!
//! The program has, per endpoint (pod with its own address), an ingress and
//! an egress chain: the tiers that have a policy selecting it, in order,
//! each with those policies in order. Rules are compiled once per policy and
//! refer to **sets** keyed by selector (pods of a selector, nodes of a
//! selector, the addresses and ports of a port name). A pod appearing,
//! disappearing or changing labels changes set membership and its own
//! chains, never the rules. [`Program::verdict`] interprets the program;
//! the differential tests check it against [`crate::eval::evaluate`].
//!
//! Files: `program` (the program's types and set membership), `interpret`
//! (the interpreter, [`Program::verdict`]), `build` (compiling rules and
//! policies, interning sets, building chains) and `update` (the
//! incremental updates). The compiler renders nothing: the dataplane does.
//!
//! A change of the policies costs what it changes: each policy's compiled
//! rules are kept with the policy they came from and reused while it is
//! unchanged, sets are reference-counted by the rules using them, and only
//! the endpoints an added, changed or removed policy selects (before or
//! after) get their chains rebuilt; the others' chains are renumbered.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::cluster::Cluster;
use crate::model::{ObjectKey, Policy};
use crate::policyset::PolicySet;

mod build;
mod interpret;
mod l7;
mod program;
mod update;

use build::ClusterIndex;
pub use l7::{ConnectionRules, L7Rule};
pub use program::{
    CPeer, CPolicy, CPort, CRule, ChainTier, EndpointProgram, IpSet, Program, SetId, SetKey,
    TierInfo,
};

/// The program's address-keyed tables hash with the Fx hash of
/// `rustc-hash` (small, fast, non-cryptographic): lookups are on the
/// per-packet path and the keys are not attacker-chosen in bulk.
pub use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

/// The compiler state: the program plus the indexes that make updates
/// incremental.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    program: Program,
    set_index: HashMap<SetKey, SetId>,
    /// Pod sets scoped to one namespace, by namespace.
    sets_by_ns: HashMap<String, Vec<SetId>>,
    /// Pod sets scoped by a namespace selector.
    sets_global: Vec<SetId>,
    /// Policies whose subject is one namespace, by namespace.
    policies_by_ns: HashMap<String, Vec<u32>>,
    /// Policies whose subject spans namespaces.
    policies_global: Vec<u32>,
    /// Last known address of each pod (hostNetwork pods included).
    pod_ips: HashMap<String, IpAddr>,
    /// Each policy as last compiled: a policy that did not change keeps its
    /// rules and sets.
    entries: HashMap<ObjectKey, PolicyEntry>,
    /// By set id: how many uses by compiled rules hold the set.
    set_refs: Vec<u32>,
}

/// One policy as compiled: the policy, its rules per direction, and the
/// sets its rules use (once per use: each holds a reference).
#[derive(Debug, Clone)]
struct PolicyEntry {
    policy: Policy,
    /// The revision of `policy` in the set it was compiled from.
    revision: Option<u64>,
    ingress: Vec<CRule>,
    egress: Vec<CRule>,
    sets: Vec<SetId>,
}

impl Compiled {
    /// Compiles from scratch.
    pub fn new(cluster: &Cluster, policies: &PolicySet) -> Self {
        let mut c = Compiled::default();
        c.program.nodes = cluster
            .nodes
            .iter()
            .map(|n| (n.address, n.name.clone()))
            .collect();
        c.pod_ips = cluster
            .pods
            .iter()
            .map(|(k, p)| (k.clone(), p.ip))
            .collect();
        let idx = ClusterIndex::new(cluster);
        c.compile_policies(cluster, &idx, policies);
        c.rebuild_all_chains(cluster, &idx);
        c
    }

    /// The current program.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Number of live sets.
    pub fn set_count(&self) -> usize {
        self.set_index.len()
    }
}
