//! Conntrack over netlink: the Linux [`ConntrackSource`] that subscribes to
//! new/destroy events and dumps the table, and the entry types it yields.
//! Messages are decoded and encoded by the `ctnetlink` module.
//!
//! The socket is opened in the calling thread's network namespace, which for
//! `veild` is the node's. Receive buffers are large (32 MiB, forced when the
//! process may); when the kernel still overruns them, `recv` fails with
//! ENOBUFS and [`Received::Overrun`] is reported, never ignored.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use veil_graph::{Counters, FlowEvent, Protocol};

use super::ctnetlink::{dump_request, parse_datagram};
pub use super::ctnetlink::{Message, ParseError};

/// Netlink protocol number of netfilter.
const NETLINK_NETFILTER: isize = 12;
/// Multicast groups.
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

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
    /// New (event), destroy (event), update (dump) or closed (dump of a TCP
    /// connection in TIME_WAIT or CLOSE).
    pub event: FlowEvent,
    /// As the initiator sent it.
    pub orig: Tuple,
    /// As the responder answers (differs from `orig` under NAT).
    pub reply: Tuple,
    /// Counters: `sent` from the original direction, `received` from the reply.
    pub counters: Counters,
    /// Conntrack id.
    pub id: u32,
    /// Conntrack mark (the policy's allow stamps, see
    /// `dataplane::nftables::policy::verdict_mark`); 0 when unset.
    pub mark: u32,
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
    /// The receive timeout set on `events` (set again only when it changes).
    timeout: Option<Duration>,
    /// An overrun met while draining a batch, reported by the next `recv`.
    overrun_pending: bool,
}

/// Datagrams read without waiting after the first one of a `recv`: events
/// are handed over in batches (one lock of the flow state per batch).
const BATCH: usize = 512;

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
            timeout: None,
            overrun_pending: false,
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
        if std::mem::take(&mut self.overrun_pending) {
            return Ok(Received::Overrun);
        }
        if self.timeout != Some(timeout) {
            set_timeout(&self.events, timeout)?;
            self.timeout = Some(timeout);
        }
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
        self.parse_into(n, &mut entries);
        // Drain what is already queued, without waiting.
        for _ in 0..BATCH {
            match self.events.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => self.parse_into(n, &mut entries),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.overrun_pending = true;
                    break;
                }
                Err(_) => break,
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
    fn parse_into(&self, n: usize, entries: &mut Vec<CtEntry>) {
        for m in parse_datagram(&self.buf[..n.min(self.buf.len())], false) {
            match m {
                Ok(Message::Entry(e)) => entries.push(e),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "skipping conntrack message"),
            }
        }
    }

    /// One dump on a fresh socket; `None` when interrupted.
    fn dump_once(&mut self) -> Result<Option<Vec<CtEntry>>, SourceError> {
        let mut s = netlink_sys::Socket::new(NETLINK_NETFILTER).map_err(sock_err("socket"))?;
        s.bind_auto().map_err(sock_err("bind"))?;
        let _ = s.set_rx_buf_sz(4 << 20);
        set_timeout(&s, Duration::from_secs(5))?;
        self.seq = self.seq.wrapping_add(1);
        let req = dump_request(self.seq);
        s.send_to(&req, &netlink_sys::SocketAddr::new(0, 0), 0)
            .map_err(sock_err("send dump request"))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 18];
        loop {
            let n = s
                .recv(&mut &mut buf[..], 0)
                .map_err(sock_err("receive dump"))?;
            for m in parse_datagram(&buf[..n.min(buf.len())], true) {
                match m? {
                    Message::Entry(e) => out.push(e),
                    Message::Done => return Ok(Some(out)),
                    Message::Interrupted => return Ok(None),
                    Message::Other => {}
                }
            }
        }
    }
}
