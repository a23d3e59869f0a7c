//! Packet work the kernel hands to us with TUN offloads (pure functions):
//! the virtio-net header, completing partial checksums and splitting TCP
//! super-packets (TSO) into wire-size segments, as the kernel's GSO would.
//!
//! With `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6` the kernel writes up to 64 KiB
//! TCP segments into the TUN in one `read`: one syscall instead of ~45. Each
//! resulting segment is then encrypted separately, so WireGuard's wire format
//! is unchanged.

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the receiver may skip checksum checks.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN` flag bit.
pub const GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr` (native endian, as TUN uses on little-endian hosts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// Flags (`F_*`).
    pub flags: u8,
    /// GSO type (`GSO_*`).
    pub gso_type: u8,
    /// Length of the headers.
    pub hdr_len: u16,
    /// Segment payload size.
    pub gso_size: u16,
    /// Where the checksum computation starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Decodes the 10-byte header.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < 10 {
            return None;
        }
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// Why an offloaded packet could not be processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The packet is shorter than its headers say.
    #[error("packet truncated")]
    Truncated,
    /// A GSO type or IP layout we do not segment.
    #[error("unsupported offload (gso type {0})")]
    Unsupported(u8),
}

/// Adds `data` to a running one's-complement sum (not folded).
pub fn sum(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (s, carry) = acc.overflowing_add(v);
        acc = s + carry as u64;
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        let (s, c) = acc.overflowing_add(u16::from_be_bytes([rest[i], rest[i + 1]]) as u64);
        acc = s + c as u64;
        i += 2;
    }
    if i < rest.len() {
        let (s, c) = acc.overflowing_add((rest[i] as u64) << 8);
        acc = s + c as u64;
    }
    acc
}

/// Folds a sum to 16 bits and complements it.
pub fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// Completes a partial transport checksum (`F_NEEDS_CSUM`): the field already
/// holds the pseudo-header sum; the sum over `csum_start..` is stored there.
pub fn complete_checksum(
    pkt: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<(), OffloadError> {
    let field = csum_start + csum_offset;
    if field + 2 > pkt.len() {
        return Err(OffloadError::Truncated);
    }
    let mut c = fold(sum(0, &pkt[csum_start..]));
    if c == 0 && csum_offset == 6 {
        c = 0xffff; // UDP: zero means "no checksum"
    }
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

fn ipv4_header_checksum(h: &mut [u8]) {
    h[10] = 0;
    h[11] = 0;
    let c = fold(sum(0, h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

fn tcp_checksum(pkt: &mut [u8], l4: usize, v6: bool) {
    pkt[l4 + 16] = 0;
    pkt[l4 + 17] = 0;
    let len = (pkt.len() - l4) as u64;
    let mut acc = if v6 {
        sum(0, &pkt[8..40])
    } else {
        sum(0, &pkt[12..20])
    };
    acc += 6 + len;
    let c = fold(sum(acc, &pkt[l4..]));
    pkt[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}

/// Splits a TCP super-packet (IPv4 or IPv6 without extension headers) into
/// segments of at most `mss` payload bytes, each with correct lengths, IPv4
/// id, sequence number, flags and checksums, calling `emit` for each one.
/// `scratch` is reused between calls.
pub fn segment_tcp(
    pkt: &[u8],
    mss: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), OffloadError> {
    if pkt.is_empty() || mss == 0 {
        return Err(OffloadError::Truncated);
    }
    let v6 = pkt[0] >> 4 == 6;
    let l4 = if v6 {
        if pkt.len() < 40 {
            return Err(OffloadError::Truncated);
        }
        if pkt[6] != 6 {
            return Err(OffloadError::Unsupported(GSO_TCPV6));
        }
        40
    } else {
        if pkt.len() < 20 {
            return Err(OffloadError::Truncated);
        }
        if pkt[9] != 6 {
            return Err(OffloadError::Unsupported(GSO_TCPV4));
        }
        ((pkt[0] & 0x0f) as usize) * 4
    };
    if pkt.len() < l4 + 20 {
        return Err(OffloadError::Truncated);
    }
    let thl = ((pkt[l4 + 12] >> 4) as usize) * 4;
    let hdr = l4 + thl;
    if thl < 20 || pkt.len() < hdr {
        return Err(OffloadError::Truncated);
    }
    let payload = &pkt[hdr..];
    let seq0 = u32::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5], pkt[l4 + 6], pkt[l4 + 7]]);
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let flags0 = pkt[l4 + 13];
    let n = payload.len().div_ceil(mss).max(1);
    for i in 0..n {
        let start = i * mss;
        let end = (start + mss).min(payload.len());
        scratch.clear();
        scratch.extend_from_slice(&pkt[..hdr]);
        scratch.extend_from_slice(&payload[start..end]);
        let total = scratch.len();
        if v6 {
            scratch[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        } else {
            scratch[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            scratch[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            ipv4_header_checksum(&mut scratch[..l4]);
        }
        scratch[l4 + 4..l4 + 8].copy_from_slice(&seq0.wrapping_add(start as u32).to_be_bytes());
        let mut flags = flags0;
        if i + 1 < n {
            flags &= !(0x01 | 0x08); // FIN, PSH only on the last segment
        }
        if i > 0 {
            flags &= !0x80; // CWR only on the first
        }
        scratch[l4 + 13] = flags;
        tcp_checksum(scratch, l4, v6);
        emit(scratch);
    }
    Ok(())
}

/// Flow identity and the header fields that must match for two TCP segments
/// to be merged (as Linux GRO requires).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FlowKey {
    addrs: [u8; 32],
    ports: [u8; 4],
    ack: [u8; 4],
    /// TCP data offset, flags without PSH, window.
    off_flags_win: [u8; 4],
    /// IPv4 TOS/TTL/DF or IPv6 traffic class/hop limit.
    ip_fields: [u8; 4],
    options: Vec<u8>,
}

struct Aggregate {
    key: FlowKey,
    data: Vec<u8>,
    l4: usize,
    hdr_len: usize,
    mss: usize,
    next_seq: u32,
    segs: usize,
    closed: bool,
    v6: bool,
}

/// Merges consecutive TCP segments of a flow into one super-packet with a
/// virtio-net header (`GSO_TCPV4/6`, partial checksum), so that the kernel
/// takes a whole train in one TUN write, like GRO does for a NIC. Packets
/// that cannot be merged pass through unchanged.
#[derive(Default)]
pub struct Coalescer {
    aggs: Vec<Aggregate>,
    spare: Vec<Vec<u8>>,
}

const MAX_AGGS: usize = 8;
const MAX_SUPER: usize = 65_000;

struct Parsed {
    key: FlowKey,
    l4: usize,
    hdr_len: usize,
    seq: u32,
    psh: bool,
    v6: bool,
}

fn parse_tcp(pkt: &[u8]) -> Option<Parsed> {
    let v = pkt.first()? >> 4;
    let (l4, v6) = match v {
        4 => {
            if pkt.len() < 40 || pkt[0] & 0x0f != 5 || pkt[9] != 6 {
                return None;
            }
            let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
            // DF set, no MF, offset 0.
            if frag != 0x4000 || u16::from_be_bytes([pkt[2], pkt[3]]) as usize != pkt.len() {
                return None;
            }
            (20, false)
        }
        6 => {
            if pkt.len() < 60 || pkt[6] != 6 {
                return None;
            }
            if u16::from_be_bytes([pkt[4], pkt[5]]) as usize + 40 != pkt.len() {
                return None;
            }
            (40, true)
        }
        _ => return None,
    };
    let thl = ((pkt[l4 + 12] >> 4) as usize) * 4;
    if thl < 20 || pkt.len() <= l4 + thl {
        return None; // no payload: pure ACKs pass through
    }
    let flags = pkt[l4 + 13];
    // Only ACK, optionally PSH.
    if flags & !0x08 != 0x10 {
        return None;
    }
    let mut addrs = [0u8; 32];
    let ip_fields = if v6 {
        addrs.copy_from_slice(&pkt[8..40]);
        [pkt[0] & 0x0f, pkt[1] & 0xf0, pkt[7], 0]
    } else {
        addrs[..8].copy_from_slice(&pkt[12..20]);
        [pkt[1], pkt[8], pkt[6], 0]
    };
    let t = &pkt[l4..];
    Some(Parsed {
        key: FlowKey {
            addrs,
            ports: [t[0], t[1], t[2], t[3]],
            ack: [t[8], t[9], t[10], t[11]],
            off_flags_win: [t[12], t[13] & !0x08, t[14], t[15]],
            ip_fields,
            options: t[20..thl].to_vec(),
        },
        l4,
        hdr_len: l4 + thl,
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        psh: flags & 0x08 != 0,
        v6,
    })
}

impl Coalescer {
    /// Adds one decrypted IP packet; `out` receives (header, packet) for
    /// whatever must be written now.
    pub fn push(&mut self, pkt: &[u8], out: &mut dyn FnMut(&VnetHdr, &[u8])) {
        let Some(p) = parse_tcp(pkt) else {
            out(&VnetHdr::default(), pkt);
            return;
        };
        let payload = pkt.len() - p.hdr_len;
        if let Some(i) = self.aggs.iter().position(|a| a.key == p.key) {
            let a = &mut self.aggs[i];
            let fits = !a.closed
                && a.next_seq == p.seq
                && payload <= a.mss
                && a.data.len() + payload <= MAX_SUPER;
            if fits {
                a.data.extend_from_slice(&pkt[p.hdr_len..]);
                a.next_seq = a.next_seq.wrapping_add(payload as u32);
                a.segs += 1;
                if p.psh {
                    a.data[a.l4 + 13] |= 0x08;
                }
                if p.psh || payload < a.mss {
                    a.closed = true;
                }
                return;
            }
            let a = self.aggs.remove(i);
            self.emit(a, out);
        }
        if self.aggs.len() >= MAX_AGGS {
            let a = self.aggs.remove(0);
            self.emit(a, out);
        }
        let mut data = self.spare.pop().unwrap_or_default();
        data.clear();
        data.extend_from_slice(pkt);
        self.aggs.push(Aggregate {
            key: p.key,
            data,
            l4: p.l4,
            hdr_len: p.hdr_len,
            mss: payload,
            next_seq: p.seq.wrapping_add(payload as u32),
            segs: 1,
            closed: p.psh,
            v6: p.v6,
        });
    }

    /// Writes out every pending aggregate.
    pub fn flush(&mut self, out: &mut dyn FnMut(&VnetHdr, &[u8])) {
        for a in std::mem::take(&mut self.aggs) {
            self.emit(a, out);
        }
    }

    fn emit(&mut self, mut a: Aggregate, out: &mut dyn FnMut(&VnetHdr, &[u8])) {
        if a.segs == 1 {
            out(&VnetHdr::default(), &a.data);
        } else {
            let total = a.data.len();
            let l4 = a.l4;
            if a.v6 {
                a.data[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            } else {
                a.data[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                ipv4_header_checksum(&mut a.data[..20]);
            }
            // Partial checksum: the pseudo-header sum, not complemented.
            let len = (total - l4) as u64;
            let acc = if a.v6 {
                sum(0, &a.data[8..40])
            } else {
                sum(0, &a.data[12..20])
            } + 6
                + len;
            let pseudo = !fold(acc);
            a.data[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
            let h = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if a.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: a.hdr_len as u16,
                gso_size: a.mss as u16,
                csum_start: l4 as u16,
                csum_offset: 16,
            };
            out(&h, &a.data);
        }
        if self.spare.len() < MAX_AGGS {
            self.spare.push(a.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp(payload_len: usize, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload_len];
        p[0] = 0x45;
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[4..6].copy_from_slice(&100u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 0, 2]);
        p[16..20].copy_from_slice(&[10, 244, 1, 2]);
        p[20..22].copy_from_slice(&1234u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&1000u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    fn verify_tcp(seg: &[u8]) -> bool {
        let len = (seg.len() - 20) as u64;
        let acc = sum(0, &seg[12..20]) + 6 + len;
        fold(sum(acc, &seg[20..])) == 0 && fold(sum(0, &seg[..20])) == 0
    }

    #[test]
    fn tso_packet_splits_into_valid_mss_segments() {
        let pkt = ipv4_tcp(3000, 0x18); // PSH|ACK
        let mut scratch = Vec::new();
        let mut segs = Vec::new();
        segment_tcp(&pkt, 1400, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[0].len(), 1440);
        assert_eq!(segs[2].len(), 40 + 200);
        for (i, s) in segs.iter().enumerate() {
            assert!(verify_tcp(s), "segment {i} checksums");
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 1000 + 1400 * i as u32);
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 100 + i as u16);
            assert_eq!(s[33] & 0x08 != 0, i == 2, "PSH only on the last");
            assert_eq!(
                &s[40..],
                &pkt[40 + 1400 * i..(40 + 1400 * (i + 1)).min(pkt.len())]
            );
        }
    }

    #[test]
    fn partial_checksum_is_completed() {
        let mut pkt = ipv4_tcp(333, 0x10);
        // What the kernel leaves: the pseudo-header sum, not complemented.
        let len = (pkt.len() - 20) as u64;
        let pseudo = !fold(sum(0, &pkt[12..20]) + 6 + len);
        pkt[36..38].copy_from_slice(&pseudo.to_be_bytes());
        ipv4_header_checksum(&mut pkt[..20]);
        complete_checksum(&mut pkt, 20, 16).unwrap();
        assert!(verify_tcp(&pkt));
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1388,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::parse(&h.encode()), Some(h));
    }

    #[test]
    fn truncated_tso_packet_is_refused() {
        let pkt = ipv4_tcp(10, 0x10);
        let mut s = Vec::new();
        assert_eq!(
            segment_tcp(&pkt[..30], 1400, &mut s, |_| {}),
            Err(OffloadError::Truncated)
        );
    }

    #[test]
    fn consecutive_segments_merge_into_one_gso_packet_that_resegments_identically() {
        let big = ipv4_tcp(4200, 0x18);
        let mut big = big;
        big[6] = 0x40; // DF
        let mut scratch = Vec::new();
        let mut segs = Vec::new();
        segment_tcp(&big, 1400, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        let mut c = Coalescer::default();
        let mut out: Vec<(VnetHdr, Vec<u8>)> = Vec::new();
        for s in &segs {
            c.push(s, &mut |h, p| out.push((*h, p.to_vec())));
        }
        c.flush(&mut |h, p| out.push((*h, p.to_vec())));
        assert_eq!(out.len(), 1);
        let (h, p) = &out[0];
        assert_eq!(h.gso_type, GSO_TCPV4);
        assert_eq!(h.gso_size, 1400);
        assert_eq!(p.len(), big.len());
        // Completing the partial checksum yields a valid packet with the payload.
        let mut p = p.clone();
        complete_checksum(&mut p, 20, 16).unwrap();
        assert!(verify_tcp(&p));
        assert_eq!(&p[40..], &big[40..]);
    }

    #[test]
    fn out_of_order_or_other_flows_are_not_merged() {
        let mut a = ipv4_tcp(1000, 0x10);
        a[6] = 0x40;
        let mut b = a.clone();
        b[24..28].copy_from_slice(&5000u32.to_be_bytes()); // a gap
        let mut c = Coalescer::default();
        let mut out = Vec::new();
        c.push(&a, &mut |h, p| out.push((*h, p.to_vec())));
        c.push(&b, &mut |h, p| out.push((*h, p.to_vec())));
        c.flush(&mut |h, p| out.push((*h, p.to_vec())));
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(h, _)| h.gso_type == GSO_NONE));
        assert_eq!(out[0].1, a);
    }
}
