//! The node's endpoint table and its IP allocations, persisted together in
//! `<state_dir>/endpoints.json` (written through a temporary file and a rename on
//! every change, before the change is acknowledged), so that a restart of the
//! daemon or of the machine never forgets an endpoint nor hands out an address
//! still in use.
//!
//! Crash recovery ([`recovery`]): before every write the file being replaced
//! is kept as `endpoints.json.prev`; a current file that does not parse is set
//! aside and the previous copy used, with a loud log. At open the allocator is
//! made to agree with the endpoints, and [`EndpointTable::reap_pending`]
//! releases the pending endpoints a crash left behind.

mod recovery;

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
    /// When each pending endpoint was reserved (unix seconds), by
    /// `container/ifname`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pending_since: BTreeMap<String, u64>,
}

fn key_text(k: &Key) -> String {
    format!("{}/{}", k.0, k.1)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mode of the state directory veild creates.
pub const STATE_DIR_MODE: u32 = 0o700;

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
    /// Neither the state file nor its previous copy parse.
    #[error("endpoint state cannot be recovered: {reason}")]
    Unrecoverable {
        /// Both files' problems.
        reason: String,
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
    pending_since: BTreeMap<Key, u64>,
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
    /// The directory is created with mode 0700 when missing. A state file
    /// that does not parse is replaced by its previous good copy (logged as
    /// an error); the allocator is made to agree with the endpoints.
    pub fn open(state_dir: &Path, cidr: IpNetwork) -> Result<Self, EndpointError> {
        let path = state_dir.join("endpoints.json");
        let io = |source| EndpointError::Io {
            path: path.display().to_string(),
            source,
        };
        crate::fsutil::create_private_dir(state_dir, STATE_DIR_MODE).map_err(io)?;
        let (p, recovered) = match recovery::load(&path)? {
            recovery::Loaded::Fresh => {
                let inner = Inner {
                    allocator: Allocator::new(cidr),
                    endpoints: BTreeMap::new(),
                    pending_since: BTreeMap::new(),
                };
                return Ok(Self {
                    path,
                    inner: Mutex::new(inner),
                });
            }
            recovery::Loaded::Current(p) => (p, false),
            recovery::Loaded::Previous {
                state,
                reason,
                kept_as,
            } => {
                tracing::error!(
                    state.file = %path.display(),
                    state.kept_as = %kept_as.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
                    reason,
                    "STATE FILE DOES NOT PARSE: using its previous good copy; the last change before the crash may be lost"
                );
                (state, true)
            }
        };
        if p.allocator.cidr() != cidr {
            return Err(EndpointError::CidrChanged {
                path: path.display().to_string(),
                found: p.allocator.cidr(),
                configured: cidr,
            });
        }
        let pending_since: BTreeMap<String, u64> = p.pending_since;
        let endpoints: BTreeMap<Key, Endpoint> = p
            .endpoints
            .into_iter()
            .map(|e| ((e.container_id.clone(), e.ifname.clone()), e))
            .collect();
        let pending_since = endpoints
            .iter()
            .filter(|(_, e)| e.state == EndpointState::Pending)
            .map(|(k, _)| {
                (
                    k.clone(),
                    pending_since.get(&key_text(k)).copied().unwrap_or(0),
                )
            })
            .collect();
        let mut inner = Inner {
            allocator: p.allocator,
            endpoints,
            pending_since,
        };
        let repaired = reconcile_allocator(&mut inner);
        if repaired > 0 {
            tracing::warn!(
                state.file = %path.display(),
                addresses = repaired,
                "allocator disagreed with the endpoints: repaired from the endpoints"
            );
        }
        let table = Self {
            path,
            inner: Mutex::new(inner),
        };
        if recovered || repaired > 0 {
            let inner = table.inner.lock().expect("lock");
            table.persist(&inner)?;
        }
        Ok(table)
    }

    /// Releases the pending endpoints a crash left behind: those whose host
    /// interface does not exist (`host_link_exists` says; the plugin creates
    /// it before `cni.commit`, and removes it when an ADD fails) or that
    /// have been pending longer than `max_age`. Returns them. Run at start,
    /// before the socket serves: no ADD is in flight then.
    pub fn reap_pending(
        &self,
        host_link_exists: impl Fn(&str) -> bool,
        max_age: std::time::Duration,
    ) -> Result<Vec<Endpoint>, EndpointError> {
        let mut inner = self.inner.lock().expect("lock");
        let now = unix_now();
        let stale: Vec<Key> = inner
            .endpoints
            .iter()
            .filter(|(_, e)| e.state == EndpointState::Pending)
            .filter(|(k, e)| {
                let since = inner.pending_since.get(*k).copied().unwrap_or(0);
                !host_link_exists(&e.host_ifname) || now.saturating_sub(since) > max_age.as_secs()
            })
            .map(|(k, _)| k.clone())
            .collect();
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        let mut reaped = Vec::new();
        for k in &stale {
            if let Some(ep) = inner.endpoints.remove(k) {
                if ep.daemon_ipam {
                    for ip in &ep.ips {
                        inner.allocator.release(ip.ip());
                    }
                }
                inner.pending_since.remove(k);
                reaped.push(ep);
            }
        }
        self.persist(&inner)?;
        Ok(reaped)
    }

    /// Whether the allocator agrees with the endpoints: every address an
    /// endpoint holds from it is marked used, nothing else is, and no two
    /// endpoints share an address. The error names the first difference.
    pub fn check_consistency(&self) -> Result<(), String> {
        let inner = self.inner.lock().expect("lock");
        consistency(&inner)
    }

    fn persist(&self, inner: &Inner) -> Result<(), EndpointError> {
        let p = Persisted {
            version: 1,
            allocator: inner.allocator.clone(),
            endpoints: inner.endpoints.values().cloned().collect(),
            pending_since: inner
                .pending_since
                .iter()
                .map(|(k, v)| (key_text(k), *v))
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&p).map_err(|source| EndpointError::Corrupt {
            path: self.path.display().to_string(),
            source,
        })?;
        let io = |source| EndpointError::Io {
            path: self.path.display().to_string(),
            source,
        };
        recovery::keep_previous(&self.path).map_err(io)?;
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
        inner.pending_since.insert(key.clone(), unix_now());
        if let Err(e) = self.persist(&inner) {
            inner.pending_since.remove(&key);
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
        inner.pending_since.insert(key.clone(), unix_now());
        if let Err(e) = self.persist(&inner) {
            inner.pending_since.remove(&key);
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
        let since = inner.pending_since.remove(&key);
        if let Err(e) = self.persist(&inner) {
            if let Some(s) = since {
                inner.pending_since.insert(key.clone(), s);
            }
            if let Some(ep) = inner.endpoints.get_mut(&key) {
                ep.state = EndpointState::Pending;
            }
            return Err(e);
        }
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
        let since = inner.pending_since.remove(&key);
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
            if let Some(s) = since {
                inner.pending_since.insert(key.clone(), s);
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

/// Makes the allocator's used set the addresses the endpoints hold (the
/// endpoints are the truth: an address in use is never handed out, one no
/// endpoint holds is free). Returns how many addresses changed.
fn reconcile_allocator(inner: &mut Inner) -> usize {
    let held = recovery::held_addresses(inner.endpoints.values());
    let used: BTreeSet<IpAddr> = inner.allocator.used().copied().collect();
    let mut changed = 0;
    for ip in used.difference(&held) {
        inner.allocator.release(*ip);
        changed += 1;
    }
    for ip in held.difference(&used) {
        if inner.allocator.claim(*ip).is_ok() {
            changed += 1;
        }
    }
    changed
}

fn consistency(inner: &Inner) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    for ep in inner.endpoints.values() {
        for ip in &ep.ips {
            if let Some(other) = seen.insert(ip.ip(), ep.display_name()) {
                return Err(format!(
                    "{} is held by {other} and {}",
                    ip.ip(),
                    ep.display_name()
                ));
            }
        }
    }
    let held = recovery::held_addresses(inner.endpoints.values());
    let used: BTreeSet<IpAddr> = inner.allocator.used().copied().collect();
    if let Some(ip) = held.difference(&used).next() {
        return Err(format!(
            "{ip} is held by an endpoint but free in the allocator"
        ));
    }
    if let Some(ip) = used.difference(&held).next() {
        return Err(format!(
            "{ip} is used in the allocator but held by no endpoint"
        ));
    }
    Ok(())
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

    #[test]
    fn a_corrupt_state_file_falls_back_to_the_previous_good_copy() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: IpNetwork = "10.244.0.0/24".parse().unwrap();
        let t = EndpointTable::open(dir.path(), cidr).unwrap();
        let a = t.add(ep("a"), None).unwrap().endpoint;
        t.commit("a", "eth0").unwrap();
        t.add(ep("b"), None).unwrap();
        drop(t);
        let path = dir.path().join("endpoints.json");
        std::fs::write(&path, b"{\"version\": 1, \"allocat").unwrap();
        let t = EndpointTable::open(dir.path(), cidr).unwrap();
        // The previous copy is the state before the last change (b's ADD).
        assert_eq!(t.get("a", "eth0").unwrap().ips, a.ips);
        assert_eq!(t.get("a", "eth0").unwrap().state, EndpointState::Ready);
        assert!(t.get("b", "eth0").is_none());
        t.check_consistency().unwrap();
        // The bad file is kept aside for the operator, the good state rewritten.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("endpoints.json.corrupt-")),
            "{names:?}"
        );
        let again: Persisted = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(again.endpoints.len(), 1);
    }

    #[test]
    fn neither_copy_parsing_refuses_to_start_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: IpNetwork = "10.244.0.0/24".parse().unwrap();
        let t = EndpointTable::open(dir.path(), cidr).unwrap();
        t.add(ep("a"), None).unwrap();
        t.add(ep("b"), None).unwrap();
        drop(t);
        std::fs::write(dir.path().join("endpoints.json"), b"garbage").unwrap();
        std::fs::write(dir.path().join("endpoints.json.prev"), b"garbage").unwrap();
        let e = EndpointTable::open(dir.path(), cidr)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("endpoints.json") && e.contains("endpoints.json.prev"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("endpoints.json")).unwrap(),
            b"garbage"
        );
    }

    #[test]
    fn pending_endpoints_without_a_host_link_are_reaped_and_their_addresses_freed() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: IpNetwork = "10.244.0.0/24".parse().unwrap();
        let t = EndpointTable::open(dir.path(), cidr).unwrap();
        t.add(ep("ready"), None).unwrap();
        t.commit("ready", "eth0").unwrap();
        t.add(ep("wired"), None).unwrap();
        let lost = t.add(ep("lost"), None).unwrap().endpoint;
        drop(t);
        let t = EndpointTable::open(dir.path(), cidr).unwrap();
        let hour = std::time::Duration::from_secs(3600);
        // Only "vwired" has a host link; "ready" is never reaped, link or not.
        let reaped = t.reap_pending(|name| name == "veilwired", hour).unwrap();
        assert_eq!(
            reaped
                .iter()
                .map(|e| e.container_id.as_str())
                .collect::<Vec<_>>(),
            ["lost"]
        );
        assert!(t.get("ready", "eth0").is_some() && t.get("wired", "eth0").is_some());
        assert!(!t.allocated().contains(&lost.ips[0].ip()));
        t.check_consistency().unwrap();
        // Too old: reaped even with its link.
        let reaped = t.reap_pending(|_| true, std::time::Duration::ZERO).unwrap();
        assert!(reaped.is_empty(), "pending for less than a second: kept");
        let mut inner = t.inner.lock().unwrap();
        inner
            .pending_since
            .insert(("wired".into(), "eth0".into()), 1);
        drop(inner);
        let reaped = t.reap_pending(|_| true, hour).unwrap();
        assert_eq!(reaped.len(), 1);
        assert_eq!(t.list().len(), 1);
        t.check_consistency().unwrap();
    }

    #[test]
    fn an_allocator_that_disagrees_with_the_endpoints_is_repaired_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: IpNetwork = "10.244.0.0/24".parse().unwrap();
        let t = EndpointTable::open(dir.path(), cidr).unwrap();
        let a = t.add(ep("a"), None).unwrap().endpoint;
        drop(t);
        let path = dir.path().join("endpoints.json");
        let mut p: Persisted = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        p.allocator = Allocator::new(cidr);
        p.allocator.claim("10.244.0.77".parse().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_vec(&p).unwrap()).unwrap();
        let t = EndpointTable::open(dir.path(), cidr).unwrap();
        t.check_consistency().unwrap();
        assert_eq!(t.allocated(), BTreeSet::from([a.ips[0].ip()]));
    }

    #[test]
    fn the_state_directory_and_files_are_owner_only_under_umask_000() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("var/lib/veil");
        crate::fsutil::tests::with_umask(0, || {
            let t = EndpointTable::open(&state, "10.244.0.0/24".parse().unwrap()).unwrap();
            t.add(ep("a"), None).unwrap();
            t.add(ep("b"), None).unwrap();
        });
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("endpoints.json")), 0o600);
        assert_eq!(mode(&state.join("endpoints.json.prev")), 0o600);
    }
}
