//! Benchmark: the kube datastore's initial sync of 5,000 pods, 500 namespaces
//! and 2,000 NetworkPolicies from synthetic watcher streams (the translation
//! of kube-rs objects into datastore events, the store, the controller's
//! first compile), then one pod changing labels. CPU time and peak RSS are
//! printed against a baseline of the same run: the same objects given to the
//! store as ready-made datastore events (what the local datastore produces),
//! so the ratio is the cost of the Kubernetes path. Each path runs in a
//! process of its own (the bench re-executes itself), so that memory freed by
//! one is not reused by the other; the results are the last lines.
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

/// What one phase measured.
#[derive(Debug, Default, Clone, Copy)]
struct Phase {
    cpu_ms: f64,
    rss_growth_kib: u64,
    peak_kib: u64,
    one_us: f64,
}

fn peak_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One pod's watcher event through the kube path.
fn pod_events(rt: &tokio::runtime::Runtime, p: Pod) -> Vec<Event> {
    rt.block_on(async {
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
            if e != Event::Synced {
                v.push(e);
            }
        }
        v
    })
}

/// Runs one phase in this process: `kube` (watcher events translated, then
/// the store and the controller) or `baseline` (the same objects as
/// ready-made datastore events, what the local datastore produces).
fn run_phase(kube: bool) -> Phase {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let pods: Vec<Pod> = (0..PODS)
        .map(|i| pod(i, &format!("app-{}", i % 100)))
        .collect();
    let nss: Vec<Namespace> = (0..NAMESPACES).map(namespace).collect();
    let pols: Vec<DynamicObject> = (0..POLICIES).map(policy).collect();
    let n = 200u32;
    let mut ph = Phase::default();
    if kube {
        let rss0 = rss_kib();
        let c0 = cpu();
        let events = rt.block_on(kube_events(pods, nss, pols));
        let (mut store, mut ctrl) = sync(events);
        ph.cpu_ms = (cpu() - c0).as_secs_f64() * 1e3;
        ph.rss_growth_kib = rss_kib().saturating_sub(rss0);
        assert_eq!(store.pods.len(), PODS);
        assert_eq!(store.policies.len(), POLICIES);
        // One pod changes labels, back and forth.
        let c = cpu();
        for k in 0..n {
            let ev = pod_events(&rt, pod(7, if k % 2 == 0 { "app-42" } else { "app-7" }));
            let ch = store.apply_all(ev);
            ctrl.on_changes(&store, &ch);
        }
        ph.one_us = (cpu() - c).as_secs_f64() * 1e6 / f64::from(n);
    } else {
        let ready = rt.block_on(kube_events(pods, nss, pols));
        let flip = [
            pod_events(&rt, pod(7, "app-42")),
            pod_events(&rt, pod(7, "app-7")),
        ];
        let rss0 = rss_kib();
        let c0 = cpu();
        let (mut store, mut ctrl) = sync(ready);
        ph.cpu_ms = (cpu() - c0).as_secs_f64() * 1e3;
        ph.rss_growth_kib = rss_kib().saturating_sub(rss0);
        assert_eq!(store.pods.len(), PODS);
        let c = cpu();
        for k in 0..n {
            let ch = store.apply_all(flip[(k % 2) as usize].clone());
            ctrl.on_changes(&store, &ch);
        }
        ph.one_us = (cpu() - c).as_secs_f64() * 1e6 / f64::from(n);
    }
    ph.peak_kib = peak_kib();
    ph
}

const PHASE_ENV: &str = "VEIL_KUBE_SYNC_PHASE";

fn main() {
    // Each phase runs in a process of its own, so that its memory is its own
    // (a freed baseline would be reused by the next phase and hide it).
    if let Ok(which) = std::env::var(PHASE_ENV) {
        let p = run_phase(which == "kube");
        println!(
            "phase {which} cpu_ms={} rss_growth_kib={} peak_kib={} one_us={}",
            p.cpu_ms, p.rss_growth_kib, p.peak_kib, p.one_us
        );
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let run = |which: &str| -> Phase {
        let out = std::process::Command::new(&exe)
            .env(PHASE_ENV, which)
            .output()
            .expect("run a phase");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "phase {which} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("phase "))
            .unwrap_or_else(|| panic!("phase {which}: no result in {text:?}"));
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        Phase {
            cpu_ms: field("cpu_ms"),
            rss_growth_kib: field("rss_growth_kib") as u64,
            peak_kib: field("peak_kib") as u64,
            one_us: field("one_us"),
        }
    };
    let base = run("baseline");
    let kube = run("kube");
    let ratio = |a: f64, b: f64| a / b.max(1e-9);
    println!("kube_sync: {PODS} pods, {NAMESPACES} namespaces, {POLICIES} NetworkPolicies (one process per path)");
    println!(
        "initial sync CPU:      kube path {:>8.1} ms, baseline (ready events) {:>8.1} ms, ratio {:.2}",
        kube.cpu_ms,
        base.cpu_ms,
        ratio(kube.cpu_ms, base.cpu_ms)
    );
    println!(
        "initial sync RSS growth: kube path {:>7} KiB, baseline {:>7} KiB, ratio {:.2}",
        kube.rss_growth_kib,
        base.rss_growth_kib,
        ratio(kube.rss_growth_kib as f64, base.rss_growth_kib as f64)
    );
    println!(
        "peak RSS of the process: kube path {:>7} KiB, baseline {:>7} KiB, ratio {:.2}",
        kube.peak_kib,
        base.peak_kib,
        ratio(kube.peak_kib as f64, base.peak_kib as f64)
    );
    println!(
        "one pod relabelled CPU: kube path {:>8.1} us, baseline {:>8.1} us, ratio {:.2}",
        kube.one_us,
        base.one_us,
        ratio(kube.one_us, base.one_us)
    );
}
