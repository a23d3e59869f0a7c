//! The lab: a Kubernetes-like cluster made of network namespaces on one machine.
//!
//! `veilctl lab up` builds an underlay (a bridge in a namespace of its own), nodes
//! (each a namespace on the underlay running its own `veild`), pods (namespaces
//! wired by executing the real `veil` CNI plugin as a container runtime does) and
//! external hosts (namespaces on the underlay with 203.0.113.x addresses). Pods and
//! external hosts serve their ports with [`serve`] (HTTP/1.1 on TCP, echo on UDP and
//! SCTP, DNS for `kube-system/kube-dns`). Everything is recorded in
//! `/run/veil/labs/<name>/lab.json`; `veilctl lab down` removes it all, also after
//! a crash, by the namespaces' common prefix `vl-<name>-`.
//!
//! Names and files of lab `<name>` (1-12 characters `[a-z][a-z0-9]*`, so that
//! no lab's prefix is another's):
//! ```text
//! namespaces   vl-<name>-underlay              bridge br0; ports n<i> (nodes), x<j> (external)
//!              vl-<name>-n-<node>              eth0 198.18.0.(10+i)/15, ip_forward=1, veild
//!              vl-<name>-p-<namespace>.<pod>   eth0 from the veil CNI plugin
//!              vl-<name>-x-<host>              eth0 203.0.113.x/24
//! /run/veil/labs/<name>/lab.json               what was built (LabState), written step by step
//!                       datastore/             the local datastore every node's veild shares
//!                       <node>/veild.sock, veild.log, state/, wireguard/, 10-veil.conflist
//!                       pods/<ns>.<pod>.log    workload servers' logs
//! /etc/netns/vl-<name>-p-.../resolv.conf       the pods' DNS: kube-system/kube-dns
//! ```
//!
//! Safety: the lab never touches the machine's own (root) namespace. Links,
//! addresses, routes and sysctls are only ever set with `ip -n <lab namespace>` or
//! inside `ip netns exec <lab namespace>`, and only the ranges 198.18.0.0/15
//! (underlay), 10.244.0.0/16 (pods) and 203.0.113.0/24 (external) are used.
//!
//! What it does not do: policy, encryption or flows (the daemons do). It sends
//! scenario probes ([`probe`]) and runs whole scenarios as traffic ([`mod@test`]),
//! judging only what the traffic did.

pub mod applied;
pub mod cni;
pub mod dns;
pub mod down;
pub mod http;
pub mod netns;
pub mod plan;
pub mod probe;
pub mod process;
pub mod serve;
pub mod state;
pub mod test;
pub mod up;

use std::path::{Path, PathBuf};

pub use state::LabState;

/// Where labs keep their state: `<LABS_ROOT>/<name>/`.
pub const LABS_ROOT: &str = "/run/veil/labs";
/// Default lab name.
pub const DEFAULT_NAME: &str = "demo";
/// Longest lab name (namespace names and prefixes stay short).
pub const MAX_NAME_LEN: usize = 12;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab name is not usable.
    #[error(
        "lab name {0:?} is invalid: use 1 to {MAX_NAME_LEN} lowercase letters and digits, starting with a letter"
    )]
    InvalidName(String),
    /// The lab has no state directory.
    #[error("lab {0:?} does not exist (no {LABS_ROOT}/{0}/lab.json)")]
    NotFound(String),
    /// The lab already exists.
    #[error("lab {0:?} already exists (run `veilctl lab down --name {0}` first)")]
    Exists(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// `lab.json` could not be decoded.
    #[error("{path}: cannot decode lab state: {source}")]
    State {
        /// The path.
        path: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The scenario file is invalid.
    #[error("{path}: {error}")]
    Scenario {
        /// The file.
        path: String,
        /// What is wrong, naming the field.
        error: Box<veil_scenario::ScenarioError>,
    },
    /// The cluster description is invalid.
    #[error("{0}")]
    Plan(#[from] plan::PlanError),
    /// A command run to build the lab failed.
    #[error("{0}")]
    Command(#[from] netns::CommandError),
    /// A program the lab runs is missing.
    #[error("{what} not found at {path} (build it with `cargo build -p veil-daemon -p veil-cni`, or pass --veild / --cni-bin-dir)")]
    MissingBinary {
        /// Which program.
        what: &'static str,
        /// Where it was looked for.
        path: String,
    },
    /// A program could not be started.
    #[error("namespace {netns}: cannot start {program}: {source}")]
    Spawn {
        /// The namespace.
        netns: String,
        /// The program.
        program: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The daemons did not apply a change in time.
    #[error("{0}")]
    NotApplied(String),
    /// The lab needs root.
    #[error("the lab creates network namespaces and must run as root")]
    NotRoot,
    /// The CNI plugin gave a pod another address than the one asked for.
    #[error("pod {pod}: asked for {want}, the CNI plugin gave {got}")]
    AddressMismatch {
        /// `namespace/name`.
        pod: String,
        /// Asked for.
        want: std::net::Ipv4Addr,
        /// Given.
        got: std::net::Ipv4Addr,
    },
    /// A pod's or external host's workload server did not start.
    #[error(
        "{name} (namespace {netns}): the workload server did not start; end of {log}:\n{tail}"
    )]
    ServerNotStarted {
        /// Pod or host.
        name: String,
        /// Its namespace.
        netns: String,
        /// The server's log file.
        log: String,
        /// The end of the log.
        tail: String,
    },
    /// A node's namespace is missing.
    #[error("node {node}: its namespace {netns} is gone")]
    NodeGone {
        /// The node.
        node: String,
        /// The namespace.
        netns: String,
    },
    /// The `lab serve` specification is not valid JSON of the right shape.
    #[error("--spec: {0}")]
    Spec(#[source] serde_json::Error),
    /// A probe could not be run from a pod.
    #[error("probe from {pod}: {reason}")]
    Probe {
        /// `namespace/name`.
        pod: String,
        /// What the probe process said.
        reason: String,
    },
    /// A workload server failed.
    #[error("{0}")]
    Serve(#[from] serve::ServeError),
    /// A node's daemon did not become ready.
    #[error("node {node}: veild did not become ready: {reason}")]
    NotReady {
        /// The node.
        node: String,
        /// Why (last status, or the end of its log).
        reason: String,
    },
    /// The CNI plugin failed for a pod.
    #[error("pod {pod}: CNI ADD failed: {error}")]
    Cni {
        /// `namespace/name`.
        pod: String,
        /// The plugin's error.
        error: cni::CniError,
    },
    /// A node, pod or external host named on the command line is not in the lab.
    #[error("lab {lab:?} has no {what} {name:?}")]
    NoSuch {
        /// Lab name.
        lab: String,
        /// node, pod, external host.
        what: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A datastore write failed.
    #[error("{0}")]
    Datastore(#[from] veil_daemon::datastore::DatastoreError),
}

impl LabError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        LabError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Reads and validates a scenario file (the policy crate's model).
pub fn load_scenario(path: &Path) -> Result<veil_scenario::Scenario, LabError> {
    let text = std::fs::read_to_string(path).map_err(|e| LabError::io(path, e))?;
    veil_scenario::Scenario::parse(&text).map_err(|error| LabError::Scenario {
        path: path.display().to_string(),
        error: Box::new(error),
    })
}

/// Checks a lab name: 1 to 12 characters, `[a-z][a-z0-9]*`. No dashes, so that
/// the prefix `vl-<name>-` of one lab is never a prefix of another lab's.
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let mut bytes = name.bytes();
    let ok = name.len() <= MAX_NAME_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError::InvalidName(name.to_string()))
    }
}

/// The prefix of every namespace of lab `name`.
pub fn prefix(name: &str) -> String {
    format!("vl-{name}-")
}

/// The state directory of lab `name`.
pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LABS_ROOT).join(name)
}

/// The (node name, socket path) of every node daemon of lab `name`.
pub fn node_sockets(name: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let state = LabState::load(name).map_err(|e| e.to_string())?;
    Ok(state
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.socket.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_without_dashes() {
        for good in ["demo", "a", "t0123456789a", "lab2"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Demo",
            "2lab",
            "a-b",
            "a.b",
            "a/b",
            "abcdefghijklm",
            "dé",
            "a b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_of_different_labs_never_overlap() {
        // "vl-a-" must not be a prefix of lab "ab"'s namespaces.
        assert!(!prefix("ab").starts_with(&prefix("a")));
        assert!(!format!("{}underlay", prefix("ab")).starts_with(&prefix("a")));
    }
}
