//! The flow collector's methods' types (`graph.get`, `flows.list`,
//! `flows.health`). The graph and flow-log shapes themselves ([`GraphView`],
//! [`FlowFilter`], [`FlowPage`], [`GraphCounters`]) belong to the pure
//! veil-graph crate, which also serves them over HTTP; this module re-exports
//! them so that a client needs only veil-api.

use serde::{Deserialize, Serialize};

pub use veil_graph::{
    FlowEnd, FlowEntry, FlowFilter, FlowPage, GraphCounters, GraphView, RuleRef, Verdict,
};

/// Parameters of `graph.get` (none yet; an object so that some can be added).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GraphParams {}

/// Answer of `graph.get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphReply {
    /// The node that answered.
    pub node: String,
    /// Its graph.
    pub graph: GraphView,
    /// Its collector's health.
    pub health: HealthReport,
}

/// Answer of `flows.health`: the collector's counters and the graph's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Node name.
    pub node: String,
    /// Conntrack events received.
    pub events: u64,
    /// Overruns (lost events, at least one each).
    pub lost: u64,
    /// Dumps completed.
    pub dumps: u64,
    /// Receive or dump errors.
    pub errors: u64,
    /// Connections tracked now.
    pub tracked_connections: u64,
    /// Edges now.
    pub edges: u64,
    /// The graph's counters.
    pub graph: GraphCounters,
}
