//! The `inet veil` table's named counters as metrics: packets refused on
//! the underlay (`veil_fail_closed_packets_total`) and policy log entries
//! suppressed by the per-rule rate limit (`veil_policy_log_suppressed_total`,
//! the losses of deny and `Log` logging).
//!
//! Values are those of the last read back of the table (start, each
//! periodic resync), held here so that a scrape never runs `nft` nor waits
//! for the table manager: listing a large table takes seconds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use super::desired::{FAIL_CLOSED_COUNTER, LOG_SUPPRESSED_COUNTER};

/// The counters' values, shared by the table's user and the collector.
#[derive(Debug, Clone, Default)]
pub struct CounterValues(Arc<Mutex<BTreeMap<String, u64>>>);

impl CounterValues {
    /// Replaces the values with those read back.
    pub fn set(&self, values: &BTreeMap<String, u64>) {
        if !values.is_empty() {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = values.clone();
        }
    }

    /// The value of counter `name` (0 before it is read).
    pub fn get(&self, name: &str) -> u64 {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.get(name).copied().unwrap_or(0)
    }
}

/// The metrics the table's counters are exposed as (name without
/// `_total`, help, counter).
const EXPOSED: [(&str, &str, &str); 2] = [
    (
        "veil_policy_log_suppressed",
        "Policy log entries (denies and Log rules) the per-rule rate limit suppressed",
        LOG_SUPPRESSED_COUNTER,
    ),
    (
        "veil_fail_closed_packets",
        "Pod packets refused on the underlay interface (fail closed)",
        FAIL_CLOSED_COUNTER,
    ),
];

impl Collector for CounterValues {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, counter) in EXPOSED {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(self.get(counter)).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::nftables::{DesiredTable, FakeFilter, TableManager};
    use crate::dataplane::Filter;
    use prometheus_client::registry::Registry;

    fn base() -> DesiredTable {
        DesiredTable::new(crate::dataplane::nftables::BaseFilter {
            underlay_interface: "eth0".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
        })
    }

    #[test]
    fn suppressed_log_entries_read_back_are_exposed_as_a_counter() {
        let fake = FakeFilter::default();
        let filter = Filter::install_with(Box::new(fake.clone()), base()).unwrap();
        let values = filter.counters();
        let mut reg = Registry::default();
        reg.register_collector(Box::new(values.clone()));
        // The kernel counted 7 suppressed entries and 3 refused packets.
        fake.tamper(|t| {
            let t = t.as_mut().unwrap();
            t.counter_values.insert(LOG_SUPPRESSED_COUNTER.into(), 7);
            t.counter_values.insert(FAIL_CLOSED_COUNTER.into(), 3);
        });
        assert_eq!(values.get(LOG_SUPPRESSED_COUNTER), 0, "not read yet");
        assert!(!filter.resync().unwrap(), "counters are no drift");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("veil_policy_log_suppressed_total 7\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE veil_policy_log_suppressed counter"),
            "{out}"
        );
        assert!(out.contains("veil_fail_closed_packets_total 3\n"), "{out}");
    }

    #[test]
    fn counter_values_are_parsed_from_the_table() {
        let json = r#"{"nftables": [
            {"counter": {"family": "inet", "table": "veil", "name": "log_suppressed", "packets": 12, "bytes": 900}},
            {"counter": {"family": "inet", "table": "other", "name": "log_suppressed", "packets": 99, "bytes": 1}}
        ]}"#;
        let t = crate::dataplane::nftables::ActualTable::parse(json, "veil").unwrap();
        assert_eq!(t.counter_values[LOG_SUPPRESSED_COUNTER], 12);
        let mut m = TableManager::new(FakeFilter::default(), base());
        m.apply().unwrap();
        assert!(
            m.counters().is_empty(),
            "the fake's new table counted nothing"
        );
    }
}
