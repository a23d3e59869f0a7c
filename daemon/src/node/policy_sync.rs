//! The glue from the controller's [`Desired`] state to the nftables table:
//! render the node's part of the compiled program and hand it to the table
//! manager; publish what the kernel then holds ([`AppliedPolicy`]) for
//! `node.status`, `cni.commit` and the flow collector (the NFLOG prefixes).
//!
//! A failed apply leaves the kernel's last good table in force (the manager's
//! transaction is atomic) and is retried every second until it succeeds or a
//! newer desired state replaces it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::controller::Desired;
use crate::dataplane::nftables::policy::{
    render_cached, LocalEndpoint, LogPrefixes, RenderCache, RenderedPolicy,
};
use crate::dataplane::Filter;

/// What the kernel holds of the policy program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedPolicy {
    /// The controller generation that was last applied.
    pub generation: u64,
    /// Host interfaces of the endpoints the dispatch maps hold.
    pub endpoints: BTreeSet<String>,
    /// The last apply's error, if it failed (the previous table stays).
    pub error: Option<String>,
}

/// The node's part of `d`, rendered.
pub fn render_desired(d: &Desired) -> RenderedPolicy {
    render_desired_cached(&mut RenderCache::new(), d)
}

/// The node's part of `d`, rendered through `cache`: only what changed since
/// the previous render through it is rendered again.
pub fn render_desired_cached(cache: &mut RenderCache, d: &Desired) -> RenderedPolicy {
    let eps: Vec<LocalEndpoint> = d
        .endpoints
        .iter()
        .filter(|e| e.ready)
        .filter_map(|e| {
            Some(LocalEndpoint {
                ifname: e.host_ifname.clone(),
                ip: e.ips.first()?.ip(),
                pod: e.pod.clone(),
            })
        })
        .collect();
    render_cached(cache, &d.program, &eps, &d.tunnels)
}

/// Host interfaces the dispatch maps of `r` hold.
pub fn dispatched(r: &RenderedPolicy) -> BTreeSet<String> {
    r.maps.values().flat_map(|m| m.keys().cloned()).collect()
}

/// Applies `d` now; returns the rendered policy and the apply's outcome.
pub fn apply(filter: &Filter, d: &Desired) -> (RenderedPolicy, Result<(), String>) {
    apply_cached(filter, &mut RenderCache::new(), d)
}

/// Applies `d` now, rendering through `cache`.
pub fn apply_cached(
    filter: &Filter,
    cache: &mut RenderCache,
    d: &Desired,
) -> (RenderedPolicy, Result<(), String>) {
    let r = render_desired_cached(cache, d);
    let objects = r.objects();
    let res = filter
        .update(|t| t.policy = objects)
        .map(|_| ())
        .map_err(|e| e.to_string());
    (r, res)
}

/// Follows `desired` until shutdown. The state `desired` holds when called
/// is the one veild installed at start: only changes after it are applied.
pub async fn run(
    filter: Filter,
    mut desired: watch::Receiver<Arc<Desired>>,
    applied: watch::Sender<Arc<AppliedPolicy>>,
    prefixes: watch::Sender<Arc<LogPrefixes>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failed = false;
    let cache = Arc::new(Mutex::new(RenderCache::new()));
    loop {
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)), if failed => {}
            _ = shutdown.changed() => return,
        }
        let d = desired.borrow_and_update().clone();
        let f = filter.clone();
        let d2 = d.clone();
        let c = cache.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
            apply_cached(&f, &mut c, &d2)
        })
        .await;
        failed = true;
        match out {
            Ok((r, Ok(()))) => {
                failed = false;
                prefixes.send_replace(Arc::new(r.prefixes.clone()));
                applied.send_replace(Arc::new(AppliedPolicy {
                    generation: d.generation,
                    endpoints: dispatched(&r),
                    error: None,
                }));
                tracing::debug!(generation = d.generation, "policy applied");
            }
            Ok((_, Err(e))) => {
                tracing::warn!(generation = d.generation, error = %e, "policy not applied: the previous table stays");
                applied.send_modify(|a| {
                    let mut n = (**a).clone();
                    n.error = Some(e.clone());
                    *a = Arc::new(n);
                });
            }
            Err(e) => tracing::error!(error = %e, "policy apply task failed"),
        }
    }
}

/// Waits (blocking, at most `timeout`) until the kernel dispatches `ifname`.
pub fn wait_dispatched(
    applied: &watch::Receiver<Arc<AppliedPolicy>>,
    ifname: &str,
    timeout: Duration,
) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if applied.borrow().endpoints.contains(ifname) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
