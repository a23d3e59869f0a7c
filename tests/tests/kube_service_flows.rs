//! Flows name the Service their destination was reached through, with real
//! packets: a node namespace running `veild` (local datastore) routes three
//! pods. The datastore holds two Services, as the lab and a user write them:
//! - `shop/backend` selects the pod `app: backend` (10.244.1.3), port 80 →
//!   target port 8080; the frontend calls that pod directly on 8080 (the
//!   pod backs the Service: named by the selector);
//! - `shop/legacy` has no selector and the cluster IP 10.244.200.11; a DNAT
//!   in the node's namespace (as kube-proxy would) sends 10.244.200.11:80 to
//!   the pod 10.244.1.4:9090; the frontend calls the cluster IP (named by the
//!   conntrack original tuple).
//!
//! The backend also calls 10.244.1.4:9090 directly: that pod backs no
//! Service by selector or slice, so that edge names none. The records
//! (`veilctl flows`), the graph edges (socket and `veilctl graph`) and the
//! edge metrics must say so.

mod graph_support;

use std::process::Command;
use std::time::{Duration, Instant};

use graph_support::*;
use serde_json::Value;

/// (source, target, port) → service of every edge of the graph.
fn edge_services(graph: &Value) -> Vec<(String, String, u64, Option<String>)> {
    let mut v: Vec<_> = graph["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["source"].as_str().unwrap_or("").to_string(),
                e["target"].as_str().unwrap_or("").to_string(),
                e["port"].as_u64().unwrap_or(0),
                e["service"].as_str().map(str::to_string),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn flows_to_a_pod_backing_a_service_or_to_its_cluster_ip_name_the_service() {
    require_root();
    let prefix = unique_prefix();
    let dir = TempDir::new(&prefix, "svc");
    let node = Netns::new(&format!("{prefix}-node"));
    let fe = Netns::new(&format!("{prefix}-fe"));
    let ba = Netns::new(&format!("{prefix}-ba"));
    let bb = Netns::new(&format!("{prefix}-bb"));
    node.add_underlay("eth0", "eth0p", "198.18.0.1/15");
    wire_pod(&node, &fe, "vfe", "10.244.1.2");
    wire_pod(&node, &ba, "vba", "10.244.1.3");
    wire_pod(&node, &bb, "vbb", "10.244.1.4");
    // kube-proxy's part, in the node's own namespace: the cluster IP of
    // shop/legacy goes to its one backend.
    let rules = "table ip kubeproxy {\n chain pre {\n  type nat hook prerouting priority dstnat;\n  ip daddr 10.244.200.11 tcp dport 80 dnat to 10.244.1.4:9090\n }\n}\n";
    let nft_file = dir.join("kubeproxy.nft");
    std::fs::write(&nft_file, rules).unwrap();
    let out = node.exec(&["nft", "-f", nft_file.to_str().unwrap()]);
    assert!(out.status.success(), "nft: {out:?}");

    let ds = dir.join("ds");
    publish_pod(
        &ds,
        "shop",
        "frontend-0",
        "10.244.1.2",
        Some("  app: frontend\n"),
    );
    publish_pod(
        &ds,
        "shop",
        "backend-0",
        "10.244.1.3",
        Some("  app: backend\n"),
    );
    publish_pod(
        &ds,
        "shop",
        "legacy-0",
        "10.244.1.4",
        Some("  app: legacy\n"),
    );
    write(
        ds.join("services/shop/backend.yaml"),
        "namespace: shop\nname: backend\nclusterIPs: [10.244.200.10]\nselector: {app: backend}\nports:\n- {port: 80, targetPort: 8080}\n",
    );
    write(
        ds.join("services/shop/legacy.yaml"),
        "namespace: shop\nname: legacy\nclusterIPs: [10.244.200.11]\nports:\n- {port: 80, targetPort: 9090}\n",
    );

    let sock = dir.join("veild.sock");
    let _daemon = Daemon(
        veild_n1(&node, &dir)
            .env("VEIL_FLOW_DUMP_SECONDS", "1")
            .stderr(std::fs::File::create(dir.join("veild.log")).unwrap())
            .spawn()
            .expect("spawn veild"),
    );
    let log = || std::fs::read_to_string(dir.join("veild.log")).unwrap_or_default();
    if let Err(e) = veil_tests::wait_for_daemon(
        &sock,
        veil_api::method::FLOWS_HEALTH,
        Duration::from_secs(30),
        None,
        |_| true,
    ) {
        panic!("veild {e}: {}", log());
    }
    // Let the collector read the datastore (address book refresh: 2 s).
    std::thread::sleep(Duration::from_millis(2500));

    let servers = [
        serve(&ba, "10.244.1.3", 8080, 2, 100, 200),
        serve(&bb, "10.244.1.4", 9090, 3, 100, 200),
    ];
    let clients = [
        client(&fe, "10.244.1.3:8080", 2, 100),
        client(&fe, "10.244.200.11:80", 2, 100),
    ];
    let mut done: Vec<usize> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    done.push(client(&ba, "10.244.1.4:9090", 1, 100).join().unwrap());
    assert_eq!(done, vec![2, 2, 1], "every connection got its answer");
    let served: Vec<usize> = servers.into_iter().map(|s| s.join().unwrap()).collect();
    assert_eq!(served, vec![2, 3]);

    let expect = vec![
        (
            "shop/backend".to_string(),
            "shop/legacy".to_string(),
            9090,
            None,
        ),
        (
            "shop/frontend".into(),
            "shop/backend".into(),
            8080,
            Some("shop/backend".to_string()),
        ),
        (
            "shop/frontend".into(),
            "shop/legacy".into(),
            9090,
            Some("shop/legacy".to_string()),
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = call(&sock, veil_api::method::GRAPH_GET, Value::Null).expect("graph.get");
        let got = edge_services(&r["graph"]);
        if got == expect {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "edges and their services: {got:?}\nexpected {expect:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // The flow records (`veilctl flows`) name the Service on the destination.
    let flows = Command::new(bin("veilctl"))
        .args(["flows", "--socket"])
        .arg(&sock)
        .output()
        .expect("veilctl flows");
    let text = String::from_utf8_lossy(&flows.stdout);
    let lines = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert!(
        lines("(10.244.1.3:8080) service: shop/backend") >= 2,
        "{text}"
    );
    assert!(
        lines("(10.244.1.4:9090) service: shop/legacy") >= 2,
        "{text}"
    );
    let own: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("shop/backend-0 (10.244.1.3:") && l.contains("-> shop/legacy-0"))
        .collect();
    assert!(
        !own.is_empty() && own.iter().all(|l| !l.contains("service:")),
        "the backend's own call to the legacy pod names no Service: {text}"
    );
    // JSON records carry it as a field; `--to` finds flows by Service.
    let json_out = Command::new(bin("veilctl"))
        .args([
            "flows",
            "--output",
            "json",
            "--to",
            "shop/legacy",
            "--socket",
        ])
        .arg(&sock)
        .output()
        .expect("veilctl flows -o json");
    let json_text = String::from_utf8_lossy(&json_out.stdout);
    assert!(
        json_text.contains("\"service\":\"shop/legacy\"")
            && !json_text.contains("\"service\":\"shop/backend\""),
        "{json_text}"
    );
    // `veilctl graph` names it on the edge.
    let graph = Command::new(bin("veilctl"))
        .args(["graph", "--socket"])
        .arg(&sock)
        .output()
        .expect("veilctl graph");
    let gtext = String::from_utf8_lossy(&graph.stdout);
    assert!(
        gtext
            .lines()
            .any(|l| l.contains("shop/frontend") && l.contains("service=shop/legacy")),
        "{gtext}"
    );
    // The edge metrics carry it as a label (one per edge).
    let metrics = node.exec(&["curl", "-sf", "http://127.0.0.1:9590/metrics"]);
    let m = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        m.lines().any(|l| l.starts_with("veil_flows_total{")
            && l.contains("destination_workload=\"backend\"")
            && l.contains("destination_service=\"shop/backend\"")),
        "{m}"
    );
}
