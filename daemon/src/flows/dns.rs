//! External hosts by the DNS name they were resolved from.
//!
//! - Pods whose DNS goes through the DNS proxy (those some `domains` rule
//!   selects): the proxy is the one source of truth. It teaches the address
//!   book every answer it accepts ([`super::Flows::learn_dns`]), and a flow
//!   from such a pod to an address its allowances hold is named by the name
//!   that allowed it ([`name_by_allowance`]), whatever another answer for the
//!   same address said since. The kernel does not copy these answers
//!   (`socket transparent 1` answers skip the NFLOG rule).
//! - Every other pod's DNS: responses crossing the node (UDP source port 53,
//!   copied to NFLOG group [`NFLOG_GROUP`] by a rule of the dataplane's
//!   `inet veil` table) are parsed, and each A/AAAA answer teaches the
//!   address book that the address is `external:<queried name>`.
//!
//! NFLOG messages (configuration requests, packets) are encoded and decoded
//! by the `netlink-packet-netfilter` crate; nothing of NFLOG is parsed by
//! hand. The IP/UDP headers around the DNS message are, minimally.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RData;
use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};

/// NFLOG group the DNS responses are copied to.
pub const NFLOG_GROUP: u16 = 4242;

const NETLINK_NETFILTER: isize = 12;
/// How many bytes of each packet NFLOG copies (a DNS answer fits).
const COPY_RANGE: u32 = 0xffff;

/// `dst` (what the address book says `dst_ip` is), renamed by the DNS
/// proxy's allowances when `pod` reaches an external `dst_ip` through a
/// `domains` rule: `external:<the name that allowed it>` (the first in order
/// when several did and the book's name is none of them). Cluster addresses
/// and pairs without an allowance keep `dst`.
pub fn name_by_allowance(
    names: &dyn crate::l7::decide::DomainNames,
    pod: IpAddr,
    dst_ip: IpAddr,
    dst: super::resolve::Resolved,
) -> super::resolve::Resolved {
    use veil_graph::IdentityKind;
    let (IpAddr::V4(pod), IpAddr::V4(ip)) = (pod, dst_ip) else {
        return dst;
    };
    if !matches!(
        dst.identity.kind(),
        IdentityKind::External | IdentityKind::World
    ) {
        return dst;
    }
    let allowed = names.names(pod, ip);
    match allowed.first() {
        Some(first)
            if !(dst.identity.kind() == IdentityKind::External
                && allowed.iter().any(|n| n == dst.identity.workload())) =>
        {
            super::resolve::Resolved {
                identity: std::sync::Arc::new(veil_graph::Identity::external(first.as_str())),
                local: false,
            }
        }
        _ => dst,
    }
}

/// The name a DNS response answered and the addresses it gave, from an IP
/// packet carrying it (UDP from port 53). None for anything else.
pub fn learn_from_packet(packet: &[u8]) -> Option<(String, Vec<IpAddr>)> {
    let (proto, l4) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            (*packet.get(9)?, packet.get(ihl..)?)
        }
        6 => (*packet.get(6)?, packet.get(40..)?),
        _ => return None,
    };
    if proto != 17 || l4.len() < 8 || u16::from_be_bytes([l4[0], l4[1]]) != 53 {
        return None;
    }
    learn_from_response(&l4[8..])
}

/// The queried name and the A/AAAA addresses of a DNS response message.
pub fn learn_from_response(dns: &[u8]) -> Option<(String, Vec<IpAddr>)> {
    let m = Message::from_vec(dns).ok()?;
    if m.metadata.message_type != MessageType::Response {
        return None;
    }
    let name = m.queries.first()?.name().to_ascii();
    let ips: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    (!ips.is_empty() && !name.is_empty()).then_some((name, ips))
}

/// One NFLOG packet message: its group, the rule's prefix (empty when none)
/// and the copied packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NflogPacket {
    /// NFLOG group it was logged to.
    pub group: u16,
    /// The logging rule's prefix, without the NUL.
    pub prefix: String,
    /// The packet (IP header first), as much as the copy range allowed.
    pub payload: Vec<u8>,
}

/// The NFLOG packet messages of one datagram. Messages that are not NFLOG
/// packets, or do not decode, are skipped.
pub fn nflog_packets(buf: &[u8]) -> Vec<NflogPacket> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while let Ok(b) = NetlinkBuffer::new_checked(&buf[off..]) {
        let len = b.length() as usize;
        if let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..off + len]) {
            if let NetlinkPayload::InnerMessage(NetfilterMessage {
                header,
                inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                ..
            }) = m.payload
            {
                let mut p = NflogPacket {
                    group: header.res_id,
                    prefix: String::new(),
                    payload: Vec::new(),
                };
                let mut has_payload = false;
                for n in nlas {
                    match n {
                        PacketNla::Payload(v) => {
                            p.payload = v;
                            has_payload = true;
                        }
                        PacketNla::Prefix(c) => p.prefix = c.to_string_lossy().into_owned(),
                        _ => {}
                    }
                }
                if has_payload {
                    out.push(p);
                }
            }
        }
        off += (len + 3) & !3;
        if off >= buf.len() {
            break;
        }
    }
    out
}

/// The payloads (IP packets) of the NFLOG packet messages in one datagram.
pub fn nflog_payloads(buf: &[u8]) -> Vec<Vec<u8>> {
    nflog_packets(buf).into_iter().map(|p| p.payload).collect()
}

/// Opens a netfilter netlink socket in the current namespace bound to each
/// NFLOG group of `groups` in copy-packet mode (`copy_range` bytes of each
/// packet), delivering each packet at once, with a 0.5 s receive timeout.
pub fn open_nflog(
    groups: &[u16],
    copy_range: u32,
    rx_buf: usize,
) -> io::Result<netlink_sys::Socket> {
    let mut sock = netlink_sys::Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    let _ = sock.set_rx_buf_sz(rx_buf);
    let mut buf = vec![0u8; 1 << 16];
    let mut seq = 0u32;
    for &group in groups {
        // Deliver every packet at once (the kernel batches up to 100 packets
        // or 1 s by default): a name must be known before the connection
        // that follows its lookup is seen.
        for nla in [
            ConfigNla::Cmd(ConfigCmd::Bind),
            ConfigNla::Mode(ConfigMode::new_packet(copy_range)),
            ConfigNla::QThresh(1),
            ConfigNla::Timeout(Timeout::new(0)),
        ] {
            let mut req = config_request(NetfilterProtoFamily::Unspec, group, vec![nla]);
            seq += 1;
            req.header.sequence_number = seq;
            let mut msg = vec![0u8; req.buffer_len()];
            req.serialize(&mut msg);
            sock.send_to(&msg, &netlink_sys::SocketAddr::new(0, 0), 0)?;
            let n = sock.recv(&mut &mut buf[..], 0)?;
            let ack = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[..n.min(buf.len())])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if let NetlinkPayload::Error(e) = ack.payload {
                if e.code.is_some() {
                    let e = e.to_io();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("binding NFLOG group {group}: {e}"),
                    ));
                }
            }
        }
    }
    nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 500_000),
    )
    .map_err(io::Error::from)?;
    Ok(sock)
}

/// The NFLOG group of DNS responses, in the current namespace.
pub struct DnsSnoop {
    sock: netlink_sys::Socket,
    buf: Vec<u8>,
}

impl DnsSnoop {
    /// Binds NFLOG group [`NFLOG_GROUP`] in copy-packet mode.
    pub fn open() -> io::Result<Self> {
        let sock = open_nflog(&[NFLOG_GROUP], COPY_RANGE, 4 << 20)?;
        Ok(DnsSnoop {
            sock,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Waits (up to 0.5 s) for DNS responses; returns what they taught.
    pub fn recv(&mut self) -> io::Result<Vec<(String, Vec<IpAddr>)>> {
        let n = match self.sock.recv(&mut &mut self.buf[..], 0) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) || e.raw_os_error() == Some(libc::EINTR)
                    || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        Ok(nflog_payloads(&self.buf[..n.min(self.buf.len())])
            .iter()
            .filter_map(|p| learn_from_packet(p))
            .collect())
    }
}

/// Learns DNS answers into `flows` until `stop` says so. Never fails the
/// daemon: without NFLOG, external hosts are named by CIDR or `world`.
pub fn run(flows: std::sync::Arc<super::Flows>, stop: impl Fn() -> bool) {
    let mut snoop = match DnsSnoop::open() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read DNS responses (NFLOG): external hosts are not named by DNS");
            return;
        }
    };
    while !stop() {
        match snoop.recv() {
            Ok(learnt) => {
                for (name, ips) in learnt {
                    tracing::debug!(dns.name = %name, ips = ?ips, "learnt external name");
                    flows.learn_dns(&name, &ips);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading DNS responses");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, Record, RecordType};
    use std::net::Ipv4Addr;

    fn response(name: &str, ip: Ipv4Addr) -> Vec<u8> {
        let n = Name::from_ascii(name).unwrap();
        let mut m = Message::response(7, OpCode::Query);
        m.add_query(Query::query(n.clone(), RecordType::A));
        m.add_answer(Record::from_rdata(n, 30, RData::A(A(ip))));
        m.to_vec().unwrap()
    }

    fn udp_packet(sport: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 244, 0, 2, 10, 244, 1, 2,
        ];
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn a_dns_answer_names_its_addresses() {
        let r = response("api.example.com.", Ipv4Addr::new(203, 0, 113, 10));
        let (name, ips) = learn_from_packet(&udp_packet(53, &r)).unwrap();
        assert_eq!(name, "api.example.com");
        assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10))]);
    }

    #[test]
    fn queries_other_ports_and_garbage_teach_nothing() {
        let r = response("api.example.com.", Ipv4Addr::new(203, 0, 113, 10));
        assert!(learn_from_packet(&udp_packet(5353, &r)).is_none());
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
        assert!(learn_from_response(&q.to_vec().unwrap()).is_none());
        assert!(learn_from_packet(&[0x45, 1, 2]).is_none());
        assert!(learn_from_packet(&[]).is_none());
        for cut in 0..r.len() {
            let _ = learn_from_packet(&udp_packet(53, &r[..cut]));
        }
    }

    struct Allowed(Vec<String>);
    impl crate::l7::decide::DomainNames for Allowed {
        fn names(&self, pod: Ipv4Addr, addr: Ipv4Addr) -> Vec<String> {
            if pod == Ipv4Addr::new(10, 244, 0, 5) && addr == Ipv4Addr::new(203, 0, 113, 20) {
                self.0.clone()
            } else {
                Vec::new()
            }
        }
    }

    fn resolved(id: veil_graph::Identity) -> crate::flows::resolve::Resolved {
        crate::flows::resolve::Resolved {
            identity: std::sync::Arc::new(id),
            local: false,
        }
    }

    #[test]
    fn a_proxied_pods_destination_is_named_by_the_name_that_allowed_it() {
        let names = Allowed(vec!["www.example.com".into()]);
        let pod: IpAddr = "10.244.0.5".parse().unwrap();
        let dst: IpAddr = "203.0.113.20".parse().unwrap();
        // Another answer for the same address (asked later) renamed it in the
        // address book: the allowance wins.
        let r = name_by_allowance(
            &names,
            pod,
            dst,
            resolved(veil_graph::Identity::external("alias.example.org")),
        );
        assert_eq!(r.identity.id(), "external:www.example.com");
        let r = name_by_allowance(&names, pod, dst, resolved(veil_graph::Identity::world()));
        assert_eq!(r.identity.id(), "external:www.example.com");
        // Another pod, another address: the address book's name stays.
        let other: IpAddr = "10.244.0.6".parse().unwrap();
        let r = name_by_allowance(
            &names,
            other,
            dst,
            resolved(veil_graph::Identity::external("alias.example.org")),
        );
        assert_eq!(r.identity.id(), "external:alias.example.org");
        // Cluster destinations keep their identity.
        let r = name_by_allowance(
            &names,
            pod,
            dst,
            resolved(veil_graph::Identity::node("node-a")),
        );
        assert_eq!(r.identity.id(), "node:node-a");
    }

    #[test]
    fn the_books_name_stays_when_it_is_one_of_the_allowing_names() {
        let names = Allowed(vec!["a.example.com".into(), "b.example.com".into()]);
        let r = name_by_allowance(
            &names,
            "10.244.0.5".parse().unwrap(),
            "203.0.113.20".parse().unwrap(),
            resolved(veil_graph::Identity::external("b.example.com")),
        );
        assert_eq!(r.identity.id(), "external:b.example.com");
    }

    #[test]
    fn nflog_payloads_are_extracted() {
        let payload = udp_packet(53, b"xyz");
        let mut m = Vec::new();
        let alen = 4 + payload.len();
        let total = 20 + ((alen + 3) & !3);
        m.extend_from_slice(&(total as u32).to_ne_bytes());
        m.extend_from_slice(&(4u16 << 8).to_ne_bytes()); // NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&[2, 0, 0x10, 0x92]);
        m.extend_from_slice(&(alen as u16).to_ne_bytes());
        m.extend_from_slice(&9u16.to_ne_bytes()); // NFULA_PAYLOAD
        m.extend_from_slice(&payload);
        while m.len() < total {
            m.push(0);
        }
        assert_eq!(nflog_payloads(&m), vec![payload.clone()]);
        assert!(nflog_payloads(&m[..m.len() - 1]).is_empty());
    }
}
