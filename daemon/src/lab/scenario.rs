//! Reading a scenario file for the lab.
//!
//! TEMPORARY: the scenario model belongs to `veil_policy::scenario` (one model
//! shared by `veilctl policy test` and the lab). Until that module exists, this
//! is the smallest reading of FORMAT.md's cluster part the lab needs (nodes,
//! namespaces, pods, external hosts); policies, probes and steps are left to the
//! policy crate. It is replaced by the policy crate's model as soon as it lands.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnetwork::Ipv4Network;
use serde::Deserialize;

/// The cluster part of a scenario.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scenario {
    /// Scenario name.
    pub name: String,
    /// Cluster shape.
    #[serde(default)]
    pub cluster: Option<Cluster>,
    /// Namespaces.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// Pods.
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// External hosts.
    #[serde(default)]
    pub external: Vec<External>,
}

/// `cluster:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// Pod CIDR.
    #[serde(rename = "podCIDR", default)]
    pub pod_cidr: Option<Ipv4Network>,
    /// Nodes.
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
}

/// A node: a name, or `{name, labels}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum NodeSpec {
    /// Just a name.
    Name(String),
    /// Name and labels.
    Full {
        /// Name.
        name: String,
        /// Labels.
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
}

/// A namespace.
#[derive(Debug, Clone, Deserialize)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A pod.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// `namespace/name`.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Node.
    #[serde(default)]
    pub node: Option<String>,
    /// Fixed IP.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// hostNetwork.
    #[serde(default)]
    pub host_network: bool,
    /// Service account.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<Port>,
}

/// A port.
#[derive(Debug, Clone, Deserialize)]
pub struct Port {
    /// Number.
    pub port: u16,
    /// TCP (default), UDP, SCTP.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
}

/// An external host.
#[derive(Debug, Clone, Deserialize)]
pub struct External {
    /// DNS name.
    pub name: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<Port>,
}

/// Why a scenario could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid scenario.
    #[error("{path}: {source}")]
    Yaml {
        /// The path.
        path: String,
        /// The YAML error (with the field).
        #[source]
        source: serde_yaml::Error,
    },
}

/// Reads a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_yaml::from_str(&text).map_err(|source| ScenarioError::Yaml {
        path: path.display().to_string(),
        source,
    })
}
