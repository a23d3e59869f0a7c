//! Policies in a running lab (`veilctl lab up`), for the end-to-end tests:
//! a scenario's policies, writing them into the lab's datastore, and waiting
//! until the nodes' kernels hold them (each node's `node.status` reports a
//! newer policy generation, applied).
//!
//! It starts no lab and sends no traffic.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// The socket of `node`'s veild in lab `lab`.
pub fn node_socket(lab: &str, node: &str) -> PathBuf {
    PathBuf::from(format!("/run/veil/labs/{lab}/{node}/veild.sock"))
}

/// `node`'s policy generation and the generation its kernel holds.
pub fn policy_generations(lab: &str, node: &str) -> Option<(u64, u64)> {
    let s = crate::call(
        &node_socket(lab, node),
        veil_api::method::NODE_STATUS,
        Value::Null,
    )
    .ok()?;
    Some((
        s["policyGeneration"].as_u64().unwrap_or(0),
        s["policyAppliedGeneration"].as_u64().unwrap_or(0),
    ))
}

/// Whether `node` compiled a generation ≥ `min` and its kernel holds it.
pub fn applied(lab: &str, node: &str, min: u64) -> bool {
    policy_generations(lab, node).is_some_and(|(g, a)| g >= min && a == g)
}

/// The `policies` of the scenario file at `path`.
pub fn scenario_policies(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("scenario {}: {e}", path.display()));
    let v: Value = serde_yaml::from_str(&text).expect("scenario YAML");
    v["policies"].as_array().cloned().unwrap_or_default()
}

/// Writes `policies` as `file` of the lab's datastore (replacing what was
/// written there before) and waits, at most 20 s, until each of `nodes` has
/// applied a generation newer than its own before the write; panics with
/// the lab's status otherwise.
pub fn write_policies(lab: &str, file: &str, policies: &[Value], nodes: &[&str]) {
    let before: Vec<(&str, u64)> = nodes
        .iter()
        .map(|n| (*n, policy_generations(lab, n).map_or(0, |(g, _)| g)))
        .collect();
    let dir = PathBuf::from(format!("/run/veil/labs/{lab}/datastore/policies"));
    std::fs::create_dir_all(&dir).expect("lab datastore");
    // JSON is YAML: one document per policy.
    let docs: Vec<String> = policies
        .iter()
        .map(|p| serde_json::to_string(p).expect("policy as JSON"))
        .collect();
    std::fs::write(dir.join(file), docs.join("\n---\n")).expect("policy file");
    if !crate::eventually(Duration::from_secs(20), || {
        before.iter().all(|(n, g)| applied(lab, n, g + 1))
    }) {
        let st = std::process::Command::new(crate::bin("veilctl"))
            .args(["status", "--lab", lab])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!("policy never applied on {nodes:?}: {st}");
    }
}
