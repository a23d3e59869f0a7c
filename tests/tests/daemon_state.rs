//! `veild` state survives a SIGKILL: after a restart it knows every endpoint and
//! allocation, never hands out an address still in use, and serves the socket API.
//! Runs veild inside a fresh network namespace (it installs its nftables table
//! and enables forwarding there, never in the machine's own namespace).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use veil_tests::{require_root, unique_prefix, Daemon, Netns, TempDir, VeildArgs};

/// A node namespace with its underlay interface (`eth0`, 198.18.0.10/15).
fn node_netns(prefix: &str, tag: &str) -> Netns {
    let n = Netns::new(&format!("{prefix}-{tag}"));
    n.add_underlay("eth0", "eth1", "198.18.0.10/15");
    n
}

fn start(ns: &Netns, dir: &Path) -> Daemon {
    let sock = dir.join("veild.sock");
    let child = VeildArgs {
        netns: &ns.name,
        node_name: "node-a",
        node_address: "198.18.0.10",
        pod_cidr: "10.244.0.0/24",
        underlay: "eth0",
        socket: &sock,
        state_dir: &dir.join("state"),
        datastore_dir: &dir.join("ds"),
        http_listen: "127.0.0.1:19590",
    }
    .command()
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("spawn veild");
    let mut d = Daemon(child);
    if let Err(e) = veil_tests::wait_for_daemon(
        &sock,
        veil_api::method::CNI_STATUS,
        Duration::from_secs(20),
        Some(&mut d.0),
        |v| v["ready"] == true,
    ) {
        panic!("veild did not become ready: {e}");
    }
    d
}

fn call(dir: &Path, method: &str, params: Value) -> Result<Value, String> {
    veil_tests::call(&dir.join("veild.sock"), method, params)
}

fn add(dir: &Path, id: &str) -> String {
    add_in(dir, id, "veil")
}

fn add_in(dir: &Path, id: &str, network: &str) -> String {
    let r = call(
        dir,
        veil_api::method::CNI_ADD,
        json!({"container_id": id, "netns": format!("/var/run/netns/{id}"), "ifname": "eth0",
               "host_ifname": format!("veil{id}"), "pod_namespace": "x", "pod_name": id,
               "network": network, "ipam": {"kind": "daemon"}}),
    )
    .expect(veil_api::method::CNI_ADD);
    call(
        dir,
        veil_api::method::CNI_COMMIT,
        json!({"container_id": id, "ifname": "eth0"}),
    )
    .expect(veil_api::method::CNI_COMMIT);
    r["ips"][0].as_str().unwrap().to_string()
}

#[test]
fn endpoints_and_allocations_survive_sigkill() {
    require_root();
    let prefix = unique_prefix();
    let ns = node_netns(&prefix, "state");
    let dir = TempDir::new(&prefix, "state");
    let mut d = start(&ns, &dir);
    let a = add(&dir, "aaa");
    let b = add(&dir, "bbb");
    assert_ne!(a, b);
    // SIGKILL: no chance to save anything at exit.
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    let _d2 = start(&ns, &dir);
    let status = call(&dir, veil_api::method::NODE_STATUS, Value::Null).unwrap();
    let eps = status["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2, "{status}");
    let c = add(&dir, "ccc");
    assert!(c != a && c != b, "{c} was handed out again");
    // The published endpoint records are in the shared datastore.
    let published = std::fs::read_dir(dir.join("ds/endpoints/node-a"))
        .unwrap()
        .count();
    assert_eq!(published, 3);
    // DEL is idempotent and releases.
    call(
        &dir,
        veil_api::method::CNI_DEL,
        json!({"container_id": "aaa", "ifname": "eth0"}),
    )
    .unwrap();
    let again = call(
        &dir,
        veil_api::method::CNI_DEL,
        json!({"container_id": "aaa", "ifname": "eth0"}),
    )
    .unwrap();
    assert_eq!(again["existed"], false);
    // The fail-closed table is in the node's namespace.
    let out = ns.exec(&["nft", "list", "table", "inet", "veil"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("fail_closed"));
}

#[test]
fn gc_releases_only_the_collected_networks_endpoints() {
    require_root();
    let prefix = unique_prefix();
    let ns = node_netns(&prefix, "gc");
    let dir = TempDir::new(&prefix, "gc");
    let _d = start(&ns, &dir);
    add_in(&dir, "keep1", "net-a");
    add_in(&dir, "stale1", "net-a");
    add_in(&dir, "other1", "net-b");
    let r = call(
        &dir,
        veil_api::method::CNI_GC,
        json!({"valid": [{"containerID": "keep1", "ifname": "eth0"}], "network": "net-a"}),
    )
    .unwrap();
    assert_eq!(r["removed_host_ifnames"], json!(["veilstale1"]), "{r}");
    let status = call(&dir, veil_api::method::NODE_STATUS, Value::Null).unwrap();
    let mut pods: Vec<String> = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pod"].as_str().unwrap().to_string())
        .collect();
    pods.sort();
    assert_eq!(pods, ["x/keep1", "x/other1"]);
}
