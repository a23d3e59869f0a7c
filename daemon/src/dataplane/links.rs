//! Links through rtnetlink: finding a link (index, MTU) and setting up the
//! WireGuard device (MTU, up, the node's tunnel address as a host address).
//!
//! It does not create links (the TUN device is [`super::tunnel`]) nor route
//! ([`super::routes`]).

use std::future::Future;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec};

/// A netlink operation failed.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {what}: {source}")]
pub struct NetlinkError {
    /// What was being done.
    pub what: String,
    /// The cause.
    #[source]
    pub source: rtnetlink::Error,
}

pub(crate) fn err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError { what, source }
}

/// Opens a netlink connection (its task runs on the current tokio runtime),
/// in veild's network namespace.
pub fn connect() -> std::io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A link as the dataplane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// MTU.
    pub mtu: u32,
}

/// The kernel's links.
pub trait Links: Send + Sync {
    /// The link `name`, if it exists.
    fn get(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LinkInfo>, NetlinkError>> + Send;
    /// Sets the MTU, brings the link up and adds `addr` as a host address
    /// (idempotent).
    fn setup(
        &self,
        index: u32,
        mtu: u32,
        addr: IpAddr,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
}

/// Links through rtnetlink.
#[derive(Debug, Clone)]
pub struct RtLinks(pub Handle);

impl Links for RtLinks {
    async fn get(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut s = self.0.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => {
                let mtu = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Mtu(m) => Some(*m),
                        _ => None,
                    })
                    .unwrap_or(1500);
                Ok(Some(LinkInfo {
                    index: m.header.index,
                    mtu,
                }))
            }
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(err(format!("get link {name}"))(e)),
        }
    }

    async fn setup(&self, index: u32, mtu: u32, addr: IpAddr) -> Result<(), NetlinkError> {
        self.0
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(err(format!("set mtu {mtu} and up on link {index}")))?;
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        self.0
            .address()
            .add(index, addr, prefix)
            .replace()
            .execute()
            .await
            .map_err(err(format!("add address {addr}/{prefix}")))?;
        Ok(())
    }
}

/// Links in memory, for unit tests.
#[derive(Debug, Default)]
pub struct FakeLinks {
    /// Links by name.
    pub links: std::sync::Mutex<std::collections::BTreeMap<String, LinkInfo>>,
    /// `setup` calls: (index, mtu, address).
    pub setups: std::sync::Mutex<Vec<(u32, u32, IpAddr)>>,
}

impl Links for FakeLinks {
    async fn get(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        Ok(self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied())
    }

    async fn setup(&self, index: u32, mtu: u32, addr: IpAddr) -> Result<(), NetlinkError> {
        self.setups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, mtu, addr));
        Ok(())
    }
}
