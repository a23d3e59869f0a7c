//! Routes through one link (`veil-wg`): the main-table routes to the cluster
//! CIDR and to each remote pod CIDR, with the node's tunnel address as
//! preferred source.
//!
//! [`RouteManager`] keeps them equal to the desired set: `on_update` records,
//! `apply` writes only the difference from what it believes the kernel holds
//! (dumping the routes when it does not know), `resync` dumps and repairs
//! drift. Link-local and IPv6 host routes the kernel adds itself are left
//! alone. It does not touch routes through other links.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::links::{err, NetlinkError};

/// A route through the managed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// Destination.
    pub dst: IpNetwork,
    /// Preferred source, if any.
    pub src: Option<IpAddr>,
}

/// The kernel's main routing table, for one link.
pub trait Routes: Send + Sync {
    /// The main-table routes through link `index`.
    fn list(&self, index: u32) -> impl Future<Output = Result<Vec<Route>, NetlinkError>> + Send;
    /// Adds or replaces `route` through link `index`.
    fn add(
        &self,
        index: u32,
        route: Route,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Deletes the route to `dst` through link `index`.
    fn delete(
        &self,
        index: u32,
        dst: IpNetwork,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
}

/// Routes through rtnetlink.
#[derive(Debug)]
pub struct RtRoutes {
    handle: Handle,
    /// The messages of the last dump, to delete a route exactly as listed.
    listed: Mutex<BTreeMap<IpNetwork, RouteMessage>>,
}

impl RtRoutes {
    /// Routes through `handle`.
    pub fn new(handle: Handle) -> Self {
        RtRoutes {
            handle,
            listed: Mutex::new(BTreeMap::new()),
        }
    }
}

fn route_msg(dst: IpNetwork, index: u32, src: Option<IpAddr>) -> RouteMessage {
    match dst {
        IpNetwork::V4(n) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(n.network(), n.prefix())
                .output_interface(index);
            if let Some(IpAddr::V4(s)) = src {
                b = b.pref_source(s);
            }
            b.build()
        }
        IpNetwork::V6(n) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(n.network(), n.prefix())
                .output_interface(index);
            if let Some(IpAddr::V6(s)) = src {
                b = b.pref_source(s);
            }
            b.build()
        }
    }
}

fn route_of(m: &RouteMessage) -> Option<Route> {
    let len = m.header.destination_prefix_length;
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => IpNetwork::new((*a).into(), len).ok(),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
            IpNetwork::new((*a).into(), len).ok()
        }
        _ => None,
    })?;
    let src = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::PrefSource(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::PrefSource(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    Some(Route { dst, src })
}

impl Routes for RtRoutes {
    async fn list(&self, index: u32) -> Result<Vec<Route>, NetlinkError> {
        let mut out = Vec::new();
        let mut listed = BTreeMap::new();
        for probe in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut s = self.handle.route().get(probe).execute();
            while let Some(m) = s.try_next().await.map_err(err("dump routes"))? {
                let oif = m
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
                if oif && m.header.table == 254 {
                    if let Some(r) = route_of(&m) {
                        out.push(r);
                        listed.insert(r.dst, m);
                    }
                }
            }
        }
        *self.listed.lock().unwrap_or_else(|e| e.into_inner()) = listed;
        Ok(out)
    }

    async fn add(&self, index: u32, route: Route) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(route_msg(route.dst, index, route.src))
            .replace()
            .execute()
            .await
            .map_err(err(format!("add route {}", route.dst)))
    }

    async fn delete(&self, index: u32, dst: IpNetwork) -> Result<(), NetlinkError> {
        let listed = self
            .listed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&dst)
            .cloned();
        let msg = listed.unwrap_or_else(|| route_msg(dst, index, None));
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(err(format!("delete route {dst}")))
    }
}

/// Routes in memory, for unit tests: a failing switch and a write log.
#[derive(Debug, Default)]
pub struct FakeRoutes {
    /// The routes the "kernel" holds.
    pub table: Mutex<BTreeSet<Route>>,
    /// Writes done: `+dst` or `-dst`.
    pub writes: Mutex<Vec<String>>,
    /// Refuse the next n writes.
    pub fail_next: Mutex<usize>,
}

impl FakeRoutes {
    fn write(&self, what: String) -> Result<(), NetlinkError> {
        let mut f = self.fail_next.lock().unwrap_or_else(|e| e.into_inner());
        if *f > 0 {
            *f -= 1;
            return Err(NetlinkError {
                what,
                source: rtnetlink::Error::RequestFailed,
            });
        }
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
        Ok(())
    }
}

impl Routes for FakeRoutes {
    async fn list(&self, _index: u32) -> Result<Vec<Route>, NetlinkError> {
        Ok(self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect())
    }

    async fn add(&self, _index: u32, route: Route) -> Result<(), NetlinkError> {
        self.write(format!("+{}", route.dst))?;
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|r| r.dst != route.dst);
        t.insert(route);
        Ok(())
    }

    async fn delete(&self, _index: u32, dst: IpNetwork) -> Result<(), NetlinkError> {
        self.write(format!("-{dst}"))?;
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| r.dst != dst);
        Ok(())
    }
}

/// Keeps the routes through one link equal to a desired set.
#[derive(Debug)]
pub struct RouteManager<R> {
    routes: R,
    index: u32,
    src: IpAddr,
    desired: BTreeSet<IpNetwork>,
    /// The routes we believe the kernel holds; `None`: unknown, list them.
    actual: Option<BTreeSet<Route>>,
}

/// What an apply changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouteChanges {
    /// Routes added.
    pub added: usize,
    /// Routes removed.
    pub removed: usize,
}

impl<R: Routes> RouteManager<R> {
    /// A manager for the routes through link `index`, sourced from `src`
    /// (when of the same family). Nothing is written before `apply`.
    pub fn new(routes: R, index: u32, src: IpAddr) -> Self {
        RouteManager {
            routes,
            index,
            src,
            desired: BTreeSet::new(),
            actual: None,
        }
    }

    /// Records the desired destinations. Cheap: never touches the kernel.
    pub fn on_update(&mut self, desired: BTreeSet<IpNetwork>) {
        self.desired = desired;
    }

    /// Forgets what the kernel holds: the next `apply` lists it again.
    pub fn invalidate(&mut self) {
        self.actual = None;
    }

    fn want(&self, dst: IpNetwork) -> Route {
        Route {
            dst,
            src: (dst.is_ipv4() == self.src.is_ipv4()).then_some(self.src),
        }
    }

    /// Writes the difference between the desired routes and the kernel's. On
    /// error the routes already written stay (each is correct on its own),
    /// the rest is retried at the next call, which lists the kernel again.
    pub async fn apply(&mut self) -> Result<RouteChanges, NetlinkError> {
        let actual = match self.actual.take() {
            Some(a) => a,
            None => self.routes.list(self.index).await?.into_iter().collect(),
        };
        let want: BTreeSet<Route> = self.desired.iter().map(|d| self.want(*d)).collect();
        let mut changes = RouteChanges::default();
        let mut held = actual.clone();
        let kernel_own = |r: &Route| match r.dst {
            IpNetwork::V6(d) => d.ip().is_unicast_link_local() || d.prefix() == 128,
            IpNetwork::V4(_) => false,
        };
        for r in actual
            .iter()
            .filter(|r| !want.contains(r) && !kernel_own(r))
        {
            if self.desired.contains(&r.dst) {
                continue; // replaced below with the right source
            }
            self.routes.delete(self.index, r.dst).await?;
            held.remove(r);
            changes.removed += 1;
        }
        for r in want.iter().filter(|r| !actual.contains(r)) {
            self.routes.add(self.index, *r).await?;
            held.retain(|h| h.dst != r.dst);
            held.insert(*r);
            changes.added += 1;
        }
        self.actual = Some(held);
        Ok(changes)
    }

    /// Lists the kernel's routes and repairs drift.
    pub async fn resync(&mut self) -> Result<RouteChanges, NetlinkError> {
        self.invalidate();
        self.apply().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> BTreeSet<IpNetwork> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn manager() -> RouteManager<FakeRoutes> {
        let mut m = RouteManager::new(FakeRoutes::default(), 7, "10.244.1.1".parse().unwrap());
        m.on_update(nets(&["10.244.0.0/16", "10.244.2.0/24"]));
        m
    }

    fn writes(m: &RouteManager<FakeRoutes>) -> Vec<String> {
        m.routes.writes.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn unchanged_routes_write_nothing() {
        let mut m = manager();
        m.apply().await.unwrap();
        let before = writes(&m).len();
        assert_eq!(m.apply().await.unwrap(), RouteChanges::default());
        assert_eq!(m.resync().await.unwrap(), RouteChanges::default());
        assert_eq!(writes(&m).len(), before);
    }

    #[tokio::test]
    async fn route_changes_write_only_the_difference() {
        let mut m = manager();
        m.apply().await.unwrap();
        m.on_update(nets(&["10.244.0.0/16", "10.244.3.0/24"]));
        let c = m.apply().await.unwrap();
        assert_eq!((c.added, c.removed), (1, 1));
        assert_eq!(writes(&m)[2..], ["-10.244.2.0/24", "+10.244.3.0/24"]);
    }

    #[tokio::test]
    async fn resync_repairs_a_deleted_route_and_removes_a_stranger() {
        let mut m = manager();
        m.apply().await.unwrap();
        {
            let mut t = m.routes.table.lock().unwrap();
            t.retain(|r| r.dst != "10.244.2.0/24".parse().unwrap());
            t.insert(Route {
                dst: "192.0.2.0/24".parse().unwrap(),
                src: None,
            });
        }
        // Without a resync the manager trusts its cache.
        assert_eq!(m.apply().await.unwrap(), RouteChanges::default());
        let c = m.resync().await.unwrap();
        assert_eq!((c.added, c.removed), (1, 1));
        let held: BTreeSet<IpNetwork> = m
            .routes
            .table
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.dst)
            .collect();
        assert_eq!(held, nets(&["10.244.0.0/16", "10.244.2.0/24"]));
    }

    #[tokio::test]
    async fn failed_route_apply_is_retried_and_keeps_the_old_routes() {
        let mut m = manager();
        m.apply().await.unwrap();
        m.on_update(nets(&["10.244.0.0/16", "10.244.2.0/24", "10.244.4.0/24"]));
        *m.routes.fail_next.lock().unwrap() = 1;
        assert!(m.apply().await.is_err());
        let held: BTreeSet<IpNetwork> = m
            .routes
            .table
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.dst)
            .collect();
        assert_eq!(held, nets(&["10.244.0.0/16", "10.244.2.0/24"]));
        let c = m.apply().await.unwrap();
        assert_eq!((c.added, c.removed), (1, 0));
        let held: BTreeSet<IpNetwork> = m
            .routes
            .table
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.dst)
            .collect();
        assert_eq!(
            held,
            nets(&["10.244.0.0/16", "10.244.2.0/24", "10.244.4.0/24"])
        );
    }
}
