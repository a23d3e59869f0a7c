//! The datapath threads: per TUN queue, one thread reads the TUN, encrypts and
//! sends with `sendmmsg` (UDP GSO trains when the kernel has them), and one
//! thread receives with `recvmmsg` (UDP GRO when available), decrypts and
//! writes to the TUN. Blocking IO on dedicated OS threads, never on tokio.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::datapath::{self, RxVerdict, Shared, Sink};
use super::offload::{self, VnetHdr};
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
}

const MAX_TX_READS: usize = 64;
const MAX_TX_BYTES: usize = 1 << 20;

/// TUN → encrypt → UDP.
pub fn tx_loop(w: WorkerIo) {
    let fd = w.tun.as_raw_fd();
    let ufd = w.udp.as_raw_fd();
    let mut buf = vec![0u8; 65536 + VNET_HDR_LEN];
    let mut scratch = Vec::with_capacity(65536);
    let mut sink = BatchSink::new(w.gso);
    while !w.stop.load(Ordering::Relaxed) {
        let table = w.shared.table();
        let mut reads = 0;
        while reads < MAX_TX_READS && sink.queued_bytes() < MAX_TX_BYTES {
            let len = match sys::read(fd, &mut buf) {
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
            let Some(h) = VnetHdr::parse(&buf[..VNET_HDR_LEN]) else {
                continue;
            };
            let pkt = &mut buf[VNET_HDR_LEN..len];
            let gso_type = h.gso_type & !offload::GSO_ECN;
            if gso_type != offload::GSO_NONE {
                let shared = &w.shared;
                let res = offload::segment_tcp(pkt, h.gso_size as usize, &mut scratch, |seg| {
                    datapath::encapsulate(shared, &table, seg, &mut sink);
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
            datapath::encapsulate(&w.shared, &table, pkt, &mut sink);
        }
        let dropped = sink.flush(ufd);
        if dropped > 0 {
            w.shared.counters.io_drops.inc_by(dropped as u64);
        }
        if reads == 0 {
            let _ = sys::poll_readable(fd, 200);
        }
    }
}

/// UDP → decrypt → TUN.
pub fn rx_loop(w: WorkerIo) {
    let fd = w.tun.as_raw_fd();
    let ufd = w.udp.as_raw_fd();
    let (n, size) = if w.gro { (16, 65536) } else { (64, 2048) };
    let mut rb = RecvBatch::new(n, size);
    // Decrypted packets of one batch, back to back, then merged per flow.
    let mut arena: Vec<u8> = Vec::with_capacity(2 << 20);
    let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(1024);
    let mut coalescer = offload::Coalescer::default();
    let mut replies = BatchSink::new(false);
    while !w.stop.load(Ordering::Relaxed) {
        let got = match rb.recv(ufd) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "wireguard: udp receive");
                std::thread::sleep(std::time::Duration::from_millis(50));
                0
            }
        };
        if got == 0 {
            let _ = sys::poll_readable(ufd, 200);
            continue;
        }
        let table = w.shared.table();
        let mut used = 0usize;
        ranges.clear();
        for i in 0..got {
            let r = rb.got[i];
            let Some(from) = r.from else { continue };
            let data = rb.buf(i);
            let seg = r.segment.unwrap_or(data.len()).max(1);
            for d in data.chunks(seg) {
                let off = used;
                let room = d.len().max(148);
                if arena.len() < off + room {
                    arena.resize(off + room, 0);
                }
                let verdict = datapath::decapsulate(
                    &w.shared,
                    &table,
                    from,
                    d,
                    &mut arena[off..off + room],
                    &mut replies,
                );
                match verdict {
                    RxVerdict::Deliver(len) => {
                        used = off + len;
                        ranges.push((off, len));
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
            for &(off, len) in &ranges {
                coalescer.push(&arena[off..off + len], &mut write);
            }
            coalescer.flush(&mut write);
        } else {
            for &(off, len) in &ranges {
                write(&VnetHdr::default(), &arena[off..off + len]);
            }
        }
        replies.flush(ufd);
    }
}
