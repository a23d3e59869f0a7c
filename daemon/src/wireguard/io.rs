//! The datapath threads: one per TUN queue, owning that queue and the UDP
//! sockets of the lanes `l` with `l % threads == thread` (see `lanes`). A
//! thread reads its TUN queue, encrypts and sends with `sendmmsg` from the
//! socket of each packet's lane (UDP GSO trains when the kernel has them), and
//! receives on its lane sockets with `recvmmsg` (UDP GRO when available),
//! decrypts and writes to its TUN queue: the whole path of a packet runs on
//! the thread that read it, with no hand-off. Blocking IO on dedicated OS
//! threads, never on tokio.
//!
//! Both directions share the thread on purpose: the kernel steers a flow's
//! packets to the TUN queue its last packet was written to, so a reply comes
//! back to the thread that delivered the request, which may still be
//! busy-polling (see `spin`) and forwards it without a wake-up. A lone packet
//! is never held back to fill a batch: batches are whatever is ready at once.
//! Only one thread of the process busy-polls at a time (a shared token).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::datapath::{self, RxVerdict, Shared, Sink};
use super::offload::{self, VnetHdr};
use super::spin::{SpinConfig, Spinner};
use super::sys::{self, RecvBatch, SendBatch, VNET_HDR_LEN};

/// One lane's `sendmmsg` batch.
struct LaneBatch {
    batch: SendBatch,
    start: usize,
    end: usize,
}

/// A [`Sink`] appending to one `sendmmsg` batch per lane socket.
pub struct BatchSink {
    lanes: Vec<LaneBatch>,
    /// Coalesce same-size datagrams into GSO trains.
    pub gso: bool,
    cur: usize,
    queued: usize,
}

impl BatchSink {
    /// An empty sink for `lanes` sockets.
    pub fn new(gso: bool, lanes: usize) -> Self {
        Self {
            lanes: (0..lanes.max(1))
                .map(|_| LaneBatch {
                    batch: SendBatch::new(),
                    start: 0,
                    end: 0,
                })
                .collect(),
            gso,
            cur: 0,
            queued: 0,
        }
    }
}

impl Sink for BatchSink {
    fn reserve(&mut self, lane: usize, room: usize) -> &mut [u8] {
        self.cur = lane % self.lanes.len();
        let b = &mut self.lanes[self.cur];
        b.start = b.end;
        if b.batch.data.len() < b.start + room {
            b.batch.data.resize(b.start + room, 0);
        }
        &mut b.batch.data[b.start..b.start + room]
    }
    fn commit(&mut self, len: usize, to: SocketAddr) {
        let b = &mut self.lanes[self.cur];
        b.end = b.start + len;
        self.queued += len;
        b.batch.push_coalesce(b.start, len, to, self.gso);
    }
}

impl BatchSink {
    /// Bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Sends what is queued, lane `l`'s datagrams from `fds[l]`; returns the
    /// number of datagrams dropped.
    pub fn flush(&mut self, fds: &[RawFd]) -> usize {
        self.queued = 0;
        let mut dropped = 0;
        for (l, b) in self.lanes.iter_mut().enumerate() {
            b.start = 0;
            b.end = 0;
            if !b.batch.is_empty() {
                dropped += b.batch.flush(fds[l % fds.len()]);
            }
        }
        dropped
    }
}

/// Per-thread settings.
pub struct WorkerIo {
    /// Shared datapath state.
    pub shared: Arc<Shared>,
    /// The TUN queue.
    pub tun: Arc<OwnedFd>,
    /// Every lane's UDP socket (sending), in lane order.
    pub udps: Vec<Arc<UdpSocket>>,
    /// The lanes this thread receives.
    pub rx_lanes: Vec<usize>,
    /// Held by the one thread of the process that busy-polls.
    pub spin_token: Arc<AtomicBool>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// UDP GSO available.
    pub gso: bool,
    /// UDP GRO enabled.
    pub gro: bool,
    /// Merge TCP segments into GSO writes to the TUN (needs TUN offloads).
    pub coalesce: bool,
    /// Busy-polling after work.
    pub spin: SpinConfig,
    /// Which directions this thread runs (both, unless the queue is split
    /// over two threads with `VEIL_WG_SPLIT_THREADS=1`).
    pub dirs: Dirs,
}

/// The directions a queue thread handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirs {
    /// TUN → encrypt → UDP.
    pub tx: bool,
    /// UDP → decrypt → TUN.
    pub rx: bool,
}

impl Dirs {
    /// Both directions on one thread (the default).
    pub const BOTH: Dirs = Dirs { tx: true, rx: true };
}

const MAX_TX_READS: usize = 64;
const MAX_TX_BYTES: usize = 1 << 20;

/// Buffers of the TUN → UDP direction, reused for every packet.
struct TxState {
    /// Lane sockets' descriptors, in lane order.
    fds: Vec<RawFd>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    sink: BatchSink,
}

/// Buffers of the UDP → TUN direction, reused for every batch.
struct RxState {
    /// Lane sockets' descriptors, in lane order.
    fds: Vec<RawFd>,
    rb: RecvBatch,
    /// Decrypted packets of one batch, back to back, then merged per flow.
    arena: Vec<u8>,
    ranges: Vec<(usize, usize)>,
    coalescer: offload::Coalescer,
    replies: BatchSink,
}

/// One queue's thread: TUN ⇄ UDP until `stop`.
pub fn queue_loop(w: WorkerIo) {
    let tfd = w.tun.as_raw_fd();
    let fds: Vec<RawFd> = w.udps.iter().map(|u| u.as_raw_fd()).collect();
    let mut tx = TxState {
        fds: fds.clone(),
        buf: vec![0u8; 65536 + VNET_HDR_LEN],
        scratch: Vec::with_capacity(65536),
        sink: BatchSink::new(w.gso, fds.len()),
    };
    let (n, size) = if w.gro { (16, 65536) } else { (64, 2048) };
    let mut rx = RxState {
        fds: fds.clone(),
        rb: RecvBatch::new(n, size),
        arena: Vec::with_capacity(2 << 20),
        ranges: Vec::with_capacity(1024),
        coalescer: offload::Coalescer::default(),
        replies: BatchSink::new(false, fds.len()),
    };
    // What the thread waits on: its TUN queue (tx, bit 0) and its lanes'
    // sockets (rx, the next bits); `ready` holds the bits worth a try.
    let mut waits: Vec<RawFd> = vec![if w.dirs.tx { tfd } else { -1 }];
    if w.dirs.rx {
        waits.extend(w.rx_lanes.iter().map(|&l| fds[l]));
    }
    let all = u32::MAX;
    let mut spinner = Spinner::new(w.spin, Instant::now());
    let mut holding = false;
    let mut ready = all;
    while !w.stop.load(Ordering::Relaxed) {
        let mut work = 0;
        if w.dirs.tx && ready & 1 != 0 {
            work += tx_round(&w, &mut tx, tfd);
        }
        if w.dirs.rx {
            for (i, &l) in w.rx_lanes.iter().enumerate() {
                if ready & (2 << i) != 0 {
                    work += rx_round(&w, &mut rx, tfd, l);
                }
            }
        }
        // After work, try everything again: more may have come meanwhile.
        ready = all;
        if work > 0 {
            spinner.worked(Instant::now());
            continue;
        }
        let now = Instant::now();
        // Busy-poll only while holding the process's token: one spinning
        // thread at most, whatever the number of queues.
        if !holding && spinner.keep_polling(now) {
            holding = w
                .spin_token
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok();
        }
        if holding && spinner.keep_polling(now) {
            // One poll(2) with no timeout tells whether anything is ready
            // (cheaper than trying every read); then let anything else
            // runnable on this CPU go first: if something did, the CPU is
            // contended and the spinner stops polling.
            ready = sys::poll_any(&waits, 0).unwrap_or(all);
            if ready == 0 {
                std::thread::yield_now();
                spinner.yielded(now.elapsed());
            }
            continue;
        }
        if holding {
            w.spin_token.store(false, Ordering::Release);
            holding = false;
        }
        ready = sys::poll_any(&waits, 200).unwrap_or(all);
    }
    if holding {
        w.spin_token.store(false, Ordering::Release);
    }
}

/// Reads what the TUN queue holds (bounded), encrypts and sends it; returns
/// the number of reads.
fn tx_round(w: &WorkerIo, s: &mut TxState, fd: RawFd) -> usize {
    let table = w.shared.table();
    let sink = &mut s.sink;
    let mut reads = 0;
    while reads < MAX_TX_READS && sink.queued_bytes() < MAX_TX_BYTES {
        let len = match sys::read(fd, &mut s.buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "wireguard: tun read");
                std::thread::sleep(std::time::Duration::from_millis(50));
                break;
            }
        };
        reads += 1;
        if len <= VNET_HDR_LEN {
            continue;
        }
        let Some(h) = VnetHdr::parse(&s.buf[..VNET_HDR_LEN]) else {
            continue;
        };
        let pkt = &mut s.buf[VNET_HDR_LEN..len];
        let gso_type = h.gso_type & !offload::GSO_ECN;
        if gso_type != offload::GSO_NONE {
            let shared = &w.shared;
            let res = offload::segment_tcp(pkt, h.gso_size as usize, &mut s.scratch, |seg| {
                datapath::encapsulate(shared, &table, seg, sink);
            });
            if res.is_err() {
                w.shared.counters.offload_errors.inc();
            }
            continue;
        }
        if h.flags & offload::F_NEEDS_CSUM != 0
            && offload::complete_checksum(pkt, h.csum_start as usize, h.csum_offset as usize)
                .is_err()
        {
            w.shared.counters.offload_errors.inc();
            continue;
        }
        datapath::encapsulate(&w.shared, &table, pkt, sink);
    }
    let dropped = sink.flush(&s.fds);
    if dropped > 0 {
        w.shared.counters.io_drops.inc_by(dropped as u64);
    }
    reads
}

/// Receives one batch of datagrams on `lane`'s socket, decrypts it and
/// writes it to the TUN; returns the number of datagrams.
fn rx_round(w: &WorkerIo, s: &mut RxState, fd: RawFd, lane: usize) -> usize {
    let got = match s.rb.recv(s.fds[lane]) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "wireguard: udp receive");
            std::thread::sleep(std::time::Duration::from_millis(50));
            0
        }
    };
    if got == 0 {
        return 0;
    }
    let table = w.shared.table();
    let mut used = 0usize;
    s.ranges.clear();
    for i in 0..got {
        let r = s.rb.got[i];
        let Some(from) = r.from else { continue };
        let data = s.rb.buf(i);
        let seg = r.segment.unwrap_or(data.len()).max(1);
        for d in data.chunks(seg) {
            let off = used;
            let room = d.len().max(148);
            if s.arena.len() < off + room {
                s.arena.resize(off + room, 0);
            }
            let verdict = datapath::decapsulate(
                &w.shared,
                &table,
                lane,
                from,
                d,
                &mut s.arena[off..off + room],
                &mut s.replies,
            );
            match verdict {
                RxVerdict::Deliver(len) => {
                    used = off + len;
                    s.ranges.push((off, len));
                }
                RxVerdict::Handled | RxVerdict::Dropped => {}
            }
        }
    }
    let counters = &w.shared.counters;
    let mut write = |h: &VnetHdr, p: &[u8]| {
        if let Err(e) = sys::write2(fd, &h.encode(), p) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                counters.io_drops.inc();
            }
        }
    };
    if w.coalesce {
        for &(off, len) in &s.ranges {
            s.coalescer.push(&s.arena[off..off + len], &mut write);
        }
        s.coalescer.flush(&mut write);
    } else {
        for &(off, len) in &s.ranges {
            write(&VnetHdr::default(), &s.arena[off..off + len]);
        }
    }
    s.replies.flush(&s.fds);
    got
}
