//! `lab down`: removes everything a lab made, from `lab.json` when it is there
//! and from the namespaces' common prefix when it is not (a crash of `lab up`,
//! a deleted state directory). Idempotent: removing a lab that is gone succeeds.
//!
//! Processes are stopped only when they still run inside one of the lab's
//! namespaces (checked through `/proc/<pid>/ns/net`), so a recorded PID that was
//! reused by an unrelated process is never signalled. Any other process found
//! inside the lab's namespaces was started there by the lab or by `lab exec`,
//! and is stopped too, so that no process outlives the lab.

use std::collections::BTreeSet;
use std::time::Duration;

use super::state::{LabLock, LabState};
use super::{lab_dir, netns, process, validate_name, LabError};

/// How long a process gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Processes signalled.
    pub processes: usize,
    /// Namespaces deleted.
    pub namespaces: usize,
    /// Whether a state directory was removed.
    pub state_dir: bool,
}

/// Removes lab `name` (waiting for another `veilctl` working on it).
pub fn down(name: &str) -> Result<DownReport, LabError> {
    validate_name(name)?;
    let _lock = if lab_dir(name).is_dir() {
        LabLock::acquire(name).ok()
    } else {
        None
    };
    remove(name)
}

/// Removes lab `name` without taking its lock (the caller holds it).
pub(crate) fn remove(name: &str) -> Result<DownReport, LabError> {
    validate_name(name)?;
    let prefix = super::prefix(name);
    let state = LabState::load(name).ok();
    let mut report = DownReport::default();

    // Every namespace of the lab: by prefix, plus any the state names.
    let mut namespaces: BTreeSet<String> = netns::list_with_prefix(&prefix);
    if let Some(s) = &state {
        let recorded = std::iter::once(s.underlay_netns.clone())
            .chain(s.nodes.iter().map(|n| n.netns.clone()))
            .chain(s.pods.iter().map(|p| p.netns.clone()))
            .chain(s.external.iter().map(|x| x.netns.clone()));
        namespaces.extend(recorded.filter(|ns| ns.starts_with(&prefix) && netns::exists(ns)));
    }

    // Recorded processes first (servers, then daemons), each only if it still
    // runs in its own namespace.
    if let Some(s) = &state {
        let servers = s
            .pods
            .iter()
            .flat_map(|p| p.server_pids.iter().map(move |&pid| (pid, p.netns.clone())))
            .chain(
                s.external
                    .iter()
                    .flat_map(|x| x.server_pids.iter().map(move |&pid| (pid, x.netns.clone()))),
            );
        let daemons = s
            .nodes
            .iter()
            .filter_map(|n| n.pid.map(|pid| (pid, n.netns.clone())));
        for (pid, ns) in servers.chain(daemons) {
            if process::stop(pid, &ns, GRACE) {
                report.processes += 1;
            }
        }
    }
    // Then whatever else runs inside the lab's namespaces, or is on its way in
    // (started by a `lab up` that was killed before it recorded the PID).
    for _ in 0..3 {
        let mut left = process::in_namespaces(&namespaces);
        left.extend(process::launchers_into(&prefix));
        if left.is_empty() {
            break;
        }
        for (pid, ns) in left {
            if process::stop(pid, &ns, GRACE) {
                report.processes += 1;
            }
        }
    }

    for ns in &namespaces {
        netns::delete(ns)?;
        report.namespaces += 1;
    }
    for ns in netns::etc_with_prefix(&prefix) {
        netns::remove_etc(&ns)
            .map_err(|e| LabError::io(format!("{}/{ns}", netns::ETC_NETNS_DIR), e))?;
    }
    let dir = lab_dir(name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => report.state_dir = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(LabError::io(&dir, e)),
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_lab_that_never_existed_succeeds_and_removes_nothing() {
        let r = remove("nosuchlab0").unwrap();
        assert_eq!(r, DownReport::default());
    }

    #[test]
    fn invalid_names_are_refused_before_anything_is_touched() {
        assert!(matches!(down("../etc"), Err(LabError::InvalidName(_))));
        assert!(matches!(down(""), Err(LabError::InvalidName(_))));
    }
}
