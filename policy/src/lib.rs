//! veil-policy: the Veil policy engine, a pure crate (no IO, no clock, no
//! async, no Kubernetes client).
//!
//! - [`kinds`]: the manifests of every supported kind, validated into the
//!   normalised [`model`]; [`policyset::PolicySet`] holds the objects in force.
//! - [`eval`]: the reference evaluator (verdict + trace), a literal reading
//!   of POLICY-API.md.
//! - [`compile`]: the compiler to a dataplane-neutral per-node program, its
//!   interpreter and incremental updates.
//! - [`scenario`]: the scenario file format (FORMAT.md) and its runner.
//! - [`crd`]: CustomResourceDefinitions of the `veil.dev` kinds.
//!
//! It does not program any kernel: the dataplane renders [`compile::Program`].

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
pub mod scenario;
pub mod selector;
pub mod testgen;

pub use cluster::Cluster;
pub use error::PolicyError;
pub use eval::{evaluate, Evaluation, Flow, Trace, Verdict};
pub use kinds::Object;
pub use policyset::PolicySet;
