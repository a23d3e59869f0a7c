//! The link, address, neighbour and route operations of [`Nl`], each one
//! rtnetlink request built on the plumbing in `socket`. It does not decide
//! what to wire (that is [`LinuxLinks`]).

use super::*;

impl Nl {
    /// The link called `name`, `None` when absent.
    pub(super) fn link_by_name(&mut self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), false) {
            Ok(v) => Ok(v.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn delete_link(&mut self, index: u32) -> io::Result<bool> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.change(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.change(RouteNetlinkMessage::SetLink(m), 0)
    }

    pub(super) fn add_address(&mut self, index: u32, addr: &IpNetwork) -> io::Result<()> {
        let ip = addr.ip();
        let mut m = AddressMessage::default();
        m.header.family = family(&ip);
        m.header.prefix_len = addr.prefix();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv6() {
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.change(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub(super) fn add_permanent_neighbour(
        &mut self,
        index: u32,
        ip: &IpAddr,
        mac: &[u8],
    ) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family(ip);
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(*v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(*v6),
        }));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.change(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE,
        )
    }

    pub(super) fn add_route(
        &mut self,
        index: u32,
        dst: IpNetwork,
        gw: Option<IpAddr>,
        scope: RouteScope,
    ) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(&dst.ip());
        m.header.destination_prefix_length = dst.prefix();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = scope;
        m.header.kind = RouteType::Unicast;
        if dst.prefix() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst.ip())));
        }
        if let Some(gw) = gw {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        self.change(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Addresses on link `index`.
    pub(super) fn addresses(&mut self, index: u32) -> io::Result<Vec<IpNetwork>> {
        let msgs = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            true,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            let ip = a
                .attributes
                .iter()
                .find_map(|x| match x {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                })
                .or_else(|| {
                    a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
            if let Some(ip) = ip {
                if let Ok(n) = IpNetwork::new(ip, a.header.prefix_len) {
                    out.push(n);
                }
            }
        }
        Ok(out)
    }

    /// Main-table routes through link `index`, both families.
    pub(super) fn routes(&mut self, index: u32) -> io::Result<Vec<RouteState>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = fam;
            for m in self.request(RouteNetlinkMessage::GetRoute(q), true)? {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                let table = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(r.header.table));
                if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                    continue;
                }
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                if oif != Some(index) {
                    continue;
                }
                let addr = |a: &RouteAddress| match a {
                    RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
                    RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
                    _ => None,
                };
                let dst_ip = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Destination(d) => addr(d),
                        _ => None,
                    })
                    .unwrap_or(if fam == AddressFamily::Inet {
                        IpAddr::from([0u8; 4])
                    } else {
                        IpAddr::from([0u8; 16])
                    });
                let gw = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => addr(g),
                    _ => None,
                });
                let Ok(dst) = IpNetwork::new(dst_ip, r.header.destination_prefix_length) else {
                    continue;
                };
                out.push(RouteState {
                    dst,
                    gw,
                    scope: u8::from(r.header.scope),
                });
            }
        }
        Ok(out)
    }

    /// Everything [`IfaceState`] holds about the link `name`.
    pub(super) fn iface(&mut self, name: &str) -> io::Result<Option<IfaceState>> {
        let Some(link) = self.link_by_name(name)? else {
            return Ok(None);
        };
        let index = link.header.index;
        let mut st = IfaceState {
            name: name.to_string(),
            mac: String::new(),
            mtu: 0,
            up: link.header.flags.contains(LinkFlags::Up),
            veth: false,
            addrs: vec![],
            routes: vec![],
        };
        for a in &link.attributes {
            match a {
                LinkAttribute::Address(mac) => st.mac = mac_string(mac),
                LinkAttribute::Mtu(m) => st.mtu = *m,
                LinkAttribute::LinkInfo(infos) => {
                    st.veth = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        st.addrs = self.addresses(index)?;
        st.routes = self.routes(index)?;
        Ok(Some(st))
    }
}
