//! What the `inet veil` table holds, in the few terms the diff needs: chains
//! with their rules' comments (each ends in the rule's hash), sets and maps
//! with their declaration (type, flags, timeout) and normalised elements,
//! named counters.
//!
//! [`ActualTable::parse`] reads the output of `nft -j list table inet veil`
//! (only our table, never the whole ruleset) as plain JSON, so objects the
//! `nftables` crate does not model cannot break it. [`ActualTable::expected`]
//! computes the same view from a desired table: after a successful apply, the
//! kernel holds exactly that.

use std::collections::{BTreeMap, BTreeSet};

use nftables::expr::Expression;
use serde_json::Value;

use super::desired::{chains, DesiredTable, NamedSet, NamedVerdictMap, COUNTERS};

/// A named set or map as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualSet {
    /// Its declaration (type, flags, timeout) in a canonical text.
    pub decl: String,
    /// Normalised elements (JSON text; for maps, the `[key, value]` pair).
    pub elements: BTreeSet<String>,
}

/// The table as the diff sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualTable {
    /// Chain name → rule comments in order (`None`: a rule without comment,
    /// so not ours as written).
    pub chains: BTreeMap<String, Vec<Option<String>>>,
    /// Sets by name.
    pub sets: BTreeMap<String, ActualSet>,
    /// Maps by name.
    pub maps: BTreeMap<String, ActualSet>,
    /// Named counters.
    pub counters: BTreeSet<String>,
    /// Packets counted by each named counter, as read back (empty in
    /// [`ActualTable::expected`]; not compared by [`Self::same_objects`]).
    pub counter_values: BTreeMap<String, u64>,
}

/// The output of `nft -j list table` could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("nft -j list table inet veil: {0}")]
pub struct ParseError(String);

impl ActualTable {
    /// Parses `nft -j list table inet <table>` output, keeping only objects of
    /// `table`.
    pub fn parse(json: &str, table: &str) -> Result<Self, ParseError> {
        let v: Value = serde_json::from_str(json).map_err(|e| ParseError(e.to_string()))?;
        let objects = v
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or_else(|| ParseError("no \"nftables\" array".into()))?;
        let mut out = ActualTable::default();
        let ours = |o: &Value| {
            o.get("family").and_then(Value::as_str) == Some("inet")
                && o.get("table").and_then(Value::as_str) == Some(table)
        };
        let name = |o: &Value| o.get("name").and_then(Value::as_str).map(str::to_string);
        for obj in objects {
            let Some((kind, o)) = obj.as_object().and_then(|m| m.iter().next()) else {
                continue;
            };
            if kind == "metainfo" || kind == "table" || !ours(o) {
                continue;
            }
            match kind.as_str() {
                "chain" => {
                    if let Some(n) = name(o) {
                        out.chains.entry(n).or_default();
                    }
                }
                "rule" => {
                    let chain = o.get("chain").and_then(Value::as_str).unwrap_or_default();
                    let comment = o.get("comment").and_then(Value::as_str).map(str::to_string);
                    out.chains
                        .entry(chain.to_string())
                        .or_default()
                        .push(comment);
                }
                "set" | "map" => {
                    let Some(n) = name(o) else { continue };
                    let elements = o
                        .get("elem")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().map(normalise_value).collect())
                        .unwrap_or_default();
                    let s = ActualSet {
                        decl: decl_of(kind, o),
                        elements,
                    };
                    if kind == "set" {
                        out.sets.insert(n, s);
                    } else {
                        out.maps.insert(n, s);
                    }
                }
                "counter" => {
                    if let Some(n) = name(o) {
                        if let Some(p) = o.get("packets").and_then(Value::as_u64) {
                            out.counter_values.insert(n.clone(), p);
                        }
                        out.counters.insert(n);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Whether both hold the same objects (counter values aside).
    pub fn same_objects(&self, other: &ActualTable) -> bool {
        self.chains == other.chains
            && self.sets == other.sets
            && self.maps == other.maps
            && self.counters == other.counters
    }

    /// What the kernel holds once `desired` is applied.
    pub fn expected(desired: &DesiredTable) -> Self {
        ActualTable {
            chains: chains(desired)
                .into_iter()
                .map(|(n, c)| {
                    let comments = c.rules.rules().iter().map(|r| Some(r.comment.clone()));
                    (n, comments.collect())
                })
                .collect(),
            sets: desired
                .policy
                .sets
                .iter()
                .map(|(n, s)| {
                    let elements = s.elements.iter().map(normalise_expr).collect();
                    (
                        n.clone(),
                        ActualSet {
                            decl: set_decl(s),
                            elements,
                        },
                    )
                })
                .collect(),
            maps: desired
                .policy
                .maps
                .iter()
                .map(|(n, m)| {
                    let elements = m.elements.iter().map(|(k, v)| map_elem_key(k, v)).collect();
                    (
                        n.clone(),
                        ActualSet {
                            decl: map_decl(m),
                            elements,
                        },
                    )
                })
                .collect(),
            counters: COUNTERS.iter().map(|c| c.to_string()).collect(),
            counter_values: BTreeMap::new(),
        }
    }
}

fn decl(kind: &str, set_type: Value, mut flags: Vec<String>, timeout: Option<u64>) -> String {
    flags.sort();
    flags.dedup();
    let timeout = timeout.map_or("-".to_string(), |t| t.to_string());
    format!(
        "{kind} type={set_type} flags={} timeout={timeout}",
        flags.join(",")
    )
}

pub(crate) fn decl_of(kind: &str, o: &Value) -> String {
    let flags = match o.get("flags") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(f)) => vec![f.clone()],
        _ => Vec::new(),
    };
    let timeout = o.get("timeout").and_then(Value::as_u64);
    decl(
        kind,
        o.get("type").cloned().unwrap_or(Value::Null),
        flags,
        timeout,
    )
}

fn flag_names(flags: &[nftables::schema::SetFlag]) -> Vec<String> {
    flags
        .iter()
        .filter_map(|f| serde_json::to_value(f).ok()?.as_str().map(str::to_string))
        .collect()
}

/// The canonical declaration of a set (as [`ActualTable::parse`] reads it).
pub fn set_decl(s: &NamedSet) -> String {
    let ty = serde_json::to_value(&s.set_type).unwrap_or(Value::Null);
    decl("set", ty, flag_names(&s.flags), s.timeout.map(u64::from))
}

/// The canonical declaration of a verdict map.
pub fn map_decl(m: &NamedVerdictMap) -> String {
    let ty = serde_json::to_value(&m.key_type).unwrap_or(Value::Null);
    decl("map", ty, flag_names(&m.flags), None)
}

/// The normalised text of a map element.
pub fn map_elem_key(k: &Expression<'_>, v: &Expression<'_>) -> String {
    let pair = Value::Array(vec![to_value(k), to_value(v)]);
    normalise_value(&pair)
}

/// The normalised text of a set element.
pub fn normalise_expr(e: &Expression<'_>) -> String {
    normalise_value(&to_value(e))
}

fn to_value(e: &Expression<'_>) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

/// Normalises an element as nft prints it: `{"elem": {"val": X, ...}}` (timeouts,
/// counters) is `X`; a host prefix (/32, /128) is the bare address.
pub fn normalise_value(v: &Value) -> String {
    serde_json::to_string(&normalise(v)).unwrap_or_default()
}

fn normalise(v: &Value) -> Value {
    if let Some(inner) = v.get("elem").and_then(|e| e.get("val")) {
        return normalise(inner);
    }
    if let Some(p) = v.get("prefix") {
        if let (Some(addr), Some(len)) = (
            p.get("addr").and_then(Value::as_str),
            p.get("len").and_then(Value::as_u64),
        ) {
            if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
                let full = if ip.is_ipv4() { 32 } else { 128 };
                if len == full {
                    return Value::String(ip.to_string());
                }
            }
        }
    }
    if let Value::Array(a) = v {
        return Value::Array(a.iter().map(normalise).collect());
    }
    v.clone()
}

/// The element as the crate's expression (for a delete built from what the
/// kernel holds).
pub fn element_expr(normalised: &str) -> Option<Expression<'static>> {
    serde_json::from_str(normalised).ok()
}
