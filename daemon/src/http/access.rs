//! Who may read which of veild's HTTP routes.
//!
//! - **Public** (`/healthz`, `/readyz`, `/metrics`): anyone the network lets
//!   through, so that the kubelet and Prometheus reach them. Pods on this node
//!   are kept off the node's service ports by the fail-closed table unless a
//!   policy allows them (`dataplane/nftables/host.rs`).
//! - **Private** (everything else: flows, the graph, the Grafana data source,
//!   the UI; all of it names pods): only
//!   - the other nodes' daemons, on this node's WireGuard tunnel address and
//!     from a peer's tunnel address: such a packet arrived through `veil-wg`,
//!     decrypted with that peer's key, so WireGuard authenticates the caller;
//!   - the networks of `httpPrivateNetworks` (default: loopback, i.e. the
//!     node's own network namespace; add Grafana's address, or set it empty
//!     to leave the unix socket as the only local way in).
//!
//!   Everyone else gets 403 and a one-line reason.
//!
//! It does not authenticate anything itself: it trusts the addresses that
//! the kernel (WireGuard, the fail-closed table) vouches for.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use ipnetwork::IpNetwork;
use tokio::sync::watch;

use crate::datastore::{NodeRecord, Snapshot};

/// Both ends of an HTTP connection (axum's connect info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAddrs {
    /// The address the client connected to (one of this node's).
    pub local: SocketAddr,
    /// The client's address.
    pub remote: SocketAddr,
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for ConnAddrs {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        let remote = *stream.remote_addr();
        ConnAddrs {
            local: stream.io().local_addr().unwrap_or(remote),
            remote,
        }
    }
}

/// The node's tunnel address: the first host address of its (first) pod
/// CIDR, as the allocator reserves it.
pub fn tunnel_address(node: &NodeRecord) -> Option<IpAddr> {
    node.pod_cidrs.first().map(|c| first_host(*c))
}

/// The first host address of `cidr`.
pub fn first_host(cidr: IpNetwork) -> IpAddr {
    match cidr.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(1)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(1)).into()),
    }
}

/// The access rule of the private routes.
#[derive(Clone)]
pub struct Access {
    node: String,
    tunnel: IpAddr,
    networks: Arc<Vec<IpNetwork>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl Access {
    /// The rule of node `node` (tunnel address `tunnel`), with the extra
    /// `networks` and the peers of `snapshots`.
    pub fn new(
        node: &str,
        tunnel: IpAddr,
        networks: Vec<IpNetwork>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> Self {
        Access {
            node: node.to_string(),
            tunnel,
            networks: Arc::new(networks),
            snapshots,
        }
    }

    fn peer_tunnels(&self) -> BTreeSet<IpAddr> {
        self.snapshots
            .borrow()
            .nodes
            .iter()
            .filter(|n| n.name != self.node)
            .filter_map(tunnel_address)
            .collect()
    }

    /// Why `conn` may not read the private routes, or `None` when it may.
    pub fn refusal(&self, conn: ConnAddrs) -> Option<String> {
        decide(conn, self.tunnel, &self.networks, &self.peer_tunnels())
    }
}

/// The decision, pure: allowed from `networks`, or on `tunnel` from one of
/// `peers`.
pub fn decide(
    conn: ConnAddrs,
    tunnel: IpAddr,
    networks: &[IpNetwork],
    peers: &BTreeSet<IpAddr>,
) -> Option<String> {
    let (local, remote) = (canonical(conn.local.ip()), canonical(conn.remote.ip()));
    if networks.iter().any(|n| n.contains(remote)) {
        return None;
    }
    if local == tunnel && peers.contains(&remote) {
        return None;
    }
    Some(if peers.contains(&remote) {
        format!("{remote}: nodes read this route only on the tunnel address {tunnel}")
    } else {
        format!("{remote}: this route names pods; it is served to the node's peers over WireGuard and to the operator through veilctl")
    })
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Middleware of the private routes: 403 unless [`Access::refusal`] says
/// nothing.
pub async fn guard(
    State(access): State<Access>,
    ConnectInfo(conn): ConnectInfo<ConnAddrs>,
    req: Request,
    next: Next,
) -> Response {
    match access.refusal(conn) {
        None => next.run(req).await,
        Some(reason) => {
            tracing::debug!(
                http.path = %req.uri().path(),
                client = %conn.remote,
                reason,
                "private route refused"
            );
            (StatusCode::FORBIDDEN, format!("forbidden: {reason}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(local: &str, remote: &str) -> ConnAddrs {
        ConnAddrs {
            local: format!("{local}:9590").parse().unwrap(),
            remote: format!("{remote}:40000").parse().unwrap(),
        }
    }

    fn check(local: &str, remote: &str) -> bool {
        let nets: Vec<IpNetwork> = vec!["127.0.0.0/8".parse().unwrap()];
        let peers = BTreeSet::from(["10.244.1.1".parse().unwrap()]);
        decide(
            conn(local, remote),
            "10.244.0.1".parse().unwrap(),
            &nets,
            &peers,
        )
        .is_none()
    }

    #[test]
    fn peers_read_private_routes_only_on_the_tunnel_address() {
        assert!(check("10.244.0.1", "10.244.1.1"));
        assert!(!check("198.18.0.10", "10.244.1.1"), "not on the underlay");
        assert!(
            !check("198.18.0.10", "198.18.0.11"),
            "a node's underlay address is no proof"
        );
    }

    #[test]
    fn pods_never_read_private_routes() {
        assert!(!check("10.244.0.1", "10.244.0.5"), "a local pod");
        assert!(
            !check("10.244.0.1", "10.244.1.7"),
            "a remote pod through WireGuard"
        );
        assert!(
            !check("198.18.0.10", "198.18.0.11"),
            "a remote pod masqueraded"
        );
    }

    #[test]
    fn the_configured_networks_read_private_routes() {
        assert!(check("127.0.0.1", "127.0.0.1"));
        let nets: Vec<IpNetwork> = vec![];
        assert!(decide(
            conn("127.0.0.1", "127.0.0.1"),
            "10.244.0.1".parse().unwrap(),
            &nets,
            &BTreeSet::new()
        )
        .is_some());
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let c = ConnAddrs {
            local: "[::ffff:10.244.0.1]:9590".parse().unwrap(),
            remote: "[::ffff:10.244.1.1]:1".parse().unwrap(),
        };
        let peers = BTreeSet::from(["10.244.1.1".parse().unwrap()]);
        assert!(decide(c, "10.244.0.1".parse().unwrap(), &[], &peers).is_none());
    }

    #[test]
    fn the_tunnel_address_is_the_first_host_of_the_pod_cidr() {
        assert_eq!(
            first_host("10.244.3.0/24".parse().unwrap()).to_string(),
            "10.244.3.1"
        );
    }
}
