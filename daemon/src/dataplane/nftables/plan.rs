//! The diff: from a desired table and what the kernel holds, the one `nft -j`
//! batch (one kernel transaction) that makes them equal, or nothing when they
//! already are.
//!
//! - Table missing or unreadable, a named counter missing, or a set/map whose
//!   declaration changed: the whole table is replaced (`add table; delete
//!   table; add table; ...`), so that sets are replaced too.
//! - Otherwise: new sets, maps and chains are declared; set and map elements
//!   are added and deleted one by one; a chain whose rules differ is flushed
//!   and refilled in the same batch; chains no longer desired are flushed and
//!   then deleted, after everything that jumped to them changed; sets and maps
//!   no longer desired are deleted last. The elements of `timeout` sets
//!   belong to the DNS proxy and are left alone.

use std::borrow::Cow;
use std::collections::BTreeSet;

use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::schema::{
    Chain, Counter, Element, FlushObject, Map, NfCmd, NfListObject, Nftables, Rule, Set, SetType,
    SetTypeValue, Table,
};
use nftables::types::NfFamily;

use super::actual::{element_expr, map_elem_key, normalise_expr, ActualTable};
use super::desired::{
    chains, flag_set, ChainSpec, DesiredTable, BASE_POLICY, COUNTERS, RESERVED_CHAINS, TABLE,
};

/// A desired table that cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A policy chain reuses a base chain's name.
    #[error("policy chain {0}: the name is reserved for the base table")]
    ReservedChain(String),
    /// A name is used by two objects.
    #[error("{0}: the name is used by both a set and a map")]
    DuplicateName(String),
}

/// Checks what the kernel would refuse or what would clash with the base.
pub fn validate(desired: &DesiredTable) -> Result<(), PlanError> {
    if let Some(c) = desired
        .policy
        .chains
        .keys()
        .find(|c| RESERVED_CHAINS.contains(&c.as_str()))
    {
        return Err(PlanError::ReservedChain(c.clone()));
    }
    if let Some(n) = desired
        .policy
        .sets
        .keys()
        .find(|n| desired.policy.maps.contains_key(*n))
    {
        return Err(PlanError::DuplicateName(n.clone()));
    }
    Ok(())
}

/// The batch replacing the whole table with `desired`.
pub fn full(desired: &DesiredTable) -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.add(NfListObject::Table(table()));
    for name in COUNTERS {
        b.add(NfListObject::Counter(Counter {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            handle: None,
            packets: None,
            bytes: None,
        }));
    }
    declare_sets(&mut b, desired, &BTreeSet::new(), &BTreeSet::new());
    let specs = chains(desired);
    for (name, spec) in &specs {
        b.add(NfListObject::Chain(chain(name, spec)));
    }
    for (name, s) in &desired.policy.sets {
        add_elements(&mut b, name, s.elements.clone());
    }
    for (name, spec) in &specs {
        add_rules(&mut b, name, spec);
    }
    for (name, m) in &desired.policy.maps {
        add_elements(&mut b, name, m.elements.iter().map(pair).collect());
    }
    b.to_nftables()
}

/// The minimal batch from `actual` to `desired`, `None` when nothing differs.
pub fn incremental(desired: &DesiredTable, actual: &ActualTable) -> Option<Nftables<'static>> {
    let want = ActualTable::expected(desired);
    if want.same_objects(actual) {
        return None;
    }
    if !want.counters.is_subset(&actual.counters) || declarations_changed(&want, actual) {
        return Some(full(desired));
    }
    let mut b = Batch::new();
    let specs = chains(desired);
    let have_sets: BTreeSet<String> = actual.sets.keys().cloned().collect();
    let have_maps: BTreeSet<String> = actual.maps.keys().cloned().collect();
    declare_sets(&mut b, desired, &have_sets, &have_maps);
    for (name, spec) in &specs {
        if !actual.chains.contains_key(name) {
            b.add(NfListObject::Chain(chain(name, spec)));
        }
    }
    for (name, s) in &desired.policy.sets {
        if dynamic(s) {
            continue;
        }
        let have = actual.sets.get(name).map(|s| &s.elements);
        let add: Vec<_> = s
            .elements
            .iter()
            .filter(|e| !have.is_some_and(|h| h.contains(&normalise_expr(e))))
            .cloned()
            .collect();
        add_elements(&mut b, name, add);
    }
    // Map elements whose key went or whose verdict changed go first: a chain
    // they jump to may be deleted below.
    for (name, m) in &desired.policy.maps {
        let Some(have) = actual.maps.get(name) else {
            continue;
        };
        let want_elems = &want.maps[name].elements;
        let del: Vec<_> = have
            .elements
            .iter()
            .filter(|e| !want_elems.contains(*e))
            .filter_map(|e| element_expr(e))
            .filter_map(|e| match e {
                Expression::List(mut kv) if kv.len() == 2 => Some(kv.swap_remove(0)),
                _ => None,
            })
            .collect();
        delete_elements(&mut b, name, del);
        let _ = m;
    }
    for (name, spec) in &specs {
        match actual.chains.get(name) {
            Some(have) if spec.rules.matches(have) => {}
            Some(_) => {
                b.add_cmd(NfCmd::Flush(FlushObject::Chain(chain(name, spec))));
                add_rules(&mut b, name, spec);
            }
            None => add_rules(&mut b, name, spec),
        }
    }
    for (name, m) in &desired.policy.maps {
        let have = actual.maps.get(name).map(|s| &s.elements);
        let add: Vec<_> = m
            .elements
            .iter()
            .filter(|(k, v)| !have.is_some_and(|h| h.contains(&map_elem_key(k, v))))
            .map(pair)
            .collect();
        add_elements(&mut b, name, add);
    }
    for (name, have) in &actual.sets {
        if desired.policy.sets.get(name).is_some_and(dynamic) {
            continue;
        }
        if let Some(w) = want.sets.get(name) {
            let del: Vec<_> = have
                .elements
                .difference(&w.elements)
                .filter_map(|e| element_expr(e))
                .collect();
            delete_elements(&mut b, name, del);
        }
    }
    let gone: Vec<&String> = actual
        .chains
        .keys()
        .filter(|c| !specs.contains_key(*c))
        .collect();
    for c in &gone {
        b.add_cmd(NfCmd::Flush(FlushObject::Chain(named_chain(c))));
    }
    for c in &gone {
        b.delete(NfListObject::Chain(named_chain(c)));
    }
    for name in actual.maps.keys().filter(|n| !want.maps.contains_key(*n)) {
        b.delete(NfListObject::Map(Box::new(map_ref(name))));
    }
    for name in actual.sets.keys().filter(|n| !want.sets.contains_key(*n)) {
        b.delete(NfListObject::Set(Box::new(set_ref(name))));
    }
    Some(b.to_nftables())
}

/// A set with the `timeout` flag is filled by someone else (the DNS proxy),
/// element by element with their own timeouts: the manager declares it and
/// deletes it, never adds nor deletes its elements.
fn dynamic(s: &super::desired::NamedSet) -> bool {
    s.flags.contains(&nftables::schema::SetFlag::Timeout)
}

fn declarations_changed(want: &ActualTable, actual: &ActualTable) -> bool {
    let sets = want
        .sets
        .iter()
        .any(|(n, s)| actual.sets.get(n).is_some_and(|a| a.decl != s.decl));
    let maps = want
        .maps
        .iter()
        .any(|(n, s)| actual.maps.get(n).is_some_and(|a| a.decl != s.decl));
    sets || maps
        || want.sets.keys().any(|n| actual.maps.contains_key(n))
        || want.maps.keys().any(|n| actual.sets.contains_key(n))
}

pub(super) fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

pub(super) fn named_chain(name: &str) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_string().into(),
        ..Chain::default()
    }
}

pub(super) fn chain(name: &str, spec: &ChainSpec) -> Chain<'static> {
    let mut c = named_chain(name);
    if let Some((ty, hook, prio)) = spec.hook {
        c._type = Some(ty);
        c.hook = Some(hook);
        c.prio = Some(prio);
        c.policy = Some(BASE_POLICY);
    }
    c
}

pub(super) fn add_rules(b: &mut Batch<'static>, name: &str, spec: &ChainSpec) {
    for r in spec.rules.rules() {
        b.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: name.to_string().into(),
            expr: Cow::Owned(r.statements.clone()),
            handle: None,
            index: None,
            comment: Some(r.comment.clone().into()),
        }));
    }
}

pub(super) fn set_ref(name: &str) -> Set<'static> {
    Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_string().into(),
        ..Set::default()
    }
}

pub(super) fn map_ref(name: &str) -> Map<'static> {
    Map {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_string().into(),
        // Placeholder, see [`to_json`]: the crate has no `verdict` type.
        map: SetTypeValue::Single(SetType::Mark),
        ..Map::default()
    }
}

fn declare_sets(
    b: &mut Batch<'static>,
    desired: &DesiredTable,
    have_sets: &BTreeSet<String>,
    have_maps: &BTreeSet<String>,
) {
    for (name, s) in desired
        .policy
        .sets
        .iter()
        .filter(|(n, _)| !have_sets.contains(*n))
    {
        b.add(NfListObject::Set(Box::new(Set {
            set_type: s.set_type.clone(),
            flags: flag_set(&s.flags),
            timeout: s.timeout,
            ..set_ref(name)
        })));
    }
    for (name, m) in desired
        .policy
        .maps
        .iter()
        .filter(|(n, _)| !have_maps.contains(*n))
    {
        b.add(NfListObject::Map(Box::new(Map {
            set_type: m.key_type.clone(),
            flags: flag_set(&m.flags),
            ..map_ref(name)
        })));
    }
}

pub(super) fn pair((k, v): &(Expression<'static>, Expression<'static>)) -> Expression<'static> {
    Expression::List(vec![k.clone(), v.clone()])
}

fn element(name: &str, elem: Vec<Expression<'static>>) -> Element<'static> {
    Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_string().into(),
        elem: Cow::Owned(elem),
    }
}

pub(super) fn add_elements(b: &mut Batch<'static>, name: &str, elem: Vec<Expression<'static>>) {
    if !elem.is_empty() {
        b.add(NfListObject::Element(element(name, elem)));
    }
}

pub(super) fn delete_elements(b: &mut Batch<'static>, name: &str, elem: Vec<Expression<'static>>) {
    if !elem.is_empty() {
        b.delete(NfListObject::Element(element(name, elem)));
    }
}

/// The batch as `nft -j` reads it. The `nftables` crate (0.6) has no
/// `verdict` set type, so every map we declare (all are verdict maps) gets
/// `"map": "verdict"` here.
pub fn to_json(batch: &Nftables<'_>) -> Result<serde_json::Value, serde_json::Error> {
    let mut v = serde_json::to_value(batch)?;
    for cmd in v
        .get_mut("nftables")
        .and_then(serde_json::Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(m) = cmd.get_mut("add").and_then(|a| a.get_mut("map")) {
            m["map"] = serde_json::Value::String("verdict".into());
        }
    }
    Ok(v)
}
