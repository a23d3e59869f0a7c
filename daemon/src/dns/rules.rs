//! The `domains` rules of each pod, computed once per desired state (not per
//! answer): walking the program and hashing rule set names costs more than
//! the rest of an answer's handling. The cache holds the desired state it was
//! computed from and starts over when that changes; it is bounded.
//!
//! It does not decide whether a name matches ([`DomainRule::matches`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use prometheus_client::metrics::counter::Counter;

use super::metrics::{DnsMetrics, RuleLabels};
use crate::controller::Desired;
use crate::dataplane::nftables::policy::dns::{domain_rules, DomainRule};

/// Most pods cached per desired state (more are computed each time).
const MAX_PODS: usize = 65_536;

/// A rule with its counters (created once, not looked up per answer).
#[derive(Debug, Clone)]
pub struct CachedRule {
    /// The rule.
    pub rule: DomainRule,
    /// Its labels in `veil_dns_rule_*`.
    pub labels: RuleLabels,
    /// `veil_dns_rule_queries_total` of this rule.
    pub queries: Counter,
    /// `veil_dns_rule_answers_total` of this rule.
    pub answers: Counter,
}

type Rules = Arc<[CachedRule]>;
/// The desired state the rules were computed from, and the rules by pod.
type Computed = (Arc<Desired>, HashMap<Ipv4Addr, Rules>);

/// The cache.
#[derive(Debug, Default)]
pub struct RuleCache {
    inner: Mutex<Option<Computed>>,
}

impl RuleCache {
    /// The `domains` rules of the pod at `pod` in the current desired state.
    pub fn get(
        &self,
        desired: &watch::Receiver<Arc<Desired>>,
        metrics: &DnsMetrics,
        pod: Ipv4Addr,
    ) -> Rules {
        let cur = desired.borrow().clone();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !g.as_ref().is_some_and(|(d, _)| Arc::ptr_eq(d, &cur)) {
            *g = Some((cur.clone(), HashMap::new()));
        }
        let Some((_, map)) = g.as_mut() else {
            return Arc::from(Vec::new());
        };
        if let Some(r) = map.get(&pod) {
            return r.clone();
        }
        let r: Rules = domain_rules(&cur.program, IpAddr::V4(pod))
            .into_iter()
            .map(|rule| {
                let labels = RuleLabels {
                    set: rule.set.clone(),
                    policy: rule.policy.clone(),
                    rule: rule.index.to_string(),
                };
                CachedRule {
                    queries: metrics.rule_queries.get_or_create(&labels).clone(),
                    answers: metrics.rule_answers.get_or_create(&labels).clone(),
                    labels,
                    rule,
                }
            })
            .collect();
        if map.len() < MAX_PODS {
            map.insert(pod, r.clone());
        }
        r
    }
}
