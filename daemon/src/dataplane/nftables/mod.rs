//! The node's nftables table `inet veil`, whole: the fail-closed base, the
//! flow collector's rules and (next) policy. Nothing else in veild runs `nft`.
//!
//! The base makes the node fail closed: a packet whose source or destination
//! is in the cluster pod CIDR never crosses the underlay interface in the clear
//! (only `veil-wg` may carry it), whether `veild` runs or not, because the
//! table lives in the kernel. It also masquerades pod traffic to destinations
//! outside the cluster.
//!
//! - [`desired`]: the desired state as plain data ([`DesiredTable`],
//!   [`PolicyObjects`] for the policy renderer).
//! - [`actual`]: what the kernel holds, read back from our table only.
//! - [`plan`]: the diff against what the kernel holds, one `nft -j -f -`
//!   batch (one kernel transaction); [`delta`]: the diff against the last
//!   desired table applied, whose cost follows the change, not the table.
//! - [`TableManager`]: `on_update` (cheap, no kernel), `apply` (diff and write
//!   the minimal change), `resync` (read back, repair drift).
//!
//! It does not enter namespaces: `nft` runs as a child of veild, in veild's
//! network namespace. Other owners' tables are never read nor written.

pub mod actual;
pub mod delta;
pub mod desired;
pub mod host;
pub mod metrics;
pub mod netlink;
pub mod plan;
pub mod policy;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nftables::schema::Nftables;

pub use actual::ActualTable;
pub use desired::{
    BaseFilter, DesiredTable, FlowLogging, NamedSet, NamedVerdictMap, PolicyChain, PolicyHook,
    PolicyObjects, PolicyRule, FAIL_CLOSED_COUNTER, LOG_SUPPRESSED_COUNTER, TABLE,
};

/// Errors of the packet filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// `nft` could not be run.
    #[error("cannot run nft: {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the batch (nothing was changed: it is one transaction).
    #[error("nft refused the batch: {0}")]
    Refused(String),
    /// The batch could not be serialised.
    #[error("serialising the nft batch: {0}")]
    Json(#[source] serde_json::Error),
    /// The desired table is invalid (nothing was written).
    #[error("inet veil: {0}")]
    Invalid(#[from] plan::PlanError),
}

/// The kernel's packet filter, as the table manager uses it.
pub trait PacketFilter: Send + Sync {
    /// Applies `batch` as one transaction.
    fn apply(&self, batch: &Nftables<'_>) -> Result<(), FilterError>;
    /// Reads back table `inet <table>`; `Ok(None)` when it does not exist or
    /// cannot be read (the manager then replaces it whole).
    fn read(&self, table: &str) -> Result<Option<ActualTable>, FilterError>;
}

impl<P: PacketFilter + ?Sized> PacketFilter for Box<P> {
    fn apply(&self, batch: &Nftables<'_>) -> Result<(), FilterError> {
        (**self).apply(batch)
    }
    fn read(&self, table: &str) -> Result<Option<ActualTable>, FilterError> {
        (**self).read(table)
    }
}

/// The `nft` binary, run as a child process in veild's network namespace.
#[derive(Debug, Default, Clone)]
pub struct Nft;

fn run_nft(args: &[&str], stdin: Option<&[u8]>) -> Result<(bool, Vec<u8>, String), FilterError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FilterError::Spawn)?;
    if let Some(mut i) = child.stdin.take() {
        if let Some(s) = stdin {
            i.write_all(s).map_err(FilterError::Spawn)?;
        }
    }
    let out = child.wait_with_output().map_err(FilterError::Spawn)?;
    Ok((
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

impl PacketFilter for Nft {
    fn apply(&self, batch: &Nftables<'_>) -> Result<(), FilterError> {
        let json = plan::to_json(batch)
            .and_then(|v| serde_json::to_vec(&v))
            .map_err(FilterError::Json)?;
        let (ok, _, err) = run_nft(&["-j", "-f", "-"], Some(&json))?;
        if ok {
            Ok(())
        } else {
            Err(FilterError::Refused(err))
        }
    }

    fn read(&self, table: &str) -> Result<Option<ActualTable>, FilterError> {
        let (ok, out, err) = run_nft(&["-j", "list", "table", "inet", table], None)?;
        if !ok {
            tracing::debug!(error = %err, table, "nftables: table not readable");
            return Ok(None);
        }
        match ActualTable::parse(&String::from_utf8_lossy(&out), table) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                tracing::warn!(error = %e, "nftables: table unreadable, replacing it whole");
                Ok(None)
            }
        }
    }
}

/// An in-memory packet filter for unit tests: it interprets the batches the
/// manager writes (tables, counters, chains, rules, sets, maps, elements) on an
/// [`ActualTable`], all or nothing like the kernel, records them, and can be
/// told to refuse the next ones.
#[derive(Debug, Default, Clone)]
pub struct FakeFilter {
    inner: Arc<Mutex<FakeState>>,
}

#[derive(Debug, Default)]
struct FakeState {
    table: Option<ActualTable>,
    batches: Vec<serde_json::Value>,
    fail_next: usize,
    reads: usize,
}

impl FakeFilter {
    /// The batches applied successfully, as JSON.
    pub fn batches(&self) -> Vec<serde_json::Value> {
        self.lock().batches.clone()
    }
    /// Refuses the next `n` batches.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }
    /// What the kernel holds.
    pub fn table(&self) -> Option<ActualTable> {
        self.lock().table.clone()
    }
    /// How many times the table was read back.
    pub fn reads(&self) -> usize {
        self.lock().reads
    }
    /// Changes the kernel's table behind the manager's back (drift).
    pub fn tamper(&self, f: impl FnOnce(&mut Option<ActualTable>)) {
        f(&mut self.lock().table)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn fake_exec(
    t: &mut Option<ActualTable>,
    cmd: &str,
    kind: &str,
    o: &serde_json::Value,
) -> Result<(), String> {
    use serde_json::Value;
    let name = o
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if kind == "table" {
        match cmd {
            "add" => {
                t.get_or_insert_with(ActualTable::default);
            }
            "delete" => *t = None,
            _ => return Err(format!("{cmd} table")),
        }
        return Ok(());
    }
    let tab = t
        .as_mut()
        .ok_or_else(|| format!("{cmd} {kind}: no table"))?;
    let elems = || -> Vec<String> {
        o.get("elem")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(actual::normalise_value).collect())
            .unwrap_or_default()
    };
    match (cmd, kind) {
        ("add", "counter") => {
            tab.counters.insert(name);
        }
        ("add", "chain") => {
            tab.chains.entry(name).or_default();
        }
        ("flush", "chain") => tab.chains.get_mut(&name).ok_or("flush: no chain")?.clear(),
        ("delete", "chain") => {
            let c = tab.chains.remove(&name).ok_or("delete: no chain")?;
            if !c.is_empty() {
                return Err(format!("delete chain {name}: not empty"));
            }
        }
        ("add", "rule") => {
            let chain = o.get("chain").and_then(Value::as_str).unwrap_or_default();
            let comment = o.get("comment").and_then(Value::as_str).map(str::to_string);
            tab.chains
                .get_mut(chain)
                .ok_or("add rule: no chain")?
                .push(comment);
        }
        ("add", "set") | ("add", "map") => {
            let m = if kind == "set" {
                &mut tab.sets
            } else {
                &mut tab.maps
            };
            let decl = actual::decl_of(kind, o);
            m.entry(name).or_insert(actual::ActualSet {
                decl,
                elements: Default::default(),
            });
        }
        ("delete", "set") => {
            tab.sets.remove(&name).ok_or("delete: no set")?;
        }
        ("delete", "map") => {
            tab.maps.remove(&name).ok_or("delete: no map")?;
        }
        ("add", "element") => {
            let s = tab
                .sets
                .get_mut(&name)
                .or(tab.maps.get_mut(&name))
                .ok_or("add element: no set")?;
            s.elements.extend(elems());
        }
        ("delete", "element") => {
            if let Some(s) = tab.sets.get_mut(&name) {
                for e in elems() {
                    if !s.elements.remove(&e) {
                        return Err(format!("delete element {e}: not in set {name}"));
                    }
                }
            } else {
                let m = tab.maps.get_mut(&name).ok_or("delete element: no set")?;
                for k in elems() {
                    let before = m.elements.len();
                    m.elements.retain(|e| !e.starts_with(&format!("[{k},")));
                    if m.elements.len() == before {
                        return Err(format!("delete element {k}: not in map {name}"));
                    }
                }
            }
        }
        _ => return Err(format!("fake: unsupported {cmd} {kind}")),
    }
    Ok(())
}

impl PacketFilter for FakeFilter {
    fn apply(&self, batch: &Nftables<'_>) -> Result<(), FilterError> {
        let mut s = self.lock();
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Err(FilterError::Refused("fake: refused".into()));
        }
        let v = plan::to_json(batch).map_err(FilterError::Json)?;
        let mut t = s.table.clone();
        for c in v["nftables"].as_array().into_iter().flatten() {
            let (cmd, inner) = c
                .as_object()
                .and_then(|m| m.iter().next())
                .ok_or_else(|| FilterError::Refused("fake: not a command".into()))?;
            let (kind, o) = inner
                .as_object()
                .and_then(|m| m.iter().next())
                .ok_or_else(|| FilterError::Refused("fake: no object".into()))?;
            fake_exec(&mut t, cmd, kind, o).map_err(FilterError::Refused)?;
        }
        s.table = t;
        s.batches.push(v);
        Ok(())
    }

    fn read(&self, _table: &str) -> Result<Option<ActualTable>, FilterError> {
        let mut s = self.lock();
        s.reads += 1;
        Ok(s.table.clone())
    }
}

/// Keeps `inet veil` equal to the desired table (felix style).
pub struct TableManager<F> {
    filter: F,
    desired: DesiredTable,
    /// The desired table the kernel holds since our last successful write;
    /// `None`: unknown (start, failed write, resync), read it back.
    applied: Option<DesiredTable>,
    /// The named counters' packets as last read back.
    counters: std::collections::BTreeMap<String, u64>,
}

impl<F: PacketFilter> TableManager<F> {
    /// A manager for `desired`; nothing is written before [`Self::apply`].
    pub fn new(filter: F, desired: DesiredTable) -> Self {
        TableManager {
            filter,
            desired,
            applied: None,
            counters: Default::default(),
        }
    }

    /// The desired table.
    pub fn desired(&self) -> &DesiredTable {
        &self.desired
    }

    /// The packets each named counter had when the table was last read back
    /// (at start, after a failed write, at each resync).
    pub fn counters(&self) -> &std::collections::BTreeMap<String, u64> {
        &self.counters
    }

    /// Records the new desired state. Cheap: never touches the kernel.
    pub fn on_update(&mut self, desired: DesiredTable) {
        self.desired = desired;
    }

    /// Writes the minimal change from what the kernel holds to the desired
    /// table, in one transaction. Returns whether anything was written. On
    /// error the kernel keeps its previous table (the transaction is atomic)
    /// and the next call retries, reading the table back first.
    ///
    /// After a successful write the kernel is trusted to hold what was
    /// written: the next change is diffed desired against desired
    /// ([`delta::delta`]), without reading the table back.
    pub fn apply(&mut self) -> Result<bool, FilterError> {
        plan::validate(&self.desired)?;
        let batch = match self.applied.take() {
            Some(prev) => match delta::delta(&prev, &self.desired) {
                delta::Delta::Same => {
                    self.applied = Some(prev);
                    return Ok(false);
                }
                delta::Delta::Batch(b) => b,
                delta::Delta::Replace => plan::full(&self.desired),
            },
            None => {
                let read = self.filter.read(TABLE)?;
                if let Some(actual) = &read {
                    self.counters = actual.counter_values.clone();
                }
                match read {
                    None => plan::full(&self.desired),
                    Some(actual) => match plan::incremental(&self.desired, &actual) {
                        Some(b) => b,
                        None => {
                            self.applied = Some(self.desired.clone());
                            return Ok(false);
                        }
                    },
                }
            }
        };
        match self.filter.apply(&batch) {
            Ok(()) => {
                self.applied = Some(self.desired.clone());
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Forgets what we believe the kernel holds, reads it back and repairs any
    /// drift. Returns whether anything was written.
    pub fn resync(&mut self) -> Result<bool, FilterError> {
        self.applied = None;
        self.apply()
    }
}

#[cfg(test)]
mod tests;
