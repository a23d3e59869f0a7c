//! The L7 view of a [`Program`]: for one connection, the rules that decide
//! it at L3/L4 in each direction, and those of them that carry `http`
//! conditions (every request on the connection must satisfy all of them).
//!
//! It walks the same chains as [`Program::verdict`], with the request left
//! out; it does not look at requests (the caller checks each one with
//! [`L7Rule::check`]).

use super::interpret::Addr;
use super::program::{ChainTier, Program};
use crate::eval::Flow;
use crate::model::{Action, Direction, HttpMatch, HttpRequest, TierDefault};

/// A deciding Allow rule with `http` conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Rule {
    /// The policy, e.g. `networkpolicy shop/api-read-only`.
    pub policy: String,
    /// Its tier.
    pub tier: String,
    /// Direction of the rule list.
    pub direction: Direction,
    /// Index in the policy's rule list of that direction (0-based).
    pub index: usize,
    /// The conditions.
    pub http: HttpMatch,
}

impl L7Rule {
    /// Whether `req` satisfies the rule.
    pub fn check(&self, req: &HttpRequest) -> bool {
        self.http.matches(req)
    }
}

/// How a connection is decided at L3/L4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionRules {
    /// A direction denies the connection.
    Denied(Direction),
    /// Allowed; each request must satisfy every rule listed (egress first).
    /// Empty: no deciding rule has `http`.
    Allowed(Vec<L7Rule>),
}

enum Decided {
    Deny,
    Allow(Option<L7Rule>),
}

impl Program {
    /// The deciding rules of `flow` (its `http` is ignored).
    pub fn connection_rules(&self, flow: &Flow) -> ConnectionRules {
        let mut flow = flow.clone();
        flow.http = None;
        let src = self.endpoints.get(&flow.src);
        let dst = self.endpoints.get(&flow.dst);
        if flow.src == flow.dst && (src.is_some() || self.nodes.contains_key(&flow.src)) {
            return ConnectionRules::Allowed(Vec::new());
        }
        let own_node = |a, b: Option<&super::EndpointProgram>| {
            self.nodes
                .get(&a)
                .is_some_and(|n| b.is_some_and(|e| e.node == *n))
        };
        if own_node(flow.src, dst) || own_node(flow.dst, src) {
            return ConnectionRules::Allowed(Vec::new());
        }
        let src_id = self.addr_ids.get(&flow.src).copied();
        let dst_id = self.addr_ids.get(&flow.dst).copied();
        let mut rules = Vec::new();
        let sides = [
            (src, Direction::Egress, flow.dst, dst_id),
            (dst, Direction::Ingress, flow.src, src_id),
        ];
        for (ep, dir, peer_ip, peer_id) in sides {
            let Some(ep) = ep else { continue };
            let chain = match dir {
                Direction::Egress => &ep.egress,
                Direction::Ingress => &ep.ingress,
            };
            let peer = Addr {
                ip: peer_ip,
                id: peer_id,
            };
            match self.decide(chain, dir, peer, dst_id, &flow) {
                Decided::Deny => return ConnectionRules::Denied(dir),
                Decided::Allow(r) => rules.extend(r),
            }
        }
        ConnectionRules::Allowed(rules)
    }

    fn decide(
        &self,
        chain: &[ChainTier],
        dir: Direction,
        peer: Addr,
        dst: Option<u32>,
        flow: &Flow,
    ) -> Decided {
        let proto_bit = 1u8 << (flow.protocol as u8);
        'tiers: for ct in chain {
            for (&pi, &(start, end)) in ct.policies.iter().zip(&ct.rules) {
                for r in &self.rules[start as usize..end as usize] {
                    // The prefilter is part of the match (`ports_exact`
                    // rules rely on it).
                    if r.proto_mask & proto_bit == 0
                        || flow.port < r.port_lo
                        || flow.port > r.port_hi
                        || !self.rule_matches(r, dir, peer, dst, flow)
                    {
                        continue;
                    }
                    match r.action {
                        Action::Log => continue,
                        Action::Pass => continue 'tiers,
                        Action::Deny => return Decided::Deny,
                        Action::Allow => {
                            return Decided::Allow(r.http.as_ref().map(|h| {
                                let p = &self.policies[pi as usize];
                                L7Rule {
                                    policy: p.key.to_string(),
                                    tier: self.tiers[p.tier as usize].name.clone(),
                                    direction: dir,
                                    index: r.index,
                                    http: h.clone(),
                                }
                            }))
                        }
                    }
                }
            }
            if self.tiers[ct.tier as usize].default_action == TierDefault::Deny {
                return Decided::Deny;
            }
        }
        Decided::Allow(None)
    }
}
