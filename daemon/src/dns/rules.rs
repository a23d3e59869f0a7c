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

use super::metrics::RuleLabels;
use crate::controller::Desired;
use crate::dataplane::nftables::policy::dns::{domain_rules, DomainRule};

/// Most pods cached per desired state (more are computed each time).
const MAX_PODS: usize = 65_536;

/// A rule with its metric labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedRule {
    /// The rule.
    pub rule: DomainRule,
    /// Its labels in `veil_dns_rule_*`.
    pub labels: RuleLabels,
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
    pub fn get(&self, desired: &watch::Receiver<Arc<Desired>>, pod: Ipv4Addr) -> Rules {
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
            .map(|rule| CachedRule {
                labels: RuleLabels {
                    set: rule.set.clone(),
                    policy: rule.policy.clone(),
                    rule: rule.index.to_string(),
                },
                rule,
            })
            .collect();
        if map.len() < MAX_PODS {
            map.insert(pod, r.clone());
        }
        r
    }
}
