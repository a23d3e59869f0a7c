//! `lab.json`: what a lab is made of, written as it is built so that `lab down`
//! finds everything also after a crash half-way through `lab up`.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::{lab_dir, validate_name, LabError};

/// The recorded state of one lab.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    /// Lab name.
    pub name: String,
    /// Prefix of every namespace of the lab (`vl-<name>-`).
    pub prefix: String,
    /// The underlay namespace (holding bridge `br0`).
    pub underlay_netns: String,
    /// Cluster pod CIDR.
    pub cluster_cidr: Option<IpNetwork>,
    /// The scenario the lab was built from, if any.
    #[serde(default)]
    pub scenario: Option<PathBuf>,
    /// The `veil` CNI plugin used to wire pods.
    #[serde(default)]
    pub cni_plugin: Option<PathBuf>,
    /// Nodes.
    #[serde(default)]
    pub nodes: Vec<NodeState>,
    /// Pods (hostNetwork ones included, with their node's namespace).
    #[serde(default)]
    pub pods: Vec<PodState>,
    /// External hosts.
    #[serde(default)]
    pub external: Vec<ExternalState>,
    /// True once `lab up` finished.
    #[serde(default)]
    pub complete: bool,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// Node name.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Underlay address.
    pub address: IpAddr,
    /// Its pod CIDR.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: IpNetwork,
    /// Labels (as given; the daemon adds kubernetes.io/hostname and os).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The daemon's socket.
    pub socket: PathBuf,
    /// The daemon's program and arguments (for `restart-node`).
    pub veild_argv: Vec<String>,
    /// The daemon's log file.
    pub log: PathBuf,
    /// The daemon's PID, when started.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Its network namespace (its node's for hostNetwork pods).
    pub netns: String,
    /// The node it runs on.
    pub node: String,
    /// Its address, once wired.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// hostNetwork pod.
    #[serde(default)]
    pub host_network: bool,
    /// CNI container ID.
    #[serde(default)]
    pub container_id: String,
    /// PIDs of the processes serving its ports.
    #[serde(default)]
    pub server_pids: Vec<u32>,
}

impl PodState {
    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// An external host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalState {
    /// DNS name.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub ip: IpAddr,
    /// PIDs of the processes serving its ports.
    #[serde(default)]
    pub server_pids: Vec<u32>,
}

/// The `lab status --output json` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusJson {
    /// Nodes.
    pub nodes: Vec<StatusNode>,
    /// Pods.
    pub pods: Vec<StatusPod>,
    /// External hosts.
    pub external: Vec<StatusExternal>,
}

/// A node in [`StatusJson`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusNode {
    /// Node name.
    pub name: String,
    /// Namespace.
    pub netns: String,
    /// Underlay address.
    pub address: IpAddr,
    /// Pod CIDR.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: IpNetwork,
    /// PID of its `veild` (null when not running).
    pub pid: Option<u32>,
}

/// A pod in [`StatusJson`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusPod {
    /// `namespace/name`.
    pub name: String,
    /// Network namespace.
    pub netns: String,
    /// Node.
    pub node: String,
    /// Address.
    pub ip: Option<IpAddr>,
}

/// An external host in [`StatusJson`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusExternal {
    /// DNS name.
    pub name: String,
    /// Namespace.
    pub netns: String,
    /// Address.
    pub ip: IpAddr,
}

impl LabState {
    /// A fresh state for lab `name`.
    pub fn new(name: &str) -> Self {
        let prefix = super::prefix(name);
        LabState {
            name: name.to_string(),
            underlay_netns: format!("{prefix}underlay"),
            prefix,
            ..Default::default()
        }
    }

    /// The state directory.
    pub fn dir(&self) -> PathBuf {
        lab_dir(&self.name)
    }

    /// The lab's shared `local` datastore (namespaces, pods, policies, nodes,
    /// endpoints): where `lab test` applies policies and relabels pods.
    pub fn datastore_dir(&self) -> PathBuf {
        self.dir().join("datastore")
    }

    fn file(name: &str) -> PathBuf {
        lab_dir(name).join("lab.json")
    }

    /// Reads the state of lab `name`.
    pub fn load(name: &str) -> Result<Self, LabError> {
        validate_name(name)?;
        let path = Self::file(name);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NotFound(name.to_string()))
            }
            Err(e) => return Err(LabError::io(&path, e)),
        };
        serde_json::from_slice(&text).map_err(|source| LabError::State {
            path: path.display().to_string(),
            source,
        })
    }

    /// Writes the state (temp file + rename).
    pub fn save(&self) -> Result<(), LabError> {
        let path = Self::file(&self.name);
        let text = serde_json::to_vec_pretty(self).map_err(|source| LabError::State {
            path: path.display().to_string(),
            source,
        })?;
        write_atomic(&path, &text)
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, full_name: &str) -> Option<&PodState> {
        self.pods.iter().find(|p| p.full_name() == full_name)
    }

    /// The error for a `what` (node, pod, ...) called `name` that this lab
    /// does not have.
    pub fn no_such(&self, what: &'static str, name: &str) -> LabError {
        LabError::NoSuch {
            lab: self.name.clone(),
            what,
            name: name.to_string(),
        }
    }

    /// The `lab status --output json` view.
    pub fn status_json(&self) -> StatusJson {
        StatusJson {
            nodes: self
                .nodes
                .iter()
                .map(|n| StatusNode {
                    name: n.name.clone(),
                    netns: n.netns.clone(),
                    address: n.address,
                    pod_cidr: n.pod_cidr,
                    pid: n.pid.filter(|&pid| super::process::runs_in(pid, &n.netns)),
                })
                .collect(),
            pods: self
                .pods
                .iter()
                .map(|p| StatusPod {
                    name: p.full_name(),
                    netns: p.netns.clone(),
                    node: p.node.clone(),
                    ip: p.ip,
                })
                .collect(),
            external: self
                .external
                .iter()
                .map(|x| StatusExternal {
                    name: x.name.clone(),
                    netns: x.netns.clone(),
                    ip: x.ip,
                })
                .collect(),
        }
    }
}

/// Writes `bytes` to `path` atomically ([`veil_daemon::fsutil::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    veil_daemon::fsutil::write_atomic(path, bytes, None).map_err(|e| LabError::io(path, e))
}

/// An exclusive lock on a lab's directory, held while its state changes.
pub struct LabLock {
    _lock: nix::fcntl::Flock<File>,
}

impl LabLock {
    /// Locks lab `name` (waits for another `veilctl` working on the same lab).
    pub fn acquire(name: &str) -> Result<Self, LabError> {
        let path = lab_dir(name).join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LabError::io(&path, e))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| LabError::io(&path, std::io::Error::from(errno)))?;
        Ok(LabLock { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabState {
        let mut s = LabState::new("t1");
        s.cluster_cidr = Some("10.244.0.0/16".parse().unwrap());
        s.nodes.push(NodeState {
            name: "node-a".into(),
            netns: "vl-t1-node-a".into(),
            address: "198.18.0.10".parse().unwrap(),
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
            labels: Default::default(),
            socket: "/run/veil/labs/t1/node-a/veild.sock".into(),
            veild_argv: vec!["veild".into()],
            log: "/run/veil/labs/t1/node-a/veild.log".into(),
            pid: None,
        });
        s.pods.push(PodState {
            namespace: "demo".into(),
            name: "web-a0".into(),
            netns: "vl-t1-p-demo.web-a0".into(),
            node: "node-a".into(),
            ip: Some("10.244.0.2".parse().unwrap()),
            host_network: false,
            container_id: "x".into(),
            server_pids: vec![],
        });
        s.external.push(ExternalState {
            name: "pay.example.net".into(),
            netns: "vl-t1-x0".into(),
            ip: "203.0.113.50".parse().unwrap(),
            server_pids: vec![],
        });
        s
    }

    #[test]
    fn state_round_trips_through_json() {
        let s = sample();
        let text = serde_json::to_string(&s).unwrap();
        let back: LabState = serde_json::from_str(&text).unwrap();
        assert_eq!(s, back);
    }

    #[test]
    fn status_json_has_the_documented_shape() {
        let v = serde_json::to_value(sample().status_json()).unwrap();
        let node = &v["nodes"][0];
        let mut keys: Vec<_> = node.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["address", "name", "netns", "pid", "podCIDR"]);
        assert_eq!(node["podCIDR"], "10.244.0.0/24");
        assert!(node["pid"].is_null(), "a node never started has no pid");
        let pod = &v["pods"][0];
        let mut keys: Vec<_> = pod.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["ip", "name", "netns", "node"]);
        assert_eq!(pod["name"], "demo/web-a0");
        assert_eq!(pod["ip"], "10.244.0.2");
        let ext = &v["external"][0];
        let mut keys: Vec<_> = ext.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["ip", "name", "netns"]);
    }

    #[test]
    fn new_state_uses_the_lab_prefix() {
        let s = LabState::new("abc");
        assert_eq!(s.prefix, "vl-abc-");
        assert_eq!(s.underlay_netns, "vl-abc-underlay");
    }
}
