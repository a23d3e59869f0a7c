//! Benchmark: the kube datastore's initial sync of 5,000 pods, 500 namespaces
//! and 2,000 NetworkPolicies from synthetic watcher streams (the translation
//! of kube-rs objects into datastore events, the store, the controller's
//! first compile), then one pod changing labels. CPU time and peak RSS are
//! printed against a baseline of the same run: the same objects given to the
//! store as ready-made datastore events (what the local datastore produces),
//! so the ratio is the cost of the Kubernetes path.
//!
//! `cargo bench -p veil-daemon --bench kube_sync` (release profile).

use std::sync::Arc;
use std::time::Duration;

use futures::stream;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::DynamicObject;
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::mpsc;
use veil_daemon::controller::Controller;
use veil_daemon::datastore::kube::reflect::SyncGate;
use veil_daemon::datastore::kube::{convert, policy_outcome, run_kind, POLICY_KINDS};
use veil_daemon::datastore::store::Store;
use veil_daemon::datastore::Event;

const PODS: usize = 5_000;
const NAMESPACES: usize = 500;
const POLICIES: usize = 2_000;

/// CPU time of this thread (everything runs on it: current-thread runtime).
fn cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    let ns: u64 = s.split_whitespace().next().unwrap().parse().unwrap();
    Duration::from_nanos(ns)
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn namespace(i: usize) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": format!("ns-{i}"), "labels": {"team": format!("t{}", i % 20)}}})).unwrap()
}

fn pod(i: usize, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("pod-{i}"), "namespace": format!("ns-{}", i % NAMESPACES),
                     "uid": format!("u-{i}"), "labels": {"app": app, "tier": format!("x{}", i % 7)}},
        "spec": {"nodeName": format!("node-{}", i % 50), "containers": [{"name": "c", "ports": [{"containerPort": 8080, "name": "http"}]}]},
        "status": {"phase": "Running", "podIPs": [{"ip": format!("10.244.{}.{}", i / 250, i % 250 + 2)}]}
    }))
    .unwrap()
}

fn policy(i: usize) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("np-{i}"), "namespace": format!("ns-{}", i % NAMESPACES), "generation": 1},
        "spec": {"podSelector": {"matchLabels": {"app": format!("app-{}", i % 100)}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (i + 1) % 100)}}}],
                              "ports": [{"port": 8080}]}]}
    }))
    .unwrap()
}

type Item<K> = Result<watcher::Event<K>, watcher::Error>;

fn listing<K>(objs: Vec<K>) -> Vec<Item<K>> {
    let mut v = vec![Ok(watcher::Event::Init)];
    v.extend(objs.into_iter().map(|o| Ok(watcher::Event::InitApply(o))));
    v.push(Ok(watcher::Event::InitDone));
    v
}

/// The kube path: watcher events → translation → events.
async fn kube_events(pods: Vec<Pod>, nss: Vec<Namespace>, pols: Vec<DynamicObject>) -> Vec<Event> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate = Arc::new(SyncGate::new(["ns", "pods", "np"], tx.clone()));
    let pk = &POLICY_KINDS[0];
    run_kind(
        "ns",
        false,
        stream::iter(listing(nss)),
        convert::namespace,
        tx.clone(),
        gate.clone(),
    )
    .await;
    run_kind(
        "pods",
        false,
        stream::iter(listing(pods)),
        convert::pod,
        tx.clone(),
        gate.clone(),
    )
    .await;
    run_kind(
        "np",
        false,
        stream::iter(listing(pols)),
        |o: &DynamicObject| policy_outcome(pk, o),
        tx,
        gate,
    )
    .await;
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn sync(events: Vec<Event>) -> (Store, Controller) {
    let mut store = Store::new();
    let changes = store.apply_all(events);
    let mut ctrl = Controller::new("node-0");
    ctrl.on_changes(&store, &changes);
    (store, ctrl)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let pods: Vec<Pod> = (0..PODS)
        .map(|i| pod(i, &format!("app-{}", i % 100)))
        .collect();
    let nss: Vec<Namespace> = (0..NAMESPACES).map(namespace).collect();
    let pols: Vec<DynamicObject> = (0..POLICIES).map(policy).collect();

    // Baseline: the same objects as ready-made datastore events.
    let ready = rt.block_on(kube_events(pods.clone(), nss.clone(), pols.clone()));
    let rss0 = rss_kib();
    let c0 = cpu();
    let (base_store, base_ctrl) = sync(ready.clone());
    let base_cpu = cpu() - c0;
    let base_rss = rss_kib().saturating_sub(rss0);
    drop((base_store, base_ctrl));

    // The kube path, from watcher events.
    let rss1 = rss_kib();
    let c1 = cpu();
    let events = rt.block_on(kube_events(pods, nss, pols));
    let (mut store, mut ctrl) = sync(events);
    let kube_cpu = cpu() - c1;
    let kube_rss = rss_kib().saturating_sub(rss1);
    assert_eq!(store.pods.len(), PODS);
    assert_eq!(store.policies.len(), POLICIES);

    // One pod changes labels: baseline is the ready-made event.
    let one = pod(7, "app-42");
    let ready_one = rt.block_on(kube_events(vec![one.clone()], vec![], vec![]));
    let n = 200u32;
    let c2 = cpu();
    for k in 0..n {
        let p = pod(7, if k % 2 == 0 { "app-42" } else { "app-7" });
        let ev = rt.block_on(async {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let gate = Arc::new(SyncGate::new(["pods"], tx.clone()));
            run_kind(
                "pods",
                false,
                stream::iter(vec![Ok(watcher::Event::Apply(p))]),
                convert::pod,
                tx,
                gate,
            )
            .await;
            let mut v = Vec::new();
            while let Ok(e) = rx.try_recv() {
                v.push(e);
            }
            v
        });
        let ch = store.apply_all(ev);
        ctrl.on_changes(&store, &ch);
    }
    let kube_one = (cpu() - c2) / n;
    let back = rt.block_on(kube_events(vec![pod(7, "app-7")], vec![], vec![]));
    let c3 = cpu();
    for k in 0..n {
        let ev = if k % 2 == 0 {
            ready_one.clone()
        } else {
            back.clone()
        };
        let ev: Vec<Event> = ev.into_iter().filter(|e| *e != Event::Synced).collect();
        let ch = store.apply_all(ev);
        ctrl.on_changes(&store, &ch);
    }
    let base_one = (cpu() - c3) / n;

    println!("kube_sync: {PODS} pods, {NAMESPACES} namespaces, {POLICIES} NetworkPolicies");
    println!(
        "initial sync  CPU: kube path {:>8.1} ms, baseline (ready events) {:>8.1} ms, ratio {:.2}",
        kube_cpu.as_secs_f64() * 1e3,
        base_cpu.as_secs_f64() * 1e3,
        kube_cpu.as_secs_f64() / base_cpu.as_secs_f64().max(1e-9)
    );
    println!(
        "initial sync  RSS growth: kube path {kube_rss} KiB, baseline {base_rss} KiB, ratio {:.2}",
        kube_rss as f64 / (base_rss.max(1)) as f64
    );
    println!(
        "one pod relabelled CPU: kube path {:>8.1} us, baseline {:>8.1} us, ratio {:.2}",
        kube_one.as_secs_f64() * 1e6,
        base_one.as_secs_f64() * 1e6,
        kube_one.as_secs_f64() / base_one.as_secs_f64().max(1e-9)
    );
}
