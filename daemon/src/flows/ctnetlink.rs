//! ctnetlink messages: decoding the kernel's conntrack events and dump
//! answers into [`CtEntry`] values, and encoding the dump request.
//!
//! The netlink framing, the nfgenmsg header, the tuples (addresses, protocol,
//! ports) and the TCP protocol information are decoded by the
//! `netlink-packet-netfilter` crate. That crate (0.4) has no attribute type for
//! `CTA_COUNTERS_ORIG` / `CTA_COUNTERS_REPLY` (nested packet and byte counts)
//! nor `CTA_ID`: it hands them over as raw attributes, and only those are
//! parsed by hand here. This module does no IO.

use netlink_packet_core::{
    DefaultNla, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NlasIterator,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
    Tuple as NfTuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use veil_graph::{Counters, FlowEvent, Protocol};

use super::conntrack::{CtEntry, Tuple};

/// Attributes the crate passes through raw (see the module documentation).
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_COUNTERS32_PACKETS: u16 = 3;
const CTA_COUNTERS32_BYTES: u16 = 4;
/// Attribute type without the nested / byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// TCP conntrack states after which a connection is over.
const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
const TCP_CONNTRACK_CLOSE: u8 = 8;

/// A ctnetlink message that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than its headers say.
    #[error("conntrack message truncated at byte {0}")]
    Truncated(usize),
    /// The message's attributes do not decode.
    #[error("conntrack message at byte {at}: {reason}")]
    Decode {
        /// Offset of the message in its datagram.
        at: usize,
        /// The decoder's explanation.
        reason: String,
    },
    /// A tuple lacks an address or protocol.
    #[error("conntrack message: {0} tuple incomplete")]
    IncompleteTuple(&'static str),
    /// The kernel answered a request with an error.
    #[error("conntrack request failed: errno {0}")]
    Errno(i32),
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
        let rest = &buf[off..];
        let len = match NetlinkBuffer::new_checked(rest) {
            Ok(b) => b.length() as usize,
            Err(_) => {
                out.push(Err(ParseError::Truncated(off)));
                break;
            }
        };
        out.push(parse_message(&rest[..len], off, dump));
        off += (len + 3) & !3;
    }
    out
}

fn parse_message(msg: &[u8], at: usize, dump: bool) -> Result<Message, ParseError> {
    let decode = |e: netlink_packet_core::DecodeError| ParseError::Decode {
        at,
        reason: e.to_string(),
    };
    let m = NetlinkMessage::<NetfilterMessage>::deserialize(msg).map_err(decode)?;
    let flags = m.header.flags;
    if flags & NLM_F_DUMP_INTR != 0 {
        return Ok(Message::Interrupted);
    }
    let ct = match m.payload {
        NetlinkPayload::Done(_) => return Ok(Message::Done),
        NetlinkPayload::Error(e) => {
            return match e.code {
                None => Ok(Message::Other),
                Some(c) => Err(ParseError::Errno(-c.get())),
            }
        }
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ct),
            ..
        }) => ct,
        _ => return Ok(Message::Other),
    };
    let (event, attrs) = match (ct, dump) {
        (ConntrackMessage::New(a), true) => (FlowEvent::Update, a),
        (ConntrackMessage::New(a), false) if flags & NLM_F_CREATE != 0 => (FlowEvent::New, a),
        (ConntrackMessage::New(a), false) => (FlowEvent::Update, a),
        (ConntrackMessage::Delete(a), _) => (FlowEvent::Destroy, a),
        _ => return Ok(Message::Other),
    };
    entry(event, &attrs).map(Message::Entry)
}

fn entry(event: FlowEvent, attrs: &[ConntrackAttribute]) -> Result<CtEntry, ParseError> {
    let (mut orig, mut reply, mut id, mut tcp_state) = (None, None, 0u32, None);
    let mut mark = 0u32;
    let mut counters = Counters::default();
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(tuple(t, "original")?),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(tuple(t, "reply")?),
            ConntrackAttribute::CtaMark(m) => mark = *m,
            ConntrackAttribute::CtaProtoInfo(infos) => {
                for i in infos {
                    if let ProtoInfo::TCP(tcp) = i {
                        for t in tcp {
                            if let ProtoInfoTCP::State(s) = t {
                                tcp_state = Some(*s);
                            }
                        }
                    }
                }
            }
            ConntrackAttribute::Other(nla) => {
                let value = raw_value(nla);
                match nla.kind() & NLA_TYPE_MASK {
                    CTA_COUNTERS_ORIG => {
                        (counters.packets_sent, counters.bytes_sent) = parse_counters(&value);
                    }
                    CTA_COUNTERS_REPLY => {
                        (counters.packets_received, counters.bytes_received) =
                            parse_counters(&value);
                    }
                    CTA_ID if value.len() == 4 => id = be_uint(&value) as u32,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let orig = orig.ok_or(ParseError::IncompleteTuple("original"))?;
    // A TCP connection in TIME_WAIT or CLOSE is over, though still held.
    let event = match (event, tcp_state) {
        (FlowEvent::Update, Some(TCP_CONNTRACK_TIME_WAIT | TCP_CONNTRACK_CLOSE)) => {
            FlowEvent::Closed
        }
        (e, _) => e,
    };
    let reply = reply.unwrap_or(Tuple {
        protocol: orig.protocol,
        src: orig.dst,
        dst: orig.src,
        src_port: orig.dst_port,
        dst_port: orig.src_port,
    });
    Ok(CtEntry {
        event,
        orig,
        reply,
        counters,
        id,
        mark,
    })
}

fn tuple(parts: &[NfTuple], which: &'static str) -> Result<Tuple, ParseError> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0u16, 0u16);
    for p in parts {
        match p {
            NfTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            NfTuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => sport = *n,
                        ProtoTuple::DestinationPort(n) => dport = *n,
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

/// The payload of an attribute the crate kept raw.
fn raw_value(nla: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0u8; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

fn be_uint(b: &[u8]) -> u64 {
    b.iter().take(8).fold(0u64, |a, &x| (a << 8) | u64::from(x))
}

/// (packets, bytes) of a `CTA_COUNTERS_*` nest (64- or 32-bit counters).
fn parse_counters(b: &[u8]) -> (u64, u64) {
    let (mut packets, mut bytes) = (0, 0);
    for nla in NlasIterator::new(b).flatten() {
        match nla.kind() & NLA_TYPE_MASK {
            CTA_COUNTERS_PACKETS | CTA_COUNTERS32_PACKETS => packets = be_uint(nla.value()),
            CTA_COUNTERS_BYTES | CTA_COUNTERS32_BYTES => bytes = be_uint(nla.value()),
            _ => {}
        }
    }
    (packets, bytes)
}

/// The request that dumps the whole table (every address family).
pub fn dump_request(seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            ConntrackMessage::Get(Vec::new()),
        )),
    );
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::IpAddr;

    const CTA_TUPLE_ORIG: u16 = 1;
    const CTA_MARK_ATTR: u16 = 8;
    const CTA_TUPLE_REPLY: u16 = 2;
    const CTA_PROTOINFO: u16 = 4;
    const CTA_PROTOINFO_TCP: u16 = 1;
    const CTA_PROTOINFO_TCP_STATE: u16 = 1;
    const CTA_TUPLE_IP: u16 = 1;
    const CTA_TUPLE_PROTO: u16 = 2;
    const CTA_IP_V4_SRC: u16 = 1;
    const CTA_IP_V4_DST: u16 = 2;
    const CTA_PROTO_NUM: u16 = 1;
    const CTA_PROTO_SRC_PORT: u16 = 2;
    const CTA_PROTO_DST_PORT: u16 = 3;
    const IPCTNL_MSG_CT_NEW: u16 = 0;
    const IPCTNL_MSG_CT_DELETE: u16 = 2;
    const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    const NLM_F_MULTI: u16 = 0x2;

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

    /// A ctnetlink message as the kernel sends it (built by hand, not by
    /// the crate under test).
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
            nla(CTA_MARK_ATTR, &0x0100_3002u32.to_be_bytes()),
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
        assert_eq!(e.mark, 0x0100_3002);
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
    fn a_dumped_tcp_connection_in_time_wait_is_closed() {
        let mut m = message(IPCTNL_MSG_CT_NEW, NLM_F_MULTI, 5, 10);
        let info = nested(
            CTA_PROTOINFO,
            &[nested(
                CTA_PROTOINFO_TCP,
                &[nla(CTA_PROTOINFO_TCP_STATE, &[TCP_CONNTRACK_TIME_WAIT])],
            )],
        );
        m.extend_from_slice(&info);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        assert!(
            matches!(&parse_datagram(&m, true)[0], Ok(Message::Entry(e)) if e.event == FlowEvent::Closed)
        );
    }

    #[test]
    fn done_error_and_interrupted_dumps_are_told_apart() {
        let mut done = vec![0u8; 20];
        done[..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&3u16.to_ne_bytes());
        assert_eq!(parse_datagram(&done, true), vec![Ok(Message::Done)]);
        let mut err = vec![0u8; 36];
        err[..4].copy_from_slice(&36u32.to_ne_bytes());
        err[4..6].copy_from_slice(&2u16.to_ne_bytes());
        err[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(parse_datagram(&err, true), vec![Err(ParseError::Errno(1))]);
        let m = message(IPCTNL_MSG_CT_NEW, NLM_F_MULTI | NLM_F_DUMP_INTR, 1, 1);
        assert_eq!(parse_datagram(&m, true), vec![Ok(Message::Interrupted)]);
    }

    #[test]
    fn the_dump_request_asks_every_family_for_the_whole_table() {
        let r = dump_request(7);
        assert_eq!(r.len(), 20);
        assert_eq!(u32::from_ne_bytes(r[..4].try_into().unwrap()), 20);
        assert_eq!(
            u16::from_ne_bytes(r[4..6].try_into().unwrap()),
            (NFNL_SUBSYS_CTNETLINK << 8) | 1
        );
        assert_eq!(
            u16::from_ne_bytes(r[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_DUMP
        );
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 7);
        assert_eq!(&r[16..], &[0, 0, 0, 0]);
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
