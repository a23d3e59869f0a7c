//! Prometheus series of the DNS proxy: queries and answers per rule,
//! refusals by reason, set writes and their failures, elements per set,
//! expirations, and the latency the proxy adds (histogram). Labels are rule
//! sets and reasons, never addresses or pod names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels naming a rule (its set, policy and index).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RuleLabels {
    /// The nftables set.
    pub set: String,
    /// `kind namespace/name`.
    pub policy: String,
    /// Rule index.
    pub rule: String,
}

/// Labels naming a reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: String,
}

/// Labels naming a transport.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TransportLabels {
    /// `udp` or `tcp`.
    pub transport: String,
}

/// The proxy's metrics.
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    /// Queries by transport.
    pub queries: Family<TransportLabels, Counter>,
    /// Queries whose name a rule matches, by rule.
    pub rule_queries: Family<RuleLabels, Counter>,
    /// Answers that opened addresses, by rule.
    pub rule_answers: Family<RuleLabels, Counter>,
    /// Answers refused or dropped, by reason.
    pub drops: Family<ReasonLabels, Counter>,
    /// Elements written.
    pub elements_added: Counter,
    /// Allowances expired.
    pub expirations: Counter,
    /// Elements the proxy holds, all sets.
    pub set_elements: Gauge,
    /// Seconds from the upstream answer to its release (set writes included).
    pub added_latency: Histogram,
    /// Seconds from the query to the answer's release.
    pub latency: Histogram,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        let buckets = || {
            Histogram::new([
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 1.0,
            ])
        };
        DnsMetrics {
            queries: Family::default(),
            rule_queries: Family::default(),
            rule_answers: Family::default(),
            drops: Family::default(),
            elements_added: Counter::default(),
            expirations: Counter::default(),
            set_elements: Gauge::default(),
            added_latency: buckets(),
            latency: buckets(),
        }
    }
}

impl DnsMetrics {
    /// Registers every series under `veil_dns_`.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("veil_dns");
        r.register(
            "queries",
            "DNS queries through the proxy",
            self.queries.clone(),
        );
        r.register(
            "rule_queries",
            "Queries whose name a domains rule matches",
            self.rule_queries.clone(),
        );
        r.register(
            "rule_answers",
            "Answers that opened addresses for a domains rule",
            self.rule_answers.clone(),
        );
        r.register(
            "drops",
            "Answers refused (SERVFAIL) or dropped, by reason",
            self.drops.clone(),
        );
        r.register(
            "elements_added",
            "Set elements written",
            self.elements_added.clone(),
        );
        r.register(
            "expirations",
            "Allowances expired",
            self.expirations.clone(),
        );
        r.register(
            "set_elements",
            "Allowances in force (elements of the domains sets)",
            self.set_elements.clone(),
        );
        r.register(
            "proxy_added_seconds",
            "Time from the resolver's answer to its release to the pod",
            self.added_latency.clone(),
        );
        r.register(
            "query_seconds",
            "Time from the pod's query to the answer's release",
            self.latency.clone(),
        );
    }

    /// Counts a refusal.
    pub fn drop(&self, reason: &str) {
        self.drops
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}
