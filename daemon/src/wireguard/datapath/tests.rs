use super::*;

const A_EP: &str = "198.18.0.1:51820";
const B_EP: &str = "198.18.0.2:51820";

struct Node {
    shared: Shared,
    key: KeyPair,
    next: u32,
}

impl Node {
    fn new(seed: u8) -> Self {
        Self {
            shared: Shared {
                table: RwLock::new(Arc::new(Table::default())),
                counters: Counters::default(),
            },
            key: KeyPair::from_secret([seed; 32]),
            next: seed as u32 * 1000,
        }
    }
    fn set_peers(&mut self, peers: &[DesiredPeer]) {
        let old = self.shared.table();
        let mut n = self.next;
        let (t, _) = Table::rebuild(
            &old,
            &self.key,
            peers,
            &mut || {
                n += 1;
                n
            },
            Instant::now(),
        );
        self.next = n;
        *self.shared.table.write().unwrap() = Arc::new(t);
    }
}

fn desired(name: &str, key: &KeyPair, cidr: &str, ep: &str) -> DesiredPeer {
    DesiredPeer {
        node: name.into(),
        key: key.public_bytes(),
        endpoint: ep.parse().unwrap(),
        allowed: vec![cidr.parse().unwrap()],
        lanes: LANES,
    }
}

fn ip_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// Delivers every datagram in `from_sink` to `to`, returning plain packets.
fn deliver(to: &Node, from_ep: &str, from_sink: &mut VecSink, back: &mut VecSink) -> Vec<Vec<u8>> {
    let mut plain_out = Vec::new();
    let table = to.shared.table();
    for (d, dst) in std::mem::take(&mut from_sink.out) {
        // The lane is the port the datagram was sent to (base port + lane).
        let lane = (dst.port() - 51820) as usize;
        assert!(lane < LANES, "datagram to {dst}: not a lane port");
        let mut plain = vec![0u8; d.len().max(148) + 64];
        if let RxVerdict::Deliver(n) = decapsulate(
            &to.shared,
            &table,
            lane,
            from_ep.parse().unwrap(),
            &d,
            &mut plain,
            back,
        ) {
            plain_out.push(plain[..n].to_vec());
        }
    }
    plain_out
}

fn pair() -> (Node, Node) {
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    let bk = b.key.clone();
    let ak = a.key.clone();
    a.set_peers(&[desired("b", &bk, "10.244.1.0/24", B_EP)]);
    b.set_peers(&[desired("a", &ak, "10.244.0.0/24", A_EP)]);
    (a, b)
}

/// Brings up every lane between a and b (a initiates on each).
fn up(a: &Node, b: &Node) {
    let mut sa = VecSink::default();
    let mut sb = VecSink::default();
    let t = a.shared.table();
    for p in &t.slots[0].current {
        kick(&t, p, &mut sa);
    }
    for _ in 0..3 {
        deliver(b, A_EP, &mut sa, &mut sb);
        deliver(a, B_EP, &mut sb, &mut sa);
    }
    assert!(a.shared.table().slots[0].established());
}

/// Runs the handshake by sending `first` from a to b, then ping-pongs.
fn exchange(a: &Node, b: &Node, pkt: &[u8]) -> Vec<Vec<u8>> {
    let mut sa = VecSink::default();
    let mut sb = VecSink::default();
    let t = a.shared.table();
    encapsulate(&a.shared, &t, pkt, &mut sa);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend(deliver(b, A_EP, &mut sa, &mut sb));
        got.extend(deliver(a, B_EP, &mut sb, &mut sa));
    }
    got
}

#[test]
fn first_packet_waits_for_the_handshake_then_arrives_encrypted() {
    let (a, b) = pair();
    let pkt = ip_packet([10, 244, 0, 2], [10, 244, 1, 2], b"hello pod b");
    let mut sa = VecSink::default();
    let t = a.shared.table();
    assert_eq!(
        encapsulate(&a.shared, &t, &pkt, &mut sa),
        TxVerdict::AwaitingSession
    );
    // Only a handshake initiation left the node; no plaintext.
    assert_eq!(sa.out.len(), 1);
    assert_eq!(sa.out[0].0.len(), 148);
    assert!(!sa.out[0].0.windows(11).any(|w| w == b"hello pod b"));
    let mut sb = VecSink::default();
    assert!(deliver(&b, A_EP, &mut sa, &mut sb).is_empty());
    // b answered; a completes and flushes the queued packet.
    let _ = deliver(&a, B_EP, &mut sb, &mut sa);
    assert!(sa
        .out
        .iter()
        .all(|(d, _)| !d.windows(11).any(|w| w == b"hello pod b")));
    let got = deliver(&b, A_EP, &mut sa, &mut sb);
    assert_eq!(got, vec![pkt]);
}

#[test]
fn packet_for_no_peer_is_dropped_and_counted() {
    let (a, _b) = pair();
    let pkt = ip_packet([10, 244, 0, 2], [10, 244, 9, 2], b"x");
    let mut sa = VecSink::default();
    let t = a.shared.table();
    assert_eq!(encapsulate(&a.shared, &t, &pkt, &mut sa), TxVerdict::NoPeer);
    assert!(sa.out.is_empty());
    assert_eq!(a.shared.counters.dropped_no_peer.get(), 1);
}

#[test]
fn spoofed_source_outside_allowed_ips_is_dropped() {
    let (a, b) = pair();
    up(&a, &b);
    let good = ip_packet([10, 244, 0, 2], [10, 244, 1, 2], b"ok");
    assert_eq!(exchange(&a, &b, &good), vec![good]);
    let bad = ip_packet([10, 244, 7, 2], [10, 244, 1, 2], b"spoof");
    let mut sa = VecSink::default();
    let t = a.shared.table();
    assert_eq!(encapsulate(&a.shared, &t, &bad, &mut sa), TxVerdict::Sent);
    let mut sb = VecSink::default();
    assert!(deliver(&b, A_EP, &mut sa, &mut sb).is_empty());
    assert_eq!(b.shared.counters.dropped_bad_source.get(), 1);
}

#[test]
fn both_directions_carry_traffic_after_handshake() {
    let (a, b) = pair();
    let p1 = ip_packet([10, 244, 0, 2], [10, 244, 1, 2], &[7u8; 1400]);
    assert_eq!(exchange(&a, &b, &p1), vec![p1.clone()]);
    let p2 = ip_packet([10, 244, 1, 2], [10, 244, 0, 2], &[9u8; 1000]);
    assert_eq!(exchange(&b, &a, &p2), vec![p2]);
    let t = a.shared.table();
    assert!(t.slots[0].current[flow_lane(&p1)]
        .established
        .load(Ordering::Relaxed));
}

/// A packet of a TCP flow from a's pod to b's pod with source port `sp`.
fn tcp_packet(sp: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = ip_packet([10, 244, 0, 2], [10, 244, 1, 2], &[0u8; 20]);
    p[9] = 6;
    p[20..22].copy_from_slice(&sp.to_be_bytes());
    p[22..24].copy_from_slice(&80u16.to_be_bytes());
    p[32] = 5 << 4;
    p.extend_from_slice(payload);
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p
}

#[test]
fn flows_on_different_lanes_use_their_own_session_and_port() {
    let (a, b) = pair();
    // Two flows that hash to different lanes.
    let f1 = tcp_packet(40_000, b"one");
    let f2 = (40_001..)
        .map(|sp| tcp_packet(sp, b"two"))
        .find(|p| flow_lane(p) != flow_lane(&f1))
        .unwrap();
    let (l1, l2) = (flow_lane(&f1), flow_lane(&f2));
    assert_eq!(exchange(&a, &b, &f1), vec![f1.clone()]);
    assert_eq!(exchange(&a, &b, &f2), vec![f2.clone()]);
    let ta = a.shared.table();
    let lanes = &ta.slots[0].current;
    assert!(lanes[l1].established.load(Ordering::Relaxed));
    assert!(lanes[l2].established.load(Ordering::Relaxed));
    assert_ne!(lanes[l1].index, lanes[l2].index);
    // Each flow's datagrams go to its own lane port, in order.
    let mut sa = VecSink::default();
    let f2_port = u16::from_be_bytes([f2[20], f2[21]]);
    for i in 0..5u8 {
        for (sp, tag) in [(40_000, b"one"), (f2_port, b"two")] {
            let p = tcp_packet(sp, &[tag[0], tag[1], tag[2], i]);
            encapsulate(&a.shared, &ta, &p, &mut sa);
        }
    }
    let ports: Vec<u16> = sa.out.iter().map(|(_, to)| to.port()).collect();
    assert_eq!(ports.len(), 10);
    for (i, port) in ports.iter().enumerate() {
        let lane = if i % 2 == 0 { l1 } else { l2 };
        assert_eq!(*port as usize, 51820 + lane);
    }
    let mut sb = VecSink::default();
    let got = deliver(&b, A_EP, &mut sa, &mut sb);
    let firsts: Vec<u8> = got
        .iter()
        .filter(|p| p[40..43] == *b"one")
        .map(|p| p[43])
        .collect();
    assert_eq!(firsts, vec![0, 1, 2, 3, 4], "order within the flow");
    assert_eq!(got.len(), 10);
}

#[test]
fn key_rotation_keeps_traffic_flowing_make_before_break() {
    let (mut a, mut b) = pair();
    up(&a, &b);
    let p = ip_packet([10, 244, 0, 2], [10, 244, 1, 2], b"before");
    assert_eq!(exchange(&a, &b, &p), vec![p]);
    // a rotates: the old Tunn keeps sending until the new one is up.
    a.key = KeyPair::from_secret([3; 32]);
    let bk = b.key.clone();
    a.set_peers(&[desired("b", &bk, "10.244.1.0/24", B_EP)]);
    let t = a.shared.table();
    assert!(t.slots[0].retiring.is_some());
    assert_eq!(t.keys.len(), 2);
    let p = ip_packet([10, 244, 0, 2], [10, 244, 1, 2], b"during");
    let mut sa = VecSink::default();
    assert_eq!(encapsulate(&a.shared, &t, &p, &mut sa), TxVerdict::Sent);
    let mut sb = VecSink::default();
    assert_eq!(deliver(&b, A_EP, &mut sa, &mut sb), vec![p]);
    // b learns a's new key; its new Tunn handshakes with a's new key.
    let ak = a.key.clone();
    b.set_peers(&[desired("a", &ak, "10.244.0.0/24", A_EP)]);
    let tb = b.shared.table();
    assert!(tb.slots[0].retiring.is_some());
    for p in &tb.slots[0].current {
        kick(&tb, p, &mut sb);
    }
    for _ in 0..3 {
        deliver(&a, B_EP, &mut sb, &mut sa);
        deliver(&b, A_EP, &mut sa, &mut sb);
    }
    let ta = a.shared.table();
    assert!(ta.slots[0].established());
    let p = ip_packet([10, 244, 0, 2], [10, 244, 1, 2], b"after");
    assert_eq!(exchange(&a, &b, &p), vec![p]);
    for l in 0..LANES {
        assert!(Arc::ptr_eq(ta.slots[0].sender(l), &ta.slots[0].current[l]));
    }
}

#[test]
fn handshake_from_an_unknown_key_is_refused_and_counted() {
    let (a, _b) = pair();
    let mut c = Node::new(5);
    let ak = a.key.clone();
    c.set_peers(&[desired("a", &ak, "10.244.0.0/24", A_EP)]);
    let pkt = ip_packet([10, 244, 5, 2], [10, 244, 0, 2], b"intruder");
    let mut sc = VecSink::default();
    let t = c.shared.table();
    encapsulate(&c.shared, &t, &pkt, &mut sc);
    let mut sa = VecSink::default();
    assert!(deliver(&a, "198.18.0.5:51820", &mut sc, &mut sa).is_empty());
    assert!(sa.out.is_empty());
    assert_eq!(a.shared.counters.handshake_failures.get(), 1);
}

#[test]
fn a_peer_with_one_lane_gets_every_flow_on_its_endpoint_port() {
    // A node from before lanes publishes no lane count (1): every flow to
    // it, whatever its hash, goes to the endpoint's port and arrives.
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    let (ak, bk) = (a.key.clone(), b.key.clone());
    let one = |mut d: DesiredPeer| {
        d.lanes = 1;
        d
    };
    a.set_peers(&[one(desired("b", &bk, "10.244.1.0/24", B_EP))]);
    b.set_peers(&[one(desired("a", &ak, "10.244.0.0/24", A_EP))]);
    assert_eq!(a.shared.table().slots[0].current.len(), 1);
    let f1 = tcp_packet(40_000, b"one");
    let f2 = (40_001..)
        .map(|sp| tcp_packet(sp, b"two"))
        .find(|p| flow_lane(p) != flow_lane(&f1))
        .unwrap();
    assert_eq!(exchange(&a, &b, &f1), vec![f1.clone()]);
    let mut sa = VecSink::default();
    let ta = a.shared.table();
    encapsulate(&a.shared, &ta, &f2, &mut sa);
    assert_eq!(sa.out.len(), 1);
    assert_eq!(sa.out[0].1.port(), 51820);
    let mut sb = VecSink::default();
    assert_eq!(deliver(&b, A_EP, &mut sa, &mut sb), vec![f2]);
}

#[test]
fn lane_count_is_what_both_sides_have() {
    assert_eq!(lane_count(1), 1);
    assert_eq!(lane_count(2), 2);
    assert_eq!(lane_count(LANES), LANES);
    assert_eq!(lane_count(LANES + 10), LANES);
    assert_eq!(lane_count(0), 1);
}

#[test]
fn idle_lanes_do_not_make_a_reached_peer_read_unreachable() {
    let (a, b) = pair();
    let slot = || a.shared.table().slots[0].clone();
    assert!(!slot().reached(), "no handshake yet");
    assert_eq!(slot().lanes_sending(), 0);
    // One flow: one lane gets a session, the others stay idle.
    let f = tcp_packet(40_000, b"one");
    assert_eq!(exchange(&a, &b, &f), vec![f.clone()]);
    assert_eq!(slot().lanes_sending(), 1);
    assert!(!slot().sending(), "the idle lanes have no session");
    assert!(slot().reached());
}
