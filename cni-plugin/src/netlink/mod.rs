//! [`Links`] on Linux, over raw rtnetlink sockets (no async runtime: the plugin
//! is a short-lived, single-purpose process).
//!
//! Namespaces: a netlink socket stays bound to the namespace it was created in.
//! To talk to a container's namespace the plugin spawns a short-lived thread that
//! `setns`es into it, opens the socket and exits; the socket is then used from
//! the main thread, which never leaves the node's namespace. The veth's container
//! end is created directly in the container's namespace (`IFLA_NET_NS_FD` in the
//! peer's attributes) under its final name, so it never exists in the node's
//! namespace where its name could clash.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::num::NonZeroI32;
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;

use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sched::{setns, CloneFlags};

use crate::links::{IfaceState, LinkError, Links, PodLinkSpec, RouteState, Wired};

mod ops;
mod socket;

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const DUMP_RETRIES: usize = 10;

/// A synchronous rtnetlink socket in one namespace.
struct Nl {
    sock: Socket,
    seq: u32,
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn host_len(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn mac_string(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The kernel's answer in an error message: no code is the acknowledgement
/// (stop reading), a code is the failure.
fn acknowledged(code: Option<NonZeroI32>) -> io::Result<ControlFlow<()>> {
    match code {
        None => Ok(ControlFlow::Break(())),
        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
    }
}

fn errno_of(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// Whether `ns` is the namespace this process runs in.
fn is_own_netns(ns: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (ns.metadata(), std::fs::metadata("/proc/self/ns/net")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn link_mac(link: &LinkMessage) -> Vec<u8> {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// [`Links`] on the running kernel; host-side operations happen in the
/// namespace the plugin runs in.
#[derive(Default)]
pub struct LinuxLinks {
    host: Option<Nl>,
}

impl LinuxLinks {
    /// A new instance (sockets are opened on first use).
    pub fn new() -> Self {
        Self::default()
    }

    fn host(&mut self) -> Result<&mut Nl, LinkError> {
        if self.host.is_none() {
            let nl = Nl::open().map_err(|source| LinkError::Netlink {
                op: "open rtnetlink socket".into(),
                source,
            })?;
            self.host = Some(nl);
        }
        Ok(self.host.as_mut().expect("just opened"))
    }

    fn wire_inner(
        &mut self,
        spec: &PodLinkSpec,
        ns: &File,
        pod: &mut Nl,
    ) -> Result<Wired, LinkError> {
        let host_name = spec.host_ifname.clone();
        let nl_err = |op: String| move |source| LinkError::Netlink { op, source };
        // The pair, the container end created directly in its namespace.
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.ifname.clone()));
        peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host_name.clone()));
        m.attributes.push(LinkAttribute::Mtu(spec.mtu));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let host = self.host()?;
        host.change(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(nl_err(format!(
                "create veth {host_name} with peer {} in {}",
                spec.ifname, spec.netns
            )))?;
        // From here on the caller deletes the pair on failure.
        let host_link = host
            .link_by_name(&host_name)
            .map_err(nl_err(format!("look up {host_name}")))?
            .ok_or_else(|| LinkError::Netlink {
                op: format!("look up {host_name}"),
                source: io::Error::from_raw_os_error(ENODEV),
            })?;
        let host_index = host_link.header.index;
        let host_mac = link_mac(&host_link);
        if spec.addrs.iter().any(|a| a.is_ipv4()) {
            let path = format!("/proc/sys/net/ipv4/conf/{host_name}/proxy_arp");
            std::fs::write(&path, b"1").map_err(|source| LinkError::Sysctl { path, source })?;
        }
        host.set_up(host_index)
            .map_err(nl_err(format!("set {host_name} up")))?;

        // The container end.
        let pod_link = pod
            .link_by_name(&spec.ifname)
            .map_err(nl_err(format!("look up {} in {}", spec.ifname, spec.netns)))?
            .ok_or_else(|| LinkError::Netlink {
                op: format!("look up {} in {}", spec.ifname, spec.netns),
                source: io::Error::from_raw_os_error(ENODEV),
            })?;
        let pod_index = pod_link.header.index;
        let pod_mac = link_mac(&pod_link);
        for a in &spec.addrs {
            pod.add_address(pod_index, a).map_err(nl_err(format!(
                "add address {a} to {} in {}",
                spec.ifname, spec.netns
            )))?;
        }
        pod.set_up(pod_index)
            .map_err(nl_err(format!("set {} up in {}", spec.ifname, spec.netns)))?;
        for gw in &spec.gateways {
            pod.add_permanent_neighbour(pod_index, gw, &host_mac)
                .map_err(nl_err(format!(
                    "add neighbour {gw} on {} in {}",
                    spec.ifname, spec.netns
                )))?;
            let gw_net = IpNetwork::new(*gw, host_len(gw)).expect("host prefix");
            pod.add_route(pod_index, gw_net, None, RouteScope::Link)
                .map_err(|source| {
                    let hint = if errno_of(&source) == Some(EEXIST) {
                        " (the pod already routes to the gateway through another interface: Veil gives a pod one interface per address family)"
                    } else {
                        ""
                    };
                    LinkError::Netlink {
                        op: format!("add route {gw_net} dev {} in {}{hint}", spec.ifname, spec.netns),
                        source,
                    }
                })?;
            let any = IpNetwork::new(
                if gw.is_ipv4() {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u8; 16])
                },
                0,
            )
            .expect("default");
            pod.add_route(pod_index, any, Some(*gw), RouteScope::Universe)
                .map_err(nl_err(format!(
                    "add default route via {gw} in {}",
                    spec.netns
                )))?;
        }

        // The node's route to the pod.
        let host = self.host()?;
        for a in &spec.addrs {
            let dst = IpNetwork::new(a.ip(), host_len(&a.ip())).expect("host prefix");
            host.add_route(host_index, dst, None, RouteScope::Link)
                .map_err(nl_err(format!("add route {dst} dev {host_name}")))?;
        }
        Ok(Wired {
            host_mac: mac_string(&host_mac),
            pod_mac: mac_string(&pod_mac),
        })
    }
}

impl Links for LinuxLinks {
    fn pod_iface(&mut self, netns: &str, ifname: &str) -> Result<Option<IfaceState>, LinkError> {
        let mut pod = Nl::open_in(netns)?;
        pod.iface(ifname).map_err(|source| LinkError::Netlink {
            op: format!("inspect {ifname} in {netns}"),
            source,
        })
    }

    fn host_iface(&mut self, name: &str) -> Result<Option<IfaceState>, LinkError> {
        self.host()?
            .iface(name)
            .map_err(|source| LinkError::Netlink {
                op: format!("inspect {name}"),
                source,
            })
    }

    fn wire(&mut self, spec: &PodLinkSpec) -> Result<Wired, LinkError> {
        let mut pod = Nl::open_in(&spec.netns)?;
        let ns = File::open(&spec.netns).map_err(|source| LinkError::NetnsOpen {
            path: spec.netns.clone(),
            source,
        })?;
        let mut result = self.wire_inner(spec, &ns, &mut pod);
        if let Err(LinkError::Netlink { source, .. }) = &result {
            // A stale pair of this very attachment (an ADD that was killed before it
            // could roll back): the name is derived from the attachment, so it is
            // ours to replace. Remove it and try once more.
            if errno_of(source) == Some(EEXIST)
                && self.delete_host(&spec.host_ifname).unwrap_or(false)
            {
                result = self.wire_inner(spec, &ns, &mut pod);
            }
        }
        if result.is_err() {
            let _ = self.delete_host(&spec.host_ifname);
        }
        result
    }

    fn delete_host(&mut self, name: &str) -> Result<bool, LinkError> {
        let host = self.host()?;
        let op = |source| LinkError::Netlink {
            op: format!("delete {name}"),
            source,
        };
        match host.link_by_name(name).map_err(op)? {
            None => Ok(false),
            Some(l) => host.delete_link(l.header.index).map_err(op),
        }
    }

    fn delete_pod(&mut self, netns: &str, ifname: &str) -> Result<bool, LinkError> {
        let mut pod = match Nl::open_in(netns) {
            Ok(p) => p,
            Err(LinkError::NetnsOpen { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let op = |source| LinkError::Netlink {
            op: format!("delete {ifname} in {netns}"),
            source,
        };
        match pod.link_by_name(ifname).map_err(op)? {
            None => Ok(false),
            Some(l) => pod.delete_link(l.header.index).map_err(op),
        }
    }
}
