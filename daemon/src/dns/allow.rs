//! The allowance cache: which (rule set, pod, address) the proxy opened, for
//! which name and until when; the writer that puts them into the kernel's
//! `domains` sets; and the cache's file in the state directory, so that a
//! restarted veild knows (and re-installs) every allowance still running.
//!
//! An element's kernel timeout is `max(TTL, 30 s) + GRACE`; an allowance is
//! only ever extended, never shortened (the kernel replaces the timeout of an
//! element added again); it is written again only when what is left of it
//! is less than the new answer's `max(TTL, 30 s)`. Expired entries are swept from memory; the kernel
//! drops its elements on its own. It does not decide which rules match (see
//! `DomainRule`), does not talk to the network, and writes the kernel only
//! through [`super::writer`].

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The shortest allowance, whatever the TTL (POLICY-API.md).
pub const MIN_TTL: u32 = 30;
/// Added to every kernel timeout: the pod connects after it got the answer.
pub const GRACE: u32 = 5;
/// File name of the cache in the state directory.
pub const FILE: &str = "dns-allowances.json";

/// The kernel timeout for a record's TTL.
pub fn timeout_for(ttl: u32) -> u32 {
    ttl.max(MIN_TTL).saturating_add(GRACE)
}

pub use super::writer::{script, Element, NetlinkSets, NftSets, SetWriter, WriteError};

/// One allowance as kept and persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// The set (rule).
    pub set: String,
    /// The pod.
    pub pod: Ipv4Addr,
    /// The destination.
    pub addr: Ipv4Addr,
    /// The name that allowed it.
    pub name: String,
    /// Unix time (seconds) when the kernel drops it.
    pub expires: u64,
}

/// Pod and destination: the allowances of one pair (one per rule set) are
/// kept together, so that a lookup allocates nothing and the names of a pair
/// ([`Allowances::names_for`]) are one hash lookup.
type Key = (Ipv4Addr, Ipv4Addr);

/// The cache.
#[derive(Debug, Default)]
pub struct Allowances {
    map: Mutex<HashMap<Key, Vec<Allowance>>>,
    dirty: std::sync::atomic::AtomicBool,
}

impl Allowances {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Allowance>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The elements to write so that `pod` may reach `addrs` (address, TTL)
    /// through `sets` for `name`, at unix time `now`: those not already
    /// allowed for at least as long.
    pub fn needed(
        &self,
        sets: &[&str],
        pod: Ipv4Addr,
        name: &str,
        addrs: &[(Ipv4Addr, u32)],
        now: u64,
    ) -> Vec<(Element, Allowance)> {
        let map = self.lock();
        let mut out = Vec::new();
        for &(addr, ttl) in addrs {
            let held = map.get(&(pod, addr));
            for &set in sets {
                let timeout = timeout_for(ttl);
                let expires = now + u64::from(timeout);
                // What the answer promises (the grace is slack, so that a
                // name asked every second is written every few seconds).
                let floor = now + u64::from(ttl.max(MIN_TTL));
                if held.is_some_and(|v| v.iter().any(|a| a.set == set && a.expires >= floor)) {
                    continue;
                }
                out.push((
                    Element {
                        set: set.to_string(),
                        pod,
                        addr,
                        timeout,
                    },
                    Allowance {
                        set: set.to_string(),
                        pod,
                        addr,
                        name: name.to_string(),
                        expires,
                    },
                ));
            }
        }
        out
    }

    /// Records allowances the kernel now holds.
    pub fn record(&self, granted: impl IntoIterator<Item = Allowance>) {
        let mut map = self.lock();
        for a in granted {
            let v = map.entry((a.pod, a.addr)).or_default();
            match v.iter_mut().find(|b| b.set == a.set) {
                Some(b) => *b = a,
                None => v.push(a),
            }
        }
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets what expired at `now` and what belongs to sets not in
    /// `live` (their rule is gone); returns how many expired.
    pub fn sweep(&self, now: u64, live: &dyn Fn(&str) -> bool) -> usize {
        let mut map = self.lock();
        let mut gone = 0;
        map.retain(|_, v| {
            let before = v.len();
            v.retain(|a| a.expires > now && live(&a.set));
            gone += before - v.len();
            !v.is_empty()
        });
        if gone > 0 {
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        gone
    }

    /// Every allowance, sorted.
    pub fn list(&self) -> Vec<Allowance> {
        let mut v: Vec<Allowance> = self.lock().values().flatten().cloned().collect();
        v.sort_by(|a, b| (&a.set, a.pod, a.addr).cmp(&(&b.set, b.pod, b.addr)));
        v
    }

    /// The names through which `pod` may reach `addr` at unix time `now`
    /// (sorted, once each): what the L7 proxy evaluates `domains` peers with,
    /// and what the flow collector names the destination by.
    pub fn names_for(&self, pod: Ipv4Addr, addr: Ipv4Addr, now: u64) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .get(&(pod, addr))
            .into_iter()
            .flatten()
            .filter(|a| a.expires >= now)
            .map(|a| a.name.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The number of elements per set.
    pub fn sizes(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for a in self.lock().values().flatten() {
            *out.entry(a.set.clone()).or_insert(0) += 1;
        }
        out
    }

    /// Writes the cache to `path` if it changed since the last save.
    pub fn save_if_dirty(&self, path: &Path) -> std::io::Result<bool> {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(&self.list()).map_err(std::io::Error::other)?;
        if let Err(e) = crate::fsutil::write_atomic(path, &bytes, Some(0o600)) {
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(e);
        }
        Ok(true)
    }

    /// Loads a saved cache: the entries still running at `now`. A missing or
    /// unreadable file gives nothing (logged by the caller).
    pub fn load(path: &Path, now: u64) -> std::io::Result<Vec<Allowance>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let v: Vec<Allowance> = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
        Ok(v.into_iter().filter(|a| a.expires > now).collect())
    }
}

/// The cache file in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn timeout_is_never_under_thirty_seconds_plus_grace() {
        assert_eq!(timeout_for(1), 35);
        assert_eq!(timeout_for(300), 305);
    }

    #[test]
    fn names_for_a_pod_and_address_are_the_running_ones_once_each() {
        let c = Allowances::default();
        let a = |set: &str, pod: &str, addr: &str, name: &str, expires| Allowance {
            set: set.into(),
            pod: ip(pod),
            addr: ip(addr),
            name: name.into(),
            expires,
        };
        c.record([
            a("d1", "10.244.0.5", "203.0.113.1", "b.example", 2000),
            a("d2", "10.244.0.5", "203.0.113.1", "b.example", 2000),
            a("d3", "10.244.0.5", "203.0.113.1", "a.example", 2000),
            a("d4", "10.244.0.5", "203.0.113.1", "old.example", 900),
            a("d1", "10.244.0.6", "203.0.113.1", "other-pod.example", 2000),
            a(
                "d1",
                "10.244.0.5",
                "203.0.113.2",
                "other-addr.example",
                2000,
            ),
        ]);
        assert_eq!(
            c.names_for(ip("10.244.0.5"), ip("203.0.113.1"), 1000),
            ["a.example", "b.example"]
        );
        assert!(c
            .names_for(ip("10.244.0.7"), ip("203.0.113.1"), 1000)
            .is_empty());
    }

    #[test]
    fn allowance_is_extended_never_shortened() {
        let c = Allowances::default();
        let sets = ["d1"];
        let n = c.needed(
            &sets,
            ip("10.244.0.5"),
            "a",
            &[(ip("203.0.113.1"), 300)],
            1000,
        );
        assert_eq!(n.len(), 1);
        c.record(n.into_iter().map(|(_, a)| a));
        // A shorter TTL later needs no write.
        assert!(c
            .needed(
                &sets,
                ip("10.244.0.5"),
                "a",
                &[(ip("203.0.113.1"), 30)],
                1010
            )
            .is_empty());
        // Nor the same TTL a few seconds later (the grace is slack)...
        assert!(c
            .needed(
                &sets,
                ip("10.244.0.5"),
                "a",
                &[(ip("203.0.113.1"), 300)],
                1004
            )
            .is_empty());
        // ...but a longer one does.
        assert_eq!(
            c.needed(
                &sets,
                ip("10.244.0.5"),
                "a",
                &[(ip("203.0.113.1"), 600)],
                1010
            )
            .len(),
            1
        );
    }

    #[test]
    fn sweep_drops_expired_and_ruleless_entries_and_cache_round_trips() {
        let c = Allowances::default();
        let sets = ["d1", "d2"];
        let n = c.needed(
            &sets,
            ip("10.244.0.5"),
            "a",
            &[(ip("203.0.113.1"), 60)],
            1000,
        );
        c.record(n.into_iter().map(|(_, a)| a));
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert!(c.save_if_dirty(&p).unwrap());
        assert!(!c.save_if_dirty(&p).unwrap());
        assert_eq!(Allowances::load(&p, 1000).unwrap().len(), 2);
        assert!(Allowances::load(&p, 2000).unwrap().is_empty());
        assert_eq!(c.sweep(1001, &|s| s == "d1"), 1);
        assert_eq!(c.sweep(1070, &|_| true), 1);
        assert!(c.list().is_empty());
    }
}
