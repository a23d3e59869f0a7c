//! Lanes: the several WireGuard sessions between two nodes, and which one a
//! packet takes (pure functions, no IO).
//!
//! One session per node pair would put every flow between two nodes on one
//! `Tunn` (one lock, one nonce counter) and one UDP 5-tuple, which the
//! receiving kernel hands to one socket, one thread and, with RSS/RPS, one
//! CPU. With [`LANES`] sessions on ports `port + lane`, flows spread over
//! sessions, sockets, threads and receive queues, while a flow stays on one
//! lane (a symmetric hash of its addresses and ports), so its packets keep
//! their order and both directions take the same lane.
//!
//! What it does not do: create sockets (see `startup`) or choose threads
//! (lane `l` is received by thread `l % threads`, see `io`).

use std::net::SocketAddr;

/// Sessions (and UDP ports) between two nodes. Every node must use the same
/// number: lane `l` of a peer is reached at its endpoint port + `l`.
pub const LANES: usize = 4;

/// The lanes used with a peer that listens on `published` lanes: as many as
/// both sides have (both ends compute the same number, so a flow hashes to
/// the same lane in both directions).
pub fn lane_count(published: usize) -> usize {
    published.clamp(1, LANES)
}

/// The address of `lane` of a peer whose lane 0 is at `base`.
pub fn lane_endpoint(base: SocketAddr, lane: usize) -> SocketAddr {
    SocketAddr::new(base.ip(), base.port().wrapping_add(lane as u16))
}

/// The UDP ports of every lane when lane 0 is `base`.
pub fn ports(base: u16) -> Vec<u16> {
    (0..LANES as u16)
        .filter_map(|l| base.checked_add(l))
        .collect()
}

/// Whether `port` is one of the lane ports of `base`.
pub fn is_lane_port(base: u16, port: u16) -> bool {
    port >= base && ((port - base) as usize) < LANES
}

/// The lane of an IP packet: a hash of its addresses, protocol and ports
/// that is the same in both directions; ports are left out for fragments
/// (which carry none), so every fragment of a packet takes the same lane.
pub fn flow_lane(pkt: &[u8]) -> usize {
    let (a, b, proto, l4): (&[u8], &[u8], u8, Option<usize>) = match pkt.first().map(|v| v >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let frag = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0;
            let ihl = ((pkt[0] & 0x0f) as usize) * 4;
            (&pkt[12..16], &pkt[16..20], pkt[9], (!frag).then_some(ihl))
        }
        Some(6) if pkt.len() >= 40 => (&pkt[8..24], &pkt[24..40], pkt[6], Some(40)),
        _ => return 0,
    };
    let ports = match (proto, l4) {
        (6 | 17 | 132, Some(o)) if pkt.len() >= o + 4 => {
            let sp = u16::from_be_bytes([pkt[o], pkt[o + 1]]);
            let dp = u16::from_be_bytes([pkt[o + 2], pkt[o + 3]]);
            (sp ^ dp) as u64 | ((sp as u64 + dp as u64) << 16)
        }
        _ => 0,
    };
    // Symmetric: XOR and sum of both addresses do not depend on the order.
    let fold = |x: &[u8]| {
        x.chunks(4).fold(0u64, |acc, c| {
            acc.wrapping_mul(31)
                .wrapping_add(u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64)
        })
    };
    let (fa, fb) = (fold(a), fold(b));
    let mut h =
        (fa ^ fb) ^ fa.wrapping_add(fb).rotate_left(29) ^ ports.rotate_left(7) ^ proto as u64;
    // splitmix64 finalizer.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h % LANES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[6] = 0x40;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sp.to_be_bytes());
        p[22..24].copy_from_slice(&dp.to_be_bytes());
        p
    }

    #[test]
    fn both_directions_of_a_flow_take_the_same_lane() {
        for sp in 40_000..40_200 {
            let there = tcp4([10, 244, 0, 2], [10, 244, 1, 2], sp, 7000);
            let back = tcp4([10, 244, 1, 2], [10, 244, 0, 2], 7000, sp);
            assert_eq!(flow_lane(&there), flow_lane(&back), "port {sp}");
        }
    }

    #[test]
    fn flows_spread_over_every_lane() {
        let mut count = [0usize; LANES];
        for sp in 40_000..41_000 {
            count[flow_lane(&tcp4([10, 244, 0, 2], [10, 244, 1, 2], sp, 5201))] += 1;
        }
        for (l, n) in count.iter().enumerate() {
            assert!(
                *n > 1000 / LANES / 2,
                "lane {l} got {n} of 1000 flows: {count:?}"
            );
        }
    }

    #[test]
    fn fragments_of_a_packet_share_a_lane_whatever_their_ports() {
        let mut first = tcp4([10, 244, 0, 2], [10, 244, 1, 2], 1, 2);
        first[6] = 0x20; // MF
        let mut later = tcp4([10, 244, 0, 2], [10, 244, 1, 2], 999, 888);
        later[6] = 0x00;
        later[7] = 0x10; // offset
        assert_eq!(flow_lane(&first), flow_lane(&later));
    }

    #[test]
    fn garbage_goes_to_lane_zero_and_lanes_have_consecutive_ports() {
        assert_eq!(flow_lane(&[]), 0);
        assert_eq!(flow_lane(&[0x45, 0, 0]), 0);
        let base: SocketAddr = "198.18.0.1:51820".parse().unwrap();
        assert_eq!(lane_endpoint(base, 3), "198.18.0.1:51823".parse().unwrap());
        assert_eq!(ports(51820), vec![51820, 51821, 51822, 51823]);
        assert!(is_lane_port(51820, 51823) && !is_lane_port(51820, 51824));
        assert!(!is_lane_port(51820, 51819));
    }
}
