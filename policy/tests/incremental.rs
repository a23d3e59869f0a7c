//! Property test of the incremental compiler: random sequences of changes
//! (one policy added, changed or deleted, a tier's order changed, a pod
//! relabelled, added or removed, a namespace relabelled), each applied
//! incrementally; after every step the program must equal a compile from
//! scratch of the same cluster and policies (set ids aside, which depend on
//! history: sets are compared by their keys) and give the same verdicts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use proptest::prelude::*;
use veil_policy::cluster::Cluster;
use veil_policy::compile::{CPeer, CPort, CRule, Compiled, Program, SetId};
use veil_policy::kinds::{Object, ObjectBody, ObjectMeta};
use veil_policy::model::{Kind, ObjectKey};
use veil_policy::PolicySet;
use veil_scenario::testgen::{gen_cluster, gen_flows, gen_policies, Bytes};

/// The program with every set id replaced by its set's key, as text.
fn normalized(p: &Program) -> String {
    let name = |id: SetId| -> String {
        match p.sets.get(id as usize) {
            Some(Some(s)) => format!("{:?}", s.key),
            _ => format!("<freed set {id}>"),
        }
    };
    let rule = |r: &CRule| -> String {
        let mut r = r.clone();
        let peer_fast = r.peer_fast.take().map(name);
        let peers: Vec<(Option<String>, Option<String>, CPeer)> = r
            .peers
            .drain(..)
            .map(|mut c| (c.pods.take().map(name), c.nodes.take().map(name), c))
            .collect();
        let ports: Vec<String> = r
            .ports
            .drain(..)
            .map(|c| match c {
                CPort::Named { protocol, set } => format!("named {protocol:?} {}", name(set)),
                other => format!("{other:?}"),
            })
            .collect();
        format!("{r:?} fast={peer_fast:?} peers={peers:?} ports={ports:?}")
    };
    let mut out = String::new();
    writeln!(out, "tiers {:?}", p.tiers).unwrap();
    writeln!(out, "policies {:?}", p.policies).unwrap();
    for r in &p.rules {
        writeln!(out, "rule {}", rule(r)).unwrap();
    }
    let mut sets = BTreeMap::new();
    for (id, s) in p.sets.iter().enumerate() {
        let Some(s) = s else { continue };
        let mut addrs: Vec<_> = s.addrs.iter().collect();
        addrs.sort();
        let mut ports: Vec<_> = s.ports.iter().collect();
        ports.sort();
        // Membership as the interpreter sees it (bitmaps over address ids).
        let mut bits: Vec<_> = p
            .addr_ids
            .iter()
            .filter(|(_, &a)| {
                let a = a as usize;
                p.set_bits
                    .get(id)
                    .and_then(|b| b.get(a / 64))
                    .is_some_and(|w| w & (1 << (a % 64)) != 0)
            })
            .map(|(ip, _)| ip)
            .collect();
        bits.sort();
        let prev = sets.insert(
            format!("{:?}", s.key),
            format!("{addrs:?} {ports:?} bits {bits:?}"),
        );
        assert!(prev.is_none(), "two live sets with key {:?}", s.key);
    }
    for (k, v) in sets {
        writeln!(out, "set {k}: {v}").unwrap();
    }
    let mut named = BTreeMap::new();
    for (ip, &a) in &p.addr_ids {
        let mut v: Vec<String> = p.named_by_addr[a as usize]
            .iter()
            .map(|(s, proto, port)| format!("{} {proto:?} {port}", name(*s)))
            .collect();
        v.sort();
        if !v.is_empty() {
            named.insert(*ip, v);
        }
    }
    writeln!(out, "named ports {named:?}").unwrap();
    let eps: BTreeMap<_, _> = p.endpoints.iter().collect();
    writeln!(out, "endpoints {eps:?}").unwrap();
    let nodes: BTreeMap<_, _> = p.nodes.iter().collect();
    writeln!(out, "nodes {nodes:?}").unwrap();
    out
}

fn objects(set: &PolicySet) -> Vec<Object> {
    set.policies()
        .values()
        .map(|p| Object {
            key: p.key.clone(),
            metadata: ObjectMeta::default(),
            body: ObjectBody::Policy(p.clone()),
        })
        .chain(set.custom_tiers().values().map(|t| Object {
            key: ObjectKey {
                kind: Kind::Tier,
                namespace: None,
                name: t.name.clone(),
            },
            metadata: ObjectMeta::default(),
            body: ObjectBody::Tier(t.clone()),
        }))
        .collect()
}

/// Applies one random change to `cluster`/`policies` and to `compiled`
/// incrementally; returns what it did.
fn step(
    b: &mut Bytes<'_>,
    pool: &[Object],
    donor: &Cluster,
    cluster: &mut Cluster,
    policies: &mut PolicySet,
    compiled: &mut Compiled,
) -> String {
    match b.below(6) {
        // Add or replace one policy (or tier) from the pool.
        0 | 1 if !pool.is_empty() => {
            let o = pool[b.below(pool.len())].clone();
            let what = format!("apply {}", o.key);
            if policies.apply([o]).is_ok() {
                compiled.update_policies(cluster, policies);
            }
            what
        }
        2 => {
            let keys: Vec<ObjectKey> = policies.policies().keys().cloned().collect();
            if keys.is_empty() {
                return "nothing to delete".into();
            }
            let k = keys[b.below(keys.len())].clone();
            policies
                .delete(std::slice::from_ref(&k))
                .expect("deleting a policy");
            compiled.update_policies(cluster, policies);
            format!("delete {k}")
        }
        3 => {
            // A pod relabelled, or given another's labels and ports.
            let keys: Vec<String> = cluster.pods.keys().cloned().collect();
            let k = keys[b.below(keys.len())].clone();
            let from: Vec<_> = donor.pods.values().collect();
            let d = from[b.below(from.len())];
            let p = cluster.pods.get_mut(&k).expect("pod");
            p.labels = d.labels.clone();
            if !p.host_network && b.chance(30) {
                p.ports = d.ports.clone();
            }
            compiled.update_pod(cluster, &k);
            format!("relabel pod {k}")
        }
        4 => {
            // A pod added (from the donor) or removed.
            let keys: Vec<String> = cluster.pods.keys().cloned().collect();
            if b.chance(50) && keys.len() > 1 {
                let k = keys[b.below(keys.len())].clone();
                cluster.pods.remove(&k);
                compiled.update_pod(cluster, &k);
                return format!("remove pod {k}");
            }
            let from: Vec<_> = donor.pods.values().filter(|p| !p.host_network).collect();
            let Some(d) = from.get(b.below(from.len().max(1))) else {
                return "no pod to add".into();
            };
            let taken: Vec<_> = cluster.pods.values().map(|p| p.ip).collect();
            if taken.contains(&d.ip) || cluster.node(&d.node).is_none() {
                return "pod address taken".into();
            }
            let mut p = (*d).clone();
            p.name = format!("{}-x", p.name);
            let k = p.key();
            cluster.pods.insert(k.clone(), p);
            compiled.update_pod(cluster, &k);
            format!("add pod {k}")
        }
        _ => {
            let names: Vec<String> = cluster.namespaces.keys().cloned().collect();
            let ns = names[b.below(names.len())].clone();
            let mut l = donor
                .namespaces
                .values()
                .nth(b.below(donor.namespaces.len()))
                .cloned()
                .unwrap_or_default();
            l.insert("kubernetes.io/metadata.name".into(), ns.clone());
            cluster.namespaces.insert(ns.clone(), l);
            compiled.update_namespace(cluster, &ns);
            format!("relabel namespace {ns}")
        }
    }
}

fn check(data: &[u8]) -> Result<(), String> {
    let mut b = Bytes::new(data);
    let mut cluster = gen_cluster(&mut b);
    let donor = gen_cluster(&mut b);
    let mut policies = gen_policies(&mut b);
    // A pool of objects that share keys with the set (p0..p2 per kind and
    // namespace) but not content: applying one adds or changes a policy.
    let mut pool = Vec::new();
    for _ in 0..3 {
        pool.extend(objects(&gen_policies(&mut b)));
    }
    let flows = gen_flows(&mut b, &cluster, 16);
    let mut compiled = Compiled::new(&cluster, &policies);
    let mut done = Vec::new();
    for _ in 0..12 {
        let what = step(
            &mut b,
            &pool,
            &donor,
            &mut cluster,
            &mut policies,
            &mut compiled,
        );
        done.push(what);
        let scratch = Compiled::new(&cluster, &policies);
        let (inc, full) = (
            normalized(compiled.program()),
            normalized(scratch.program()),
        );
        if inc != full {
            return Err(format!(
                "after {done:?}: incremental program differs from a full compile\nincremental:\n{inc}\nfull:\n{full}"
            ));
        }
        if compiled.set_count() != scratch.set_count() {
            return Err(format!(
                "after {done:?}: {} live sets, a full compile has {}",
                compiled.set_count(),
                scratch.set_count()
            ));
        }
        for f in &flows {
            let (a, z) = (compiled.program().verdict(f), scratch.program().verdict(f));
            if a != z {
                return Err(format!("after {done:?}: {f:?}: incremental {a}, full {z}"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn incremental_compile_equals_full_compile(data in proptest::collection::vec(any::<u8>(), 256..2048)) {
        if let Err(e) = check(&data) {
            prop_assert!(false, "{}", e);
        }
    }
}
