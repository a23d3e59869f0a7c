//! The controller: turns the datastore's state into the desired state of
//! this node, pure given its inputs (the [`Store`], what changed in it, the
//! local endpoints). No IO, no async, no clock.
//!
//! - [`peers`]: the WireGuard peers (other nodes with a valid key);
//! - [`policy`]: the policy program, validated and compiled incrementally
//!   with veil-policy, its generation and the policy errors;
//! - [`Desired`]: what the dataplane renders: the program together with the
//!   endpoints of this node (interface, addresses, pod).
//!
//! The daemon's glue (`node::sync`) feeds it the store's changes and
//! publishes [`Desired`] on a watch channel. It does not touch the kernel:
//! the dataplane applies the desired state.

pub mod peers;
pub mod policy;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use ipnetwork::IpNetwork;
use veil_policy::compile::Program;

use crate::datastore::store::{Changes, Store};
use crate::datastore::Issue;

/// An endpoint wired on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// `namespace/name` of the pod, when known (the program's `pod`).
    pub pod: Option<String>,
    /// Container ID.
    pub container_id: String,
    /// Interface name in the pod.
    pub ifname: String,
    /// The host side of the veth (the dataplane's `iifname`/`oifname`).
    pub host_ifname: String,
    /// Addresses.
    pub ips: Vec<IpNetwork>,
    /// Committed (`false`: between `cni.add` and `cni.commit`).
    pub ready: bool,
}

/// The desired state of this node's dataplane.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// This node's name (its endpoints in [`Program::node_endpoints`]).
    pub node: String,
    /// Increments each time the program changes.
    pub generation: u64,
    /// The compiled policy program of the cluster.
    pub program: Arc<Program>,
    /// This node's endpoints.
    pub endpoints: Vec<LocalEndpoint>,
    /// Why policies are not in force as written (object, field, reason).
    pub policy_errors: Vec<Issue>,
    /// Whether the datastore's initial listing is in.
    pub synced: bool,
    /// Each node's tunnel address (the first host address of its pod CIDR,
    /// the source of its traffic to remote pods) by its node address: the
    /// renderer matches it as that node's address.
    pub tunnels: std::collections::BTreeMap<std::net::IpAddr, std::net::IpAddr>,
}

/// The controller of one node.
#[derive(Debug)]
pub struct Controller {
    node: String,
    policy: policy::PolicyState,
}

impl Controller {
    /// The controller of node `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Controller {
            node: node.into(),
            policy: policy::PolicyState::new(),
        }
    }

    /// Takes in what changed in the store (the first call reads it all).
    /// Returns whether the policy program changed.
    pub fn on_changes(&mut self, store: &Store, changes: &Changes) -> bool {
        self.policy.update(store, changes)
    }

    /// The policy part's state.
    pub fn policy(&self) -> &policy::PolicyState {
        &self.policy
    }

    /// The desired state, given the store and this node's endpoints.
    pub fn desired(&self, store: &Store, endpoints: Vec<LocalEndpoint>) -> Desired {
        Desired {
            node: self.node.clone(),
            generation: self.policy.generation(),
            program: self.policy.program().clone(),
            endpoints,
            policy_errors: self.policy.errors(store),
            synced: store.synced,
            tunnels: policy::tunnels(store),
        }
    }
}
