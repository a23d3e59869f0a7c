//! The kube datastore against synthetic watcher streams, for every kind:
//! initial list, add, modify, delete, relist after 410, invalid objects,
//! absent CRDs, an outage, and a Node annotation's effect on WireGuard peers.

use std::sync::Arc;

use futures::stream;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::DynamicObject;
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::mpsc;

use super::reflect::SyncGate;
use super::*;
use crate::datastore::store::Store;
use crate::datastore::{ANNOTATION_WG_ENDPOINT, ANNOTATION_WG_PUBLIC_KEY};

type Item<K> = Result<watcher::Event<K>, watcher::Error>;

/// Runs one kind's translation over `items` and returns what it emitted.
async fn drive<K, C>(optional: bool, items: Vec<Item<K>>, convert: C) -> Vec<Event>
where
    C: Fn(&K) -> Vec<(Key, convert::Outcome)>,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate = Arc::new(SyncGate::new(["k"], tx.clone()));
    run_kind("k", optional, stream::iter(items), convert, tx, gate).await;
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn obj<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
    serde_json::from_value(v).unwrap()
}

fn node(name: &str, key: Option<&str>) -> Node {
    let mut ann = serde_json::Map::new();
    ann.insert("unrelated.example/x".into(), "y".into());
    if let Some(k) = key {
        ann.insert(ANNOTATION_WG_PUBLIC_KEY.into(), k.into());
        ann.insert(ANNOTATION_WG_ENDPOINT.into(), "198.18.0.2:51820".into());
    }
    obj(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "annotations": ann},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [
            {"type": "Hostname", "address": name},
            {"type": "InternalIP", "address": "198.18.0.2"}]}
    }))
}

fn pod(name: &str, app: &str, ip: Option<&str>) -> Pod {
    let mut status = json!({"phase": "Running"});
    if let Some(ip) = ip {
        status["podIP"] = ip.into();
        status["podIPs"] = json!([{"ip": ip}]);
    }
    obj(json!({
        "metadata": {"name": name, "namespace": "shop", "uid": "u-1", "labels": {"app": app}},
        "spec": {"nodeName": "n2", "serviceAccountName": "web",
                 "containers": [{"name": "c", "ports": [{"containerPort": 8080, "name": "http"}]}]},
        "status": status
    }))
}

fn namespace(name: &str, team: &str) -> Namespace {
    obj(
        json!({"metadata": {"name": name, "labels": {"team": team, "kubernetes.io/metadata.name": name}}}),
    )
}

fn applied(events: &[Event]) -> Vec<&Key> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Applied(k, _) => Some(k),
            _ => None,
        })
        .collect()
}

fn deleted(events: &[Event]) -> Vec<&Key> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Deleted(k) => Some(k),
            _ => None,
        })
        .collect()
}

use watcher::Event as W;

#[tokio::test]
async fn nodes_are_listed_added_modified_and_deleted() {
    let ev = drive(
        false,
        vec![
            Ok(W::Init),
            Ok(W::InitApply(node("n1", None))),
            Ok(W::InitDone),
            Ok(W::Apply(node("n2", None))),
            Ok(W::Apply(node("n2", Some("a2V5")))),
            Ok(W::Delete(node("n1", None))),
        ],
        convert::node,
    )
    .await;
    let mut store = Store::new();
    store.apply_all(ev.clone());
    assert!(store.synced);
    assert!(
        ev.iter().position(|e| *e == Event::Synced).unwrap() == 1,
        "{ev:?}"
    );
    let n2 = &store.nodes[&convert::node_key("n2")];
    assert_eq!(n2.address.to_string(), "198.18.0.2");
    assert_eq!(n2.pod_cidrs[0].to_string(), "10.244.1.0/24");
    assert_eq!(n2.wireguard_public_key(), Some("a2V5"));
    assert!(
        !n2.annotations.contains_key("unrelated.example/x"),
        "only veil.dev annotations are kept"
    );
    assert!(!store.nodes.contains_key(&convert::node_key("n1")));
}

#[tokio::test]
async fn node_without_an_address_is_an_issue_not_a_record() {
    let mut n = node("n1", None);
    n.status = None;
    let ev = drive(false, vec![Ok(W::Apply(n))], convert::node).await;
    assert!(
        matches!(&ev[0], Event::Invalid(_, i) if i.field == "status.addresses"),
        "{ev:?}"
    );
}

#[tokio::test]
async fn pods_give_a_record_and_an_endpoint_from_their_status() {
    let ev = drive(
        false,
        vec![
            Ok(W::Init),
            Ok(W::InitApply(pod("web", "a", Some("10.244.1.5")))),
            Ok(W::InitDone),
            Ok(W::Apply(pod("web", "b", Some("10.244.1.5")))),
        ],
        convert::pod,
    )
    .await;
    let mut store = Store::new();
    store.apply_all(ev);
    let p = &store.pods[&convert::pod_key("shop", "web")];
    assert_eq!(p.labels["app"], "b");
    assert_eq!(p.node.as_deref(), Some("n2"));
    assert_eq!(p.service_account.as_deref(), Some("web"));
    assert_eq!(p.ports[0].name.as_deref(), Some("http"));
    let e = &store.endpoints[&convert::pod_endpoint_key("shop", "web")];
    assert_eq!(e.ips[0].to_string(), "10.244.1.5/32");
    assert_eq!(e.node, "n2");
}

#[tokio::test]
async fn pod_losing_its_address_or_deleted_removes_its_endpoint() {
    let ev = drive(
        false,
        vec![
            Ok(W::Apply(pod("web", "a", Some("10.244.1.5")))),
            Ok(W::Apply(pod("web", "a", None))),
        ],
        convert::pod,
    )
    .await;
    assert_eq!(
        deleted(&ev),
        vec![&convert::pod_endpoint_key("shop", "web")]
    );
    let ev = drive(
        false,
        vec![
            Ok(W::Apply(pod("web", "a", Some("10.244.1.5")))),
            Ok(W::Delete(pod("web", "a", Some("10.244.1.5")))),
        ],
        convert::pod,
    )
    .await;
    let mut store = Store::new();
    store.apply_all(ev);
    assert!(store.pods.is_empty() && store.endpoints.is_empty());
}

#[tokio::test]
async fn host_network_pods_have_no_endpoint_of_their_own() {
    let mut p = pod("agent", "a", Some("198.18.0.2"));
    p.spec.as_mut().unwrap().host_network = Some(true);
    let ev = drive(false, vec![Ok(W::Apply(p))], convert::pod).await;
    assert_eq!(applied(&ev), vec![&convert::pod_key("shop", "agent")]);
}

#[tokio::test]
async fn namespaces_are_listed_modified_and_deleted() {
    let ev = drive(
        false,
        vec![
            Ok(W::Init),
            Ok(W::InitApply(namespace("shop", "a"))),
            Ok(W::InitDone),
            Ok(W::Apply(namespace("shop", "b"))),
            Ok(W::Apply(namespace("db", "c"))),
            Ok(W::Delete(namespace("db", "c"))),
        ],
        convert::namespace,
    )
    .await;
    let mut store = Store::new();
    store.apply_all(ev);
    let ns = &store.namespaces[&Key::new(Kind::Namespace, "shop")];
    assert_eq!(ns.labels.get("team").map(String::as_str), Some("b"));
    assert!(!ns.labels.contains_key("kubernetes.io/metadata.name"));
    assert_eq!(store.namespaces.len(), 1);
}

#[tokio::test]
async fn relist_after_410_deletes_what_vanished_and_keeps_the_rest() {
    let gone = watcher::Error::WatchError(Box::new(
        kube::core::Status::failure("too old resource version", "Expired").with_code(410),
    ));
    let ev = drive(
        false,
        vec![
            Ok(W::Init),
            Ok(W::InitApply(namespace("a", "1"))),
            Ok(W::InitApply(namespace("b", "1"))),
            Ok(W::InitDone),
            Err(gone),
            Ok(W::Init),
            Ok(W::InitApply(namespace("a", "1"))),
            Ok(W::InitApply(namespace("c", "1"))),
            Ok(W::InitDone),
        ],
        convert::namespace,
    )
    .await;
    assert_eq!(deleted(&ev), vec![&Key::new(Kind::Namespace, "b")]);
    let synced = ev.iter().filter(|e| **e == Event::Synced).count();
    assert_eq!(synced, 1, "Synced is sent once, not on every relist");
    let mut store = Store::new();
    store.apply_all(ev);
    let names: Vec<_> = store.namespaces.values().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
}

#[tokio::test]
async fn an_outage_emits_nothing_so_the_last_state_stays() {
    let down = || {
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
            kube::core::Status::failure("connection refused", "ServiceUnavailable").with_code(503),
        )))
    };
    let ev = drive(
        false,
        vec![
            Ok(W::Init),
            Ok(W::InitApply(namespace("a", "1"))),
            Ok(W::InitDone),
            Err(down()),
            Err(down()),
            Err(down()),
        ],
        convert::namespace,
    )
    .await;
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(deleted(&ev).is_empty());
}

fn not_found() -> watcher::Error {
    watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
        kube::core::Status::failure(
            "the server could not find the requested resource",
            "NotFound",
        )
        .with_code(404),
    )))
}

fn policy_obj(pk: &PolicyKind, name: &str, spec: serde_json::Value) -> DynamicObject {
    let ns = if pk.kind == "NetworkPolicy" {
        json!("shop")
    } else {
        serde_json::Value::Null
    };
    let mut meta = json!({"name": name, "generation": 2, "uid": "u-9",
        "managedFields": [{"manager": "kubectl"}], "annotations": {"a": "b"}});
    if !ns.is_null() {
        meta["namespace"] = ns;
    }
    obj(json!({
        "apiVersion": pk.api_version(), "kind": pk.kind,
        "metadata": meta, "spec": spec, "status": {"conditions": []}
    }))
}

/// A valid spec and an invalid one for each policy kind.
fn specs(pk: &PolicyKind) -> (serde_json::Value, serde_json::Value) {
    match (pk.group, pk.kind) {
        ("networking.k8s.io", _) => (
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            json!({"podSelector": {}, "policyTypes": ["Sideways"]}),
        ),
        ("policy.networking.k8s.io", "AdminNetworkPolicy") => (
            json!({"priority": 10, "subject": {"namespaces": {}}, "ingress": [
                {"action": "Deny", "from": [{"namespaces": {}}]}]}),
            json!({"priority": 10, "subject": {"namespaces": {}}, "ingress": [
                {"action": "Explode", "from": [{"namespaces": {}}]}]}),
        ),
        ("policy.networking.k8s.io", "BaselineAdminNetworkPolicy") => (
            json!({"subject": {"namespaces": {}}, "ingress": [
                {"action": "Deny", "from": [{"namespaces": {}}]}]}),
            json!({"subject": {"namespaces": {}}, "bogus": 1}),
        ),
        ("policy.networking.k8s.io", _) => (
            json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}, "ingress": [
                {"action": "Deny", "from": [{"namespaces": {}}],
                 "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]}),
            json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}, "ingress": [
                {"action": "Deny", "from": [{"namespaces": {}}],
                 "protocols": [{"tcp": {"destinationPort": {"number": 0}}}]}]}),
        ),
        (_, "Tier") => (json!({"order": 300}), json!({"order": "high"})),
        (_, "NetworkPolicy") => (
            json!({"tier": "default", "selector": {}, "ingress": [{"action": "Allow"}]}),
            json!({"tier": "default", "selector": {}, "ingress": [{"action": "Maybe"}]}),
        ),
        _ => (
            json!({"tier": "default", "selector": {}, "ingress": [{"action": "Allow"}]}),
            json!({"tier": "default", "selector": {}, "ingress": [{"action": "Maybe"}]}),
        ),
    }
}

#[tokio::test]
async fn every_policy_kind_is_listed_modified_invalidated_and_deleted() {
    for pk in POLICY_KINDS {
        let (good, bad) = specs(pk);
        // The BaselineAdminNetworkPolicy is a singleton named "default".
        let p1 = if pk.kind == "BaselineAdminNetworkPolicy" {
            "default"
        } else {
            "p1"
        };
        let convert = |o: &DynamicObject| policy_outcome(pk, o);
        let watch = vec![
            W::Init,
            W::InitApply(policy_obj(pk, p1, good.clone())),
            W::InitDone,
            W::Apply(policy_obj(pk, "p2", good.clone())),
            W::Apply(policy_obj(pk, p1, bad.clone())),
            W::Delete(policy_obj(pk, "p2", good.clone())),
        ];
        let reported: Vec<StatusMsg> = watch.iter().filter_map(|e| status_message(pk, e)).collect();
        let ev = drive(pk.crd, watch.into_iter().map(Ok).collect(), convert).await;
        let mut store = Store::new();
        store.apply_all(ev.clone());
        assert!(store.synced, "{}", pk.id);
        assert_eq!(store.policies.len(), 1, "{}: {ev:?}", pk.id);
        let (key, doc) = store.policies.iter().next().unwrap();
        assert!(key.name.starts_with(pk.id), "{key}");
        // Stripped to what the parser accepts, and still the good version.
        let m = &doc.manifest;
        assert!(m.get("status").is_none(), "{}", pk.id);
        let meta = m.get("metadata").unwrap();
        assert!(meta.get("managedFields").is_none() && meta.get("annotations").is_none());
        assert_eq!(
            m.get("apiVersion").unwrap().as_str(),
            Some(pk.api_version().as_str())
        );
        veil_policy::Object::from_value(m).unwrap_or_else(|e| panic!("{}: {e}", pk.id));
        assert_eq!(store.issues.len(), 1, "{}: the bad p1 is an issue", pk.id);
        let issue = store.issues.values().next().unwrap();
        assert!(issue.object.ends_with(p1), "{issue}");
        // veil.dev kinds report to the status writer; others do not.
        if pk.status {
            let last_p1 = reported
                .iter()
                .rev()
                .find_map(|m| match m {
                    StatusMsg::Set(i) if i.name == "p1" => Some(i),
                    _ => None,
                })
                .unwrap();
            assert!(last_p1.verdict.is_err(), "{}", pk.id);
            assert_eq!(last_p1.generation, Some(2));
            assert!(
                matches!(reported.last(), Some(StatusMsg::Gone(o)) if o.ends_with("/p2")),
                "a deleted object ends its status tracking: {reported:?}"
            );
        } else {
            assert!(reported.is_empty());
        }
    }
}

#[tokio::test]
async fn absent_crd_is_skipped_once_and_picked_up_when_it_appears() {
    let pk = &POLICY_KINDS[4];
    let (good, _) = specs(pk);
    let convert = |o: &DynamicObject| policy_outcome(pk, o);
    let ev = drive(
        true,
        vec![
            Err(not_found()),
            Err(not_found()),
            Ok(W::Init),
            Ok(W::InitApply(policy_obj(pk, "t", good))),
            Ok(W::InitDone),
        ],
        convert,
    )
    .await;
    assert_eq!(ev[0], Event::Synced, "absent counts as listed: {ev:?}");
    assert_eq!(ev.iter().filter(|e| **e == Event::Synced).count(), 1);
    assert_eq!(applied(&ev).len(), 1, "{ev:?}");
}

#[tokio::test]
async fn absent_required_kind_blocks_the_initial_sync() {
    let ev = drive::<Namespace, _>(false, vec![Err(not_found())], convert::namespace).await;
    assert!(
        ev.is_empty(),
        "a 404 on a built-in kind is not 'absent CRD': {ev:?}"
    );
}

#[test]
fn sync_gate_waits_for_every_kind() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate = SyncGate::new(["a", "b"], tx);
    gate.done("a");
    gate.done("a");
    assert!(rx.try_recv().is_err());
    gate.done("b");
    assert_eq!(rx.try_recv().unwrap(), Event::Synced);
    gate.done("b");
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn node_annotation_update_changes_the_wireguard_peer_key() {
    use crate::wireguard::keys;
    let k1 = keys::to_base64(&[1; 32]);
    let k2 = keys::to_base64(&[2; 32]);
    let mut store = Store::new();
    store.apply_all(
        drive(
            false,
            vec![Ok(W::Apply(node("n2", Some(&k1))))],
            convert::node,
        )
        .await,
    );
    let (peers, _) = crate::controller::peers::desired(&store.snapshot(), "n1", &[9; 32], 51820);
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].key, [1; 32]);
    assert_eq!(peers[0].allowed[0].to_string(), "10.244.1.0/24");
    store.apply_all(
        drive(
            false,
            vec![Ok(W::Apply(node("n2", Some(&k2))))],
            convert::node,
        )
        .await,
    );
    let (peers, _) = crate::controller::peers::desired(&store.snapshot(), "n1", &[9; 32], 51820);
    assert_eq!(peers[0].key, [2; 32], "the peer follows the rotated key");
    store.apply_all(drive(false, vec![Ok(W::Apply(node("n2", None)))], convert::node).await);
    let (peers, _) = crate::controller::peers::desired(&store.snapshot(), "n1", &[9; 32], 51820);
    assert!(peers.is_empty(), "no key, no peer");
}

#[test]
fn node_facts_fill_only_the_flags_not_given() {
    let facts = node::facts_of(&node("n1", None)).unwrap();
    let mut flags = crate::config::Flags {
        datastore: Some("kube".into()),
        node_name: Some("n1".into()),
        node_labels: vec!["kubernetes.io/hostname=override".into()],
        ..Default::default()
    };
    node::fill_flags(&mut flags, &facts);
    assert_eq!(flags.node_address.unwrap().to_string(), "198.18.0.2");
    assert_eq!(flags.pod_cidr.unwrap().to_string(), "10.244.1.0/24");
    assert_eq!(
        flags.node_labels,
        vec!["kubernetes.io/hostname=override".to_string()]
    );
    let c = crate::config::Config::load(flags).unwrap();
    assert!(matches!(
        c.datastore,
        crate::config::DatastoreChoice::Kube(_)
    ));
}

#[test]
fn node_without_pod_cidr_is_refused_at_start_up() {
    let mut n = node("n1", None);
    n.spec = None;
    let e = node::facts_of(&n).unwrap_err().to_string();
    assert!(e.contains("spec.podCIDRs"), "{e}");
}

#[test]
fn status_names_the_invalid_field_and_matches_once_written() {
    let pk = POLICY_KINDS[5];
    let item = status::StatusItem {
        kind: pk,
        origin: "networkpolicies.veil.dev/shop/p".into(),
        namespace: Some("shop".into()),
        name: "p".into(),
        uid: None,
        generation: Some(3),
        verdict: Err(crate::datastore::Issue {
            object: "networkpolicies.veil.dev/shop/p".into(),
            field: "spec.ingress[0].action".into(),
            reason: "unknown".into(),
        }),
        current: None,
    };
    let want = status::desired_status(&item, "2026-01-01T00:00:00Z");
    assert!(!status::status_matches(None, &want));
    let invalid = want
        .conditions
        .iter()
        .find(|c| c.type_ == "Invalid")
        .unwrap();
    assert!(invalid.message.contains("spec.ingress[0].action"));
    let written =
        serde_json::to_value(status::desired_status(&item, "2027-01-01T00:00:00Z")).unwrap();
    assert!(
        status::status_matches(Some(&written), &want),
        "times aside, the same"
    );
    let accepted = status::StatusItem {
        verdict: Ok(()),
        ..item
    };
    assert!(!status::status_matches(
        Some(&written),
        &status::desired_status(&accepted, "t")
    ));
}

#[test]
fn every_watched_policy_kind_is_granted_list_and_watch_in_the_access_table() {
    for pk in POLICY_KINDS {
        for verb in ["list", "watch"] {
            assert!(
                API_ACCESS.contains(&ApiAccess {
                    group: pk.group,
                    resource: pk.plural,
                    verb
                }),
                "{} {verb}",
                pk.id
            );
        }
        if pk.status {
            let sub = format!("{}/status", pk.plural);
            assert!(API_ACCESS
                .iter()
                .any(|a| a.group == pk.group && a.resource == sub && a.verb == "patch"));
        }
    }
}

#[test]
fn deploy_rbac_grants_every_api_call_of_the_kube_datastore() {
    use serde::Deserialize;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac/veil-node.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut granted = std::collections::BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        let kind = v["kind"].as_str().unwrap_or("");
        if kind != "ClusterRole" && kind != "Role" {
            continue;
        }
        for rule in v["rules"].as_sequence().unwrap() {
            let strs = |f: &str| -> Vec<String> {
                rule[f]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect()
            };
            for g in strs("apiGroups") {
                for r in strs("resources") {
                    for verb in strs("verbs") {
                        assert_ne!(verb, "*", "no wildcard verbs");
                        assert_ne!(r, "*", "no wildcard resources");
                        granted.insert((g.clone(), r.clone(), verb));
                    }
                }
            }
        }
    }
    let used: std::collections::BTreeSet<(String, String, String)> = API_ACCESS
        .iter()
        .map(|a| {
            (
                a.group.to_string(),
                a.resource.to_string(),
                a.verb.to_string(),
            )
        })
        .collect();
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "the code calls APIs deploy/rbac/veil-node.yaml does not grant: {missing:?}"
    );
    let extra: Vec<_> = granted.difference(&used).collect();
    assert!(
        extra.is_empty(),
        "deploy/rbac/veil-node.yaml grants APIs the code never calls (least privilege): {extra:?}"
    );
}

#[test]
fn watch_backoff_never_gives_up_stays_under_20s_and_restarts_small_after_a_reset() {
    use kube::runtime::utils::Backoff;
    let mut b = watch_backoff();
    let delays: Vec<std::time::Duration> = (0..100).map(|_| b.next().unwrap()).collect();
    assert!(
        delays
            .iter()
            .all(|d| *d <= std::time::Duration::from_secs(20)),
        "{delays:?}"
    );
    assert!(
        delays[99] >= std::time::Duration::from_secs(10),
        "{delays:?}"
    );
    b.reset();
    assert!(b.next().unwrap() <= std::time::Duration::from_secs(1));
}
