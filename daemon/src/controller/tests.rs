//! Controller tests: store events in, desired state out.

use std::net::IpAddr;

use veil_policy::compile::SetKey;
use veil_policy::model::Protocol;
use veil_policy::{Flow, Verdict};

use super::*;
use crate::datastore::{
    EndpointRecord, Event, Key, Kind, NamespaceRecord, NodeRecord, PodRecord, PolicyDocument,
    Resource, ANNOTATION_WG_PUBLIC_KEY,
};
use crate::wireguard::keys;

fn node(name: &str, addr: &str, cidr: &str, key: [u8; 32]) -> Event {
    Event::Applied(
        Key::new(Kind::Node, format!("{name}.yaml")),
        Resource::Node(NodeRecord {
            name: name.into(),
            address: addr.parse().unwrap(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            labels: [("kubernetes.io/hostname".to_string(), name.to_string())].into(),
            annotations: [(ANNOTATION_WG_PUBLIC_KEY.to_string(), keys::to_base64(&key))].into(),
        }),
    )
}

fn namespace(name: &str) -> Event {
    Event::Applied(
        Key::new(Kind::Namespace, format!("{name}.yaml")),
        Resource::Namespace(NamespaceRecord {
            name: name.into(),
            labels: Default::default(),
        }),
    )
}

fn pod(name: &str, app: &str) -> Event {
    Event::Applied(
        Key::new(Kind::Pod, format!("shop/{name}.yaml")),
        Resource::Pod(PodRecord {
            namespace: "shop".into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            node: Some("n1".into()),
            host_network: false,
            service_account: None,
            ports: vec![],
        }),
    )
}

fn endpoint(name: &str, ip: &str) -> Event {
    Event::Applied(
        Key::new(Kind::Endpoint, format!("n1/{name}_eth0.yaml")),
        Resource::Endpoint(EndpointRecord {
            node: "n1".into(),
            container_id: name.into(),
            ifname: "eth0".into(),
            pod_namespace: Some("shop".into()),
            pod_name: Some(name.into()),
            ips: vec![format!("{ip}/32").parse().unwrap()],
        }),
    )
}

fn policy(file: &str, yaml: &str) -> Event {
    Event::Applied(
        Key::new(Kind::Policy, format!("{file}#0")),
        Resource::Policy(PolicyDocument {
            origin: format!("policies/{file}#0"),
            manifest: serde_yaml::from_str(yaml).unwrap(),
        }),
    )
}

const ALLOW_CLIENT: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
    ports: [{port: 80, protocol: TCP}]
";

const WEB: &str = "10.244.1.2";
const CLIENT: &str = "10.244.1.3";

fn verdict(program: &Program, src: &str, dst: &str) -> Verdict {
    program.verdict(&Flow {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: Protocol::Tcp,
        port: 80,
        dns_name: None,
        http: None,
    })
}

/// A store and controller with web, client and the policy allowing client → web.
fn cluster() -> (Store, Controller) {
    let mut store = Store::new();
    let changes = store.apply_all([
        node("n1", "198.18.0.1", "10.244.1.0/24", [1; 32]),
        namespace("shop"),
        pod("web", "web"),
        endpoint("web", WEB),
        pod("client", "client"),
        endpoint("client", CLIENT),
        policy("allow.yaml", ALLOW_CLIENT),
        Event::Synced,
    ]);
    let mut ctrl = Controller::new("n1");
    assert!(ctrl.on_changes(&store, &changes));
    (store, ctrl)
}

fn step(store: &mut Store, ctrl: &mut Controller, events: Vec<Event>) -> bool {
    let changes = store.apply_all(events);
    ctrl.on_changes(store, &changes)
}

fn client_set_members(ctrl: &Controller) -> Vec<IpAddr> {
    ctrl.policy()
        .compiled()
        .program()
        .sets
        .iter()
        .flatten()
        .filter(|s| matches!(&s.key, SetKey::Pods(sel) if format!("{sel:?}").contains("client")))
        .flat_map(|s| s.addrs.iter().copied())
        .collect()
}

#[test]
fn peers_come_from_the_other_nodes_in_the_store() {
    let mut store = Store::new();
    store.apply_all([
        node("n1", "198.18.0.1", "10.244.1.0/24", [1; 32]),
        node("n2", "198.18.0.2", "10.244.2.0/24", [2; 32]),
    ]);
    let (peers, refused) = peers::desired(&store.snapshot(), "n1", &[1; 32], 51820);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].node, "n2");
    assert_eq!(peers[0].endpoint, "198.18.0.2:51820".parse().unwrap());
    assert_eq!(peers[0].allowed, vec!["10.244.2.0/24".parse().unwrap()]);
}

#[test]
fn initial_sync_compiles_the_policies_of_the_store() {
    let (store, ctrl) = cluster();
    let d = ctrl.desired(&store, vec![]);
    assert_eq!(d.generation, 1);
    assert!(
        d.synced && d.policy_errors.is_empty(),
        "{:?}",
        d.policy_errors
    );
    assert_eq!(verdict(&d.program, CLIENT, WEB), Verdict::Allow);
    assert_eq!(
        verdict(&d.program, WEB, CLIENT),
        Verdict::Allow,
        "client is not selected"
    );
    assert_eq!(d.program.node_endpoints("n1").count(), 2);
}

#[test]
fn pod_relabel_changes_set_membership_not_the_rules() {
    let (mut store, mut ctrl) = cluster();
    let before = ctrl.policy().program().clone();
    let sets_before = ctrl.policy().compiled().set_count();
    assert_eq!(
        client_set_members(&ctrl),
        vec![CLIENT.parse::<IpAddr>().unwrap()]
    );

    assert!(step(&mut store, &mut ctrl, vec![pod("client", "other")]));
    let after = ctrl.policy().program().clone();
    assert_eq!(after.rules, before.rules, "rules are not recompiled");
    assert_eq!(after.policies, before.policies);
    assert_eq!(
        ctrl.policy().compiled().set_count(),
        sets_before,
        "same sets"
    );
    assert!(client_set_members(&ctrl).is_empty(), "client left the set");
    assert_eq!(verdict(&after, CLIENT, WEB), Verdict::Deny);
    assert_eq!(ctrl.policy().generation(), 2);

    // A new pod with the label joins the set.
    assert!(step(
        &mut store,
        &mut ctrl,
        vec![pod("client2", "client"), endpoint("client2", "10.244.1.4")]
    ));
    assert_eq!(
        client_set_members(&ctrl),
        vec!["10.244.1.4".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(ctrl.policy().program().rules, before.rules);
    // And leaves it when its endpoint goes.
    step(
        &mut store,
        &mut ctrl,
        vec![Event::Deleted(Key::new(
            Kind::Endpoint,
            "n1/client2_eth0.yaml",
        ))],
    );
    assert!(client_set_members(&ctrl).is_empty());
}

#[test]
fn unchanged_inputs_keep_the_generation() {
    let (mut store, mut ctrl) = cluster();
    assert!(!step(&mut store, &mut ctrl, vec![pod("web", "web")]));
    assert_eq!(ctrl.policy().generation(), 1);
}

#[test]
fn invalid_policy_keeps_the_last_good_program_and_reports_why() {
    let (mut store, mut ctrl) = cluster();
    let good = ctrl.policy().program().clone();
    let broken = ALLOW_CLIENT.replace("protocol: TCP", "protocol: TPC");
    assert!(!step(
        &mut store,
        &mut ctrl,
        vec![policy("allow.yaml", &broken)]
    ));
    assert_eq!(ctrl.policy().generation(), 1);
    assert_eq!(**ctrl.policy().program(), *good);
    let d = ctrl.desired(&store, vec![]);
    assert_eq!(d.policy_errors.len(), 1, "{:?}", d.policy_errors);
    let e = &d.policy_errors[0];
    assert!(e.object.contains("networkpolicy allow-client"), "{e}");
    assert!(e.object.contains("policies/allow.yaml#0"), "{e}");
    assert!(e.field.contains("ports"), "{e}");
    assert_eq!(verdict(&d.program, CLIENT, WEB), Verdict::Allow);

    // Fixed: the error goes.
    let fixed = ALLOW_CLIENT.replace("port: 80", "port: 8080");
    assert!(step(
        &mut store,
        &mut ctrl,
        vec![policy("allow.yaml", &fixed)]
    ));
    assert!(ctrl.desired(&store, vec![]).policy_errors.is_empty());
    assert_eq!(ctrl.policy().generation(), 2);
}

#[test]
fn policy_naming_a_missing_tier_stays_out_and_the_rest_applies() {
    let (mut store, mut ctrl) = cluster();
    let gnp = "apiVersion: veil.dev/v1alpha1
kind: GlobalNetworkPolicy
metadata: {name: deny-all}
spec: {tier: nope, selector: {}, types: [Ingress]}
";
    let deny = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress]
";
    assert!(step(
        &mut store,
        &mut ctrl,
        vec![policy("gnp.yaml", gnp), policy("deny.yaml", deny)]
    ));
    let d = ctrl.desired(&store, vec![]);
    assert_eq!(
        verdict(&d.program, CLIENT, WEB),
        Verdict::Allow,
        "deny-all is out"
    );
    assert_eq!(
        verdict(&d.program, WEB, CLIENT),
        Verdict::Deny,
        "deny-client is in"
    );
    assert_eq!(d.policy_errors.len(), 1, "{:?}", d.policy_errors);
    assert!(
        d.policy_errors[0].reason.contains("nope"),
        "{:?}",
        d.policy_errors
    );
    assert_eq!(ctrl.policy().policy_set().policies().len(), 2);
}

#[test]
fn policy_file_that_does_not_parse_is_a_policy_error() {
    let (mut store, mut ctrl) = cluster();
    let changes = store.apply_all([Event::Invalid(
        Key::new(Kind::Policy, "allow.yaml#0"),
        Issue {
            object: "policies/allow.yaml".into(),
            field: "(document 1)".into(),
            reason: "did not find expected node content".into(),
        },
    )]);
    assert!(!ctrl.on_changes(&store, &changes));
    let d = ctrl.desired(&store, vec![]);
    assert_eq!(d.policy_errors[0].object, "policies/allow.yaml");
    assert_eq!(
        verdict(&d.program, CLIENT, WEB),
        Verdict::Allow,
        "last good kept"
    );
}

#[test]
fn deleted_policy_leaves_the_program() {
    let (mut store, mut ctrl) = cluster();
    let deny = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress]
";
    step(&mut store, &mut ctrl, vec![policy("deny.yaml", deny)]);
    assert_eq!(verdict(ctrl.policy().program(), WEB, CLIENT), Verdict::Deny);
    step(
        &mut store,
        &mut ctrl,
        vec![Event::Deleted(Key::new(Kind::Policy, "deny.yaml#0"))],
    );
    assert_eq!(
        verdict(ctrl.policy().program(), WEB, CLIENT),
        Verdict::Allow
    );
}

/// The set in force after `events`, through the incremental path, equals the
/// set a controller reading the whole store at once builds, and so do the
/// errors.
fn same_as_fresh(store: &mut Store, ctrl: &mut Controller, events: Vec<Event>, what: &str) {
    step(store, ctrl, events);
    let mut fresh = Controller::new("n1");
    fresh.on_changes(store, &Default::default());
    assert_eq!(
        ctrl.policy().policy_set(),
        fresh.policy().policy_set(),
        "{what}: incremental set vs full rebuild"
    );
    let errs = |c: &Controller| {
        let mut v: Vec<String> = c
            .policy()
            .errors(store)
            .iter()
            .map(|i| format!("{i:?}"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(errs(ctrl), errs(&fresh), "{what}: errors");
}

#[test]
fn document_changes_give_the_set_a_full_rebuild_gives() {
    let (mut store, mut ctrl) = cluster();
    let tier = |order: u32| {
        format!("apiVersion: veil.dev/v1alpha1\nkind: Tier\nmetadata: {{name: t1}}\nspec: {{order: {order}}}\n")
    };
    let gnp = "apiVersion: veil.dev/v1alpha1
kind: GlobalNetworkPolicy
metadata: {name: g}
spec: {tier: t1, selector: {}, types: [Ingress]}
";
    let deny = |app: &str| {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n  policyTypes: [Ingress]\n")
    };
    let del = |f: &str| Event::Deleted(Key::new(Kind::Policy, format!("{f}#0")));
    same_as_fresh(
        &mut store,
        &mut ctrl,
        vec![policy("deny.yaml", &deny("client"))],
        "add",
    );
    same_as_fresh(
        &mut store,
        &mut ctrl,
        vec![policy("deny.yaml", &deny("web"))],
        "change",
    );
    same_as_fresh(
        &mut store,
        &mut ctrl,
        vec![policy("deny2.yaml", &deny("x"))],
        "two documents, one object",
    );
    same_as_fresh(
        &mut store,
        &mut ctrl,
        vec![del("deny.yaml")],
        "one of the two deleted",
    );
    same_as_fresh(
        &mut store,
        &mut ctrl,
        vec![policy("gnp.yaml", gnp)],
        "tier missing",
    );
    same_as_fresh(
        &mut store,
        &mut ctrl,
        vec![policy("tier.yaml", &tier(50))],
        "tier added",
    );
    same_as_fresh(
        &mut store,
        &mut ctrl,
        vec![policy("tier.yaml", &tier(60))],
        "tier order changed",
    );
    same_as_fresh(
        &mut store,
        &mut ctrl,
        vec![del("tier.yaml")],
        "tier deleted while named",
    );
    same_as_fresh(
        &mut store,
        &mut ctrl,
        vec![del("gnp.yaml"), del("tier.yaml")],
        "both gone",
    );
    same_as_fresh(
        &mut store,
        &mut ctrl,
        vec![del("deny2.yaml"), del("allow.yaml")],
        "all gone",
    );
    assert!(ctrl.policy().policy_set().policies().is_empty());
}
