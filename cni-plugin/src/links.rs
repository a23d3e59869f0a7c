//! The kernel capability the plugin needs, behind a small trait: wire a pod
//! (veth pair, addresses, routes), look at what is there, delete links.
//!
//! [`crate::netlink::LinuxLinks`] is the real implementation; [`fake::FakeLinks`]
//! is an in-memory one for table tests of [`crate::run`].

use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// What [`Links::wire`] sets up for one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLinkSpec {
    /// Host end of the veth pair, in the plugin's (the node's) namespace.
    pub host_ifname: String,
    /// The container's network namespace (a path).
    pub netns: String,
    /// The container end's name inside `netns`.
    pub ifname: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// The pod's addresses, host prefixes (/32, /128).
    pub addrs: Vec<IpNetwork>,
    /// Link-local gateways (one per family) the pod routes through; the host
    /// end answers for them (proxy ARP and a permanent neighbour entry).
    pub gateways: Vec<IpAddr>,
}

/// What [`Links::wire`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    /// MAC of the host end.
    pub host_mac: String,
    /// MAC of the container end.
    pub pod_mac: String,
}

/// A route as seen in a namespace (main table, through one interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteState {
    /// Destination.
    pub dst: IpNetwork,
    /// Gateway, if any.
    pub gw: Option<IpAddr>,
    /// Scope (0 universe, 253 link).
    pub scope: u8,
}

/// An interface as seen in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceState {
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Whether it is a veth.
    pub veth: bool,
    /// Addresses on it.
    pub addrs: Vec<IpNetwork>,
    /// Main-table routes through it.
    pub routes: Vec<RouteState>,
}

/// A failed kernel operation.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The container's namespace cannot be opened.
    #[error("cannot open network namespace {path}: {source}")]
    NetnsOpen {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was attempted, naming the link, e.g. `create veth veil1a2b3c4d5e6`.
        op: String,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// A sysctl could not be written.
    #[error("writing {path}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl LinkError {
    /// Whether this is "the namespace cannot be opened" (a bad CNI_NETNS).
    pub fn is_netns_open(&self) -> bool {
        matches!(self, LinkError::NetnsOpen { .. })
    }
}

/// Kernel operations on links, in the plugin's own namespace (host side) and
/// in a container's namespace given by path.
pub trait Links {
    /// The interface `ifname` in the namespace at `netns`, `None` when absent;
    /// [`LinkError::NetnsOpen`] when the namespace cannot be opened.
    fn pod_iface(&mut self, netns: &str, ifname: &str) -> Result<Option<IfaceState>, LinkError>;
    /// The interface `name` in the plugin's namespace, `None` when absent.
    fn host_iface(&mut self, name: &str) -> Result<Option<IfaceState>, LinkError>;
    /// Creates and configures the veth pair of `spec`: on failure nothing of it
    /// is left behind.
    fn wire(&mut self, spec: &PodLinkSpec) -> Result<Wired, LinkError>;
    /// Deletes the host link `name` (and with it its veth peer). `Ok(false)` when
    /// it does not exist.
    fn delete_host(&mut self, name: &str) -> Result<bool, LinkError>;
    /// Deletes `ifname` in the namespace at `netns`. `Ok(false)` when the
    /// namespace or the link does not exist.
    fn delete_pod(&mut self, netns: &str, ifname: &str) -> Result<bool, LinkError>;
}

/// An in-memory [`Links`] for tests.
pub mod fake {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Namespaces and interfaces held in maps; failures can be injected.
    #[derive(Debug, Default)]
    pub struct FakeLinks {
        /// Container namespaces that exist (by path).
        pub namespaces: BTreeSet<String>,
        /// Host interfaces by name.
        pub host: BTreeMap<String, IfaceState>,
        /// Container interfaces by (netns, name).
        pub pods: BTreeMap<(String, String), IfaceState>,
        /// When set, `wire` fails with this errno after creating nothing.
        pub fail_wire: Option<i32>,
        /// Every mutating call, e.g. `wire veil.. eth0`, `delete_host veil..`.
        pub calls: Vec<String>,
        /// veth pairs: host end → (netns, container end).
        pub pairs: BTreeMap<String, (String, String)>,
        counter: u32,
    }

    impl FakeLinks {
        /// A fake with these container namespaces existing.
        pub fn with_namespaces(ns: &[&str]) -> Self {
            FakeLinks {
                namespaces: ns.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }
        }

        fn mac(&mut self) -> String {
            self.counter += 1;
            format!(
                "02:00:00:00:{:02x}:{:02x}",
                self.counter >> 8,
                self.counter & 0xff
            )
        }

        fn netns_err(netns: &str) -> LinkError {
            LinkError::NetnsOpen {
                path: netns.to_string(),
                source: std::io::Error::from_raw_os_error(2),
            }
        }
    }

    impl Links for FakeLinks {
        fn pod_iface(
            &mut self,
            netns: &str,
            ifname: &str,
        ) -> Result<Option<IfaceState>, LinkError> {
            if !self.namespaces.contains(netns) {
                return Err(Self::netns_err(netns));
            }
            Ok(self
                .pods
                .get(&(netns.to_string(), ifname.to_string()))
                .cloned())
        }

        fn host_iface(&mut self, name: &str) -> Result<Option<IfaceState>, LinkError> {
            Ok(self.host.get(name).cloned())
        }

        fn wire(&mut self, spec: &PodLinkSpec) -> Result<Wired, LinkError> {
            self.calls
                .push(format!("wire {} {}", spec.host_ifname, spec.ifname));
            if !self.namespaces.contains(&spec.netns) {
                return Err(Self::netns_err(&spec.netns));
            }
            if let Some(errno) = self.fail_wire {
                return Err(LinkError::Netlink {
                    op: format!("create veth {}", spec.host_ifname),
                    source: std::io::Error::from_raw_os_error(errno),
                });
            }
            let key = (spec.netns.clone(), spec.ifname.clone());
            if self.pods.contains_key(&key) || self.host.contains_key(&spec.host_ifname) {
                return Err(LinkError::Netlink {
                    op: format!("create veth {}", spec.host_ifname),
                    source: std::io::Error::from_raw_os_error(17),
                });
            }
            let host_mac = self.mac();
            let pod_mac = self.mac();
            let mut routes = Vec::new();
            for gw in &spec.gateways {
                let len = if gw.is_ipv4() { 32 } else { 128 };
                routes.push(RouteState {
                    dst: IpNetwork::new(*gw, len).expect("host prefix"),
                    gw: None,
                    scope: 253,
                });
                let any: IpAddr = if gw.is_ipv4() {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u8; 16])
                };
                routes.push(RouteState {
                    dst: IpNetwork::new(any, 0).expect("default"),
                    gw: Some(*gw),
                    scope: 0,
                });
            }
            self.pods.insert(
                key,
                IfaceState {
                    name: spec.ifname.clone(),
                    mac: pod_mac.clone(),
                    mtu: spec.mtu,
                    up: true,
                    veth: true,
                    addrs: spec.addrs.clone(),
                    routes,
                },
            );
            self.host.insert(
                spec.host_ifname.clone(),
                IfaceState {
                    name: spec.host_ifname.clone(),
                    mac: host_mac.clone(),
                    mtu: spec.mtu,
                    up: true,
                    veth: true,
                    addrs: vec![],
                    routes: spec
                        .addrs
                        .iter()
                        .map(|a| RouteState {
                            dst: *a,
                            gw: None,
                            scope: 253,
                        })
                        .collect(),
                },
            );
            self.pairs.insert(
                spec.host_ifname.clone(),
                (spec.netns.clone(), spec.ifname.clone()),
            );
            Ok(Wired { host_mac, pod_mac })
        }

        fn delete_host(&mut self, name: &str) -> Result<bool, LinkError> {
            self.calls.push(format!("delete_host {name}"));
            if self.host.remove(name).is_none() {
                return Ok(false);
            }
            if let Some(peer) = self.pairs.remove(name) {
                self.pods.remove(&peer);
            }
            Ok(true)
        }

        fn delete_pod(&mut self, netns: &str, ifname: &str) -> Result<bool, LinkError> {
            self.calls.push(format!("delete_pod {netns} {ifname}"));
            if !self.namespaces.contains(netns) {
                return Ok(false);
            }
            let key = (netns.to_string(), ifname.to_string());
            if self.pods.remove(&key).is_none() {
                return Ok(false);
            }
            let host = self
                .pairs
                .iter()
                .find(|(_, peer)| **peer == key)
                .map(|(h, _)| h.clone());
            if let Some(h) = host {
                self.pairs.remove(&h);
                self.host.remove(&h);
            }
            Ok(true)
        }
    }
}
