//! The DNS proxy: egress allowlists by DNS name (`domains` peers).
//!
//! The node's nftables steer UDP and TCP port 53 from the pods that some
//! `domains` rule selects to this proxy (TPROXY, see
//! `dataplane::nftables::policy::dns`), after their egress policy allowed the
//! query. The proxy forwards each query unchanged to the resolver the pod
//! asked, from the pod's own address (so the resolver's ingress policy
//! applies as to the pod), parses the answer ([`answer`]), and for each rule
//! whose names match the asked name adds the answer's IPv4 addresses to that
//! rule's set for that pod ([`allow`]) **before** it releases the answer,
//! unchanged, to the pod. Answers that do not match their query, loop, or
//! are malformed are answered SERVFAIL and counted; a set that cannot be
//! written makes the answer SERVFAIL too (fail closed: nothing is allowed that
//! the kernel does not hold, and a pod never connects before it does).
//!
//! - [`udp`], [`tcp`]: the listeners (TCP: several messages per connection,
//!   pipelined); [`sockets`]: transparent sockets and the policy routing.
//! - [`allow`]: the allowance cache, persisted in the state directory and
//!   re-installed at start; [`writer`]: how it reaches the kernel (an
//!   in-process nf_tables netlink batch, `nft` only as a fallback).
//! - `dns.allowances` on the socket: what `veilctl dns` shows.
//!
//! It does not answer from a cache of its own, rewrite answers, or handle
//! IPv6 destinations (the pod network is IPv4).

pub mod allow;
pub mod answer;
pub mod metrics;
pub mod rules;
pub mod sockets;
pub mod tcp;
pub mod udp;
pub mod writer;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use crate::context::NodeContext;
use crate::controller::Desired;
use crate::dataplane::nftables::policy::dns::{rules_by_set, DomainRule};
use crate::node::policy_sync::AppliedPolicy;
use allow::{Allowances, SetWriter};
use answer::{inspect, servfail, Question};
use metrics::DnsMetrics;

pub use crate::dataplane::nftables::policy::dns::DEFAULT_PORT;

/// How long the proxy waits for a resolver's answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A listener or the routing could not be set up.
    #[error("DNS proxy {what}: {source}")]
    Io {
        /// What was being set up.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What to release to the pod for one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The resolver's answer, unchanged.
    Unchanged,
    /// These bytes instead (SERVFAIL), or nothing when the query had no ID.
    Replace(Option<Vec<u8>>),
}

/// A set write the kernel refused (e.g. a set the policy sync has not
/// installed yet): [`RetryWrite::finish`] waits for the next applied policy
/// (at most 2 s), tries once more, and fails closed with SERVFAIL.
#[derive(Debug)]
pub struct RetryWrite {
    pod: Ipv4Addr,
    name: String,
    query: Vec<u8>,
    needed: Vec<(allow::Element, allow::Allowance)>,
    elems: Vec<allow::Element>,
    answers: Vec<Counter>,
    first: allow::WriteError,
}

impl RetryWrite {
    /// Retries the write once after the next applied policy; the verdict.
    pub async fn finish(self: Box<Self>, p: &Proxy) -> Verdict {
        let mut applied = p.applied.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), applied.changed()).await;
        if p.writer.add(&self.elems).is_err() {
            tracing::warn!(pod = %self.pod, name = %self.name, error = %self.first, "DNS allowance not installed: SERVFAIL");
            p.metrics.drop("set_write_failed");
            return Verdict::Replace(servfail(&self.query));
        }
        p.granted(
            self.pod,
            &self.name,
            self.needed,
            self.elems.len(),
            self.answers.len(),
        );
        for c in &self.answers {
            c.inc();
        }
        Verdict::Unchanged
    }
}

/// The proxy's state, shared by its listeners.
pub struct Proxy {
    desired: watch::Receiver<Arc<Desired>>,
    applied: watch::Receiver<Arc<AppliedPolicy>>,
    /// Allowances in force.
    pub cache: Allowances,
    writer: Box<dyn SetWriter>,
    /// Metrics.
    pub metrics: DnsMetrics,
    /// The flow collector, taught every accepted answer: flows and the graph
    /// name external addresses by the name the proxy saw.
    names: Option<Arc<crate::flows::Flows>>,
    rule_cache: rules::RuleCache,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy following `desired`, writing with `writer`.
    pub fn new(
        desired: watch::Receiver<Arc<Desired>>,
        applied: watch::Receiver<Arc<AppliedPolicy>>,
        writer: Box<dyn SetWriter>,
    ) -> Self {
        Proxy {
            desired,
            applied,
            cache: Allowances::default(),
            writer,
            metrics: DnsMetrics::default(),
            names: None,
            rule_cache: rules::RuleCache::default(),
        }
    }

    /// Teaches `flows` the names of every accepted answer.
    pub fn with_names(mut self, flows: Option<Arc<crate::flows::Flows>>) -> Self {
        self.names = flows;
        self
    }

    /// The `domains` rules of the pod at `pod`.
    pub fn rules(&self, pod: Ipv4Addr) -> Vec<DomainRule> {
        self.rule_cache
            .get(&self.desired, &self.metrics, pod)
            .iter()
            .map(|c| c.rule.clone())
            .collect()
    }

    /// Handles the resolver's `answer` to the pod's `query`: installs what it
    /// allows and returns the bytes to release to the pod (the answer
    /// unchanged, or SERVFAIL).
    pub async fn release(&self, pod: Ipv4Addr, query: &[u8], answer: &[u8]) -> Option<Vec<u8>> {
        let start = Instant::now();
        let verdict = match self.release_now(pod, query, answer) {
            Ok(v) => v,
            Err(retry) => retry.finish(self).await,
        };
        self.metrics
            .added_latency
            .observe(start.elapsed().as_secs_f64());
        match verdict {
            Verdict::Unchanged => Some(answer.to_vec()),
            Verdict::Replace(r) => r,
        }
    }

    /// [`Proxy::release`] without waiting: the verdict, or (when the kernel
    /// refused the set write, e.g. a set the policy sync has not installed
    /// yet) the write to retry with [`RetryWrite::finish`]. It does not
    /// observe `added_latency` (the caller does).
    pub fn release_now(
        &self,
        pod: Ipv4Addr,
        query: &[u8],
        answer: &[u8],
    ) -> Result<Verdict, Box<RetryWrite>> {
        let q: Question = match answer::parse_query(query) {
            Ok(q) => q,
            // Not one standard question: nothing can be attributed to a name,
            // so nothing is allowed; the answer goes back unchanged.
            Err(_) => return Ok(Verdict::Unchanged),
        };
        let res = match inspect(&q, answer) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(pod = %pod, name = %q.name, reason = e.label(), "DNS answer refused");
                self.metrics.drop(e.label());
                return Ok(Verdict::Replace(servfail(query)));
            }
        };
        if let Some(f) = &self.names {
            if !res.addrs.is_empty() {
                let ips: Vec<IpAddr> = res.addrs.iter().map(|(a, _)| *a).collect();
                f.learn_dns(&res.name, &ips);
            }
        }
        let all = self.rule_cache.get(&self.desired, &self.metrics, pod);
        let rules: Vec<&rules::CachedRule> =
            all.iter().filter(|r| r.rule.matches(&res.name)).collect();
        for r in &rules {
            r.queries.inc();
        }
        let v4: Vec<(Ipv4Addr, u32)> = res
            .addrs
            .iter()
            .filter_map(|(a, t)| match a {
                IpAddr::V4(a) => Some((*a, *t)),
                IpAddr::V6(_) => None,
            })
            .collect();
        if rules.is_empty() || v4.is_empty() {
            return Ok(Verdict::Unchanged);
        }
        let sets: Vec<&str> = rules.iter().map(|r| r.rule.set.as_str()).collect();
        let needed = self.cache.needed(&sets, pod, &res.name, &v4, unix_now());
        if !needed.is_empty() {
            let elems: Vec<allow::Element> = needed.iter().map(|(e, _)| e.clone()).collect();
            if let Err(first) = self.writer.add(&elems) {
                return Err(Box::new(RetryWrite {
                    pod,
                    name: res.name,
                    query: query.to_vec(),
                    needed,
                    elems,
                    answers: rules.iter().map(|r| r.answers.clone()).collect(),
                    first,
                }));
            }
            self.granted(pod, &res.name, needed, elems.len(), rules.len());
        }
        for r in &rules {
            r.answers.inc();
        }
        Ok(Verdict::Unchanged)
    }

    /// Records allowances the kernel now holds.
    fn granted(
        &self,
        pod: Ipv4Addr,
        name: &str,
        needed: Vec<(allow::Element, allow::Allowance)>,
        elems: usize,
        rules: usize,
    ) {
        self.metrics.elements_added.inc_by(elems as u64);
        self.cache.record(needed.into_iter().map(|(_, a)| a));
        tracing::debug!(pod = %pod, name = %name, elements = elems, rules, "DNS allowance installed");
    }

    /// Drops expired allowances and those of rules that are gone; updates
    /// the gauges.
    pub fn sweep(&self) {
        let live = rules_by_set(&self.desired.borrow().program);
        let n = self.cache.sweep(unix_now(), &|s| live.contains_key(s));
        self.metrics.expirations.inc_by(n as u64);
        self.metrics
            .set_elements
            .set(self.cache.sizes().values().sum::<usize>() as i64);
    }

    /// Re-installs saved allowances whose rule still exists, with their
    /// remaining time; returns how many.
    pub fn restore(&self, saved: Vec<allow::Allowance>) -> usize {
        let now = unix_now();
        let live = rules_by_set(&self.desired.borrow().program);
        let keep: Vec<allow::Allowance> = saved
            .into_iter()
            .filter(|a| live.contains_key(&a.set) && a.expires > now)
            .collect();
        // One batch per set: a set the policy sync has not installed yet
        // loses only its own allowances.
        let mut by_set: std::collections::BTreeMap<String, Vec<allow::Allowance>> =
            std::collections::BTreeMap::new();
        for a in keep {
            by_set.entry(a.set.clone()).or_default().push(a);
        }
        let mut n = 0;
        for (set, group) in by_set {
            let elems: Vec<allow::Element> = group
                .iter()
                .map(|a| allow::Element {
                    set: a.set.clone(),
                    pod: a.pod,
                    addr: a.addr,
                    timeout: u32::try_from(a.expires - now).unwrap_or(u32::MAX),
                })
                .collect();
            match self.writer.add(&elems) {
                Ok(()) => {
                    n += group.len();
                    self.cache.record(group);
                }
                Err(err) => {
                    tracing::debug!(set = %set, error = %err, "saved DNS allowances not restored")
                }
            }
        }
        n
    }
}

/// Starts the proxy: routing, listeners on [`DEFAULT_PORT`], the restored
/// cache, the sweeper and its socket method. Returns the shared state.
pub async fn start(
    ctx: &NodeContext,
    flows: Option<Arc<crate::flows::Flows>>,
) -> Result<Arc<Proxy>, DnsError> {
    sockets::setup_routing().map_err(|source| DnsError::Io {
        what: "policy routing",
        source,
    })?;
    let sets = allow::NetlinkSets::default();
    let fallbacks = sets.fallbacks.clone();
    let proxy = Arc::new(
        Proxy::new(
            ctx.desired.clone(),
            ctx.policy_applied.clone(),
            Box::new(sets),
        )
        .with_names(flows),
    );
    if let Ok(mut r) = ctx.metrics.lock() {
        proxy.metrics.register(&mut r);
        r.sub_registry_with_prefix("veil_dns").register(
            "set_write_fallbacks",
            "Allowance batches written with nft because the netlink writer failed",
            fallbacks,
        );
    }
    let file = allow::path(&ctx.config.state_dir);
    match Allowances::load(&file, unix_now()) {
        Ok(saved) => {
            let total = saved.len();
            let p = proxy.clone();
            let n = tokio::task::spawn_blocking(move || p.restore(saved))
                .await
                .unwrap_or(0);
            tracing::info!(restored = n, saved = total, "DNS allowances restored");
        }
        Err(e) => {
            tracing::warn!(error = %e, file = %file.display(), "DNS allowance cache unreadable: starting empty")
        }
    }
    let udp = udp::bind(DEFAULT_PORT).map_err(|source| DnsError::Io {
        what: "UDP listener",
        source,
    })?;
    let tcp = tcp::bind(DEFAULT_PORT).map_err(|source| DnsError::Io {
        what: "TCP listener",
        source,
    })?;
    tokio::spawn(udp::serve(udp, proxy.clone(), ctx.shutdown.clone()));
    tokio::spawn(tcp::serve(tcp, proxy.clone(), ctx.shutdown.clone()));
    let p = proxy.clone();
    let mut shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.changed() => {
                    let _ = p.cache.save_if_dirty(&file);
                    return;
                }
            }
            p.sweep();
            if let Err(e) = p.cache.save_if_dirty(&file) {
                tracing::warn!(error = %e, file = %file.display(), "saving the DNS allowance cache");
            }
        }
    });
    register_api(ctx, proxy.clone());
    tracing::info!(port = DEFAULT_PORT, "DNS proxy listening");
    Ok(proxy)
}

fn register_api(ctx: &NodeContext, proxy: Arc<Proxy>) {
    let rules_of = ctx.desired.clone();
    ctx.api.register(
        veil_api::method::DNS_ALLOWANCES,
        move |_params: serde_json::Value| {
            let proxy = proxy.clone();
            let rules_of = rules_of.clone();
            async move {
                let now = unix_now();
                let rules = rules_by_set(&rules_of.borrow().program);
                let rows: Vec<serde_json::Value> = proxy
                    .cache
                    .list()
                    .into_iter()
                    .map(|a| {
                        let r = rules.get(&a.set);
                        serde_json::json!({
                            "pod": a.pod.to_string(),
                            "name": a.name,
                            "address": a.addr.to_string(),
                            "set": a.set,
                            "policy": r.map(|r| r.policy.clone()),
                            "rule": r.map(|r| r.index),
                            "expires_in": a.expires.saturating_sub(now),
                        })
                    })
                    .collect();
                Ok::<_, veil_api::ApiError>(serde_json::json!({ "allowances": rows }))
            }
        },
    );
}

#[cfg(test)]
mod tests;
