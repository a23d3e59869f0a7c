//! The interpreter of a [`Program`]: the verdict of one flow, walking the
//! source's egress chain and the destination's ingress chain tier by tier,
//! with the per-rule protocol/port prefilter and bitmap set lookups. The
//! differential tests check it against the reference evaluator.
//!
//! It does not change the program.

use std::net::IpAddr;

use super::program::{CPort, CRule, ChainTier, Program, SetId};
use crate::eval::{Flow, Verdict};
use crate::model::{Action, Direction, TierDefault};

/// An address and its dense id, if it has one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Addr {
    pub(super) ip: IpAddr,
    pub(super) id: Option<u32>,
}

impl Program {
    #[inline]
    fn in_set(&self, set: SetId, addr: Option<u32>) -> bool {
        let Some(id) = addr else { return false };
        let id = id as usize;
        self.set_bits
            .get(set as usize)
            .and_then(|b| b.get(id / 64))
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Interprets the program for a flow.
    pub fn verdict(&self, flow: &Flow) -> Verdict {
        let src = self.endpoints.get(&flow.src);
        let dst = self.endpoints.get(&flow.dst);
        if flow.src == flow.dst && (src.is_some() || self.nodes.contains_key(&flow.src)) {
            return Verdict::Allow;
        }
        if let Some(n) = self.nodes.get(&flow.src) {
            if dst.is_some_and(|d| d.node == *n) {
                return Verdict::Allow;
            }
        }
        if let Some(n) = self.nodes.get(&flow.dst) {
            if src.is_some_and(|s| s.node == *n) {
                return Verdict::Allow;
            }
        }
        let src_id = self.addr_ids.get(&flow.src).copied();
        let dst_id = self.addr_ids.get(&flow.dst).copied();
        if let Some(s) = src {
            let peer = Addr {
                ip: flow.dst,
                id: dst_id,
            };
            if !self.chain_allows(&s.egress, Direction::Egress, peer, dst_id, flow) {
                return Verdict::Deny;
            }
        }
        if let Some(d) = dst {
            let peer = Addr {
                ip: flow.src,
                id: src_id,
            };
            if !self.chain_allows(&d.ingress, Direction::Ingress, peer, dst_id, flow) {
                return Verdict::Deny;
            }
        }
        Verdict::Allow
    }

    fn chain_allows(
        &self,
        chain: &[ChainTier],
        dir: Direction,
        peer: Addr,
        dst: Option<u32>,
        flow: &Flow,
    ) -> bool {
        'tiers: for ct in chain {
            let proto_bit = 1u8 << (flow.protocol as u8);
            for &(start, end) in &ct.rules {
                for r in &self.rules[start as usize..end as usize] {
                    if r.proto_mask & proto_bit == 0
                        || flow.port < r.port_lo
                        || flow.port > r.port_hi
                    {
                        continue;
                    }
                    if !self.rule_matches(r, dir, peer, dst, flow) {
                        continue;
                    }
                    match r.action {
                        Action::Log => continue,
                        Action::Pass => continue 'tiers,
                        Action::Deny => return false,
                        Action::Allow => {
                            return match (&r.http, &flow.http) {
                                (None, _) => true,
                                (Some(h), Some(req)) => h.matches(req),
                                (Some(_), None) => false,
                            }
                        }
                    }
                }
            }
            if self.tiers[ct.tier as usize].default_action == TierDefault::Deny {
                return false;
            }
        }
        true
    }

    pub(super) fn rule_matches(
        &self,
        r: &CRule,
        dir: Direction,
        peer: Addr,
        dst: Option<u32>,
        flow: &Flow,
    ) -> bool {
        if r.protocol.is_some_and(|p| p != flow.protocol) {
            return false;
        }
        if !r.ports_exact
            && !r.ports.is_empty()
            && !r.ports.iter().any(|m| match m {
                CPort::Range { protocol, from, to } => {
                    protocol.map_or(flow.protocol.has_ports(), |p| p == flow.protocol)
                        && *from <= flow.port
                        && flow.port <= *to
                }
                CPort::Named { protocol, set } => {
                    protocol.is_none_or(|p| p == flow.protocol)
                        && dst.is_some_and(|d| {
                            self.named_by_addr[d as usize].iter().any(|&(s, pr, po)| {
                                s == *set && pr == flow.protocol && po == flow.port
                            })
                        })
                }
            })
        {
            return false;
        }
        if let Some(s) = r.peer_fast {
            return self.in_set(s, peer.id);
        }
        r.peers.is_empty()
            || r.peers.iter().any(|p| {
                p.pods.is_none_or(|s| self.in_set(s, peer.id))
                    && p.nodes.is_none_or(|s| self.in_set(s, peer.id))
                    && (p.nets.is_empty() || p.nets.iter().any(|n| n.contains(peer.ip)))
                    && !p.not_nets.iter().any(|n| n.contains(peer.ip))
                    && (p.domains.is_empty()
                        || (dir == Direction::Egress
                            && flow
                                .dns_name
                                .as_deref()
                                .is_some_and(|n| p.domains.iter().any(|d| d.matches(n)))))
            })
    }
}
