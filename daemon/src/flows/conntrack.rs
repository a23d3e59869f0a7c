//! Conntrack over netlink: the wire format of ctnetlink messages (parsed by
//! hand: a handful of nested attributes) and the Linux [`ConntrackSource`]
//! that subscribes to new/destroy events and dumps the table.
//!
//! The socket is opened in the calling thread's network namespace, which for
//! `veild` is the node's. Receive buffers are large (32 MiB, forced when the
//! process may); when the kernel still overruns them, `recv` fails with
//! ENOBUFS and [`Received::Overrun`] is reported, never ignored.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use veil_graph::{Counters, FlowEvent, Protocol};

/// Netlink protocol number of netfilter.
const NETLINK_NETFILTER: isize = 12;
/// ctnetlink subsystem.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// Multicast groups.
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_COUNTERS32_PACKETS: u16 = 3;
const CTA_COUNTERS32_BYTES: u16 = 4;

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    /// Protocol.
    pub protocol: Protocol,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 for port-less protocols).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// One conntrack entry as an event or a dump reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEntry {
    /// New (event), destroy (event) or update (dump).
    pub event: FlowEvent,
    /// As the initiator sent it.
    pub orig: Tuple,
    /// As the responder answers (differs from `orig` under NAT).
    pub reply: Tuple,
    /// Counters: `sent` from the original direction, `received` from the reply.
    pub counters: Counters,
    /// Conntrack id.
    pub id: u32,
}

/// A ctnetlink message that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than its headers say.
    #[error("conntrack message truncated at byte {0}")]
    Truncated(usize),
    /// A tuple lacks an address or protocol.
    #[error("conntrack message: {0} tuple incomplete")]
    IncompleteTuple(&'static str),
    /// The kernel answered a request with an error.
    #[error("conntrack request failed: errno {0}")]
    Errno(i32),
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Iterates over the netlink attributes in `b`: (type without flags, payload).
fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let len = usize::from(u16_ne(b, off)?);
        let ty = u16_ne(b, off + 2)? & 0x3fff;
        if len < 4 || off + len > b.len() {
            return None;
        }
        let payload = &b[off + 4..off + len];
        off += (len + 3) & !3;
        Some((ty, payload))
    })
}

fn be_uint(b: &[u8]) -> u64 {
    b.iter().take(8).fold(0u64, |a, &x| (a << 8) | u64::from(x))
}

fn parse_tuple(b: &[u8], which: &'static str) -> Result<Tuple, ParseError> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0u16, 0u16);
    for (ty, p) in attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, a) in attrs(p) {
                    let ip = match (ty, a.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
                        }
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            let mut o = [0u8; 16];
                            o.copy_from_slice(a);
                            IpAddr::V6(Ipv6Addr::from(o))
                        }
                        _ => continue,
                    };
                    if matches!(ty, CTA_IP_V4_SRC | CTA_IP_V6_SRC) {
                        src = Some(ip);
                    } else {
                        dst = Some(ip);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, a) in attrs(p) {
                    match ty {
                        CTA_PROTO_NUM if !a.is_empty() => proto = Some(a[0]),
                        CTA_PROTO_SRC_PORT if a.len() == 2 => sport = be_uint(a) as u16,
                        CTA_PROTO_DST_PORT if a.len() == 2 => dport = be_uint(a) as u16,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (src, dst, proto) {
        (Some(src), Some(dst), Some(p)) => Ok(Tuple {
            protocol: Protocol::from_number(p),
            src,
            dst,
            src_port: sport,
            dst_port: dport,
        }),
        _ => Err(ParseError::IncompleteTuple(which)),
    }
}

fn parse_counters(b: &[u8]) -> (u64, u64) {
    let (mut packets, mut bytes) = (0, 0);
    for (ty, p) in attrs(b) {
        match ty {
            CTA_COUNTERS_PACKETS | CTA_COUNTERS32_PACKETS => packets = be_uint(p),
            CTA_COUNTERS_BYTES | CTA_COUNTERS32_BYTES => bytes = be_uint(p),
            _ => {}
        }
    }
    (packets, bytes)
}

/// What one netlink message was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A conntrack entry.
    Entry(CtEntry),
    /// End of a dump.
    Done,
    /// An acknowledgement (errno 0) or something that is not a conntrack entry.
    Other,
    /// The dump was interrupted by a change of the table; retry it.
    Interrupted,
}

/// Parses every netlink message in one datagram. `dump` says whether the
/// datagram answers a dump request (entries are then [`FlowEvent::Update`]).
pub fn parse_datagram(buf: &[u8], dump: bool) -> Vec<Result<Message, ParseError>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 16 <= buf.len() {
        let Some(len) = u32_ne(buf, off).map(|l| l as usize) else {
            break;
        };
        if len < 16 || off + len > buf.len() {
            out.push(Err(ParseError::Truncated(off)));
            break;
        }
        let ty = u16_ne(buf, off + 4).unwrap_or(0);
        let flags = u16_ne(buf, off + 6).unwrap_or(0);
        let msg = &buf[off..off + len];
        out.push(parse_message(ty, flags, msg, dump));
        off += (len + 3) & !3;
    }
    out
}

fn parse_message(ty: u16, flags: u16, msg: &[u8], dump: bool) -> Result<Message, ParseError> {
    if flags & NLM_F_DUMP_INTR != 0 {
        return Ok(Message::Interrupted);
    }
    match ty {
        NLMSG_DONE => return Ok(Message::Done),
        NLMSG_ERROR => {
            let errno = u32_ne(msg, 16).ok_or(ParseError::Truncated(16))? as i32;
            return if errno == 0 {
                Ok(Message::Other)
            } else {
                Err(ParseError::Errno(-errno))
            };
        }
        _ => {}
    }
    if ty >> 8 != NFNL_SUBSYS_CTNETLINK {
        return Ok(Message::Other);
    }
    let event = match (ty & 0xff, dump) {
        (IPCTNL_MSG_CT_NEW, true) => FlowEvent::Update,
        (IPCTNL_MSG_CT_NEW, false) if flags & NLM_F_CREATE != 0 => FlowEvent::New,
        (IPCTNL_MSG_CT_NEW, false) => FlowEvent::Update,
        (IPCTNL_MSG_CT_DELETE, _) => FlowEvent::Destroy,
        _ => return Ok(Message::Other),
    };
    // nlmsghdr (16) + nfgenmsg (4).
    let body = msg.get(20..).ok_or(ParseError::Truncated(20))?;
    let (mut orig, mut reply, mut id) = (None, None, 0u32);
    let mut counters = Counters::default();
    for (ty, p) in attrs(body) {
        match ty {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(p, "original")?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(p, "reply")?),
            CTA_COUNTERS_ORIG => {
                (counters.packets_sent, counters.bytes_sent) = parse_counters(p);
            }
            CTA_COUNTERS_REPLY => {
                (counters.packets_received, counters.bytes_received) = parse_counters(p);
            }
            CTA_ID if p.len() == 4 => id = be_uint(p) as u32,
            _ => {}
        }
    }
    let orig = orig.ok_or(ParseError::IncompleteTuple("original"))?;
    let reply = reply.unwrap_or(Tuple {
        protocol: orig.protocol,
        src: orig.dst,
        dst: orig.src,
        src_port: orig.dst_port,
        dst_port: orig.src_port,
    });
    Ok(Message::Entry(CtEntry {
        event,
        orig,
        reply,
        counters,
        id,
    }))
}

/// What a receive produced.
#[derive(Debug)]
pub enum Received {
    /// Entries (possibly none: acknowledgements, foreign messages).
    Entries(Vec<CtEntry>),
    /// The kernel dropped events because the receive buffer was full.
    Overrun,
    /// Nothing arrived in time.
    Timeout,
}

/// Collector failures.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A socket operation failed.
    #[error("conntrack netlink socket: {what}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel's answer did not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A dump kept being interrupted.
    #[error("conntrack dump interrupted {0} times in a row")]
    DumpInterrupted(u32),
}

/// Where conntrack entries come from (the kernel, or a fake in tests).
pub trait ConntrackSource: Send {
    /// Waits up to `timeout` for events.
    fn recv(&mut self, timeout: Duration) -> Result<Received, SourceError>;
    /// Reads the whole table (every entry as [`FlowEvent::Update`]).
    fn dump(&mut self) -> Result<Vec<CtEntry>, SourceError>;
}

/// The kernel's conntrack, in the current network namespace.
pub struct NetlinkConntrack {
    events: netlink_sys::Socket,
    buf: Vec<u8>,
    seq: u32,
}

fn sock_err(what: &'static str) -> impl FnOnce(io::Error) -> SourceError {
    move |source| SourceError::Socket { what, source }
}

impl NetlinkConntrack {
    /// Subscribes to new and destroy events with a receive buffer of `rcvbuf` bytes.
    pub fn open(rcvbuf: usize) -> Result<Self, SourceError> {
        let mut s = netlink_sys::Socket::new(NETLINK_NETFILTER).map_err(sock_err("socket"))?;
        s.bind_auto().map_err(sock_err("bind"))?;
        for g in [NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY] {
            s.add_membership(g)
                .map_err(sock_err("join conntrack event group"))?;
        }
        let size = i32::try_from(rcvbuf).unwrap_or(i32::MAX);
        // SO_RCVBUFFORCE passes the rmem_max limit (needs CAP_NET_ADMIN);
        // fall back to SO_RCVBUF, which the kernel caps.
        if nix::sys::socket::setsockopt(
            &s,
            nix::sys::socket::sockopt::RcvBufForce,
            &(size as usize),
        )
        .is_err()
        {
            s.set_rx_buf_sz(size)
                .map_err(sock_err("set receive buffer"))?;
        }
        Ok(NetlinkConntrack {
            events: s,
            buf: vec![0u8; 1 << 18],
            seq: 1,
        })
    }

    /// The receive buffer the kernel granted.
    pub fn receive_buffer(&self) -> usize {
        self.events.get_rx_buf_sz().unwrap_or(0)
    }
}

fn set_timeout(s: &netlink_sys::Socket, t: Duration) -> Result<(), SourceError> {
    let t = if t.is_zero() {
        Duration::from_millis(1)
    } else {
        t
    };
    nix::sys::socket::setsockopt(
        s,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(t.as_secs() as _, t.subsec_micros() as _),
    )
    .map_err(|e| SourceError::Socket {
        what: "set receive timeout",
        source: io::Error::from(e),
    })
}

impl ConntrackSource for NetlinkConntrack {
    fn recv(&mut self, timeout: Duration) -> Result<Received, SourceError> {
        set_timeout(&self.events, timeout)?;
        let n = match self.events.recv(&mut &mut self.buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Received::Overrun),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) || e.raw_os_error() == Some(libc::EINTR) =>
            {
                return Ok(Received::Timeout)
            }
            Err(e) => return Err(sock_err("receive events")(e)),
        };
        let mut entries = Vec::new();
        for m in parse_datagram(&self.buf[..n.min(self.buf.len())], false) {
            match m {
                Ok(Message::Entry(e)) => entries.push(e),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "skipping conntrack message"),
            }
        }
        Ok(Received::Entries(entries))
    }

    fn dump(&mut self) -> Result<Vec<CtEntry>, SourceError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.dump_once()? {
                Some(v) => return Ok(v),
                None if attempts < 5 => continue,
                None => return Err(SourceError::DumpInterrupted(attempts)),
            }
        }
    }
}

impl NetlinkConntrack {
    /// One dump on a fresh socket; `None` when interrupted.
    fn dump_once(&mut self) -> Result<Option<Vec<CtEntry>>, SourceError> {
        let mut s = netlink_sys::Socket::new(NETLINK_NETFILTER).map_err(sock_err("socket"))?;
        s.bind_auto().map_err(sock_err("bind"))?;
        let _ = s.set_rx_buf_sz(4 << 20);
        set_timeout(&s, Duration::from_secs(5))?;
        self.seq = self.seq.wrapping_add(1);
        let mut req = Vec::with_capacity(20);
        req.extend_from_slice(&20u32.to_ne_bytes());
        req.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: AF_UNSPEC (every family), version 0, res_id 0.
        req.extend_from_slice(&[0, 0, 0, 0]);
        s.send_to(&req, &netlink_sys::SocketAddr::new(0, 0), 0)
            .map_err(sock_err("send dump request"))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 18];
        loop {
            let n = s
                .recv(&mut &mut buf[..], 0)
                .map_err(sock_err("receive dump"))?;
            let mut multi_seen = false;
            for m in parse_datagram(&buf[..n.min(buf.len())], true) {
                match m? {
                    Message::Entry(e) => {
                        out.push(e);
                        multi_seen = true;
                    }
                    Message::Done => return Ok(Some(out)),
                    Message::Interrupted => return Ok(None),
                    Message::Other => {}
                }
            }
            let _ = (multi_seen, NLM_F_MULTI);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((payload.len() + 4) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn nested(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        nla(ty | 0x8000, &parts.concat())
    }

    fn tuple(ty: u16, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        nested(
            ty,
            &[
                nested(
                    CTA_TUPLE_IP,
                    &[nla(CTA_IP_V4_SRC, &src), nla(CTA_IP_V4_DST, &dst)],
                ),
                nested(
                    CTA_TUPLE_PROTO,
                    &[
                        nla(CTA_PROTO_NUM, &[6]),
                        nla(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
                        nla(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
                    ],
                ),
            ],
        )
    }

    /// A ctnetlink message as the kernel sends it.
    pub(crate) fn message(kind: u16, flags: u16, id: u32, bytes: u64) -> Vec<u8> {
        let body = [
            vec![2, 0, 0, 0],
            tuple(CTA_TUPLE_ORIG, [10, 244, 0, 2], [10, 96, 0, 10], 40000, 80),
            tuple(
                CTA_TUPLE_REPLY,
                [10, 244, 1, 5],
                [10, 244, 0, 2],
                8080,
                40000,
            ),
            nested(
                CTA_COUNTERS_ORIG,
                &[
                    nla(CTA_COUNTERS_PACKETS, &3u64.to_be_bytes()),
                    nla(CTA_COUNTERS_BYTES, &bytes.to_be_bytes()),
                ],
            ),
            nested(
                CTA_COUNTERS_REPLY,
                &[
                    nla(CTA_COUNTERS_PACKETS, &2u64.to_be_bytes()),
                    nla(CTA_COUNTERS_BYTES, &(bytes * 10).to_be_bytes()),
                ],
            ),
            nla(CTA_ID, &id.to_be_bytes()),
        ]
        .concat();
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn parses_a_new_event_with_nat_and_counters() {
        let m = message(IPCTNL_MSG_CT_NEW, NLM_F_CREATE, 77, 120);
        let r = parse_datagram(&m, false);
        let Ok(Message::Entry(e)) = &r[0] else {
            panic!("{r:?}")
        };
        assert_eq!(e.event, FlowEvent::New);
        assert_eq!(e.orig.src, "10.244.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(e.orig.dst_port, 80);
        assert_eq!(e.reply.src, "10.244.1.5".parse::<IpAddr>().unwrap());
        assert_eq!(e.reply.src_port, 8080);
        assert_eq!(e.orig.protocol, Protocol::Tcp);
        assert_eq!(e.id, 77);
        assert_eq!(e.counters.bytes_sent, 120);
        assert_eq!(e.counters.packets_received, 2);
        assert_eq!(e.counters.bytes_received, 1200);
    }

    #[test]
    fn destroy_and_dump_messages_map_to_their_events() {
        let d = message(IPCTNL_MSG_CT_DELETE, 0, 1, 1);
        assert!(
            matches!(&parse_datagram(&d, false)[0], Ok(Message::Entry(e)) if e.event == FlowEvent::Destroy)
        );
        let u = message(IPCTNL_MSG_CT_NEW, NLM_F_MULTI, 1, 1);
        assert!(
            matches!(&parse_datagram(&u, true)[0], Ok(Message::Entry(e)) if e.event == FlowEvent::Update)
        );
        let two = [d.clone(), u].concat();
        assert_eq!(parse_datagram(&two, false).len(), 2);
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_not_a_panic() {
        let m = message(IPCTNL_MSG_CT_NEW, NLM_F_CREATE, 77, 120);
        for cut in 0..m.len() {
            let _ = parse_datagram(&m[..cut], false);
        }
        let mut bad = m.clone();
        bad[0] = 0xff;
        assert!(parse_datagram(&bad, false)[0].is_err());
        let mut x: u32 = 1;
        for _ in 0..2000 {
            let mut g = m.clone();
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = 16 + (x as usize >> 8) % (g.len() - 16);
            g[i] ^= (x >> 3) as u8;
            let _ = parse_datagram(&g, false);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = parse_datagram(&b, false);
            let _ = parse_datagram(&b, true);
        }
    }
}
