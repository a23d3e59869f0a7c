//! A 60 s outage of the API server changes nothing in the dataplane, end to
//! end: `veild --datastore kube` against the tests' fake API server
//! (`kube_support`), with three pods wired by the real CNI plugin (web, db,
//! api in namespace `shop`), a NetworkPolicy denying ingress to `db`, and a
//! WireGuard peer (Node `node-b`, from its annotations).
//!
//! The API server then goes away for 60 s: 30 s refusing connections (the
//! listener closed, open watches cut), then 30 s accepting and never
//! answering. Meanwhile, every 5 s, the nftables table `inet veil`, the
//! WireGuard peers and a probe pair (web → db denied, web → api allowed)
//! must be exactly what they were before. During the outage the cluster
//! changes: a second NetworkPolicy denies ingress to `api`, and node-b
//! rotates its key. Once the server is back, the daemon must catch up with
//! both (bounded wait), with no restart.

mod kube_support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_support::{empty_lists, node, veild_kube, FakeApi, Mode};
use serde_json::{json, Value};
use veil_tests::{call, eventually, require_root, unique_prefix, Daemon, Netns, TempDir};

const KEY_1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const KEY_2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
const NODES: &str = "/api/v1/nodes";
const POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";

fn node_b(key: &str) -> Value {
    node(
        "node-b",
        "198.18.0.11",
        "10.244.8.0/24",
        json!({"veil.dev/wireguard-public-key": key,
               "veil.dev/wireguard-endpoint": "198.18.0.11:51820"}),
    )
}

fn deny_ingress_to(app: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": format!("deny-{app}"), "namespace": "shop", "uid": format!("u-{app}")},
           "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"]}})
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "labels": {"app": name}},
           "spec": {"nodeName": "node-a", "containers": [{"name": "c"}]},
           "status": {"phase": "Running"}})
}

/// Accepts and answers connections on `ip:8080` in `ns` until `stop` (at most 5 minutes).
fn serve(ns: &Netns, ip: &str, stop: Arc<AtomicBool>) {
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    ns.enter(move || {
        let l = TcpListener::bind(addr).expect("bind");
        l.set_nonblocking(true).unwrap();
        let _ = tx.send(());
        let deadline = Instant::now() + Duration::from_secs(300);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            match l.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("server did not start");
}

/// Whether a TCP connection from `from` to `ip:8080` opens within 1 s.
fn probe(from: &Netns, ip: &str) -> bool {
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    from.enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        .join()
        .unwrap()
}

/// The WireGuard peers as configured (node, key, endpoint, allowed IPs),
/// without the live counters.
fn peers(sock: &std::path::Path) -> Vec<(String, String, String, String)> {
    let s = call(sock, veil_api::method::WIREGUARD_STATUS, Value::Null).unwrap_or_default();
    let mut v: Vec<_> = s["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap_or("").to_string(),
                p["public_key"]
                    .as_str()
                    .or(p["publicKey"].as_str())
                    .unwrap_or("")
                    .to_string(),
                p["endpoint"].as_str().unwrap_or("").to_string(),
                p["allowed_ips"]
                    .as_array()
                    .or(p["allowedIps"].as_array())
                    .map(|a| format!("{a:?}"))
                    .unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn an_api_server_outage_of_60s_changes_nothing_and_changes_made_meanwhile_are_caught_up() {
    require_root();
    let prefix = unique_prefix();
    let ns = Netns::new(&format!("{prefix}-node"));
    ns.add_underlay("eth0", "eth1", "198.18.0.10/15");
    ns.ip(&["link", "set", "lo", "up"]);
    let dir = TempDir::new(&prefix, "outage");
    let own = node("node-a", "198.18.0.10", "10.244.7.0/24", json!({}));
    let mut lists = empty_lists();
    lists.get_mut(NODES).unwrap().1 = vec![own.clone(), node_b(KEY_1)];
    lists.get_mut("/api/v1/namespaces").unwrap().1 = vec![json!({"metadata": {"name": "shop"}})];
    lists.get_mut("/api/v1/pods").unwrap().1 = vec![pod("web"), pod("db"), pod("api")];
    lists.get_mut(POLICIES).unwrap().1 = vec![deny_ingress_to("db")];
    let api = FakeApi::start(&ns, own.clone(), lists);
    let kubeconfig = api.kubeconfig(dir.path());
    let sock = dir.join("veild.sock");
    let mut d = Daemon(
        veild_kube(&ns, dir.path(), &kubeconfig, "node-a", "127.0.0.1:19592")
            .spawn()
            .expect("spawn veild"),
    );
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

    // Three pods, wired by the real plugin as kubelet would.
    let conf = json!({"cniVersion": "1.1.0", "name": "veil-outage", "type": "veil",
                      "socket": sock.display().to_string()});
    let mut pods = Vec::new();
    for name in ["web", "db", "api"] {
        let pns = Netns::new(&format!("{prefix}-{name}"));
        let path = pns.path();
        let args = format!("K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name}");
        let cid = format!("{prefix}{name}");
        let r = veil_tests::run_cni(
            &ns,
            "ADD",
            &veil_tests::pod_vars(&cid, &path, &args),
            &conf.to_string(),
        )
        .ok();
        let ip = r["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .expect("an address")
            .to_string();
        pods.push((pns, ip));
    }
    let (web, db_ip, api_ip) = (&pods[0].0, pods[1].1.clone(), pods[2].1.clone());
    let stop = Arc::new(AtomicBool::new(false));
    serve(&pods[1].0, &db_ip, stop.clone());
    serve(&pods[2].0, &api_ip, stop.clone());
    struct StopServers(Arc<AtomicBool>);
    impl Drop for StopServers {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let _stop = StopServers(stop);

    // Before: the policy is enforced and node-b is a peer.
    assert!(
        eventually(Duration::from_secs(30), || !probe(web, &db_ip)
            && probe(web, &api_ip)),
        "deny-db not enforced before the outage (db {}, api {})\n{}",
        probe(web, &db_ip),
        probe(web, &api_ip),
        logs()
    );
    assert!(
        eventually(Duration::from_secs(15), || peers(&sock)
            .iter()
            .any(|p| p.0 == "node-b" && p.1 == KEY_1)),
        "node-b is not a peer: {:?}\n{}",
        peers(&sock),
        logs()
    );
    let table = || {
        let out = ns.exec(&["nft", "-s", "list", "table", "inet", "veil"]);
        assert!(out.status.success(), "nft list: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Settled: the same table twice in a row.
    let mut base = table();
    assert!(
        eventually(Duration::from_secs(15), || {
            let now = table();
            let same = now == base;
            base = now;
            same
        }),
        "the table does not settle"
    );
    let base_peers = peers(&sock);

    // The outage: 30 s refused, 30 s hanging; the cluster changes at 10 s.
    let start = Instant::now();
    api.set_mode(Mode::Refused);
    let mut changed = false;
    let mut samples = 0;
    while start.elapsed() < Duration::from_secs(60) {
        let t = start.elapsed();
        if !changed && t >= Duration::from_secs(10) {
            api.set_list(NODES, vec![own.clone(), node_b(KEY_2)]);
            api.set_list(
                POLICIES,
                vec![deny_ingress_to("db"), deny_ingress_to("api")],
            );
            changed = true;
        }
        if t >= Duration::from_secs(30) {
            api.set_mode(Mode::Hanging);
        }
        assert!(
            d.0.try_wait().unwrap().is_none(),
            "veild exited during the outage\n{}",
            logs()
        );
        let now = table();
        assert!(
            now == base,
            "at {t:?} the table changed:\n--- before\n{base}\n--- now\n{now}"
        );
        assert_eq!(peers(&sock), base_peers, "at {t:?} the peers changed");
        assert!(!probe(web, &db_ip), "at {t:?} web reached db (opened up)");
        assert!(probe(web, &api_ip), "at {t:?} web no longer reaches api");
        samples += 1;
        std::thread::sleep(Duration::from_secs(4));
    }
    assert!(samples >= 10, "only {samples} samples in 60 s");
    assert!(
        logs().contains("keeping the last known state"),
        "{}",
        logs()
    );

    // Back: the changes made meanwhile are caught up.
    api.set_mode(Mode::Up);
    let back = Instant::now();
    assert!(
        eventually(Duration::from_secs(90), || !probe(web, &api_ip)
            && peers(&sock).iter().any(|p| p.0 == "node-b" && p.1 == KEY_2)),
        "not caught up 90 s after the API came back: api reachable {}, peers {:?}\n{}",
        probe(web, &api_ip),
        peers(&sock),
        logs()
    );
    eprintln!(
        "caught up {:.1} s after the API server came back ({samples} samples during the outage)",
        back.elapsed().as_secs_f64()
    );
    assert!(!probe(web, &db_ip), "db still denied after catching up");
    assert!(d.0.try_wait().unwrap().is_none(), "veild exited");
}
