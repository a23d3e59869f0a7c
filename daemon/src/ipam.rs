//! IP address allocation from the node's pod CIDR (pure; persisted by
//! [`crate::endpoints`]).
//!
//! Reserved: the network address, the first host address (the node's tunnel
//! address on `veil-wg`, the source of node→remote-pod traffic) and, in IPv4, the
//! broadcast address. Allocation continues after the last address handed out
//! (like host-local), so a released address is not reused at once.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Allocation failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// No free address is left.
    #[error("pod CIDR {0} is exhausted")]
    Exhausted(IpNetwork),
    /// A requested address is outside the CIDR or reserved.
    #[error("address {addr} is not allocatable from {cidr}")]
    NotAllocatable {
        /// The address.
        addr: IpAddr,
        /// The CIDR.
        cidr: IpNetwork,
    },
    /// A requested address is already in use.
    #[error("address {0} is already allocated")]
    InUse(IpAddr),
}

/// The allocator state of one CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocator {
    cidr: IpNetwork,
    used: BTreeSet<IpAddr>,
    last: Option<IpAddr>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

impl Allocator {
    /// A fresh allocator for `cidr`.
    pub fn new(cidr: IpNetwork) -> Self {
        Self {
            cidr,
            used: BTreeSet::new(),
            last: None,
        }
    }

    /// The CIDR.
    pub fn cidr(&self) -> IpNetwork {
        self.cidr
    }

    /// The node's own (tunnel) address: the first host address.
    pub fn node_address(&self) -> IpAddr {
        from_u128(to_u128(self.cidr.network()) + 1, self.cidr.is_ipv4())
    }

    fn bounds(&self) -> (u128, u128) {
        let first = to_u128(self.cidr.network()) + 2;
        let bits = if self.cidr.is_ipv4() { 32 } else { 128 };
        let host_bits = bits - self.cidr.prefix() as u32;
        let size: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            1u128 << host_bits
        };
        let mut last = to_u128(self.cidr.network()) + (size - 1);
        if self.cidr.is_ipv4() {
            last -= 1; // broadcast
        }
        (first, last)
    }

    /// Whether `addr` may be handed to a pod.
    pub fn allocatable(&self, addr: IpAddr) -> bool {
        if addr.is_ipv4() != self.cidr.is_ipv4() {
            return false;
        }
        let (first, last) = self.bounds();
        let v = to_u128(addr);
        v >= first && v <= last
    }

    /// Hands out the next free address.
    pub fn allocate(&mut self) -> Result<IpAddr, IpamError> {
        let (first, last) = self.bounds();
        if first > last {
            return Err(IpamError::Exhausted(self.cidr));
        }
        let start = match self.last {
            Some(l) if self.allocatable(l) => to_u128(l) + 1,
            _ => first,
        };
        let span = last - first + 1;
        let mut candidate = if start > last { first } else { start };
        // Bounded: at most `span` candidates, and `used` can hold at most `span`.
        for _ in 0..span.min(self.used.len() as u128 + 1) {
            let ip = from_u128(candidate, self.cidr.is_ipv4());
            if !self.used.contains(&ip) {
                self.used.insert(ip);
                self.last = Some(ip);
                return Ok(ip);
            }
            candidate = if candidate == last {
                first
            } else {
                candidate + 1
            };
        }
        Err(IpamError::Exhausted(self.cidr))
    }

    /// Marks a specific address as used (restoring state, or a fixed address).
    pub fn claim(&mut self, addr: IpAddr) -> Result<(), IpamError> {
        if !self.allocatable(addr) {
            return Err(IpamError::NotAllocatable {
                addr,
                cidr: self.cidr,
            });
        }
        if !self.used.insert(addr) {
            return Err(IpamError::InUse(addr));
        }
        Ok(())
    }

    /// Releases an address (releasing a free one is a no-op).
    pub fn release(&mut self, addr: IpAddr) {
        self.used.remove(&addr);
    }

    /// Addresses in use.
    pub fn used(&self) -> impl Iterator<Item = &IpAddr> {
        self.used.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn skips_network_node_and_broadcast_addresses() {
        let mut a = Allocator::new("10.244.0.0/29".parse().unwrap());
        let got: Vec<_> = (0..5).map(|_| a.allocate().unwrap().to_string()).collect();
        assert_eq!(
            got,
            [
                "10.244.0.2",
                "10.244.0.3",
                "10.244.0.4",
                "10.244.0.5",
                "10.244.0.6"
            ]
        );
        assert_eq!(
            a.allocate(),
            Err(IpamError::Exhausted("10.244.0.0/29".parse().unwrap()))
        );
        assert_eq!(a.node_address().to_string(), "10.244.0.1");
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let mut a = Allocator::new("10.244.0.0/24".parse().unwrap());
        let first = a.allocate().unwrap();
        a.release(first);
        assert_ne!(a.allocate().unwrap(), first);
    }

    #[test]
    fn claim_refuses_reserved_and_used() {
        let mut a = Allocator::new("10.244.0.0/24".parse().unwrap());
        assert!(a.claim("10.244.0.1".parse().unwrap()).is_err());
        assert!(a.claim("10.244.0.255".parse().unwrap()).is_err());
        a.claim("10.244.0.9".parse().unwrap()).unwrap();
        assert_eq!(
            a.claim("10.244.0.9".parse().unwrap()),
            Err(IpamError::InUse("10.244.0.9".parse().unwrap()))
        );
    }

    proptest! {
        #[test]
        fn allocations_are_distinct_and_inside(ops in proptest::collection::vec(any::<bool>(), 1..400)) {
            let cidr: IpNetwork = "10.244.3.0/24".parse().unwrap();
            let mut a = Allocator::new(cidr);
            let mut live: Vec<IpAddr> = Vec::new();
            for alloc in ops {
                if alloc || live.is_empty() {
                    match a.allocate() {
                        Ok(ip) => {
                            prop_assert!(cidr.contains(ip));
                            prop_assert!(!live.contains(&ip));
                            live.push(ip);
                        }
                        Err(_) => prop_assert_eq!(live.len(), 253),
                    }
                } else {
                    let ip = live.remove(0);
                    a.release(ip);
                }
            }
        }
    }
}
