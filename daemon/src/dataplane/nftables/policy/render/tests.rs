use std::collections::BTreeMap;

use veil_scenario::Scenario;

use super::*;
use crate::dataplane::nftables::policy::prefix::LogPrefix;
use crate::dataplane::nftables::policy::{RenderCache, NODE_TUNNELS};

/// Compiles a scenario and renders the first node's part of it, with
/// interface names `veil<index>` for its pods.
fn render_scenario(yaml: &str) -> (RenderedPolicy, BTreeMap<String, String>) {
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
            names.insert(p.key(), ifname.clone());
            LocalEndpoint {
                ifname,
                ip: p.ip,
                pod: Some(p.key()),
            }
        })
        .collect();
    (render(compiled.program(), &eps), names)
}

const DENY_DB: &str = r#"
name: deny-db
cluster: {nodes: [node-a]}
namespaces: [{name: shop}]
pods:
  - {name: shop/web, labels: {app: web}, node: node-a}
  - {name: shop/db, labels: {app: db}, node: node-a}
  - {name: shop/other, labels: {app: other}, node: node-a}
policies:
  - apiVersion: veil.dev/v1alpha1
    kind: GlobalNetworkPolicy
    metadata: {name: block-db}
    spec:
      selector: {matchLabels: {app: db}}
      ingress:
        - action: Allow
          protocol: TCP
          source: {selector: {matchLabels: {app: web}}}
          destination: {ports: [5432, "8000:8080"]}
        - action: Deny
          source: {nets: [10.0.0.0/8, 10.1.0.0/16]}
probes: []
"#;

#[test]
fn pod_without_policy_dispatches_to_the_open_chain() {
    let (o, names) = render_scenario(DENY_DB);
    let web = &names["shop/web"];
    assert_eq!(o.maps[MAP_EGRESS][web], OPEN_CHAIN);
    assert!(!o.chains.contains_key(&format!("e-{web}-eg")));
}

#[test]
fn selected_pod_gets_a_chain_per_direction_that_ends_with_the_tier_default() {
    let (o, names) = render_scenario(DENY_DB);
    let db = &names["shop/db"];
    let chain = &o.chains[&format!("e-{db}-in")];
    let last = serde_json::to_string(&chain.rules().last().unwrap().statements).unwrap();
    assert!(last.contains("t-default-in-deny"), "{last}");
    let deny = serde_json::to_string(&o.chains["t-default-in-deny"]).unwrap();
    assert!(deny.contains("D|I|default|default"), "{deny}");
    assert!(deny.contains("\"drop\""), "{deny}");
    // Egress of db is not selected: open.
    assert!(!o.chains.contains_key(&format!("e-{db}-eg")));
}

#[test]
fn deny_rule_is_logged_with_a_prefix_naming_tier_policy_and_rule() {
    let (o, _) = render_scenario(DENY_DB);
    let want = "D|I|default|gnp:block-db|1";
    assert!(o.prefixes.lookup(want).is_some());
    let p = LogPrefix::parse(want).unwrap();
    assert_eq!(p.rule, Some(1));
    let found = o
        .chains
        .values()
        .any(|c| serde_json::to_string(c).unwrap().contains(want));
    assert!(found);
}

#[test]
fn overlapping_nets_become_one_interval_each() {
    let (o, _) = render_scenario(DENY_DB);
    let nets: Vec<&SetSpec> = o
        .sets
        .values()
        .filter(|s| s.kind == SetKind::Net4)
        .collect();
    assert_eq!(nets.len(), 1);
    assert_eq!(nets[0].elements.len(), 1, "10.1.0.0/16 lies in 10.0.0.0/8");
}

#[test]
fn selector_peer_is_a_named_set_of_the_selected_addresses() {
    let (o, _) = render_scenario(DENY_DB);
    let addr_sets: Vec<&SetSpec> = o
        .sets
        .values()
        .filter(|s| s.kind == SetKind::Addr4)
        .collect();
    assert_eq!(addr_sets.len(), 1);
    assert_eq!(addr_sets[0].elements.len(), 1, "only shop/web");
}

#[test]
fn few_ports_and_ranges_are_one_rule_each_without_anonymous_set() {
    let (o, _) = render_scenario(DENY_DB);
    let pol = o
        .chains
        .iter()
        .find(|(k, _)| k.starts_with("p-") && k.ends_with("-in"))
        .map(|(_, v)| v)
        .unwrap();
    let first = serde_json::to_string(&pol.rules()[0].statements).unwrap();
    let second = serde_json::to_string(&pol.rules()[1].statements).unwrap();
    assert!(first.contains("5432") && !first.contains("8000"), "{first}");
    assert!(
        second.contains("8000") && second.contains("8080") && !second.contains("5432"),
        "{second}"
    );
    for r in [&first, &second] {
        assert!(!r.contains("\"set\""), "no anonymous set: {r}");
    }
}

#[test]
fn many_ports_share_one_anonymous_set() {
    let yaml = DENY_DB.replace(
        "[5432, \"8000:8080\"]",
        "[5432, 5433, 5434, 5435, \"8000:8080\"]",
    );
    let (o, _) = render_scenario(&yaml);
    let pol = o
        .chains
        .iter()
        .find(|(k, _)| k.starts_with("p-") && k.ends_with("-in"))
        .map(|(_, v)| v)
        .unwrap();
    let first = serde_json::to_string(&pol.rules()[0].statements).unwrap();
    assert!(
        first.contains("5432") && first.contains("5435") && first.contains("8080"),
        "{first}"
    );
    assert!(first.contains("\"set\""), "{first}");
}

#[test]
fn unknown_endpoint_is_left_out_of_the_maps() {
    let sc = Scenario::parse(DENY_DB).unwrap();
    let st = sc.initial_state().unwrap();
    let c = veil_policy::compile::Compiled::new(&st.cluster, &st.policies);
    let o = render(
        c.program(),
        &[LocalEndpoint {
            ifname: "veil00000000abc".into(),
            ip: "10.244.99.99".parse().unwrap(),
            pod: Some("x/y".into()),
        }],
    );
    assert!(o.maps[MAP_EGRESS].is_empty(), "not dispatched: dropped");
    assert!(o.maps[MAP_INGRESS].is_empty(), "not dispatched: dropped");
    let o = render(
        c.program(),
        &[LocalEndpoint {
            ifname: "veil00000000abc".into(),
            ip: "10.244.99.99".parse().unwrap(),
            pod: None,
        }],
    );
    assert_eq!(
        o.maps[MAP_EGRESS]["veil00000000abc"], OPEN_CHAIN,
        "no identity: open"
    );
}

#[test]
fn domain_peers_never_match_a_direct_connection() {
    let yaml = r#"
name: domains
cluster: {nodes: [node-a]}
namespaces: [{name: app}]
pods:
  - {name: app/client, labels: {app: client}, node: node-a}
policies:
  - apiVersion: veil.dev/v1alpha1
    kind: GlobalNetworkPolicy
    metadata: {name: only-example}
    spec:
      selector: {matchLabels: {app: client}}
      egress:
        - action: Allow
          destination: {domains: [api.example.com]}
probes: []
"#;
    let (o, _) = render_scenario(yaml);
    let pol = o
        .chains
        .iter()
        .find(|(k, _)| k.starts_with("p-") && k.ends_with("-eg"))
        .map(|(_, v)| v)
        .unwrap();
    // The rule matches only members of its `domains` set, which the
    // renderer declares empty: only the DNS proxy adds (pod, address) pairs
    // it saw in an answer, so a direct connection never matches.
    assert_eq!(pol.len(), 1, "{pol:?}");
    let text = serde_json::to_string(&pol.rules()[0].statements).unwrap();
    let set = o.dns.sets.iter().next().expect("a domains set");
    assert!(text.contains(&format!("@{set}")), "{text}");
    let objs = o.objects();
    assert!(objs.sets[set].elements.is_empty());
    assert!(!o.sets.contains_key(set), "not a renderer-filled set");
}

#[test]
fn minimal_cover_drops_contained_networks_and_keeps_disjoint_ones() {
    let c = |s: &str| s.parse::<Cidr>().unwrap();
    let got = minimal_cover(&[
        c("10.1.0.0/16"),
        c("10.0.0.0/8"),
        c("192.168.0.0/24"),
        c("10.0.0.0/8"),
    ]);
    assert_eq!(got, vec![c("10.0.0.0/8"), c("192.168.0.0/24")]);
}

fn scenario_parts(yaml: &str) -> (veil_policy::cluster::Cluster, veil_policy::PolicySet) {
    let st = Scenario::parse(yaml).unwrap().initial_state().unwrap();
    (st.cluster, st.policies)
}

fn endpoints_of(c: &veil_policy::cluster::Cluster) -> Vec<LocalEndpoint> {
    c.pods
        .values()
        .filter(|p| !p.host_network)
        .enumerate()
        .map(|(i, p)| LocalEndpoint {
            ifname: format!("veil{i:011x}"),
            ip: p.ip,
            pod: Some(p.key()),
        })
        .collect()
}

#[test]
fn cached_render_equals_a_fresh_one_and_shares_unchanged_chains() {
    let (c, mut ps) = scenario_parts(DENY_DB);
    let mut compiled = veil_policy::compile::Compiled::new(&c, &ps);
    let eps = endpoints_of(&c);
    let mut cache = RenderCache::new();
    let none = BTreeMap::new();
    let first = render_cached(&mut cache, compiled.program(), &eps, &none);
    assert_eq!(first, render(compiled.program(), &eps));
    // A second policy: the first one's chains are reused as they were.
    ps.apply([veil_policy::Object::from_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 80}]}]\n",
    )
    .unwrap()])
    .unwrap();
    compiled.update_policies(&c, &ps);
    let second = render_cached(&mut cache, compiled.program(), &eps, &none);
    assert_eq!(second, render(compiled.program(), &eps));
    let shared = first
        .chains
        .iter()
        .filter(|(n, ch)| second.chains.get(*n).is_some_and(|c2| c2.same(ch)))
        .count();
    assert!(shared >= 2, "unchanged chains are shared, got {shared}");
    assert!(second.chains.keys().any(|n| !first.chains.contains_key(n)));
}

#[test]
fn a_nodes_tunnel_address_matches_as_the_node_address() {
    let yaml = r#"
name: tunnels
cluster: {nodes: [node-a, node-b]}
namespaces: [{name: db}]
pods:
  - {name: db/cache, labels: {app: cache}, node: node-a, ports: [{port: 6379}]}
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: from-node-b, namespace: db}
    spec:
      podSelector: {}
      ingress:
        - from: [{ipBlock: {cidr: 198.18.0.11/32}}]
        - from: [{ipBlock: {cidr: 10.244.0.0/16}}]
probes: []
"#;
    let (c, ps) = scenario_parts(yaml);
    let compiled = veil_policy::compile::Compiled::new(&c, &ps);
    let tunnels: BTreeMap<IpAddr, IpAddr> =
        [("198.18.0.10", "10.244.0.1"), ("198.18.0.11", "10.244.1.1")]
            .iter()
            .map(|(n, t)| (n.parse().unwrap(), t.parse().unwrap()))
            .collect();
    let o = render_cached(
        &mut RenderCache::new(),
        compiled.program(),
        &endpoints_of(&c),
        &tunnels,
    );
    let tun: IpAddr = "10.244.1.1".parse().unwrap();
    // The ipBlock of node-b's address gets node-b's tunnel address, alone.
    let as_node: Vec<(&String, &SetSpec)> =
        o.sets.iter().filter(|(n, _)| n.starts_with('t')).collect();
    assert_eq!(as_node.len(), 1, "{:?}", o.sets.keys());
    assert_eq!(as_node[0].1.elements, BTreeSet::from([Element::Addr(tun)]));
    // The pod range holds tunnel addresses: it excludes them.
    assert_eq!(o.sets[NODE_TUNNELS].elements.len(), 2);
    let pol = o
        .chains
        .iter()
        .find(|(k, _)| k.starts_with("p-") && k.ends_with("-in"))
        .map(|(_, v)| serde_json::to_string(v).unwrap())
        .unwrap();
    assert!(pol.contains(&format!("@{NODE_TUNNELS}")), "{pol}");
    assert!(pol.contains(&format!("@{}", as_node[0].0)), "{pol}");
}
