//! The fast diff: from the desired table the kernel is known to hold (the
//! last one applied successfully) to the next one, comparing desired against
//! desired, so that its cost follows the size of the change, not of the
//! table. Policy chains are shared between renders ([`PolicyChain`]): an
//! unchanged chain is the same allocation and costs a pointer comparison.
//!
//! The batch is one transaction with the same order as [`super::plan`]:
//! declarations, new chains, set elements added, map elements removed,
//! changed chains flushed and refilled, map elements added, set elements
//! removed, obsolete chains flushed then deleted, obsolete maps and sets
//! deleted. A set or map whose declaration changed is not handled here: the
//! caller replaces the whole table ([`Delta::Replace`]).
//!
//! It does not read the kernel: drift is the periodic resync's business.

use std::collections::{BTreeMap, BTreeSet};

use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::schema::{FlushObject, NfCmd, NfListObject, Nftables};

use super::actual::{map_decl, normalise_expr, set_decl};
use super::desired::{base_chains, flag_set, ChainSpec, DesiredTable};
use super::plan::{
    add_elements, add_rules, chain, delete_elements, map_ref, named_chain, pair, set_ref,
};

/// What it takes to go from one desired table to the next.
#[derive(Debug)]
pub enum Delta {
    /// Nothing differs.
    Same,
    /// This batch, one transaction.
    Batch(Nftables<'static>),
    /// A declaration changed: replace the whole table.
    Replace,
}

/// The delta from `prev` (what the kernel holds) to `next`.
pub fn delta(prev: &DesiredTable, next: &DesiredTable) -> Delta {
    let sets_changed = next.policy.sets.iter().any(|(n, s)| {
        prev.policy
            .sets
            .get(n)
            .is_some_and(|p| set_decl(p) != set_decl(s))
    });
    let maps_changed = next.policy.maps.iter().any(|(n, m)| {
        prev.policy
            .maps
            .get(n)
            .is_some_and(|p| map_decl(p) != map_decl(m))
    });
    let kind_swapped = next
        .policy
        .sets
        .keys()
        .any(|n| prev.policy.maps.contains_key(n))
        || next
            .policy
            .maps
            .keys()
            .any(|n| prev.policy.sets.contains_key(n));
    if sets_changed || maps_changed || kind_swapped {
        return Delta::Replace;
    }

    // Chains: the base ones are few and rebuilt; policy chains are shared.
    let (old_base, new_base) = (base_chains(prev), base_chains(next));
    let mut changed: Vec<(&str, ChainSpec)> = Vec::new();
    let mut added: Vec<(&str, ChainSpec)> = Vec::new();
    for (name, spec) in &new_base {
        match old_base.get(name) {
            Some(o) if o.rules == spec.rules && o.hook == spec.hook => {}
            Some(o) if o.hook == spec.hook => changed.push((name, spec.clone())),
            // A hook that changed is a new chain: only a whole replace does it.
            Some(_) => return Delta::Replace,
            None => added.push((name, spec.clone())),
        }
    }
    if old_base.keys().any(|n| !new_base.contains_key(n)) {
        return Delta::Replace;
    }
    for (name, rules) in &next.policy.chains {
        let spec = || ChainSpec {
            hook: None,
            rules: rules.clone(),
        };
        match prev.policy.chains.get(name) {
            Some(o) if o == rules => {}
            Some(_) => changed.push((name, spec())),
            None => added.push((name, spec())),
        }
    }
    let gone: Vec<&String> = prev
        .policy
        .chains
        .keys()
        .filter(|n| !next.policy.chains.contains_key(*n))
        .collect();

    let mut b = Batch::new();
    let mut any = !gone.is_empty() || !changed.is_empty() || !added.is_empty();
    // Declarations.
    for (name, s) in &next.policy.sets {
        if !prev.policy.sets.contains_key(name) {
            b.add(NfListObject::Set(Box::new(nftables::schema::Set {
                set_type: s.set_type.clone(),
                flags: flag_set(&s.flags),
                timeout: s.timeout,
                ..set_ref(name)
            })));
            any = true;
        }
    }
    for (name, m) in &next.policy.maps {
        if !prev.policy.maps.contains_key(name) {
            b.add(NfListObject::Map(Box::new(nftables::schema::Map {
                set_type: m.key_type.clone(),
                flags: flag_set(&m.flags),
                ..map_ref(name)
            })));
            any = true;
        }
    }
    for (name, spec) in &added {
        b.add(NfListObject::Chain(chain(name, spec)));
    }
    // Set elements in.
    let mut set_deletes = Vec::new();
    for (name, s) in &next.policy.sets {
        let old = prev.policy.sets.get(name);
        if old.is_some_and(|o| o.elements == s.elements) {
            continue;
        }
        let have: BTreeSet<String> = old
            .map(|o| o.elements.iter().map(normalise_expr).collect())
            .unwrap_or_default();
        let want: BTreeMap<String, &Expression<'static>> =
            s.elements.iter().map(|e| (normalise_expr(e), e)).collect();
        let add: Vec<_> = want
            .iter()
            .filter(|(k, _)| !have.contains(*k))
            .map(|(_, e)| (*e).clone())
            .collect();
        let del: Vec<_> = old
            .into_iter()
            .flat_map(|o| o.elements.iter())
            .filter(|e| !want.contains_key(&normalise_expr(e)))
            .cloned()
            .collect();
        any |= !add.is_empty() || !del.is_empty();
        add_elements(&mut b, name, add);
        set_deletes.push((name, del));
    }
    // Map elements whose key went or whose verdict changed go out first: a
    // chain they jump to may be deleted below.
    let mut map_adds = Vec::new();
    for (name, m) in &next.policy.maps {
        let old = prev.policy.maps.get(name);
        if old.is_some_and(|o| o.elements == m.elements) {
            continue;
        }
        let have: BTreeMap<String, &Expression<'static>> = old
            .into_iter()
            .flat_map(|o| o.elements.iter())
            .map(|(k, v)| (normalise_expr(k), v))
            .collect();
        let want: BTreeMap<String, &(Expression<'static>, Expression<'static>)> = m
            .elements
            .iter()
            .map(|kv| (normalise_expr(&kv.0), kv))
            .collect();
        let del: Vec<_> = old
            .into_iter()
            .flat_map(|o| o.elements.iter())
            .filter(|(k, v)| {
                want.get(&normalise_expr(k))
                    .is_none_or(|(_, nv)| normalise_expr(nv) != normalise_expr(v))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let add: Vec<_> = want
            .iter()
            .filter(|(k, (_, v))| {
                have.get(*k)
                    .is_none_or(|hv| normalise_expr(hv) != normalise_expr(v))
            })
            .map(|(_, kv)| pair(kv))
            .collect();
        any |= !add.is_empty() || !del.is_empty();
        delete_elements(&mut b, name, del);
        map_adds.push((name, add));
    }
    if !any {
        return Delta::Same;
    }
    for (name, spec) in &changed {
        b.add_cmd(NfCmd::Flush(FlushObject::Chain(chain(name, spec))));
        add_rules(&mut b, name, spec);
    }
    for (name, spec) in &added {
        add_rules(&mut b, name, spec);
    }
    for (name, add) in map_adds {
        add_elements(&mut b, name, add);
    }
    for (name, del) in set_deletes {
        delete_elements(&mut b, name, del);
    }
    for c in &gone {
        b.add_cmd(NfCmd::Flush(FlushObject::Chain(named_chain(c))));
    }
    for c in &gone {
        b.delete(NfListObject::Chain(named_chain(c)));
    }
    for name in prev.policy.maps.keys() {
        if !next.policy.maps.contains_key(name) {
            b.delete(NfListObject::Map(Box::new(map_ref(name))));
        }
    }
    for name in prev.policy.sets.keys() {
        if !next.policy.sets.contains_key(name) {
            b.delete(NfListObject::Set(Box::new(set_ref(name))));
        }
    }
    Delta::Batch(b.to_nftables())
}
