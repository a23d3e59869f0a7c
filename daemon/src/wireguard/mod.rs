//! The WireGuard datapath of a node: every pod packet to another node is
//! encrypted by boringtun's `noise::Tunn`, driven by our own threads over a
//! multi-queue TUN device `veil-wg` (virtio-net headers, TSO) and batched UDP
//! (`recvmmsg`/`sendmmsg`, UDP GSO/GRO).
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
//! peer keeps the old `Tunn` (old keys) carrying traffic while a new `Tunn`
//! handshakes with the new keys (both sides initiate: we at once, the peer as
//! soon as it sees the new annotation); the old one is dropped a few seconds
//! after the new session is up, or after 90 s.

pub mod datapath;
pub mod io;
pub mod keys;
pub mod offload;
pub mod peers;
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
use crate::datastore::{NodeRecord, Snapshot, ANNOTATION_WG_ENDPOINT, ANNOTATION_WG_PUBLIC_KEY};
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

/// The annotations this node publishes: its public key and endpoint.
pub fn node_annotations(public_key: &[u8; 32], endpoint: SocketAddr) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            ANNOTATION_WG_PUBLIC_KEY.to_string(),
            keys::to_base64(public_key),
        ),
        (ANNOTATION_WG_ENDPOINT.to_string(), endpoint.to_string()),
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
    ctl: Arc<UdpSocket>,
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

/// Starts the datapath for this node: key, device, sockets, threads, peer
/// controller, UAPI, API methods and metrics.
pub async fn start(ctx: NodeContext) -> Result<Handle, WireguardError> {
    let cfg = ctx.config.clone();
    let key = keys::load_or_generate(&cfg.state_dir)?;
    let nl = dp_links::connect().map_err(WireguardError::NetlinkSocket)?;
    let links = RtLinks(nl.clone());
    let underlay_mtu = match cfg.underlay_mtu {
        Some(m) => m,
        None => links
            .get(&cfg.underlay_interface)
            .await?
            .map(|l| l.mtu)
            .ok_or_else(|| WireguardError::NoUnderlay(cfg.underlay_interface.clone()))?,
    };
    let mtu = underlay_mtu.saturating_sub(WG_OVERHEAD);
    if mtu < 1280 {
        return Err(WireguardError::SmallMtu(underlay_mtu));
    }
    let queues = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let offload = if !cfg.wireguard_tuning.no_offload {
        tunnel::TUN_F_CSUM | tunnel::TUN_F_TSO4 | tunnel::TUN_F_TSO6
    } else {
        0
    };
    let dev = LinuxTunnel
        .open(WG_DEVICE, queues, offload)
        .map_err(WireguardError::Tun)?;
    let offloads_on = dev.offloads;
    let tuns: Vec<Arc<OwnedFd>> = dev.queues.into_iter().map(Arc::new).collect();
    let link_index = links
        .get(WG_DEVICE)
        .await?
        .map(|l| l.index)
        .ok_or_else(|| WireguardError::Tun(std::io::Error::other("device vanished")))?;
    let tunnel_addr = crate::ipam::Allocator::new(cfg.pod_cidr).node_address();
    links.setup(link_index, mtu, tunnel_addr).await?;

    let bind = SocketAddr::new(
        sys::unspecified(cfg.node_address.is_ipv6()),
        cfg.wireguard_port,
    );
    let mut udps = Vec::new();
    for _ in 0..queues {
        let s = bind_udp(bind).map_err(|source| WireguardError::Udp {
            port: cfg.wireguard_port,
            source,
        })?;
        udps.push(Arc::new(s));
    }
    // VEIL_WG_NO_GSO / VEIL_WG_NO_GRO / VEIL_WG_NO_OFFLOAD / VEIL_WG_NO_COALESCE
    // turn single optimisations off (benchmarks, kernels that misbehave).
    let gso = !cfg.wireguard_tuning.no_gso && sys::udp_gso_supported(udps[0].as_raw_fd());
    let gro =
        !cfg.wireguard_tuning.no_gro && udps.iter().all(|u| sys::udp_enable_gro(u.as_raw_fd()));
    tracing::info!(
        device = WG_DEVICE,
        mtu,
        queues,
        tun.offloads = offloads_on,
        udp.gso = gso,
        udp.gro = gro,
        public_key = %keys::to_base64(&key.public_bytes()),
        "wireguard: datapath up"
    );

    let counters = Counters::default();
    let metrics = Metrics::default();
    register_metrics(&ctx, &counters, &metrics);
    let shared = Arc::new(Shared {
        table: RwLock::new(Arc::new(Table::default())),
        counters,
    });
    let manager = Arc::new(Manager {
        endpoint: SocketAddr::new(cfg.node_address, cfg.wireguard_port),
        ctx: ctx.clone(),
        shared: shared.clone(),
        key: Mutex::new(key),
        tunnel_addr,
        mtu,
        next_index: AtomicU32::new(rand::random::<u32>() & 0x7f_ffff),
        ctl: udps[0].clone(),
        gso,
        refused: Mutex::new(Vec::new()),
        metrics,
        routes: tokio::sync::Mutex::new(RouteManager::new(
            RtRoutes::new(nl),
            link_index,
            tunnel_addr,
        )),
        wake: tokio::sync::Notify::new(),
    });

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (i, (tun, udp)) in tuns.iter().zip(udps.iter()).enumerate() {
        let w = || io::WorkerIo {
            shared: shared.clone(),
            tun: tun.clone(),
            udp: udp.clone(),
            stop: stop.clone(),
            gso,
            gro,
            coalesce: offloads_on && !cfg.wireguard_tuning.no_coalesce,
        };
        let (a, b) = (w(), w());
        threads.push(
            std::thread::Builder::new()
                .name(format!("wg-tx-{i}"))
                .spawn(move || io::tx_loop(a))
                .map_err(WireguardError::Tun)?,
        );
        threads.push(
            std::thread::Builder::new()
                .name(format!("wg-rx-{i}"))
                .spawn(move || io::rx_loop(b))
                .map_err(WireguardError::Tun)?,
        );
    }
    {
        let m = manager.clone();
        let stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("wg-timers".into())
                .spawn(move || timers_loop(m, stop))
                .map_err(WireguardError::Tun)?,
        );
    }

    // First reconcile before serving anything, so peers exist at once.
    let snap = ctx.snapshots.borrow().clone();
    manager.reconcile(&snap).await;

    let mut tasks = Vec::new();
    {
        let m = manager.clone();
        tasks.push(tokio::spawn(async move { m.controller().await }));
    }
    {
        let path: PathBuf = cfg.wireguard_socket_dir.join(format!("{WG_DEVICE}.sock"));
        let sh = shared.clone();
        let port = cfg.wireguard_port;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = uapi::serve(&path, sh, port).await {
                tracing::error!(path = %path.display(), error = %e, "wireguard: uapi socket");
            }
        }));
    }
    if let Some(every) = cfg.wireguard_rotation {
        let m = manager.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = m.rotate().await {
                    tracing::error!(error = %e, "wireguard: scheduled key rotation");
                }
            }
        }));
    }
    register_api(&ctx, &manager);
    {
        let stop = stop.clone();
        let mut sd = ctx.shutdown.clone();
        let path = cfg.wireguard_socket_dir.join(format!("{WG_DEVICE}.sock"));
        tasks.push(tokio::spawn(async move {
            while !*sd.borrow() {
                if sd.changed().await.is_err() {
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
            let _ = std::fs::remove_file(path);
        }));
    }
    Ok(Handle {
        stop,
        threads,
        tasks,
        manager,
    })
}

fn register_metrics(ctx: &NodeContext, c: &Counters, m: &Metrics) {
    let mut r = ctx.metrics.lock().unwrap_or_else(|e| e.into_inner());
    r.register(
        "veil_wireguard_peers",
        "WireGuard peers configured",
        m.peers.clone(),
    );
    r.register(
        "veil_wireguard_refused_peers",
        "Nodes refused as WireGuard peers (no/invalid/duplicate key)",
        m.refused.clone(),
    );
    r.register(
        "veil_wireguard_peer_handshake_age_seconds",
        "Seconds since the last completed handshake with each peer (-1: never)",
        m.handshake_age.clone(),
    );
    r.register(
        "veil_wireguard_peer_rx_bytes",
        "Bytes received from each peer",
        m.rx_bytes.clone(),
    );
    r.register(
        "veil_wireguard_peer_tx_bytes",
        "Bytes sent to each peer",
        m.tx_bytes.clone(),
    );
    r.register(
        "veil_wireguard_key_rotations",
        "Key rotations done",
        m.rotations.clone(),
    );
    r.register(
        "veil_wireguard_dropped_no_peer",
        "Packets dropped because no peer owns their destination (fail closed)",
        c.dropped_no_peer.clone(),
    );
    r.register(
        "veil_wireguard_no_session",
        "Packets for a peer without a session yet (held until the handshake, never sent in clear)",
        c.no_session.clone(),
    );
    r.register(
        "veil_wireguard_dropped_bad_source",
        "Decrypted packets dropped because their source is outside the peer's pod CIDRs",
        c.dropped_bad_source.clone(),
    );
    r.register(
        "veil_wireguard_dropped_unknown_peer",
        "Datagrams dropped for an unknown session or peer",
        c.dropped_unknown_peer.clone(),
    );
    r.register(
        "veil_wireguard_handshake_failures",
        "Handshake messages that failed",
        c.handshake_failures.clone(),
    );
    r.register(
        "veil_wireguard_decrypt_errors",
        "Data packets that failed to decrypt",
        c.decrypt_errors.clone(),
    );
    r.register(
        "veil_wireguard_io_drops",
        "Packets the kernel refused (UDP send or TUN write)",
        c.io_drops.clone(),
    );
    r.register(
        "veil_wireguard_offload_errors",
        "Offloaded TUN packets that could not be segmented",
        c.offload_errors.clone(),
    );
}

pub use veil_api::wireguard::{PeerStatus, Rotated, Status};

fn register_api(ctx: &NodeContext, m: &Arc<Manager>) {
    let mm = m.clone();
    ctx.api.register(
        veil_api::method::WIREGUARD_STATUS,
        move |_: serde_json::Value| {
            let m = mm.clone();
            async move { Ok::<_, veil_api::ApiError>(m.status()) }
        },
    );
    let mm = m.clone();
    ctx.api.register(
        veil_api::method::WIREGUARD_ROTATE_KEY,
        move |_: serde_json::Value| {
            let m = mm.clone();
            async move {
                m.rotate()
                    .await
                    .map_err(|e| crate::api::api_error(crate::api::CODE_INTERNAL, e.to_string()))
            }
        },
    );
}

fn timers_loop(m: Arc<Manager>, stop: Arc<AtomicBool>) {
    let mut sink = io::BatchSink::new(false);
    let mut last_bytes: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let table = m.shared.table();
        datapath::tick(&table, &mut sink);
        sink.flush(m.ctl.as_raw_fd());
        n += 1;
        if n.is_multiple_of(10) {
            m.update_peer_metrics(&table, &mut last_bytes);
            if table.rotating() {
                m.wake.notify_one();
            }
        }
    }
}

impl Manager {
    fn key(&self) -> KeyPair {
        self.key.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update_peer_metrics(&self, table: &Table, last: &mut HashMap<u32, (u64, u64)>) {
        let mut seen = HashMap::new();
        for (slot, p) in table.peers() {
            let labels = vec![("peer".to_string(), slot.node.clone())];
            let rx = p.rx_bytes.load(Ordering::Relaxed);
            let tx = p.tx_bytes.load(Ordering::Relaxed);
            let (lrx, ltx) = last.get(&p.index).copied().unwrap_or((0, 0));
            self.metrics
                .rx_bytes
                .get_or_create(&labels)
                .inc_by(rx.saturating_sub(lrx));
            self.metrics
                .tx_bytes
                .get_or_create(&labels)
                .inc_by(tx.saturating_sub(ltx));
            seen.insert(p.index, (rx, tx));
        }
        *last = seen;
        for slot in &table.slots {
            let labels = vec![("peer".to_string(), slot.node.clone())];
            let age = slot
                .sender()
                .last_handshake
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .and_then(|t| t.elapsed().ok())
                .map(|d| d.as_secs_f64())
                .unwrap_or(-1.0);
            self.metrics.handshake_age.get_or_create(&labels).set(age);
        }
    }

    async fn controller(self: Arc<Self>) {
        let mut snaps = self.ctx.snapshots.clone();
        let mut resync = tokio::time::interval(Duration::from_secs(30));
        resync.tick().await;
        loop {
            tokio::select! {
                r = snaps.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = self.wake.notified() => {}
                _ = resync.tick() => {
                    self.routes.lock().await.invalidate();
                }
            }
            let snap = snaps.borrow_and_update().clone();
            self.reconcile(&snap).await;
        }
    }

    /// Makes the node record, the peer table and the routes match `snap`.
    async fn reconcile(&self, snap: &Snapshot) {
        let key = self.key();
        self.publish(snap, &key);
        let (desired, refused) = peers::desired(
            snap,
            &self.ctx.config.node_name,
            &key.public_bytes(),
            self.ctx.config.wireguard_port,
        );
        {
            let texts: Vec<String> = refused.iter().map(|r| r.to_string()).collect();
            let mut prev = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            if *prev != texts {
                for r in &refused {
                    match r.reason {
                        peers::RefusalReason::NoKey => tracing::info!(peer.node = %r.node, "{r}"),
                        _ => tracing::error!(peer.node = %r.node, "{r}"),
                    }
                }
                *prev = texts;
            }
            self.metrics.refused.set(refused.len() as i64);
        }
        let fresh = {
            let mut table = self.shared.table.write().unwrap_or_else(|e| e.into_inner());
            let old = table.clone();
            let mut next = || self.next_index.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
            let (t, fresh) = Table::rebuild(&old, &key, &desired, &mut next, Instant::now());
            for s in &t.slots {
                if !old.slots.iter().any(|o| o.node == s.node) {
                    tracing::info!(peer.node = %s.node, peer.endpoint = %s.endpoint, "wireguard: peer added");
                }
            }
            for o in &old.slots {
                if !t.slots.iter().any(|s| s.node == o.node) {
                    tracing::info!(peer.node = %o.node, "wireguard: peer removed");
                    let labels = vec![("peer".to_string(), o.node.clone())];
                    self.metrics.handshake_age.remove(&labels);
                }
            }
            self.metrics.peers.set(t.slots.len() as i64);
            *table = Arc::new(t);
            fresh
        };
        if !fresh.is_empty() {
            let table = self.shared.table();
            let mut sink = io::BatchSink::new(false);
            for p in &fresh {
                datapath::kick(&table, p, &mut sink);
            }
            sink.flush(self.ctl.as_raw_fd());
        }
        let mut want: BTreeSet<IpNetwork> = desired
            .iter()
            .flat_map(|d| d.allowed.iter().copied())
            .collect();
        want.insert(self.ctx.config.cluster_cidr);
        let mut routes = self.routes.lock().await;
        routes.on_update(want);
        match routes.apply().await {
            Ok(c) => {
                if c.added + c.removed > 0 {
                    tracing::info!(
                        added = c.added,
                        removed = c.removed,
                        "wireguard: routes updated"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "wireguard: routes"),
        }
    }

    /// Writes this node's record with our annotations if it lacks them.
    fn publish(&self, snap: &Snapshot, key: &KeyPair) {
        let cfg = &self.ctx.config;
        let want = node_annotations(&key.public_bytes(), self.endpoint);
        let mut rec = snap
            .node(&cfg.node_name)
            .cloned()
            .unwrap_or_else(|| NodeRecord {
                name: cfg.node_name.clone(),
                address: cfg.node_address,
                pod_cidrs: vec![cfg.pod_cidr],
                labels: cfg.node_labels.clone(),
                annotations: BTreeMap::new(),
            });
        if want.iter().all(|(k, v)| rec.annotations.get(k) == Some(v)) {
            return;
        }
        rec.annotations.extend(want);
        if let Err(e) = self.ctx.datastore.put_node(&rec) {
            tracing::error!(error = %e, "wireguard: publishing the node's public key");
        }
    }

    async fn rotate(&self) -> Result<Rotated, WireguardError> {
        let new = KeyPair::generate();
        keys::save(&self.ctx.config.state_dir, &new)?;
        let old = {
            let mut k = self.key.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *k, new.clone())
        };
        self.metrics.rotations.inc();
        tracing::info!(
            old_public_key = %keys::to_base64(&old.public_bytes()),
            new_public_key = %keys::to_base64(&new.public_bytes()),
            "wireguard: key rotated"
        );
        let snap = self.ctx.snapshots.borrow().clone();
        self.reconcile(&snap).await;
        Ok(Rotated {
            old_public_key: keys::to_base64(&old.public_bytes()),
            new_public_key: keys::to_base64(&new.public_bytes()),
        })
    }

    fn status(&self) -> Status {
        let table = self.shared.table();
        let key = self.key();
        let now = SystemTime::now();
        let peers = table
            .slots
            .iter()
            .map(|s| {
                let sender = s.sender();
                let hs = *sender
                    .last_handshake
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let (mut rx, mut tx) = (0, 0);
                for p in std::iter::once(&s.current).chain(s.retiring.iter()) {
                    rx += p.rx_bytes.load(Ordering::Relaxed);
                    tx += p.tx_bytes.load(Ordering::Relaxed);
                }
                PeerStatus {
                    node: s.node.clone(),
                    public_key: keys::to_base64(&s.current.remote_key),
                    endpoint: s.endpoint.to_string(),
                    allowed_ips: s.allowed.iter().map(|a| a.to_string()).collect(),
                    established: sender.established.load(Ordering::Relaxed),
                    last_handshake: hs
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    handshake_age_seconds: hs
                        .and_then(|t| now.duration_since(t).ok())
                        .map(|d| d.as_secs_f64()),
                    rx_bytes: rx,
                    tx_bytes: tx,
                    rotating: s.retiring.is_some(),
                }
            })
            .collect();
        let c = &self.shared.counters;
        let counters = BTreeMap::from([
            ("droppedNoPeer".to_string(), c.dropped_no_peer.get()),
            ("noSession".to_string(), c.no_session.get()),
            ("droppedBadSource".to_string(), c.dropped_bad_source.get()),
            (
                "droppedUnknownPeer".to_string(),
                c.dropped_unknown_peer.get(),
            ),
            ("handshakeFailures".to_string(), c.handshake_failures.get()),
            ("decryptErrors".to_string(), c.decrypt_errors.get()),
            ("ioDrops".to_string(), c.io_drops.get()),
            ("offloadErrors".to_string(), c.offload_errors.get()),
        ]);
        let _ = self.gso;
        Status {
            device: WG_DEVICE.to_string(),
            public_key: keys::to_base64(&key.public_bytes()),
            endpoint: self.endpoint.to_string(),
            tunnel_address: self.tunnel_addr.to_string(),
            mtu: self.mtu,
            peers,
            refused: self
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            counters,
        }
    }
}
