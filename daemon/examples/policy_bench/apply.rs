//! Policy change to enforcement, and memory. `apply-bench` runs inside the
//! node's namespace (the real `nft` through [`TableManager`]) and times, per
//! change: the policy set update, the incremental compile, rendering, and the
//! table manager's incremental transaction. `rss` builds what veild holds
//! for the benchmark's cluster and prints its resident memory.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use veil_daemon::dataplane::nftables::policy::RenderCache;
use veil_daemon::dataplane::nftables::{Nft, TableManager};
use veil_policy::compile::Compiled;
use veil_policy::Object;

use crate::cluster::{self, Variant, APPS, NAMESPACES, PODS, RULES};

/// Changes timed per size.
const CHANGES: usize = 50;
/// Namespaces whose policies the 1,000-rule change rewrites (10 policies
/// each, 10 rules per policy).
const BIG_NAMESPACES: std::ops::Range<usize> = 10..20;

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Per-stage times of one change, in ms.
#[derive(Default)]
struct Stages {
    total: Vec<f64>,
    compile: Vec<f64>,
    render: Vec<f64>,
    apply: Vec<f64>,
}

impl Stages {
    fn print(&self, what: &str) {
        println!(
            "{what}: change to enforcement p50 {:.1} ms, p99 {:.1} ms (n={}); medians: policy set + compile {:.1} ms, render + objects {:.1} ms, nft transaction {:.1} ms",
            percentile(&self.total, 0.5),
            percentile(&self.total, 0.99),
            self.total.len(),
            percentile(&self.compile, 0.5),
            percentile(&self.render, 0.5),
            percentile(&self.apply, 0.5),
        );
    }
}

/// Runs inside the node's namespace.
pub fn apply_bench() -> Result<()> {
    let c = cluster::cluster();
    let mut ps = cluster::policies();
    let mut compiled = Compiled::new(&c, &ps);
    let mut cache = RenderCache::new();
    let rendered = cluster::render_node_cached(&c, &compiled, &mut cache);
    let mut mgr = TableManager::new(Nft, cluster::desired(&rendered));
    let t = Instant::now();
    mgr.apply()
        .context("loading the full table through the manager")?;
    println!(
        "full {RULES}-rule table through TableManager (read back + one transaction): {:.0} ms",
        ms(t.elapsed())
    );

    let one = |v| vec![cluster::policy(0, 0, v)];
    let big = |v| {
        let mut objs = Vec::new();
        for n in BIG_NAMESPACES {
            for j in 0..APPS {
                objs.push(cluster::policy(n, j, v));
            }
        }
        objs
    };
    let cases: [(&str, Vec<Object>, Vec<Object>); 2] = [
        ("one-rule change", one(Variant::OneRule), one(Variant::Base)),
        (
            "1,000-rule change",
            big(Variant::AllRules),
            big(Variant::Base),
        ),
    ];
    for (what, changed, base) in cases {
        let mut st = Stages::default();
        for i in 0..CHANGES {
            // Alternate, so that every change is a real one.
            let objs = if i % 2 == 0 { &changed } else { &base };
            let t0 = Instant::now();
            ps.apply(objs.iter().cloned())
                .context("applying the changed policies")?;
            compiled.update_policies(&c, &ps);
            let t1 = Instant::now();
            let rendered = cluster::render_node_cached(&c, &compiled, &mut cache);
            let desired = cluster::desired(&rendered);
            let t2 = Instant::now();
            mgr.on_update(desired);
            let wrote = mgr.apply().context("incremental apply")?;
            let t3 = Instant::now();
            anyhow::ensure!(wrote, "{what}: the manager wrote nothing for a real change");
            st.total.push(ms(t3 - t0));
            st.compile.push(ms(t1 - t0));
            st.render.push(ms(t2 - t1));
            st.apply.push(ms(t3 - t2));
        }
        st.print(what);
    }
    Ok(())
}

/// Debugging aid: writes the full table and the batches of the two changes
/// (`nft -j` documents) into `dir`, without touching the kernel.
pub fn dump(dir: &str) -> Result<()> {
    use veil_daemon::dataplane::nftables::{delta, plan};
    let c = cluster::cluster();
    let mut ps = cluster::policies();
    let mut compiled = Compiled::new(&c, &ps);
    let mut cache = RenderCache::new();
    let full = cluster::desired(&cluster::render_node_cached(&c, &compiled, &mut cache));
    std::fs::write(
        format!("{dir}/full.json"),
        plan::to_json(&plan::full(&full))?.to_string(),
    )?;
    let big = (BIG_NAMESPACES)
        .flat_map(|n| (0..APPS).map(move |j| cluster::policy(n, j, Variant::AllRules)));
    for (name, objs) in [
        ("one", vec![cluster::policy(0, 0, Variant::OneRule)]),
        ("big", big.collect()),
    ] {
        let mut ps2 = ps.clone();
        ps2.apply(objs)?;
        let mut comp2 = Compiled::new(&c, &ps2);
        comp2.update_policies(&c, &ps2);
        let next = cluster::desired(&cluster::render_node(&c, &comp2));
        match delta::delta(&full, &next) {
            delta::Delta::Batch(b) => {
                std::fs::write(format!("{dir}/{name}.json"), plan::to_json(&b)?.to_string())?
            }
            other => anyhow::bail!("{name}: {other:?}"),
        }
    }
    ps.apply(Vec::new())?;
    compiled.update_policies(&c, &ps);
    Ok(())
}

fn vm(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs in a fresh process: what veild holds for the benchmark's cluster.
pub fn rss() {
    let before = vm("VmRSS:");
    let c = cluster::cluster();
    let ps = cluster::policies();
    let compiled = Compiled::new(&c, &ps);
    let rendered = cluster::render_node(&c, &compiled);
    let desired = cluster::desired(&rendered);
    let held = vm("VmRSS:");
    println!(
        "veild-like RSS holding cluster + policy set + compiled program + rendered policy + desired table ({PODS} pods, {} policies, {RULES} rules, {} chains): VmRSS {:.1} MiB (process before building: {:.1} MiB, so +{:.1} MiB), VmHWM {:.1} MiB",
        NAMESPACES * APPS,
        desired.policy.chains.len(),
        held as f64 / 1024.0,
        before as f64 / 1024.0,
        held.saturating_sub(before) as f64 / 1024.0,
        vm("VmHWM:") as f64 / 1024.0,
    );
    drop((c, ps, compiled, rendered, desired));
}
