//! The WireGuard datapath of a node: every pod packet to another node is
//! encrypted by boringtun's `noise::Tunn`, driven by our own threads over a
//! multi-queue TUN device `veil-wg` (virtio-net headers, TSO) and batched UDP
//! (`recvmmsg`/`sendmmsg`, UDP GSO/GRO), over several sessions ("lanes", one
//! UDP port each) per pair of nodes so that flows spread over threads (see
//! [`lanes`]).
//!
//! What it does:
//! - keeps the node key in `<state_dir>/wireguard.key` (0600, never logged) and
//!   publishes the public key and endpoint as node annotations
//!   ([`crate::datastore::ANNOTATION_WG_PUBLIC_KEY`], [`node_annotations`]);
//! - turns the snapshot's other nodes into peers (allowed IPs = pod CIDRs),
//!   live, refusing duplicate keys;
//! - owns `veil-wg`: MTU = underlay MTU − 80, the node's tunnel address (first
//!   host of its pod CIDR), a route to the whole cluster CIDR and to each remote
//!   pod CIDR with the tunnel address as source. Packets for no peer reach the
//!   datapath and are dropped and counted; nothing unencrypted is ever sent;
//! - serves `wg show veil-wg` (UAPI socket), `wireguard.status` and
//!   `wireguard.rotate-key` on the daemon socket, and `/metrics`.
//!
//! What it does not do: write kernel state itself. The device, its address and
//! its routes are the dataplane's ([`crate::dataplane::tunnel`],
//! [`crate::dataplane::links`], [`crate::dataplane::routes`]); filtering is the
//! dataplane's `inet veil` table, which stays while `veild` is down.
//!
//! Key rotation is make-before-break: the new key is saved and published; each
//! peer keeps the old `Tunn`s (old keys, one per lane) carrying traffic while
//! new ones handshake with the new keys (both sides initiate: we at once, the peer as
//! soon as it sees the new annotation); the old one is dropped a few seconds
//! after the new session is up, or after 90 s.

pub mod counters;
pub mod datapath;
pub mod io;
pub mod keys;
pub mod lanes;
pub mod offload;
pub mod peers;
mod rotation;
pub mod sink;
pub mod spin;
mod startup;
mod sync;
pub mod sys;
pub mod uapi;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ipnetwork::IpNetwork;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::{WG_DEVICE, WG_OVERHEAD};
use crate::context::NodeContext;
use crate::dataplane::links::{self as dp_links, Links, RtLinks};
use crate::dataplane::routes::{RouteManager, RtRoutes};
use crate::dataplane::tunnel::{self, LinuxTunnel, Tunnel};
use crate::datastore::{
    NodeRecord, Snapshot, ANNOTATION_WG_ENDPOINT, ANNOTATION_WG_LANES, ANNOTATION_WG_PUBLIC_KEY,
};
use datapath::{Counters, Shared, Table};
use keys::KeyPair;

/// Why the WireGuard datapath could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum WireguardError {
    /// The key file.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// A netlink operation.
    #[error(transparent)]
    Netlink(#[from] crate::dataplane::links::NetlinkError),
    /// Opening or configuring the TUN device.
    #[error("wireguard: tun device {WG_DEVICE}: {0}")]
    Tun(#[source] std::io::Error),
    /// The UDP socket.
    #[error("wireguard: udp port {port}: {source}")]
    Udp {
        /// The port.
        port: u16,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The underlay interface does not exist (no MTU to derive ours from).
    #[error("wireguard: underlay interface {0} not found (set underlayMtu or underlayInterface)")]
    NoUnderlay(String),
    /// The underlay MTU is too small for the tunnel.
    #[error("wireguard: underlay MTU {0} leaves no room for the tunnel (needs at least 1360)")]
    SmallMtu(u32),
    /// Publishing the node record.
    #[error(transparent)]
    Datastore(#[from] crate::datastore::DatastoreError),
    /// The netlink socket.
    #[error("wireguard: netlink socket: {0}")]
    NetlinkSocket(#[source] std::io::Error),
}

/// The annotations this node publishes: its public key, its endpoint (lane
/// 0) and how many lanes it listens on (ports endpoint + 0..lanes).
pub fn node_annotations(public_key: &[u8; 32], endpoint: SocketAddr) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            ANNOTATION_WG_PUBLIC_KEY.to_string(),
            keys::to_base64(public_key),
        ),
        (ANNOTATION_WG_ENDPOINT.to_string(), endpoint.to_string()),
        (ANNOTATION_WG_LANES.to_string(), lanes::LANES.to_string()),
    ])
}

/// Per-peer metrics.
#[derive(Clone, Default)]
struct Metrics {
    peers: Gauge,
    refused: Gauge,
    handshake_age: Family<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>,
    rx_bytes: Family<Vec<(String, String)>, Counter>,
    tx_bytes: Family<Vec<(String, String)>, Counter>,
    rotations: Counter,
}

struct Manager {
    ctx: NodeContext,
    shared: Arc<Shared>,
    key: Mutex<KeyPair>,
    endpoint: SocketAddr,
    tunnel_addr: IpAddr,
    mtu: u32,
    next_index: AtomicU32,
    /// The lane sockets (control traffic: handshakes, timers).
    ctl: Vec<Arc<UdpSocket>>,
    gso: bool,
    refused: Mutex<Vec<String>>,
    metrics: Metrics,
    routes: tokio::sync::Mutex<RouteManager<RtRoutes>>,
    wake: tokio::sync::Notify,
}

/// The running datapath; dropping it stops the threads and tasks (the device,
/// its routes and the fail-closed filter stay).
pub struct Handle {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    manager: Arc<Manager>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("wireguard::Handle")
            .field("public_key", &self.public_key())
            .finish()
    }
}

impl Handle {
    /// The node's current public key (base64).
    pub fn public_key(&self) -> String {
        keys::to_base64(&self.manager.key().public_bytes())
    }

    /// The annotations the node record must carry.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        node_annotations(&self.manager.key().public_bytes(), self.manager.endpoint)
    }

    /// Stops the threads and waits for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.abort();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_cloexec(true)?;
    sys::set_buffers_force(s.as_raw_fd(), 8 << 20);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

pub use startup::start;
pub use veil_api::wireguard::{PeerStatus, Rotated, Status};
