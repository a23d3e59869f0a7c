//! Kubernetes label selectors (`matchLabels`, `matchExpressions`) and their
//! matching semantics. An empty selector (`{}`) matches everything.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A set of labels (key → value).
pub type Labels = BTreeMap<String, String>;

/// A Kubernetes `LabelSelector`: every `matchLabels` entry and every
/// expression must hold. `{}` matches every object.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based requirement of a [`LabelSelector`].
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// How the key relates to `values`.
    pub operator: SelectorOperator,
    /// Values for `In` / `NotIn`; must be empty for `Exists` / `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operator of a [`LabelSelectorRequirement`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum SelectorOperator {
    /// The label is present and its value is one of `values`.
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// The selector that matches everything (`{}`).
    pub fn all() -> Self {
        Self::default()
    }

    /// A selector requiring exactly these labels.
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// True for `{}`: the selector matches every object.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }

    /// Checks the selector's syntax; the error names the offending part.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in &self.match_labels {
            validate_label_key(k).map_err(|e| format!("matchLabels: {e}"))?;
            validate_label_value(v).map_err(|e| format!("matchLabels[{k}]: {e}"))?;
        }
        for (i, e) in self.match_expressions.iter().enumerate() {
            validate_label_key(&e.key).map_err(|m| format!("matchExpressions[{i}]: {m}"))?;
            match e.operator {
                SelectorOperator::In | SelectorOperator::NotIn => {
                    if e.values.is_empty() {
                        return Err(format!(
                            "matchExpressions[{i}]: operator {:?} needs at least one value",
                            e.operator
                        ));
                    }
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
                    if !e.values.is_empty() {
                        return Err(format!(
                            "matchExpressions[{i}]: operator {:?} takes no values",
                            e.operator
                        ));
                    }
                }
            }
            for v in &e.values {
                validate_label_value(v).map_err(|m| format!("matchExpressions[{i}]: {m}"))?;
            }
        }
        Ok(())
    }
}

impl LabelSelectorRequirement {
    /// Whether the requirement holds for these labels.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a name
/// of at most 63 characters.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !p.chars().all(|c| is_name_char(c) && c != '_') {
            return Err(format!("label key {key:?} has an invalid prefix"));
        }
    }
    if name.is_empty() || name.len() > 63 || !name.chars().all(is_name_char) {
        return Err(format!("label key {key:?} is not a valid label name"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "label key {key:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 name characters starting and
/// ending with a letter or digit.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63
        || !value.chars().all(is_name_char)
        || !value.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !value.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(format!("label value {value:?} is not valid"));
    }
    Ok(())
}

/// Checks a whole label map.
pub fn validate_labels(labels: &Labels) -> Result<(), String> {
    for (k, v) in labels {
        validate_label_key(k)?;
        validate_label_value(v).map_err(|e| format!("label {k}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: SelectorOperator, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::all().matches(&labels(&[])));
        assert!(LabelSelector::all().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let s = LabelSelector::labels([("app", "db"), ("tier", "x")]);
        assert!(s.matches(&labels(&[("app", "db"), ("tier", "x"), ("z", "1")])));
        assert!(!s.matches(&labels(&[("app", "db")])));
    }

    #[test]
    fn not_in_matches_absent_label() {
        let s = expr("env", SelectorOperator::NotIn, &["prod"]);
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn exists_and_does_not_exist_are_opposites() {
        let e = expr("k", SelectorOperator::Exists, &[]);
        let d = expr("k", SelectorOperator::DoesNotExist, &[]);
        for l in [labels(&[]), labels(&[("k", "")]), labels(&[("j", "v")])] {
            assert_ne!(e.matches(&l), d.matches(&l));
        }
    }

    #[test]
    fn in_without_values_is_invalid() {
        assert!(expr("k", SelectorOperator::In, &[]).validate().is_err());
        assert!(expr("k", SelectorOperator::Exists, &["v"])
            .validate()
            .is_err());
        assert!(expr("k", SelectorOperator::In, &["v"]).validate().is_ok());
    }

    #[test]
    fn label_keys_with_prefix_are_valid() {
        assert!(validate_label_key("kubernetes.io/metadata.name").is_ok());
        assert!(validate_label_key("/x").is_err());
        assert!(validate_label_key("-x").is_err());
    }

    proptest! {
        #[test]
        fn in_and_not_in_partition_labels(v in "[ab]", present in any::<bool>()) {
            let l = if present { labels(&[("k", &v)]) } else { labels(&[]) };
            let i = expr("k", SelectorOperator::In, &["a"]);
            let n = expr("k", SelectorOperator::NotIn, &["a"]);
            prop_assert_ne!(i.matches(&l), n.matches(&l));
        }
    }
}
