//! The dataplane: the only code in veild that writes kernel state.
//!
//! Each kernel concern sits behind a capability trait with a Linux
//! implementation and a fake for unit tests, and is kept by a manager in the
//! felix style: `on_update(desired)` is cheap and never touches the kernel,
//! `apply()` diffs desired against actual and writes the minimal change, and a
//! periodic `resync()` reads the kernel back and repairs drift. A failed apply
//! leaves the kernel as it was and is retried.
//!
//! - [`nftables`]: [`nftables::PacketFilter`], the whole `inet veil` table
//!   (fail-closed base, flow logging, policy), [`nftables::TableManager`];
//! - [`routes`]: [`routes::Routes`], the routes through `veil-wg`,
//!   [`routes::RouteManager`];
//! - [`links`]: [`links::Links`], link lookup and the device's MTU, state and
//!   address;
//! - [`tunnel`]: [`tunnel::Tunnel`], the persistent multi-queue TUN device.
//!
//! It does not decide anything: desired state comes from the controller and
//! the parts (WireGuard peers, flow collector). It does not enter network
//! namespaces: it acts in veild's own.

pub mod links;
pub mod nftables;
pub mod routes;
pub mod tunnel;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use self::nftables::{DesiredTable, FilterError, Nft, PacketFilter, TableManager};

/// The node's packet filter, shared by the parts that contribute to it.
#[derive(Clone)]
pub struct Filter {
    manager: Arc<Mutex<TableManager<Box<dyn PacketFilter>>>>,
    wake: Arc<tokio::sync::Notify>,
    counters: nftables::metrics::CounterValues,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter").finish_non_exhaustive()
    }
}

impl Filter {
    /// Installs `desired` with `nft` now (fail closed: the caller stops when it
    /// cannot) and returns the handle.
    pub fn install(desired: DesiredTable) -> Result<Self, FilterError> {
        Self::install_with(Box::new(Nft), desired)
    }

    /// Same, over any packet filter.
    pub fn install_with(
        filter: Box<dyn PacketFilter>,
        desired: DesiredTable,
    ) -> Result<Self, FilterError> {
        let mut m = TableManager::new(filter, desired);
        m.apply()?;
        let counters = nftables::metrics::CounterValues::default();
        counters.set(m.counters());
        Ok(Filter {
            manager: Arc::new(Mutex::new(m)),
            wake: Arc::new(tokio::sync::Notify::new()),
            counters,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TableManager<Box<dyn PacketFilter>>> {
        self.manager.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the desired table with `f` and applies it. On error the kernel
    /// keeps its table and the resync task retries within a second.
    pub fn update(&self, f: impl FnOnce(&mut DesiredTable)) -> Result<bool, FilterError> {
        let mut m = self.lock();
        let mut d = m.desired().clone();
        f(&mut d);
        m.on_update(d);
        let r = m.apply();
        if r.is_err() {
            self.wake.notify_one();
        }
        r
    }

    /// Reads the table back and repairs drift now.
    pub fn resync(&self) -> Result<bool, FilterError> {
        let mut m = self.lock();
        let r = m.resync();
        self.counters.set(m.counters());
        r
    }

    /// The table's named counters as of the last read back (for `/metrics`:
    /// never waits for the table).
    pub fn counters(&self) -> nftables::metrics::CounterValues {
        self.counters.clone()
    }

    /// Runs the periodic resync until `shutdown`: every `every`, and a second
    /// after a failed apply or resync.
    pub async fn resync_loop(
        self,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut delay = every;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.wake.notified() => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
            }
            let me = self.clone();
            let r = tokio::task::spawn_blocking(move || me.resync()).await;
            delay = match r {
                Ok(Ok(true)) => {
                    tracing::warn!(table = nftables::TABLE, "nftables: drift repaired");
                    every
                }
                Ok(Ok(false)) => every,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, table = nftables::TABLE, "nftables: resync failed, retrying");
                    Duration::from_secs(1).min(every)
                }
                Err(e) => {
                    tracing::error!(error = %e, "nftables: resync task");
                    every
                }
            };
        }
    }
}
