//! The reference evaluator: a short, literal reading of POLICY-API.md.
//! Given the cluster, the policies and a flow it returns the verdict and a
//! trace of how each direction was decided. It favours obviousness over
//! speed; the compiled program ([`crate::compile`]) must always agree with it.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::cluster::{Cluster, Endpoint, Pod};
use crate::model::{
    Action, Direction, HttpRequest, Peer, Policy, PortMatch, Protocol, Rule, TierDefault,
};
use crate::policyset::PolicySet;

/// A connection attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port (0 for ICMP).
    pub port: u16,
    /// The DNS name the destination was resolved from, if any.
    pub dns_name: Option<String>,
    /// The HTTP request sent on the connection, if it speaks HTTP/1.1.
    pub http: Option<HttpRequest>,
}

/// The verdict for a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Verdict {
    /// The connection (and its request) gets through.
    Allow,
    /// It does not.
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// A rule, named for traces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    /// The policy, e.g. `networkpolicy shop/deny`.
    pub policy: String,
    /// Direction of the rule list.
    pub direction: Direction,
    /// Index in the policy's rule list (0-based).
    pub index: usize,
    /// Upstream rule name, if any.
    pub name: Option<String>,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} rule {}",
            self.policy,
            self.direction.to_string().to_lowercase(),
            self.index
        )?;
        if let Some(n) = &self.name {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

/// What happened in one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TierResult {
    /// No policy of the tier selects the endpoint for this direction.
    Skipped,
    /// A rule decided (Allow or Deny).
    Rule(RuleRef, Action),
    /// A Pass rule sent the flow on to the next tier.
    Pass(RuleRef),
    /// No rule decided: the tier's default applied.
    Default(TierDefault),
}

/// One tier visited by an evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierStep {
    /// Tier name.
    pub tier: String,
    /// Tier order.
    pub order: u32,
    /// Outcome.
    pub result: TierResult,
    /// Log rules that matched on the way.
    pub logged: Vec<RuleRef>,
}

/// How one direction was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectionTrace {
    /// Ingress or egress.
    pub direction: Direction,
    /// `namespace/name` of the pod evaluated, if the endpoint is a pod.
    pub subject: Option<String>,
    /// Tiers walked (empty when the endpoint has no evaluation).
    pub tiers: Vec<TierStep>,
    /// Whether this direction allows the flow.
    pub allowed: bool,
    /// Why, in words.
    pub reason: String,
}

/// The full explanation of a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    /// Set when a rule outside policy decided (self, own node).
    pub shortcut: Option<String>,
    /// Source pod's egress.
    pub egress: Option<DirectionTrace>,
    /// Destination pod's ingress.
    pub ingress: Option<DirectionTrace>,
}

/// A verdict and its trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    /// The verdict.
    pub verdict: Verdict,
    /// Why.
    pub trace: Trace,
}

/// Evaluates a flow against the policies in force.
pub fn evaluate(cluster: &Cluster, policies: &PolicySet, flow: &Flow) -> Evaluation {
    let src = cluster.endpoint(flow.src);
    let dst = cluster.endpoint(flow.dst);
    if let Some(why) = always_allowed(&src, &dst, flow) {
        return Evaluation {
            verdict: Verdict::Allow,
            trace: Trace {
                shortcut: Some(why),
                egress: None,
                ingress: None,
            },
        };
    }
    let egress = direction(cluster, policies, flow, Direction::Egress, &src, &dst);
    let ingress = direction(cluster, policies, flow, Direction::Ingress, &dst, &src);
    let verdict = if egress.allowed && ingress.allowed {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    Evaluation {
        verdict,
        trace: Trace {
            shortcut: None,
            egress: Some(egress),
            ingress: Some(ingress),
        },
    }
}

fn always_allowed(src: &Endpoint<'_>, dst: &Endpoint<'_>, flow: &Flow) -> Option<String> {
    match (src, dst) {
        (Endpoint::Pod(p), Endpoint::Pod(_)) if flow.src == flow.dst => {
            Some(format!("{} reaches itself: always allowed", p.key()))
        }
        (Endpoint::Node(n), Endpoint::Node(m)) if n.name == m.name => {
            Some(format!("node {} reaches itself: always allowed", n.name))
        }
        (Endpoint::Node(n), Endpoint::Pod(p)) | (Endpoint::Pod(p), Endpoint::Node(n))
            if p.node == n.name =>
        {
            Some(format!(
                "{} and its own node {}: always allowed",
                p.key(),
                n.name
            ))
        }
        _ => None,
    }
}

/// Evaluates one direction: `subject` is the endpoint whose policies
/// apply, `peer` the other side.
fn direction(
    cluster: &Cluster,
    policies: &PolicySet,
    flow: &Flow,
    dir: Direction,
    subject: &Endpoint<'_>,
    peer: &Endpoint<'_>,
) -> DirectionTrace {
    let pod = match subject {
        Endpoint::Pod(p) => *p,
        other => {
            let what = match other {
                Endpoint::Node(n) => format!("the address of node {}", n.name),
                _ => "an address outside the cluster's pods".to_string(),
            };
            return DirectionTrace {
                direction: dir,
                subject: None,
                tiers: Vec::new(),
                allowed: true,
                reason: format!("no {} evaluation: {what}", dir.to_string().to_lowercase()),
            };
        }
    };
    let peer_ip = match dir {
        Direction::Egress => flow.dst,
        Direction::Ingress => flow.src,
    };
    // The destination of the flow, for named ports.
    let dst_ep = match dir {
        Direction::Egress => *peer,
        Direction::Ingress => *subject,
    };
    let mut steps = Vec::new();
    for tier in policies.tiers() {
        let selecting: Vec<&Policy> = policies
            .tier_policies(&tier.name)
            .into_iter()
            .filter(|p| p.applies(dir) && cluster.selects(&p.subject, pod))
            .collect();
        if selecting.is_empty() {
            steps.push(TierStep {
                tier: tier.name.clone(),
                order: tier.order,
                result: TierResult::Skipped,
                logged: Vec::new(),
            });
            continue;
        }
        let mut logged = Vec::new();
        let mut result = None;
        'policies: for p in selecting {
            for (i, rule) in p.rules(dir).iter().enumerate() {
                if !rule_matches(cluster, rule, dir, peer_ip, peer, &dst_ep, flow) {
                    continue;
                }
                let r = RuleRef {
                    policy: p.key.to_string(),
                    direction: dir,
                    index: i,
                    name: rule.name.clone(),
                };
                match rule.action {
                    Action::Log => logged.push(r),
                    Action::Pass => {
                        result = Some(TierResult::Pass(r));
                        break 'policies;
                    }
                    Action::Allow | Action::Deny => {
                        result = Some(TierResult::Rule(r, rule.action));
                        // L7: the deciding Allow rule with http checks the request.
                        if rule.action == Action::Allow {
                            if let Some(h) = &rule.http {
                                let (ok, why) = match &flow.http {
                                    Some(req) if h.matches(req) => (true, format!(
                                        "allowed by {}; request {} {} matches its http rule",
                                        steps_rule(&result), req.method, req.path
                                    )),
                                    Some(req) => (false, format!(
                                        "{} allows the connection but request {} {} (host {}) does not match its http rule: HTTP 403",
                                        steps_rule(&result), req.method, req.path, req.host
                                    )),
                                    None => (false, format!(
                                        "{} has an http rule but the connection does not speak HTTP/1.1: closed",
                                        steps_rule(&result)
                                    )),
                                };
                                steps.push(TierStep {
                                    tier: tier.name.clone(),
                                    order: tier.order,
                                    result: result.take().unwrap_or(TierResult::Skipped),
                                    logged,
                                });
                                return DirectionTrace {
                                    direction: dir,
                                    subject: Some(pod.key()),
                                    tiers: steps,
                                    allowed: ok,
                                    reason: why,
                                };
                            }
                        }
                        break 'policies;
                    }
                }
            }
        }
        let result = result.unwrap_or(TierResult::Default(tier.default_action));
        let done = match &result {
            TierResult::Rule(r, a) => Some((*a == Action::Allow, format!("{a} by {r}"))),
            TierResult::Default(TierDefault::Deny) => Some((
                false,
                format!("no rule of tier {} matched: its default is Deny", tier.name),
            )),
            _ => None,
        };
        steps.push(TierStep {
            tier: tier.name.clone(),
            order: tier.order,
            result,
            logged,
        });
        if let Some((allowed, reason)) = done {
            return DirectionTrace {
                direction: dir,
                subject: Some(pod.key()),
                tiers: steps,
                allowed,
                reason,
            };
        }
    }
    DirectionTrace {
        direction: dir,
        subject: Some(pod.key()),
        tiers: steps,
        allowed: true,
        reason: "no tier decided: allowed after the last tier".into(),
    }
}

fn steps_rule(r: &Option<TierResult>) -> String {
    match r {
        Some(TierResult::Rule(r, _)) => r.to_string(),
        _ => String::new(),
    }
}

/// Whether a rule matches at L3/L4 (and by DNS name for `domains`).
fn rule_matches(
    cluster: &Cluster,
    rule: &Rule,
    dir: Direction,
    peer_ip: IpAddr,
    peer: &Endpoint<'_>,
    dst: &Endpoint<'_>,
    flow: &Flow,
) -> bool {
    if rule.protocol.is_some_and(|p| p != flow.protocol) {
        return false;
    }
    if !rule.ports.is_empty()
        && !rule
            .ports
            .iter()
            .any(|m| port_matches(cluster, m, dst, flow))
    {
        return false;
    }
    rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(cluster, p, dir, peer_ip, peer, flow))
}

fn port_matches(cluster: &Cluster, m: &PortMatch, dst: &Endpoint<'_>, flow: &Flow) -> bool {
    match m {
        PortMatch::Range { protocol, from, to } => {
            let proto_ok = match protocol {
                Some(p) => *p == flow.protocol,
                None => flow.protocol.has_ports(),
            };
            proto_ok && (*from..=*to).contains(&flow.port)
        }
        PortMatch::Named { protocol, name } => {
            protocol.is_none_or(|p| p == flow.protocol)
                && cluster.named_ports(dst).iter().any(|pp| {
                    pp.name.as_deref() == Some(name.as_str())
                        && pp.protocol == flow.protocol
                        && pp.port == flow.port
                })
        }
    }
}

fn peer_matches(
    cluster: &Cluster,
    p: &Peer,
    dir: Direction,
    ip: IpAddr,
    ep: &Endpoint<'_>,
    flow: &Flow,
) -> bool {
    if let Some(sel) = &p.pods {
        let ok = matches!(ep, Endpoint::Pod(pod) if cluster.selects(sel, pod));
        if !ok {
            return false;
        }
    }
    if let Some(sel) = &p.nodes {
        if !matches!(ep, Endpoint::Node(n) if sel.matches(&n.labels)) {
            return false;
        }
    }
    if !p.nets.is_empty() && !p.nets.iter().any(|n| n.contains(ip)) {
        return false;
    }
    if p.not_nets.iter().any(|n| n.contains(ip)) {
        return false;
    }
    if !p.domains.is_empty() {
        let ok = dir == Direction::Egress
            && flow
                .dns_name
                .as_deref()
                .is_some_and(|name| p.domains.iter().any(|d| d.matches(name)));
        if !ok {
            return false;
        }
    }
    true
}

/// Whether a pod is selected by a policy for a direction (used by traces).
pub fn selects(cluster: &Cluster, policy: &Policy, pod: &Pod, dir: Direction) -> bool {
    policy.applies(dir) && cluster.selects(&policy.subject, pod)
}

impl fmt::Display for DirectionTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.direction.to_string().to_lowercase();
        match &self.subject {
            Some(s) => writeln!(f, "{d} of {s}:")?,
            None => writeln!(f, "{d}:")?,
        }
        for t in &self.tiers {
            write!(f, "  tier {} ({}): ", t.tier, t.order)?;
            match &t.result {
                TierResult::Skipped => write!(f, "skipped (no policy selects the pod for {d})")?,
                TierResult::Rule(r, a) => write!(f, "{a} by {r}")?,
                TierResult::Pass(r) => write!(f, "Pass by {r}: on to the next tier")?,
                TierResult::Default(TierDefault::Deny) => {
                    write!(f, "no rule matched: default Deny")?
                }
                TierResult::Default(TierDefault::Pass) => {
                    write!(f, "no rule matched: default Pass")?
                }
            }
            for l in &t.logged {
                write!(f, " [logged by {l}]")?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "  => {}: {}",
            if self.allowed { "allowed" } else { "denied" },
            self.reason
        )
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.shortcut {
            writeln!(f, "{s}")?;
        }
        if let Some(e) = &self.egress {
            write!(f, "{e}")?;
        }
        if let Some(i) = &self.ingress {
            write!(f, "{i}")?;
        }
        Ok(())
    }
}
