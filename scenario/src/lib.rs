//! veil-scenario: the test tooling of the policy engine, kept out of
//! `veil-policy`'s public surface. It uses only veil-policy's public API.
//!
//! - Scenario files (shared/scenarios/FORMAT.md): a small cluster, the
//!   policies in force, and probes with the verdict each must get, possibly
//!   in `steps` that change the cluster between probes.
//! - [`testgen`]: random clusters, policies and flows for the differential
//!   tests (veil-policy's `tests/differential.rs` and its `differential`
//!   fuzz target).
//!
//! [`Scenario::parse`] reads and fully validates a file (every step is
//! applied once on a scratch copy, so an invalid later step is reported at
//! parse time) and resolves everything the format leaves implicit: node
//! addresses and pod CIDRs, pod placement and IPs, the `kube-system`
//! namespace and `kube-dns` pod. The result is what both executions use:
//! [`run`] (in memory, here) and the lab (real traffic).
//!
//! For the lab: [`Scenario::parse`] the file; build [`Scenario::nodes`]
//! (address, pod CIDR, labels), [`Scenario::namespaces`],
//! [`Scenario::pods`] (node, IP, hostNetwork, ports; `is_dns` marks the DNS
//! server, implicit or not) and [`Scenario::external`]; apply
//! [`Scenario::policies`] (the manifests as written are kept next to the
//! parsed objects); then for each of [`Scenario::steps`] apply its `apply`,
//! `delete` and `labels` in that order and send its probes. A [`Probe`] says
//! exactly what to send: destination address and port, protocol, the HTTP
//! request (or none for UDP/SCTP echo), whether it is a DNS query, and for
//! [`ProbeTarget::Name`] that the name must be resolved through the cluster
//! DNS first.
//!
//! Files: `raw` (the file as written), `parse` and `pods` (validation and
//! resolution), `types` (the resolved scenario), `probe` (probes and their
//! flows), `runner` (in-memory execution). It does no IO: callers read the
//! files.

#![warn(missing_docs)]

mod error;
mod parse;
mod pods;
mod probe;
mod raw;
mod runner;
pub mod testgen;
mod types;

pub use error::ScenarioError;
pub use parse::kind_of;
pub use probe::probe_flows;
pub use runner::{evaluate_probe, run, run_steps, ProbeOutcome, State};
pub use types::{
    LabelChange, Probe, ProbeTarget, Scenario, ScenarioNamespace, ScenarioNode, ScenarioPod, Step,
};

/// The namespace of the cluster DNS.
pub const DNS_NAMESPACE: &str = "kube-system";
/// The cluster DNS pod's name.
pub const DNS_POD: &str = "kube-dns";
/// The label key of a namespace's own name.
pub const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Which file names to treat as scenarios in a directory.
pub fn is_scenario_file(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}
