use veil_scenario::Scenario;

use super::*;
use crate::dataplane::nftables::policy::render;
use crate::dataplane::nftables::{BaseFilter, DesiredTable, FakeFilter, TableManager};

const SCENARIO: &str = r#"
name: dns-steering
cluster: {nodes: [node-a]}
namespaces: [{name: out}]
pods:
  - {name: out/app, labels: {app: app}, node: node-a, ip: 10.244.0.5}
  - {name: out/free, labels: {app: free}, node: node-a, ip: 10.244.0.6}
policies:
  - apiVersion: veil.dev/v1alpha1
    kind: NetworkPolicy
    metadata: {name: app-out, namespace: out}
    spec:
      selector: {matchLabels: {app: app}}
      egress:
        - action: Allow
          protocol: TCP
          destination: {domains: [api.example.com], ports: [443]}
probes: []
"#;

fn rendered(yaml: &str) -> super::super::RenderedPolicy {
    let sc = Scenario::parse(yaml).unwrap();
    let st = sc.initial_state().unwrap();
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
    render(c.program(), &eps)
}

fn table(objs: PolicyObjects) -> DesiredTable {
    let mut t = DesiredTable::new(BaseFilter {
        underlay_interface: "eth0".into(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        pod_cidr: "10.244.0.0/24".parse().unwrap(),
    });
    t.policy = objs;
    t
}

#[test]
fn only_pods_with_domain_rules_are_steered_and_a_missing_proxy_drops() {
    let r = rendered(SCENARIO);
    assert_eq!(
        r.dns.clients.iter().collect::<Vec<_>>(),
        vec![&Ipv4Addr::new(10, 244, 0, 5)]
    );
    let o = r.objects();
    let pre = &o.hooks[&PolicyHook::Prerouting];
    let stmts: Vec<&Vec<Statement<'static>>> = pre.iter().map(|r| &r.statements).collect();
    let text = serde_json::to_string(&stmts).unwrap();
    assert!(text.contains("tproxy") && text.contains(&DEFAULT_PORT.to_string()));
    assert!(
        text.contains(DISPATCH_EGRESS),
        "egress policy before the proxy"
    );
    let last = pre.last().unwrap();
    assert_eq!(last.comment.as_deref(), Some(PROXY_DOWN));
    assert!(matches!(last.statements.last(), Some(Statement::Drop(_))));
    assert_eq!(o.sets[CLIENTS_SET].elements.len(), 1);
    let set = r.dns.sets.iter().next().unwrap();
    assert!(o.sets[set].flags.contains(&SetFlag::Timeout));
}

#[test]
fn no_domain_rules_means_no_steering() {
    let r = rendered(&SCENARIO.replace("domains: [api.example.com], ", ""));
    assert!(r.dns.clients.is_empty() && r.dns.sets.is_empty());
    assert!(!r.objects().hooks.contains_key(&PolicyHook::Prerouting));
}

#[test]
fn proxy_elements_survive_resync_and_go_with_their_rule() {
    let r = rendered(SCENARIO);
    let set = r.dns.sets.iter().next().unwrap().clone();
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), table(r.objects()));
    m.apply().unwrap();
    assert!(fake.table().unwrap().chains.contains_key("prerouting"));
    // The proxy adds an element behind the manager's back.
    fake.tamper(|t| {
        t.as_mut()
            .unwrap()
            .sets
            .get_mut(&set)
            .unwrap()
            .elements
            .insert("{\"concat\":[\"10.244.0.5\",\"203.0.113.10\"]}".into());
    });
    m.resync().unwrap();
    assert_eq!(fake.table().unwrap().sets[&set].elements.len(), 1);
    // The rule changes: its set goes, a new (empty) one comes.
    let changed = rendered(&SCENARIO.replace("ports: [443]", "ports: [8443]"));
    let new_set = changed.dns.sets.iter().next().unwrap().clone();
    assert_ne!(new_set, set);
    m.on_update(table(changed.objects()));
    m.apply().unwrap();
    let t = fake.table().unwrap();
    assert!(!t.sets.contains_key(&set));
    assert!(t.sets[&new_set].elements.is_empty());
}
