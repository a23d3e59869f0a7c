//! The kernel side of `veil-wg` through rtnetlink: MTU, up, the node's tunnel
//! address, and routes to remote pod CIDRs with the tunnel address as source.
//! `sync_routes` diffs the routes on the device against the desired set and
//! writes only the difference.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// A netlink operation failed.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {what}: {source}")]
pub struct NetlinkError {
    /// What was being done.
    pub what: String,
    /// The cause.
    #[source]
    pub source: rtnetlink::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError { what, source }
}

/// Opens a netlink connection (its task runs on the current tokio runtime).
pub fn connect() -> std::io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Index and MTU of link `name`, if it exists.
pub async fn link(handle: &Handle, name: &str) -> Result<Option<(u32, u32)>, NetlinkError> {
    let mut s = handle.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => {
            let mtu = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                })
                .unwrap_or(1500);
            Ok(Some((m.header.index, mtu)))
        }
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(err(format!("get link {name}"))(e)),
    }
}

/// Sets the MTU, brings the link up and adds `addr` as a host address.
pub async fn setup_device(
    handle: &Handle,
    index: u32,
    mtu: u32,
    addr: IpAddr,
) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(err(format!("set mtu {mtu} and up on link {index}")))?;
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    handle
        .address()
        .add(index, addr, prefix)
        .replace()
        .execute()
        .await
        .map_err(err(format!("add address {addr}/{prefix}")))?;
    Ok(())
}

fn route_msg(dst: IpNetwork, index: u32, src: Option<IpAddr>) -> RouteMessage {
    match (dst, src) {
        (IpNetwork::V4(n), s) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(n.network(), n.prefix())
                .output_interface(index);
            if let Some(IpAddr::V4(s)) = s {
                b = b.pref_source(s);
            }
            b.build()
        }
        (IpNetwork::V6(n), s) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(n.network(), n.prefix())
                .output_interface(index);
            if let Some(IpAddr::V6(s)) = s {
                b = b.pref_source(s);
            }
            b.build()
        }
    }
}

fn route_dst(m: &RouteMessage) -> Option<IpNetwork> {
    let len = m.header.destination_prefix_length;
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => IpNetwork::new((*a).into(), len).ok(),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
            IpNetwork::new((*a).into(), len).ok()
        }
        _ => None,
    })
}

/// Makes the main-table routes through link `index` exactly `desired`, each
/// with `src` as preferred source. Returns (added, removed) counts.
pub async fn sync_routes(
    handle: &Handle,
    index: u32,
    desired: &BTreeSet<IpNetwork>,
    src: IpAddr,
) -> Result<(usize, usize), NetlinkError> {
    let mut have = Vec::new();
    for probe in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut s = handle.route().get(probe).execute();
        while let Some(m) = s.try_next().await.map_err(err("dump routes"))? {
            let oif = m
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
            if oif && m.header.table == 254 {
                have.push(m);
            }
        }
    }
    let mut removed = 0;
    let mut present = BTreeSet::new();
    for m in have {
        match route_dst(&m) {
            Some(d) if desired.contains(&d) => {
                let src_ok = m.attributes.iter().any(|a| match a {
                    RouteAttribute::PrefSource(RouteAddress::Inet(a)) => IpAddr::V4(*a) == src,
                    RouteAttribute::PrefSource(RouteAddress::Inet6(a)) => IpAddr::V6(*a) == src,
                    _ => false,
                });
                if src_ok || d.is_ipv4() != src.is_ipv4() {
                    present.insert(d);
                }
            }
            Some(IpNetwork::V6(d)) if d.ip().is_unicast_link_local() => {}
            Some(d) if d.is_ipv6() && d.prefix() == 128 => {}
            _ => {
                handle
                    .route()
                    .del(m.clone())
                    .execute()
                    .await
                    .map_err(err("delete stale route"))?;
                removed += 1;
            }
        }
    }
    let mut added = 0;
    for d in desired.difference(&present) {
        let s = (d.is_ipv4() == src.is_ipv4()).then_some(src);
        handle
            .route()
            .add(route_msg(*d, index, s))
            .replace()
            .execute()
            .await
            .map_err(err(format!("add route {d}")))?;
        added += 1;
    }
    Ok((added, removed))
}
