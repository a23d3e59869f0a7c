//! veil-policy: the Veil policy engine, a pure crate (no IO, no clock, no
//! async, no Kubernetes client).
//!
//! Data flow:
//!
//! ```text
//! manifests (YAML) --kinds::Object::from_value--> Object (validated, normalised model::Policy / Tier)
//!      PolicySet::apply / delete (all or nothing, cross-object checks)
//!      Cluster (nodes, namespaces, pods, external hosts)
//!          |                                   |
//!   eval::evaluate (reference:          compile::Compiled (program per endpoint,
//!   verdict + trace)                    sets keyed by selector, incremental updates)
//!                                              |
//!                                       compile::Program::verdict (interpreter),
//!                                       rendered by the dataplane
//! ```
//!
//! - [`kinds`]: the manifests of every supported kind, validated into the
//!   normalised [`model`]; [`policyset::PolicySet`] holds the objects in force.
//! - [`eval`]: the reference evaluator (verdict + trace), a literal reading
//!   of POLICY-API.md.
//! - [`compile`]: the compiler to a dataplane-neutral program, its
//!   interpreter and incremental updates.
//! - [`crd`]: CustomResourceDefinitions of the `veil.dev` kinds.
//! - [`status`]: their `status` (conditions `Accepted` / `Invalid`).
//!
//! Invariants:
//! - An invalid object never enters a [`PolicySet`]: every update is
//!   validated as a whole and leaves the set unchanged on error.
//! - The compiled program and the reference evaluator give the same verdict
//!   for every flow, after any sequence of incremental updates (property
//!   test `tests/differential.rs`, fuzz target `differential`).
//! - Rules refer to sets by key; cluster changes (pods, labels, nodes)
//!   change set membership and the affected endpoints' chains, never rules.
//! - Verdicts are about connection attempts; replies of an allowed
//!   connection are the dataplane's business (stateful), as is keeping
//!   established connections on policy changes.
//!
//! It does not program any kernel: the dataplane renders [`compile::Program`].
//! The scenario format and its runner, and the generator of the
//! differential tests, are test tooling: they live in the `veil-scenario`
//! crate (`scenario/`), which uses only this crate's public API.

#![warn(missing_docs)]

pub mod cluster;
pub mod compile;
pub mod crd;
pub mod error;
pub mod eval;
pub mod kinds;
pub mod model;
pub mod net;
pub mod policyset;
pub mod selector;
pub mod status;

pub use cluster::Cluster;
pub use error::PolicyError;
pub use eval::{evaluate, Evaluation, Flow, Trace, Verdict};
pub use kinds::Object;
pub use policyset::PolicySet;
