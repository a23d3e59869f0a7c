//! Transparent sockets and the policy routing of the DNS proxy.
//!
//! - Listeners bound to `0.0.0.0:<port>` with `IP_TRANSPARENT` receive what
//!   TPROXY sends them; the UDP one also gets each datagram's original
//!   destination (`IP_RECVORIGDSTADDR`).
//! - Upstream sockets bind the pod's address (`IP_TRANSPARENT`) and carry
//!   [`MARK_UPSTREAM`]; answers to the pod are sent from the resolver's
//!   address and port by a transparent socket bound there, kept for the
//!   next answer ([`ReplySockets`]).
//! - `ip rule fwmark MARK_TPROXY lookup ROUTE_TABLE` and a local default
//!   route in that table deliver marked packets to these sockets.
//!
//! It runs `ip` for the routing (idempotent), in veild's namespace.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;

use socket2::{Domain, Protocol, Socket, Type};

use crate::dataplane::nftables::policy::dns::{
    MARK_TPROXY, MARK_UPSTREAM, ROUTE_TABLE, RULE_PRIORITY,
};

fn ip(args: &[&str]) -> io::Result<(bool, String)> {
    let out = Command::new("ip").args(args).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// Installs the rule and the route (replacing ours if present).
pub fn setup_routing() -> io::Result<()> {
    let mark = format!("{MARK_TPROXY:#x}/{MARK_TPROXY:#x}");
    let table = ROUTE_TABLE.to_string();
    let prio = RULE_PRIORITY.to_string();
    // Remove a previous run's rule (absent is fine), then add it once.
    while ip(&["-4", "rule", "del", "priority", &prio])?.0 {}
    let (ok, err) = ip(&[
        "-4", "rule", "add", "fwmark", &mark, "lookup", &table, "priority", &prio,
    ])?;
    if !ok {
        return Err(io::Error::other(format!("ip rule add: {err}")));
    }
    let (ok, err) = ip(&[
        "-4",
        "route",
        "replace",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        &table,
    ])?;
    if !ok {
        return Err(io::Error::other(format!("ip route replace: {err}")));
    }
    Ok(())
}

/// A transparent listener socket (not yet listening for TCP).
pub fn listener(ty: Type, port: u16) -> io::Result<Socket> {
    let proto = if ty == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    let s = Socket::new(Domain::IPV4, ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent_v4(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    Ok(s)
}

/// An upstream socket with the pod's address, marked [`MARK_UPSTREAM`].
pub fn upstream(ty: Type, pod: Ipv4Addr) -> io::Result<Socket> {
    let proto = if ty == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    let s = Socket::new(Domain::IPV4, ty, Some(proto))?;
    s.set_ip_transparent_v4(true)?;
    s.set_mark(MARK_UPSTREAM)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(pod, 0)).into())?;
    Ok(s)
}

/// Most reply sockets kept (one per resolver address and port in use).
const MAX_REPLY_SOCKETS: usize = 256;

/// Transparent sockets bound to resolvers' addresses, kept for the next
/// answer from the same resolver (creating one per answer cost five system
/// calls). A socket that fails to send is dropped; beyond
/// [`MAX_REPLY_SOCKETS`] the table starts over. They never read: their
/// receive buffer is the minimum.
#[derive(Debug, Default)]
pub struct ReplySockets {
    map: std::sync::Mutex<std::collections::HashMap<SocketAddrV4, std::sync::Arc<Socket>>>,
}

impl ReplySockets {
    /// Sends `bytes` to `to` from `from` (the resolver's address and port).
    pub fn send_from(&self, from: SocketAddrV4, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        let sock = {
            let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
            match m.get(&from) {
                Some(s) => s.clone(),
                None => {
                    let s = std::sync::Arc::new(reply_socket(from)?);
                    if m.len() >= MAX_REPLY_SOCKETS {
                        m.clear();
                    }
                    m.insert(from, s.clone());
                    s
                }
            }
        };
        // Non-blocking: a full send buffer drops this answer (as the network
        // might), it never stalls the proxy.
        match sock.send_to(bytes, &to.into()) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.map
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&from);
                Err(e)
            }
        }
    }
}

fn reply_socket(from: SocketAddrV4) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent_v4(true)?;
    s.set_nonblocking(true)?;
    s.set_recv_buffer_size(0)?;
    s.bind(&SocketAddr::V4(from).into())?;
    Ok(s)
}
