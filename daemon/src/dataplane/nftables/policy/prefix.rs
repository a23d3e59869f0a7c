//! NFLOG prefixes that name the rule that denied (or logged) a packet.
//!
//! A prefix is `<action>|<direction>|<tier>|<kind>:<policy>|<rule>`, e.g.
//! `D|E|security|gnp:block-db|2` (rule index 2 of GlobalNetworkPolicy
//! `block-db` in tier `security` denied an egress connection), or
//! `D|I|default|default` for a tier's default deny. Prefixes longer than
//! [`MAX_PREFIX`] bytes become `D|I|#<12 hex digits>` and the daemon keeps the
//! mapping ([`LogPrefixes`]), as Calico hashes long prefixes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use veil_policy::model::{Direction, Kind, ObjectKey};

/// Longest prefix written to the kernel (NFLOG's limit is 64 bytes with the NUL).
pub const MAX_PREFIX: usize = 63;

/// What a log entry's rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogAction {
    /// The packet was dropped.
    Deny,
    /// A `Log` rule recorded it; evaluation continued.
    Log,
}

/// The rule a prefix names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPrefix {
    /// Deny or Log.
    pub action: LogAction,
    /// The evaluation's direction (the pod's egress or ingress).
    pub direction: Direction,
    /// Tier name.
    pub tier: String,
    /// The policy, or `None` for the tier's default action.
    pub policy: Option<ObjectKey>,
    /// Rule index in the policy's rules of that direction.
    pub rule: Option<usize>,
}

/// The short code of a policy kind (`gnp`, `knp`, ...).
pub fn kind_code(k: Kind) -> &'static str {
    match k {
        Kind::K8sNetworkPolicy => "knp",
        Kind::AdminNetworkPolicy => "anp",
        Kind::BaselineAdminNetworkPolicy => "banp",
        Kind::ClusterNetworkPolicy => "cnp",
        Kind::Tier => "tier",
        Kind::VeilNetworkPolicy => "vnp",
        Kind::GlobalNetworkPolicy => "gnp",
    }
}

fn kind_from_code(s: &str) -> Option<Kind> {
    Some(match s {
        "knp" => Kind::K8sNetworkPolicy,
        "anp" => Kind::AdminNetworkPolicy,
        "banp" => Kind::BaselineAdminNetworkPolicy,
        "cnp" => Kind::ClusterNetworkPolicy,
        "tier" => Kind::Tier,
        "vnp" => Kind::VeilNetworkPolicy,
        "gnp" => Kind::GlobalNetworkPolicy,
        _ => return None,
    })
}

impl LogPrefix {
    fn head(&self) -> String {
        let a = match self.action {
            LogAction::Deny => 'D',
            LogAction::Log => 'L',
        };
        let d = match self.direction {
            Direction::Egress => 'E',
            Direction::Ingress => 'I',
        };
        format!("{a}|{d}|")
    }

    /// The full, readable prefix (may exceed [`MAX_PREFIX`]).
    pub fn long_form(&self) -> String {
        let mut s = self.head();
        s.push_str(&self.tier);
        match (&self.policy, self.rule) {
            (Some(p), Some(r)) => {
                let _ = write!(s, "|{}:{}|{r}", kind_code(p.kind), p.full_name());
            }
            _ => s.push_str("|default"),
        }
        s
    }

    /// The prefix written to the kernel: the long form, or a hashed short
    /// form when that is too long.
    pub fn encode(&self) -> String {
        let long = self.long_form();
        if long.len() <= MAX_PREFIX {
            return long;
        }
        // Stable across runs and versions: a kernel table written by one
        // veild is read by the next.
        let h = crate::dataplane::nftables::desired::fnv1a(long.as_bytes());
        format!("{}#{:012x}", self.head(), h >> 16)
    }

    /// Parses a long-form prefix. Hashed prefixes need [`LogPrefixes`].
    pub fn parse(s: &str) -> Option<LogPrefix> {
        let mut it = s.splitn(5, '|');
        let action = match it.next()? {
            "D" => LogAction::Deny,
            "L" => LogAction::Log,
            _ => return None,
        };
        let direction = match it.next()? {
            "E" => Direction::Egress,
            "I" => Direction::Ingress,
            _ => return None,
        };
        let tier = it.next()?;
        if tier.is_empty() || tier.starts_with('#') {
            return None;
        }
        let pol = it.next()?;
        if pol == "default" {
            return it.next().is_none().then(|| LogPrefix {
                action,
                direction,
                tier: tier.to_string(),
                policy: None,
                rule: None,
            });
        }
        let (code, full) = pol.split_once(':')?;
        let kind = kind_from_code(code)?;
        let rule: usize = it.next()?.parse().ok()?;
        let (namespace, name) = match full.split_once('/') {
            Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
            None => (None, full.to_string()),
        };
        Some(LogPrefix {
            action,
            direction,
            tier: tier.to_string(),
            policy: Some(ObjectKey {
                kind,
                namespace,
                name,
            }),
            rule: Some(rule),
        })
    }
}

/// The prefixes in use on a node, by their kernel form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogPrefixes {
    by_prefix: BTreeMap<String, LogPrefix>,
    /// What the allow rules' ids in connections' marks name.
    rule_ids: std::sync::Arc<super::verdict_mark::RuleIdTable>,
}

impl LogPrefixes {
    /// Registers `p` and returns its kernel form.
    pub fn intern(&mut self, p: LogPrefix) -> String {
        let s = p.encode();
        self.by_prefix.entry(s.clone()).or_insert(p);
        s
    }

    /// What a prefix seen in an NFLOG message names.
    pub fn lookup(&self, prefix: &str) -> Option<LogPrefix> {
        let prefix = prefix.trim_end_matches('\0');
        self.by_prefix
            .get(prefix)
            .cloned()
            .or_else(|| LogPrefix::parse(prefix))
    }

    /// Sets the table naming allow rules' ids ([`super::verdict_mark`]).
    pub fn set_rule_ids(&mut self, t: super::verdict_mark::RuleIdTable) {
        self.rule_ids = std::sync::Arc::new(t);
    }

    /// The table naming allow rules' ids in connections' conntrack marks.
    pub fn rule_ids(&self) -> std::sync::Arc<super::verdict_mark::RuleIdTable> {
        self.rule_ids.clone()
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.by_prefix.len()
    }

    /// True when none is registered.
    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// Adds every prefix of `other`.
    pub fn extend(&mut self, other: &LogPrefixes) {
        for (k, v) in &other.by_prefix {
            self.by_prefix.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gnp(name: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::GlobalNetworkPolicy,
            namespace: None,
            name: name.into(),
        }
    }

    #[test]
    fn short_prefix_round_trips_without_a_table() {
        let p = LogPrefix {
            action: LogAction::Deny,
            direction: Direction::Egress,
            tier: "security".into(),
            policy: Some(gnp("block-db")),
            rule: Some(2),
        };
        assert_eq!(p.encode(), "D|E|security|gnp:block-db|2");
        assert_eq!(LogPrefix::parse(&p.encode()), Some(p));
    }

    #[test]
    fn namespaced_policy_and_tier_default_round_trip() {
        let p = LogPrefix {
            action: LogAction::Log,
            direction: Direction::Ingress,
            tier: "default".into(),
            policy: Some(ObjectKey {
                kind: Kind::K8sNetworkPolicy,
                namespace: Some("shop".into()),
                name: "allow-web".into(),
            }),
            rule: Some(0),
        };
        assert_eq!(LogPrefix::parse(&p.encode()), Some(p));
        let d = LogPrefix {
            action: LogAction::Deny,
            direction: Direction::Ingress,
            tier: "default".into(),
            policy: None,
            rule: None,
        };
        assert_eq!(d.encode(), "D|I|default|default");
        assert_eq!(LogPrefix::parse(&d.encode()), Some(d));
    }

    #[test]
    fn long_names_are_hashed_and_found_through_the_table() {
        let p = LogPrefix {
            action: LogAction::Deny,
            direction: Direction::Egress,
            tier: "a-rather-long-tier-name-for-security".into(),
            policy: Some(gnp("and-an-even-longer-policy-name-that-overflows")),
            rule: Some(17),
        };
        let mut t = LogPrefixes::default();
        let s = t.intern(p.clone());
        assert!(s.len() <= MAX_PREFIX, "{s}");
        assert!(s.starts_with("D|E|#"));
        assert_eq!(LogPrefix::parse(&s), None);
        assert_eq!(t.lookup(&s), Some(p.clone()));
        assert_eq!(t.lookup(&format!("{s}\0")), Some(p));
    }

    #[test]
    fn garbage_prefixes_name_nothing() {
        for s in [
            "",
            "D",
            "X|E|t|default",
            "D|E|t|zzz:x|1",
            "D|E|t|gnp:x|y",
            "D|E||default",
        ] {
            assert_eq!(LogPrefix::parse(s), None, "{s}");
        }
    }
}
