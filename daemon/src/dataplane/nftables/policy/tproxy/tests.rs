//! The steering's rendering, from scenarios.
use std::collections::BTreeMap;

use veil_scenario::Scenario;

use super::super::{render, RenderedPolicy};
use super::*;

/// The first node's render of a scenario; pods get `veil<index>`.
fn render_scenario(yaml: &str) -> (RenderedPolicy, BTreeMap<String, (String, IpAddr)>) {
    let sc = Scenario::parse(yaml).expect("scenario parses");
    let st = sc.initial_state().expect("valid policies");
    let compiled = veil_policy::compile::Compiled::new(&st.cluster, &st.policies);
    let node = st.cluster.nodes[0].name.clone();
    let mut names = BTreeMap::new();
    let eps: Vec<LocalEndpoint> = st
        .cluster
        .pods
        .values()
        .filter(|p| p.node == node && !p.host_network)
        .enumerate()
        .map(|(i, p)| {
            let ifname = format!("veil{i:011x}");
            names.insert(p.key(), (ifname.clone(), p.ip));
            LocalEndpoint {
                ifname,
                ip: p.ip,
                pod: Some(p.key()),
            }
        })
        .collect();
    (render(compiled.program(), &eps), names)
}

const SHOP: &str = r#"
name: shop
cluster: {nodes: [node-a]}
namespaces: [{name: shop}]
pods:
  - {name: shop/web, labels: {app: web}, node: node-a}
  - {name: shop/api, labels: {app: api}, node: node-a, ports: [{port: 8080}]}
  - {name: shop/db, labels: {app: db}, node: node-a, ports: [{port: 5432}]}
policies:
  - apiVersion: veil.dev/v1alpha1
    kind: NetworkPolicy
    metadata: {name: api-reads, namespace: shop}
    spec:
      selector: {matchLabels: {app: api}}
      ingress:
        - action: Allow
          protocol: TCP
          source: {selector: {matchLabels: {app: web}}}
          http: {methods: [GET]}
  - apiVersion: veil.dev/v1alpha1
    kind: NetworkPolicy
    metadata: {name: db-l4, namespace: shop}
    spec:
      selector: {matchLabels: {app: db}}
      ingress:
        - action: Allow
          protocol: TCP
          source: {selector: {matchLabels: {app: api}}}
probes: []
"#;

#[test]
fn only_endpoints_with_http_rules_are_steering_candidates() {
    let (r, names) = render_scenario(SHOP);
    let ip = |p: &str| match names[p].1 {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!(),
    };
    assert!(r.steering.any_http);
    assert!(r.steering.egress.is_empty(), "{:?}", r.steering);
    assert_eq!(
        r.steering.ingress.iter().copied().collect::<Vec<_>>(),
        [ip("shop/api")]
    );
    // Every local pod with an ingress chain can be evaluated (a steered
    // connection skips `forward`), not only the candidates.
    assert!(r.steering.ingress_chains.contains_key(&ip("shop/db")));
    assert!(r.steering.ingress_chains.contains_key(&ip("shop/api")));
    let objects = r.objects();
    assert!(objects.hooks.contains_key(&PolicyHook::Prerouting));
    assert!(objects.chains.contains_key(CLASSIFY));
    assert_eq!(objects.sets[SET_INGRESS].elements.len(), 1);
}

#[test]
fn an_http_allow_sets_the_http_mark_and_an_l4_allow_does_not() {
    let (r, _) = render_scenario(SHOP);
    let http_allows = r
        .chains
        .values()
        .flat_map(|c| c.rules())
        .filter(|rule| rule.statements.contains(&set_mark(MARK_ALLOW | MARK_HTTP)))
        .count();
    let l4_allows = r
        .chains
        .values()
        .flat_map(|c| c.rules())
        .filter(|rule| rule.statements.contains(&set_mark(MARK_ALLOW)))
        .count();
    assert_eq!((http_allows, l4_allows), (1, 1));
}

#[test]
fn after_the_last_http_rule_only_proxied_connections_stay_local() {
    let parts = |yaml: &str| {
        let st = Scenario::parse(yaml).unwrap().initial_state().unwrap();
        let c = veil_policy::compile::Compiled::new(&st.cluster, &st.policies);
        let eps: Vec<LocalEndpoint> = st
            .cluster
            .pods
            .values()
            .enumerate()
            .map(|(i, p)| LocalEndpoint {
                ifname: format!("veil{i:011x}"),
                ip: p.ip,
                pod: Some(p.key()),
            })
            .collect();
        (c, eps)
    };
    let mut cache = super::super::RenderCache::new();
    let none = BTreeMap::new();
    let (c, eps) = parts(SHOP);
    let with = super::super::render_cached(&mut cache, c.program(), &eps, &none);
    assert!(with.steering.keep_proxied);
    let (c, eps) = parts(&SHOP.replace("          http: {methods: [GET]}\n", ""));
    let after = super::super::render_cached(&mut cache, c.program(), &eps, &none);
    let o = after.objects();
    let comments = |h: PolicyHook| -> Vec<String> {
        o.hooks[&h]
            .iter()
            .filter_map(|r| r.comment.clone())
            .collect()
    };
    assert_eq!(
        comments(PolicyHook::Prerouting),
        ["L7 proxy connections stay on the node"],
        "no new connection is steered"
    );
    assert_eq!(
        comments(PolicyHook::Output),
        ["the L7 proxy's upstream connections"]
    );
    assert!(!o.chains.contains_key(CLASSIFY) && !o.sets.contains_key(SET_INGRESS));
    // A render with a fresh cache (veild restarted: no proxied
    // connection survived) has none of it.
    assert!(!after.steering.any_http);
    assert_eq!(
        render(c.program(), &eps)
            .objects()
            .hooks
            .get(&PolicyHook::Prerouting),
        None
    );
}

#[test]
fn without_http_rules_nothing_is_added() {
    let yaml = SHOP.replace("          http: {methods: [GET]}\n", "");
    let (r, _) = render_scenario(&yaml);
    assert!(!r.steering.any_http && r.steering.is_empty());
    let objects = r.objects();
    assert!(!objects.hooks.contains_key(&PolicyHook::Prerouting));
    assert!(!objects.hooks.contains_key(&PolicyHook::Output));
    assert!(!objects.chains.contains_key(CLASSIFY));
}
