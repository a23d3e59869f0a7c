//! `veild --datastore kube` end to end against a fake API server: a small
//! HTTP server of the tests' own (`kube_support`), speaking enough of list
//! and watch (and answering the Node patch and the Lease), bound inside the
//! node's network namespace. veild gets no address nor pod CIDR flag: it
//! reads them from its Node object; it must become ready, enforce the
//! NetworkPolicy the API lists, publish its WireGuard key as a Node
//! annotation, and follow a key rotation with a new annotation.

mod kube_support;

use std::time::Duration;

use kube_support::{empty_lists, node, veild_kube, FakeApi};
use serde_json::{json, Value};
use veil_tests::{call, eventually, require_root, unique_prefix, Daemon, Netns, TempDir};

#[test]
fn veild_with_the_kube_datastore_reads_its_node_and_policies_and_publishes_its_key() {
    require_root();
    let prefix = unique_prefix();
    let ns = Netns::new(&format!("{prefix}-kube"));
    ns.add_underlay("eth0", "eth1", "198.18.0.10/15");
    ns.ip(&["link", "set", "lo", "up"]);
    let dir = TempDir::new(&prefix, "kube");
    let mut lists = empty_lists();
    lists.get_mut("/api/v1/namespaces").unwrap().1 =
        vec![json!({"metadata": {"name": "shop", "labels": {"team": "a"}}})];
    lists
        .get_mut("/apis/networking.k8s.io/v1/networkpolicies")
        .unwrap()
        .1 = vec![
        json!({"metadata": {"name": "deny-all", "namespace": "shop", "uid": "u1",
                                "managedFields": [{"manager": "kubectl"}]},
                   "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    ];
    let api = FakeApi::start(
        &ns,
        node("node-a", "198.18.0.10", "10.244.7.0/24", json!({})),
        lists,
    );
    let kubeconfig = api.kubeconfig(dir.path());
    let sock = dir.join("veild.sock");
    let child = veild_kube(&ns, dir.path(), &kubeconfig, "node-a", "127.0.0.1:19591")
        .spawn()
        .expect("spawn veild");
    let mut d = Daemon(child);
    let logs = || std::fs::read_to_string(dir.join("veild.log")).unwrap_or_default();
    if let Err(e) = veil_tests::wait_for_daemon(
        &sock,
        veil_api::method::CNI_STATUS,
        Duration::from_secs(30),
        Some(&mut d.0),
        |v| v["ready"] == true,
    ) {
        panic!("veild did not become ready: {e}\n{}", logs());
    }
    // Its address and pod CIDR came from the Node object.
    let status = call(&sock, veil_api::method::NODE_STATUS, Value::Null).unwrap();
    assert!(status.to_string().contains("10.244.7.0/24"), "{status}");
    // The NetworkPolicy listed by the API is in force.
    let policies = call(&sock, veil_api::method::POLICY_LIST, Value::Null).unwrap();
    assert!(
        policies.to_string().contains("deny-all"),
        "{policies}\n{}",
        logs()
    );
    // The WireGuard key is published on the Node, and follows a rotation.
    assert!(
        eventually(Duration::from_secs(15), || !api.key_patches().is_empty()),
        "no Node annotation patch: {:?}\n{}",
        api.log.lock().unwrap(),
        logs()
    );
    let first = api.key_patches()[0].clone();
    call(&sock, veil_api::method::WIREGUARD_ROTATE_KEY, Value::Null).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || api
            .key_patches()
            .iter()
            .any(|k| *k != first)),
        "the rotated key was not published: {:?}",
        api.key_patches()
    );
    // The absent CRD kinds were asked for, and skipped.
    assert!(logs().contains("CRD not installed"), "{}", logs());
}
