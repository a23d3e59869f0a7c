//! The node's endpoint table and its IP allocations, persisted together in
//! `<state_dir>/endpoints.json` (written through a temporary file and a rename on
//! every change, before the change is acknowledged), so that a restart of the
//! daemon or of the machine never forgets an endpoint nor hands out an address
//! still in use.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::ipam::{Allocator, IpamError};

/// Lifecycle of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Addresses reserved; the plugin is wiring the pod.
    Pending,
    /// Wired and live.
    Ready,
}

/// One pod attachment on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Container ID.
    pub container_id: String,
    /// Interface name in the pod.
    pub ifname: String,
    /// Network namespace path.
    pub netns: String,
    /// Host-side veth name.
    pub host_ifname: String,
    /// Addresses (host prefixes).
    pub ips: Vec<IpNetwork>,
    /// Whether the daemon allocated the addresses (vs. a delegated IPAM plugin).
    pub daemon_ipam: bool,
    /// Pod namespace.
    pub pod_namespace: Option<String>,
    /// Pod name.
    pub pod_name: Option<String>,
    /// The CNI network name it was added for (empty when unknown).
    #[serde(default)]
    pub network: String,
    /// Pod labels known when the endpoint was added or last refreshed.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// State.
    pub state: EndpointState,
}

impl Endpoint {
    /// `namespace/name`, or the container ID when unknown.
    pub fn display_name(&self) -> String {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            _ => self.container_id.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    version: u32,
    allocator: Allocator,
    endpoints: Vec<Endpoint>,
}

/// Endpoint table errors.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Allocation failed.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The state file could not be written or read.
    #[error("state file {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// The state file is corrupt.
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        /// Path.
        path: String,
        /// Error.
        #[source]
        source: serde_json::Error,
    },
    /// The state file belongs to another pod CIDR.
    #[error("state file {path} holds allocations from {found}, but this node's pod CIDR is {configured}")]
    CidrChanged {
        /// Path.
        path: String,
        /// CIDR in the file.
        found: IpNetwork,
        /// CIDR configured.
        configured: IpNetwork,
    },
}

type Key = (String, String);

#[derive(Debug)]
struct Inner {
    allocator: Allocator,
    endpoints: BTreeMap<Key, Endpoint>,
}

/// The endpoint table.
#[derive(Debug)]
pub struct EndpointTable {
    path: PathBuf,
    inner: Mutex<Inner>,
}

/// What `add` did.
#[derive(Debug, Clone)]
pub struct Added {
    /// The endpoint as recorded.
    pub endpoint: Endpoint,
    /// False when an endpoint with that key already existed (a retried ADD).
    pub new: bool,
}

impl EndpointTable {
    /// Opens the table persisted in `state_dir`, for the node's `cidr`.
    pub fn open(state_dir: &Path, cidr: IpNetwork) -> Result<Self, EndpointError> {
        let path = state_dir.join("endpoints.json");
        let io = |source| EndpointError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let inner = match std::fs::read(&path) {
            Ok(bytes) => {
                let p: Persisted =
                    serde_json::from_slice(&bytes).map_err(|source| EndpointError::Corrupt {
                        path: path.display().to_string(),
                        source,
                    })?;
                if p.allocator.cidr() != cidr {
                    return Err(EndpointError::CidrChanged {
                        path: path.display().to_string(),
                        found: p.allocator.cidr(),
                        configured: cidr,
                    });
                }
                Inner {
                    allocator: p.allocator,
                    endpoints: p
                        .endpoints
                        .into_iter()
                        .map(|e| ((e.container_id.clone(), e.ifname.clone()), e))
                        .collect(),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Inner {
                allocator: Allocator::new(cidr),
                endpoints: BTreeMap::new(),
            },
            Err(e) => return Err(io(e)),
        };
        Ok(Self {
            path,
            inner: Mutex::new(inner),
        })
    }

    fn persist(&self, inner: &Inner) -> Result<(), EndpointError> {
        let p = Persisted {
            version: 1,
            allocator: inner.allocator.clone(),
            endpoints: inner.endpoints.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&p).map_err(|source| EndpointError::Corrupt {
            path: self.path.display().to_string(),
            source,
        })?;
        let io = |source| EndpointError::Io {
            path: self.path.display().to_string(),
            source,
        };
        crate::fsutil::write_atomic(&self.path, &bytes, None).map_err(io)
    }

    /// The node's tunnel address (first host address of the pod CIDR).
    pub fn node_tunnel_address(&self) -> IpAddr {
        self.inner.lock().expect("lock").allocator.node_address()
    }

    /// Records a pending endpoint. With `ips == None` the addresses are allocated
    /// here. A retried ADD for the same key returns the recorded endpoint.
    pub fn add(
        &self,
        mut ep: Endpoint,
        ips: Option<Vec<IpNetwork>>,
    ) -> Result<Added, EndpointError> {
        let mut inner = self.inner.lock().expect("lock");
        let key = (ep.container_id.clone(), ep.ifname.clone());
        if let Some(existing) = inner.endpoints.get(&key) {
            return Ok(Added {
                endpoint: existing.clone(),
                new: false,
            });
        }
        match ips {
            None => {
                let ip = inner.allocator.allocate()?;
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                ep.ips = vec![IpNetwork::new(ip, prefix).expect("host prefix")];
                ep.daemon_ipam = true;
            }
            Some(ips) => {
                ep.ips = ips;
                ep.daemon_ipam = false;
            }
        }
        ep.state = EndpointState::Pending;
        inner.endpoints.insert(key.clone(), ep.clone());
        if let Err(e) = self.persist(&inner) {
            // Undo in memory: nothing half-recorded.
            if ep.daemon_ipam {
                for ip in &ep.ips {
                    inner.allocator.release(ip.ip());
                }
            }
            inner.endpoints.remove(&key);
            return Err(e);
        }
        Ok(Added {
            endpoint: ep,
            new: true,
        })
    }

    /// Records a pending endpoint with specific addresses from the node's CIDR
    /// (fixed pod IPs). Fails, changing nothing, when one is taken or reserved.
    pub fn add_claimed(&self, mut ep: Endpoint, ips: &[IpAddr]) -> Result<Endpoint, EndpointError> {
        let mut inner = self.inner.lock().expect("lock");
        let mut claimed = Vec::new();
        for ip in ips {
            if let Err(e) = inner.allocator.claim(*ip) {
                for c in claimed {
                    inner.allocator.release(c);
                }
                return Err(e.into());
            }
            claimed.push(*ip);
        }
        ep.ips = ips
            .iter()
            .map(|ip| {
                IpNetwork::new(*ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix")
            })
            .collect();
        ep.daemon_ipam = true;
        ep.state = EndpointState::Pending;
        let key = (ep.container_id.clone(), ep.ifname.clone());
        inner.endpoints.insert(key.clone(), ep.clone());
        if let Err(e) = self.persist(&inner) {
            for c in claimed {
                inner.allocator.release(c);
            }
            inner.endpoints.remove(&key);
            return Err(e);
        }
        Ok(ep)
    }

    /// Marks an endpoint ready. Returns it, or `None` when unknown.
    pub fn commit(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Endpoint>, EndpointError> {
        let mut inner = self.inner.lock().expect("lock");
        let key = (container_id.to_string(), ifname.to_string());
        let Some(ep) = inner.endpoints.get_mut(&key) else {
            return Ok(None);
        };
        ep.state = EndpointState::Ready;
        let ep = ep.clone();
        self.persist(&inner)?;
        Ok(Some(ep))
    }

    /// Removes an endpoint and releases its addresses. Returns it when it existed.
    pub fn remove(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Endpoint>, EndpointError> {
        let mut inner = self.inner.lock().expect("lock");
        let key = (container_id.to_string(), ifname.to_string());
        let Some(ep) = inner.endpoints.remove(&key) else {
            return Ok(None);
        };
        if ep.daemon_ipam {
            for ip in &ep.ips {
                inner.allocator.release(ip.ip());
            }
        }
        if let Err(e) = self.persist(&inner) {
            if ep.daemon_ipam {
                for ip in &ep.ips {
                    let _ = inner.allocator.claim(ip.ip());
                }
            }
            inner.endpoints.insert(key, ep);
            return Err(e);
        }
        Ok(Some(ep))
    }

    /// Updates the labels of the endpoints of pod `namespace/name`; true if any changed.
    pub fn set_labels(
        &self,
        namespace: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let mut inner = self.inner.lock().expect("lock");
        let mut changed = false;
        for ep in inner.endpoints.values_mut() {
            if ep.pod_namespace.as_deref() == Some(namespace)
                && ep.pod_name.as_deref() == Some(name)
                && &ep.labels != labels
            {
                ep.labels = labels.clone();
                changed = true;
            }
        }
        if changed {
            let _ = self.persist(&inner);
        }
        changed
    }

    /// One endpoint.
    pub fn get(&self, container_id: &str, ifname: &str) -> Option<Endpoint> {
        let inner = self.inner.lock().expect("lock");
        inner
            .endpoints
            .get(&(container_id.to_string(), ifname.to_string()))
            .cloned()
    }

    /// Every endpoint.
    pub fn list(&self) -> Vec<Endpoint> {
        self.inner
            .lock()
            .expect("lock")
            .endpoints
            .values()
            .cloned()
            .collect()
    }

    /// The endpoint holding `ip`.
    pub fn by_ip(&self, ip: IpAddr) -> Option<Endpoint> {
        self.inner
            .lock()
            .expect("lock")
            .endpoints
            .values()
            .find(|e| e.ips.iter().any(|n| n.ip() == ip))
            .cloned()
    }

    /// Addresses allocated by the daemon.
    pub fn allocated(&self) -> BTreeSet<IpAddr> {
        self.inner
            .lock()
            .expect("lock")
            .allocator
            .used()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str) -> Endpoint {
        Endpoint {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            host_ifname: format!("veil{id}"),
            ips: vec![],
            daemon_ipam: true,
            pod_namespace: Some("x".into()),
            pod_name: Some(id.into()),
            network: "veil".into(),
            labels: BTreeMap::new(),
            state: EndpointState::Pending,
        }
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: IpNetwork = "10.244.0.0/24".parse().unwrap();
        let t = EndpointTable::open(dir.path(), cidr).unwrap();
        let a = t.add(ep("a"), None).unwrap().endpoint;
        t.commit("a", "eth0").unwrap();
        drop(t);
        let t = EndpointTable::open(dir.path(), cidr).unwrap();
        assert_eq!(t.get("a", "eth0").unwrap().state, EndpointState::Ready);
        let b = t.add(ep("b"), None).unwrap().endpoint;
        assert_ne!(a.ips, b.ips, "an address in use is never handed out again");
    }

    #[test]
    fn retried_add_returns_the_same_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let t = EndpointTable::open(dir.path(), "10.244.0.0/24".parse().unwrap()).unwrap();
        let a = t.add(ep("a"), None).unwrap();
        let again = t.add(ep("a"), None).unwrap();
        assert!(!again.new);
        assert_eq!(a.endpoint.ips, again.endpoint.ips);
        assert_eq!(t.allocated().len(), 1);
    }

    #[test]
    fn remove_releases_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let t = EndpointTable::open(dir.path(), "10.244.0.0/24".parse().unwrap()).unwrap();
        t.add(ep("a"), None).unwrap();
        assert!(t.remove("a", "eth0").unwrap().is_some());
        assert!(t.remove("a", "eth0").unwrap().is_none());
        assert!(t.allocated().is_empty());
    }

    #[test]
    fn changed_cidr_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = EndpointTable::open(dir.path(), "10.244.0.0/24".parse().unwrap()).unwrap();
        t.add(ep("a"), None).unwrap();
        drop(t);
        let e = EndpointTable::open(dir.path(), "10.244.1.0/24".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("10.244.1.0/24"), "{e}");
    }
}
