//! The proxy's kernel side in the node's namespace: the transparent
//! listener (`IP_TRANSPARENT` on 127.0.0.1, the `tproxy` target), the
//! upstream sockets (bound to the client pod's address with
//! `IP_TRANSPARENT`, marked [`MARK_UPSTREAM`] and DSCP [`DSCP_PROXIED`]),
//! and the routing rule and table that deliver steered packets locally
//! (`fwmark FWMARK_LOCAL/FWMARK_LOCAL lookup ROUTE_TABLE`,
//! `local 0.0.0.0/0 dev lo table ROUTE_TABLE`).
//!
//! It never enters another namespace and touches no routing table but its
//! own.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use futures::TryStreamExt;
use netlink_packet_route::route::{RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::RouteMessageBuilder;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::dataplane::nftables::policy::tproxy::{
    DSCP_PROXIED, FWMARK_LOCAL, MARK_UPSTREAM, PROXY_PORT, ROUTE_TABLE,
};

/// Why the proxy's kernel side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A socket operation failed.
    #[error("L7 proxy {what}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// Error.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("L7 proxy routing ({what}): {reason}")]
    Netlink {
        /// What was being added.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

fn sock(what: &'static str) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Socket { what, source }
}

/// The listener address: what `tproxy` sends to.
pub fn listen_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, PROXY_PORT))
}

/// Opens the transparent listener on `addr`, on the current runtime.
pub fn listener(addr: SocketAddr) -> Result<TcpListener, NetError> {
    TcpListener::from_std(listener_std(addr)?).map_err(sock("listener registration"))
}

/// Opens the transparent listener on `addr` (non-blocking, on no runtime).
pub fn listener_std(addr: SocketAddr) -> Result<std::net::TcpListener, NetError> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(sock("listener socket"))?;
    s.set_reuse_address(true).map_err(sock("SO_REUSEADDR"))?;
    s.set_ip_transparent_v4(true)
        .map_err(sock("IP_TRANSPARENT on the listener"))?;
    s.set_nonblocking(true)
        .map_err(sock("non-blocking listener"))?;
    s.bind(&addr.into()).map_err(sock("listener bind"))?;
    s.listen(1024).map_err(sock("listen"))?;
    Ok(s.into())
}

/// Connects to `dst` from `src`'s address (any port), transparently.
pub async fn connect_upstream(src: SocketAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    s.set_ip_transparent_v4(true)?;
    s.set_mark(MARK_UPSTREAM)?;
    s.set_tos_v4(DSCP_PROXIED << 2)?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    let mut from = src;
    from.set_port(0);
    s.bind(&from.into())?;
    let std: std::net::TcpStream = s.into();
    TcpSocket::from_std_stream(std).connect(dst).await
}

/// Adds the routing rule and the local route of table [`ROUTE_TABLE`]
/// (idempotent: what exists is left).
pub async fn install_routing() -> Result<(), NetError> {
    let nl = |what| {
        move |e: io::Error| NetError::Netlink {
            what,
            reason: e.to_string(),
        }
    };
    let (conn, handle, _) = rtnetlink::new_connection().map_err(nl("netlink socket"))?;
    let task = tokio::spawn(conn);
    let res = async {
        let rules: Vec<_> = handle
            .rule()
            .get(rtnetlink::IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetError::Netlink {
                what: "rule dump",
                reason: e.to_string(),
            })?;
        let present = rules.iter().any(|r| {
            r.attributes.contains(&RuleAttribute::Priority(ROUTE_TABLE))
                && r.attributes.contains(&RuleAttribute::FwMark(FWMARK_LOCAL))
        });
        if !present {
            let mut req = handle
                .rule()
                .add()
                .v4()
                .priority(ROUTE_TABLE)
                .fw_mark(FWMARK_LOCAL)
                .table_id(ROUTE_TABLE)
                .action(RuleAction::ToTable);
            req.message_mut()
                .attributes
                .push(RuleAttribute::FwMask(FWMARK_LOCAL));
            req.execute().await.map_err(|e| NetError::Netlink {
                what: "rule",
                reason: e.to_string(),
            })?;
        }
        let lo = handle
            .link()
            .get()
            .match_name("lo".to_string())
            .execute()
            .try_next()
            .await
            .ok()
            .flatten()
            .map(|l| l.header.index)
            .unwrap_or(1);
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(ROUTE_TABLE)
            .output_interface(lo)
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| NetError::Netlink {
                what: "local route",
                reason: e.to_string(),
            })
    }
    .await;
    task.abort();
    res
}
