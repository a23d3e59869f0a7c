//! The WireGuard datapath: a peer table (immutable, swapped whole on change) and
//! the per-packet logic around boringtun's `noise::Tunn`.
//!
//! Lanes: between two nodes there are [`LANES`] independent WireGuard
//! sessions, each with its own `Tunn` and its own UDP port on both sides
//! (`port + lane`). A packet's lane is a symmetric hash of its inner flow
//! ([`flow_lane`]), so a flow always uses one lane (order kept, both
//! directions on the same one) while different flows spread over lanes, and
//! over the receiving node's threads and CPUs (each lane has its own socket;
//! the distinct UDP 5-tuples also spread over RSS/RPS queues of the underlay).
//!
//! Invariants:
//! - nothing but `Tunn` output is ever sent on the UDP socket: a packet from
//!   the TUN is encrypted for the peer owning its destination, queued by `Tunn`
//!   until a session exists, or dropped and counted (no peer);
//! - a decrypted packet is written to the TUN only if its source address is
//!   inside the allowed IPs (pod CIDRs) of the peer it came from;
//! - a remote node is a *slot* with a current generation of `Tunn`s (one per
//!   lane) and, during a key change, a retiring one (make-before-break): a lane
//!   sends with the current `Tunn` once its session is up, the retiring one
//!   until then; both receive.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use ipnetwork::IpNetwork;

pub use super::counters::Counters;
use super::keys::KeyPair;
pub use super::lanes::{flow_lane, lane_count, lane_endpoint, LANES};
use super::peers::DesiredPeer;
pub use super::sink::{Sink, VecSink};

/// How long a retiring `Tunn` stays after its successor's session is up.
pub const RETIRE_GRACE: Duration = Duration::from_secs(3);
/// How long a retiring `Tunn` stays at most.
pub const RETIRE_MAX: Duration = Duration::from_secs(90);
/// One `Tunn`: a (local key, remote key) pair.
pub struct Peer {
    /// Remote node.
    pub node: String,
    /// Remote public key.
    pub remote_key: [u8; 32],
    /// Local public key this `Tunn` uses.
    pub local_key: [u8; 32],
    /// `Tunn` index (receiver indices are `index << 8 | n`).
    pub index: u32,
    /// The lane this `Tunn` carries.
    pub lane: usize,
    tunn: Mutex<Tunn>,
    /// A session is up (refreshed by the timers).
    pub established: AtomicBool,
    /// Decrypted bytes received.
    pub rx_bytes: AtomicU64,
    /// Plain bytes sent.
    pub tx_bytes: AtomicU64,
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Mutex<Option<SystemTime>>,
    /// When this `Tunn` was made.
    pub created: Instant,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("node", &self.node)
            .field("index", &self.index)
            .field("lane", &self.lane)
            .field("established", &self.established.load(Ordering::Relaxed))
            .finish()
    }
}

impl Peer {
    /// A new `Tunn` between `local` and `remote_key` for `lane`.
    pub fn new(node: &str, local: &KeyPair, remote_key: [u8; 32], index: u32, lane: usize) -> Self {
        let tunn = Tunn::new(
            local.secret.clone(),
            boringtun::x25519::PublicKey::from(remote_key),
            None,
            None,
            index,
            None,
        );
        Self {
            node: node.to_string(),
            remote_key,
            local_key: local.public_bytes(),
            index,
            lane,
            tunn: Mutex::new(tunn),
            established: AtomicBool::new(false),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            last_handshake: Mutex::new(None),
            created: Instant::now(),
        }
    }

    /// Locks the `Tunn`.
    pub fn tunn(&self) -> std::sync::MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refreshes `established` and `last_handshake` from the `Tunn`.
    pub fn refresh(&self, tunn: &Tunn) {
        let since = tunn.time_since_last_handshake();
        self.established.store(since.is_some(), Ordering::Relaxed);
        if let Some(d) = since {
            let t = SystemTime::now() - d;
            *self
                .last_handshake
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(t);
        }
    }
}

/// The `Tunn`s of one pair of keys: one per lane, in lane order.
pub type Lanes = Vec<Arc<Peer>>;

fn new_lanes(
    node: &str,
    local: &KeyPair,
    remote_key: [u8; 32],
    lanes: usize,
    next_index: &mut dyn FnMut() -> u32,
) -> Lanes {
    (0..lanes)
        .map(|l| Arc::new(Peer::new(node, local, remote_key, next_index(), l)))
        .collect()
}

fn all_established(lanes: &Lanes) -> bool {
    lanes.iter().all(|p| p.established.load(Ordering::Relaxed))
}

/// A remote node.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Node name.
    pub node: String,
    /// Where to send (lane 0; lane `l` is at port + `l`).
    pub endpoint: SocketAddr,
    /// Its pod CIDRs.
    pub allowed: Vec<IpNetwork>,
    /// The `Tunn`s for the current keys, one per lane.
    pub current: Lanes,
    /// The `Tunn`s for the previous keys, while a key change completes.
    pub retiring: Option<Lanes>,
}

impl Slot {
    /// The `Tunn` to send with on `lane`.
    pub fn sender(&self, lane: usize) -> &Arc<Peer> {
        let cur = &self.current[lane % self.current.len()];
        if !cur.established.load(Ordering::Relaxed) {
            if let Some(r) = self.retiring.as_ref().and_then(|r| r.get(lane)) {
                if r.established.load(Ordering::Relaxed) {
                    return r;
                }
            }
        }
        cur
    }

    /// Every lane of the current keys has a session.
    pub fn established(&self) -> bool {
        all_established(&self.current)
    }

    /// Every lane can send: with the current keys or, while they handshake,
    /// with the retiring ones.
    pub fn sending(&self) -> bool {
        self.lanes_sending() == self.current.len()
    }

    /// How many lanes can send now. A lane that carried no traffic for a
    /// few minutes loses its session (its keys expire) until its next
    /// packet starts a handshake, so an idle tunnel has fewer.
    pub fn lanes_sending(&self) -> usize {
        (0..self.current.len())
            .filter(|&l| self.sender(l).established.load(Ordering::Relaxed))
            .count()
    }

    /// Whether the node has been reached: a lane can send, or a lane of the
    /// current keys completed a handshake (idle lanes whose sessions expired
    /// do not make a reached peer read as unreachable).
    pub fn reached(&self) -> bool {
        self.lanes_sending() > 0
            || self.current.iter().any(|p| {
                p.last_handshake
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some()
            })
    }

    /// The latest completed handshake of any lane that sends.
    pub fn last_handshake(&self) -> Option<SystemTime> {
        (0..self.current.len())
            .filter_map(|l| {
                *self
                    .sender(l)
                    .last_handshake
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
            })
            .max()
    }

    /// Bytes received and sent over every `Tunn` of the slot.
    pub fn bytes(&self) -> (u64, u64) {
        self.peers().fold((0, 0), |(rx, tx), p| {
            (
                rx + p.rx_bytes.load(Ordering::Relaxed),
                tx + p.tx_bytes.load(Ordering::Relaxed),
            )
        })
    }

    /// Every `Tunn`: the current ones, then the retiring ones.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.current
            .iter()
            .chain(self.retiring.iter().flat_map(|r| r.iter()))
    }
}

/// The peer table: immutable, replaced as a whole.
#[derive(Debug, Default)]
pub struct Table {
    /// Local keys: the current one first, then retiring ones still in use.
    pub keys: Vec<KeyPair>,
    /// Remote nodes, sorted by name.
    pub slots: Vec<Slot>,
    routes: Vec<(IpNetwork, usize)>,
    by_index: HashMap<u32, (Arc<Peer>, usize)>,
}

impl Table {
    /// Builds the table for `desired` peers with `local` as current key,
    /// carrying over `old`'s `Tunn`s whose keys did not change and retiring
    /// the ones whose keys did. `next_index` hands out `Tunn` indices.
    /// Returns the table and the new `Tunn`s (to start handshakes on).
    pub fn rebuild(
        old: &Table,
        local: &KeyPair,
        desired: &[DesiredPeer],
        next_index: &mut dyn FnMut() -> u32,
        now: Instant,
    ) -> (Table, Vec<Arc<Peer>>) {
        let mut fresh = Vec::new();
        let mut slots = Vec::new();
        let local_pub = local.public_bytes();
        for d in desired {
            let prev = old.slots.iter().find(|s| s.node == d.node);
            let (current, mut retiring) = match prev {
                Some(s)
                    if s.current[0].remote_key == d.key
                        && s.current[0].local_key == local_pub
                        && s.current.len() == lane_count(d.lanes) =>
                {
                    (s.current.clone(), s.retiring.clone())
                }
                Some(s) => {
                    let p = new_lanes(&d.node, local, d.key, lane_count(d.lanes), next_index);
                    fresh.extend(p.iter().cloned());
                    // Keep the old Tunns only if they carry traffic.
                    let keep = if s
                        .current
                        .iter()
                        .any(|p| p.established.load(Ordering::Relaxed))
                    {
                        Some(s.current.clone())
                    } else {
                        s.retiring.clone()
                    };
                    (p, keep)
                }
                None => {
                    let p = new_lanes(&d.node, local, d.key, lane_count(d.lanes), next_index);
                    fresh.extend(p.iter().cloned());
                    (p, None)
                }
            };
            if let Some(r) = &retiring {
                // Done when every lane's new session has been up for the grace time.
                let done = current.iter().all(|c| {
                    c.established.load(Ordering::Relaxed)
                        && c.last_handshake
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .and_then(|t| t.elapsed().ok())
                            .is_some_and(|d| d >= RETIRE_GRACE)
                });
                if done || now.duration_since(r[0].created) >= RETIRE_MAX + RETIRE_GRACE {
                    retiring = None;
                }
            }
            slots.push(Slot {
                node: d.node.clone(),
                endpoint: d.endpoint,
                allowed: d.allowed.clone(),
                current,
                retiring,
            });
        }
        let mut keys = vec![local.clone()];
        for s in &slots {
            for p in s.peers() {
                if !keys.iter().any(|k| k.public_bytes() == p.local_key) {
                    if let Some(k) = old.keys.iter().find(|k| k.public_bytes() == p.local_key) {
                        keys.push(k.clone());
                    }
                }
            }
        }
        let mut routes = Vec::new();
        let mut by_index = HashMap::new();
        for (i, s) in slots.iter().enumerate() {
            for a in &s.allowed {
                routes.push((*a, i));
            }
            for p in s.peers() {
                by_index.insert(p.index, (p.clone(), i));
            }
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.prefix()));
        (
            Table {
                keys,
                slots,
                routes,
                by_index,
            },
            fresh,
        )
    }

    /// Whether any slot has a retiring `Tunn` (the table needs rebuilding
    /// from time to time until it is gone).
    pub fn rotating(&self) -> bool {
        self.slots.iter().any(|s| s.retiring.is_some())
    }

    /// The slot owning `dst`.
    pub fn route(&self, dst: IpAddr) -> Option<&Slot> {
        self.routes
            .iter()
            .find(|(n, _)| n.contains(dst))
            .map(|(_, i)| &self.slots[*i])
    }

    /// Every `Tunn` with its slot.
    pub fn peers(&self) -> impl Iterator<Item = (&Slot, &Arc<Peer>)> {
        self.slots
            .iter()
            .flat_map(|s| s.peers().map(move |p| (s, p)))
    }

    fn by_receiver(&self, receiver_idx: u32) -> Option<&(Arc<Peer>, usize)> {
        self.by_index.get(&(receiver_idx >> 8))
    }

    fn by_keys(
        &self,
        remote: &[u8; 32],
        local: &[u8; 32],
        lane: usize,
    ) -> Option<(Arc<Peer>, usize)> {
        self.slots.iter().enumerate().find_map(|(i, s)| {
            s.peers()
                .find(|p| &p.remote_key == remote && &p.local_key == local && p.lane == lane)
                .map(|p| (p.clone(), i))
        })
    }
}

/// Shared state of the datapath threads.
pub struct Shared {
    /// The current table.
    pub table: RwLock<Arc<Table>>,
    /// Counters.
    pub counters: Counters,
}

impl Shared {
    /// A snapshot of the table.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Destination address of an IP packet.
pub fn dst_addr(pkt: &[u8]) -> Option<IpAddr> {
    Tunn::dst_address(pkt)
}

fn src_addr(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&pkt[12..16]).ok()?)),
        6 if pkt.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&pkt[8..24]).ok()?)),
        _ => None,
    }
}

/// What happened to a packet from the TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxVerdict {
    /// Encrypted and queued for sending.
    Sent,
    /// Held by `Tunn` until the handshake completes (a handshake may be sent).
    AwaitingSession,
    /// No peer owns the destination: dropped.
    NoPeer,
    /// Not an IP packet: dropped.
    Invalid,
}

/// Encrypts one IP packet from the TUN for the peer owning its destination.
pub fn encapsulate(shared: &Shared, table: &Table, pkt: &[u8], sink: &mut dyn Sink) -> TxVerdict {
    let Some(dst) = dst_addr(pkt) else {
        return TxVerdict::Invalid;
    };
    let Some(slot) = table.route(dst) else {
        shared.counters.dropped_no_peer.inc();
        return TxVerdict::NoPeer;
    };
    let lane = flow_lane(pkt) % slot.current.len().max(1);
    let peer = slot.sender(lane);
    let room = (pkt.len() + 32).max(148);
    let buf = sink.reserve(lane, room);
    let mut t = peer.tunn();
    match t.encapsulate(pkt, buf) {
        TunnResult::WriteToNetwork(out) => {
            let len = out.len();
            // A data packet is 32 bytes longer than the payload (rounded up to
            // 16); a handshake initiation (148 bytes) means no session yet.
            let data = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) == 4;
            drop(t);
            sink.commit(len, lane_endpoint(slot.endpoint, lane));
            if data {
                peer.tx_bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
                TxVerdict::Sent
            } else {
                shared.counters.no_session.inc();
                TxVerdict::AwaitingSession
            }
        }
        TunnResult::Done => {
            shared.counters.no_session.inc();
            TxVerdict::AwaitingSession
        }
        TunnResult::Err(e) => {
            tracing::debug!(peer.node = %slot.node, error = ?e, "wireguard: encapsulate");
            shared.counters.no_session.inc();
            TxVerdict::AwaitingSession
        }
        TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => TxVerdict::Invalid,
    }
}

/// What happened to a datagram from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxVerdict {
    /// Decrypted; `len` bytes of plain IP packet are at the start of `plain`.
    Deliver(usize),
    /// Protocol message handled (replies, if any, went to the sink).
    Handled,
    /// Dropped (counted).
    Dropped,
}

/// Decrypts one datagram from `from` that arrived on `lane`'s socket. A plain
/// packet is left in `plain` (at least `datagram.len()` bytes, and 148 or
/// more); protocol replies and packets `Tunn` had queued go to `sink`.
pub fn decapsulate(
    shared: &Shared,
    table: &Table,
    lane: usize,
    from: SocketAddr,
    datagram: &[u8],
    plain: &mut [u8],
    sink: &mut dyn Sink,
) -> RxVerdict {
    let c = &shared.counters;
    let packet = match Tunn::parse_incoming_packet(datagram) {
        Ok(p) => p,
        Err(_) => {
            c.dropped_unknown_peer.inc();
            return RxVerdict::Dropped;
        }
    };
    let (peer, slot_idx, handshake) = match &packet {
        Packet::HandshakeInit(init) => {
            let mut found = None;
            for k in &table.keys {
                if let Ok(half) = parse_handshake_anon(&k.secret, &k.public, init) {
                    found = table.by_keys(&half.peer_static_public, &k.public_bytes(), lane);
                    if found.is_none() {
                        tracing::debug!(
                            peer.key = %super::keys::to_base64(&half.peer_static_public),
                            "wireguard: handshake from an unknown key"
                        );
                    }
                    break;
                }
            }
            match found {
                Some((p, i)) => (p, i, true),
                None => {
                    c.handshake_failures.inc();
                    return RxVerdict::Dropped;
                }
            }
        }
        Packet::HandshakeResponse(p) => match table.by_receiver(p.receiver_idx) {
            Some((peer, i)) => (peer.clone(), *i, true),
            None => {
                c.handshake_failures.inc();
                return RxVerdict::Dropped;
            }
        },
        Packet::PacketCookieReply(p) => match table.by_receiver(p.receiver_idx) {
            Some((peer, i)) => (peer.clone(), *i, true),
            None => {
                c.dropped_unknown_peer.inc();
                return RxVerdict::Dropped;
            }
        },
        Packet::PacketData(p) => match table.by_receiver(p.receiver_idx) {
            Some((peer, i)) => (peer.clone(), *i, false),
            None => {
                c.dropped_unknown_peer.inc();
                return RxVerdict::Dropped;
            }
        },
    };
    let slot = &table.slots[slot_idx];
    let to = lane_endpoint(slot.endpoint, peer.lane);
    let mut t = peer.tunn();
    let r = t.decapsulate(Some(from.ip()), datagram, plain);
    match r {
        TunnResult::WriteToNetwork(out) => {
            let len = out.len();
            let buf = sink.reserve(peer.lane, len);
            buf[..len].copy_from_slice(&plain[..len]);
            sink.commit(len, to);
            // Flush packets Tunn queued while waiting for this handshake.
            loop {
                let buf = sink.reserve(peer.lane, 65_600);
                match t.decapsulate(None, &[], buf) {
                    TunnResult::WriteToNetwork(out) => {
                        let len = out.len();
                        sink.commit(len, to);
                    }
                    _ => break,
                }
            }
            peer.refresh(&t);
            RxVerdict::Handled
        }
        TunnResult::WriteToTunnelV4(pkt, _) | TunnResult::WriteToTunnelV6(pkt, _) => {
            let len = pkt.len();
            if !peer.established.load(Ordering::Relaxed) {
                peer.refresh(&t);
            }
            drop(t);
            let ok =
                src_addr(&plain[..len]).is_some_and(|s| slot.allowed.iter().any(|a| a.contains(s)));
            if !ok {
                c.dropped_bad_source.inc();
                return RxVerdict::Dropped;
            }
            peer.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
            RxVerdict::Deliver(len)
        }
        TunnResult::Done => {
            if handshake {
                peer.refresh(&t);
            } else if !peer.established.load(Ordering::Relaxed) {
                peer.refresh(&t); // keepalive on a new session
            }
            RxVerdict::Handled
        }
        TunnResult::Err(e) => {
            if handshake {
                c.handshake_failures.inc();
                tracing::debug!(peer.node = %peer.node, error = ?e, "wireguard: handshake failed");
            } else {
                c.decrypt_errors.inc();
            }
            RxVerdict::Dropped
        }
    }
}

/// Runs `Tunn` timers of every peer (handshake retries, rekeys, keepalives),
/// sending what they produce, and refreshes session state.
pub fn tick(table: &Table, sink: &mut dyn Sink) {
    for (slot, peer) in table.peers() {
        let mut t = peer.tunn();
        let buf = sink.reserve(peer.lane, 256);
        if let TunnResult::WriteToNetwork(out) = t.update_timers(buf) {
            let len = out.len();
            sink.commit(len, lane_endpoint(slot.endpoint, peer.lane));
        }
        peer.refresh(&t);
    }
}

/// Starts a handshake on `peer` now (if none is in progress).
pub fn kick(table: &Table, peer: &Peer, sink: &mut dyn Sink) {
    let Some(slot) = table.slots.iter().find(|s| s.node == peer.node) else {
        return;
    };
    let mut t = peer.tunn();
    let buf = sink.reserve(peer.lane, 256);
    if let TunnResult::WriteToNetwork(out) = t.format_handshake_initiation(buf, false) {
        let len = out.len();
        sink.commit(len, lane_endpoint(slot.endpoint, peer.lane));
    }
}

#[cfg(test)]
mod tests;
