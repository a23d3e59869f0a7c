//! The datapath threads: one per TUN queue, owning that queue and one UDP
//! socket. It reads the TUN, encrypts and sends with `sendmmsg` (UDP GSO
//! trains when the kernel has them), and receives with `recvmmsg` (UDP GRO when
//! available), decrypts and writes to the TUN: the whole path of a packet runs
//! on the thread that read it, with no hand-off. Blocking IO on dedicated OS
//! threads, never on tokio.
//!
//! Both directions share the thread on purpose: the kernel steers a flow's
//! packets to the TUN queue its last packet was written to, so a reply comes
//! back to the thread that delivered the request, which is still busy-polling
//! (see `spin`) and forwards it without a wake-up. A lone packet is never held
//! back to fill a batch: batches are whatever is ready at once.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::datapath::{self, RxVerdict, Shared, Sink};
use super::offload::{self, VnetHdr};
use super::spin::{SpinConfig, Spinner};
use super::sys::{self, RecvBatch, SendBatch, VNET_HDR_LEN};

/// A [`Sink`] appending to a `sendmmsg` batch.
pub struct BatchSink {
    /// The batch.
    pub batch: SendBatch,
    /// Coalesce same-size datagrams into GSO trains.
    pub gso: bool,
    start: usize,
    end: usize,
}

impl BatchSink {
    /// An empty sink.
    pub fn new(gso: bool) -> Self {
        Self {
            batch: SendBatch::new(),
            gso,
            start: 0,
            end: 0,
        }
    }
}

impl Sink for BatchSink {
    fn reserve(&mut self, room: usize) -> &mut [u8] {
        self.start = self.end;
        if self.batch.data.len() < self.start + room {
            self.batch.data.resize(self.start + room, 0);
        }
        &mut self.batch.data[self.start..self.start + room]
    }
    fn commit(&mut self, len: usize, to: SocketAddr) {
        self.end = self.start + len;
        self.batch.push_coalesce(self.start, len, to, self.gso);
    }
}

impl BatchSink {
    /// Bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.end
    }

    /// Sends what is queued; returns the number of datagrams dropped.
    pub fn flush(&mut self, fd: std::os::fd::RawFd) -> usize {
        self.end = 0;
        self.start = 0;
        if self.batch.is_empty() {
            return 0;
        }
        self.batch.flush(fd)
    }
}

/// Per-thread settings.
pub struct WorkerIo {
    /// Shared datapath state.
    pub shared: Arc<Shared>,
    /// The TUN queue.
    pub tun: Arc<OwnedFd>,
    /// The UDP socket.
    pub udp: Arc<UdpSocket>,
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
    buf: Vec<u8>,
    scratch: Vec<u8>,
    sink: BatchSink,
}

/// Buffers of the UDP → TUN direction, reused for every batch.
struct RxState {
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
    let ufd = w.udp.as_raw_fd();
    let mut tx = TxState {
        buf: vec![0u8; 65536 + VNET_HDR_LEN],
        scratch: Vec::with_capacity(65536),
        sink: BatchSink::new(w.gso),
    };
    let (n, size) = if w.gro { (16, 65536) } else { (64, 2048) };
    let mut rx = RxState {
        rb: RecvBatch::new(n, size),
        arena: Vec::with_capacity(2 << 20),
        ranges: Vec::with_capacity(1024),
        coalescer: offload::Coalescer::default(),
        replies: BatchSink::new(false),
    };
    let mut spinner = Spinner::new(w.spin, Instant::now());
    while !w.stop.load(Ordering::Relaxed) {
        let sent = if w.dirs.tx {
            tx_round(&w, &mut tx, tfd, ufd)
        } else {
            0
        };
        let received = if w.dirs.rx {
            rx_round(&w, &mut rx, tfd, ufd)
        } else {
            0
        };
        if sent + received > 0 {
            spinner.worked(Instant::now());
            continue;
        }
        let now = Instant::now();
        if spinner.keep_polling(now) {
            // Let anything else runnable on this CPU go first; if something
            // did, the CPU is contended and the spinner stops polling.
            std::thread::yield_now();
            spinner.yielded(now.elapsed());
            continue;
        }
        // poll(2) skips negative descriptors.
        let _ = sys::poll_readable2(
            if w.dirs.tx { tfd } else { -1 },
            if w.dirs.rx { ufd } else { -1 },
            200,
        );
    }
}

/// Reads what the TUN queue holds (bounded), encrypts and sends it; returns
/// the number of reads.
fn tx_round(w: &WorkerIo, s: &mut TxState, fd: RawFd, ufd: RawFd) -> usize {
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
    let dropped = sink.flush(ufd);
    if dropped > 0 {
        w.shared.counters.io_drops.inc_by(dropped as u64);
    }
    reads
}

/// Receives one batch of datagrams, decrypts it and writes it to the TUN;
/// returns the number of datagrams.
fn rx_round(w: &WorkerIo, s: &mut RxState, fd: RawFd, ufd: RawFd) -> usize {
    let got = match s.rb.recv(ufd) {
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
    s.replies.flush(ufd);
    got
}
