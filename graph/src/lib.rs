//! veil-graph: the live service dependency graph, pure.
//!
//! Flow records (one per connection event: new, periodic update, destroy,
//! with the kernel's cumulative byte and packet counters) come in through the
//! [`FlowSink`] trait. A [`ServiceGraph`] aggregates them into a petgraph
//! whose vertices are identities aggregated to workloads ([`Identity`],
//! [`derive_workload`]) and whose edges are keyed by (source, destination,
//! destination port, protocol) and carry connections, bytes and packets each
//! way, active connections, denied attempts with the deciding policy, first
//! and last seen, and rates over sliding 1-minute and 15-minute windows. A
//! [`FlowLog`] keeps the recent records for `veilctl flows`.
//!
//! Exports go through [`GraphView`]: JSON (`/api/v1/graph`), Graphviz DOT,
//! plain text and the Grafana Node Graph API data source format; views of
//! several nodes merge into the cluster's view.
//!
//! What this crate does not do: no IO, no netlink, no clock (time is always an
//! argument, [`Millis`]), no threads. Resolving addresses to identities and
//! reading conntrack are the daemon's job (`veil-daemon`'s `flows` module).
//!
//! Counting once: see [`Locality::counts`] for the cluster-wide rule and
//! [`ServiceGraph`] for the per-node one.

#![warn(missing_docs)]

pub mod denies;
pub mod graph;
pub mod hash;
pub mod http;
pub mod identity;
pub mod lifecycle;
pub mod log;
pub mod record;
pub mod view;
pub mod window;

pub use denies::{Attempt, DeniedAttempts, DenyLimits};
pub use graph::{EdgeStats, GraphCounters, GraphLimits, ServiceGraph, Vertex};
pub use http::{HttpRecord, HttpStats, HttpView, LATENCY_BOUNDS};
pub use identity::{derive_workload, strip_generated_suffixes, Identity, IdentityKind};
pub use lifecycle::{Lifecycle, LifecycleCounters, LifecycleLimits};
pub use log::{FlowEnd, FlowEntry, FlowFilter, FlowLog, FlowPage};
pub use record::{
    ConnKey, Counters, FlowEvent, FlowRecord, FlowSink, Locality, Millis, Protocol, RuleRef,
    Verdict, ALLOW_END_OF_TIERS, ALLOW_NO_POLICY, ALLOW_UNKNOWN_RULE,
};
pub use view::{EdgeView, GraphView, NodeView};
pub use window::Rate;
