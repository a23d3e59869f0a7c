//! The flow collector end to end, on real network namespaces and a real veild:
//! a node namespace running `veild` routes three pod namespaces (frontend,
//! backend-a, backend-b) and an external host (203.0.113.10, behind the
//! underlay, named `api` by `VEIL_EXTERNAL_NETWORKS`). The frontend calls both
//! backends and backend-a calls the external host over real TCP; then
//! `veilctl graph` (socket), `/api/v1/graph`, `/metrics`, `veilctl flows` and
//! the `/ui` page must show exactly those three edges with their counts.
//!
//! Set `VEIL_TEST_SCREENSHOT=/path.png` to also screenshot `/ui` with headless
//! Chromium (inside the node namespace).

mod graph_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use graph_support::*;
use serde_json::Value;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    source: String,
    target: String,
    port: u64,
    connections: u64,
}

fn edges(graph: &Value) -> Vec<Edge> {
    let mut v: Vec<Edge> = graph["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| Edge {
            source: e["source"].as_str().unwrap_or("").to_string(),
            target: e["target"].as_str().unwrap_or("").to_string(),
            port: e["port"].as_u64().unwrap_or(0),
            connections: e["connections"].as_u64().unwrap_or(0),
        })
        .collect();
    v.sort();
    v
}

#[test]
fn collector_shows_exactly_the_edges_of_real_traffic() {
    require_root();
    let prefix = unique_prefix();
    let dir = TempDir::new(&prefix, "graph");
    let node = Netns::new(&format!("{prefix}-node"));
    let ext = Netns::new(&format!("{prefix}-ext"));
    let fe = Netns::new(&format!("{prefix}-fe"));
    let ba = Netns::new(&format!("{prefix}-ba"));
    let bb = Netns::new(&format!("{prefix}-bb"));

    // Underlay: node eth0 198.18.0.1 (nothing behind it here). The external
    // host 203.0.113.10 sits behind a second link, ext0, routed without
    // masquerade: through the underlay, the base filter (inet veil, forward)
    // drops the de-masqueraded replies (`iifname eth0 ip daddr <cluster>`).
    node.add_underlay("eth0", "eth0p", "198.18.0.1/15");
    node.ip(&[
        "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
    ]);
    node.ip(&["addr", "add", "198.19.0.1/30", "dev", "ext0"]);
    node.ip(&["link", "set", "ext0", "up"]);
    node.ip(&["route", "add", "203.0.113.0/24", "via", "198.19.0.2"]);
    ext.ip(&["addr", "add", "198.19.0.2/30", "dev", "eth0"]);
    ext.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]);
    ext.ip(&["link", "set", "eth0", "up"]);
    ext.ip(&["route", "add", "10.244.0.0/16", "via", "198.19.0.1"]);
    wire_pod(&node, &fe, "vfe", "10.244.1.2");
    wire_pod(&node, &ba, "vba", "10.244.1.3");
    wire_pod(&node, &bb, "vbb", "10.244.1.4");

    // The datastore knows the three pods (labels) and their endpoints on n1.
    let ds = dir.join("ds");
    for (pod, ip, labels) in [
        ("frontend-7d4b9c8f6d-x2x9z", "10.244.1.2", ""),
        (
            "backend-a-0",
            "10.244.1.3",
            "  app.kubernetes.io/name: backend-a\n",
        ),
        (
            "backend-b-5c9f8d7b6-q8w7z",
            "10.244.1.4",
            "  app: backend-b\n",
        ),
    ] {
        publish_pod(&ds, "shop", pod, ip, Some(labels));
    }

    let sock = dir.join("veild.sock");
    let daemon = Daemon(
        veild_n1(&node, &dir)
            .env("VEIL_EXTERNAL_NETWORKS", "api=203.0.113.0/24")
            .env("VEIL_FLOW_DUMP_SECONDS", "1")
            .stderr(std::fs::File::create(dir.join("veild.log")).unwrap())
            .spawn()
            .expect("spawn veild"),
    );
    if let Err(e) = veil_tests::wait_for_daemon(
        &sock,
        veil_api::method::FLOWS_HEALTH,
        Duration::from_secs(30),
        None,
        |_| true,
    ) {
        panic!(
            "veild {e}: {}",
            std::fs::read_to_string(dir.join("veild.log")).unwrap_or_default()
        );
    }
    // Let the collector read the datastore (address book refresh: 2 s).
    std::thread::sleep(Duration::from_millis(2500));

    // `veilctl flows --follow` started before the traffic streams its flows.
    let mut follow = Command::new(bin("veilctl"))
        .args([
            "flows",
            "--follow",
            "--output",
            "json",
            "--to",
            "shop/backend-b",
            "--socket",
        ])
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("veilctl flows --follow");
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    let follow_out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(follow_out)
            .lines()
            .map_while(Result::ok)
        {
            if line_tx.send(l).is_err() {
                break;
            }
        }
    });
    let follow = Daemon(follow);
    std::thread::sleep(Duration::from_millis(1500));

    let servers = [
        serve(&ba, "10.244.1.3", 8080, 5, 1000, 5000),
        serve(&bb, "10.244.1.4", 9090, 3, 1000, 5000),
        serve(&ext, "203.0.113.10", 443, 2, 1000, 5000),
    ];
    let clients = [
        client(&fe, "10.244.1.3:8080", 5, 1000),
        client(&fe, "10.244.1.4:9090", 3, 1000),
        client(&ba, "203.0.113.10:443", 2, 1000),
    ];
    let done: Vec<usize> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(done, vec![5, 3, 2], "every connection got its answer");
    let served: Vec<usize> = servers.into_iter().map(|s| s.join().unwrap()).collect();
    assert_eq!(served, vec![5, 3, 2]);

    let expect = vec![
        Edge {
            source: "shop/backend-a".into(),
            target: "external:api".into(),
            port: 443,
            connections: 2,
        },
        Edge {
            source: "shop/frontend".into(),
            target: "shop/backend-a".into(),
            port: 8080,
            connections: 5,
        },
        Edge {
            source: "shop/frontend".into(),
            target: "shop/backend-b".into(),
            port: 9090,
            connections: 3,
        },
    ];

    // The socket API: exact edges, and byte counts once a dump has read the
    // closed connections' final counters.
    let deadline = Instant::now() + Duration::from_secs(30);
    let graph = loop {
        let r = call(&sock, veil_api::method::GRAPH_GET, Value::Null)
            .expect(veil_api::method::GRAPH_GET);
        let g = r["graph"].clone();
        let complete = edges(&g) == expect
            && g["edges"].as_array().unwrap().iter().all(|e| {
                let c = e["connections"].as_u64().unwrap();
                e["bytes_sent"].as_u64().unwrap() >= 1000 * c
                    && e["bytes_received"].as_u64().unwrap() >= 5000 * c
                    // Closed (TIME_WAIT) connections are not active.
                    && e["active"] == 0
            });
        if complete {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "graph never matched: {}\nlog: {}",
            serde_json::to_string_pretty(&r).unwrap(),
            std::fs::read_to_string(dir.join("veild.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for e in graph["graph"]["edges"].as_array().unwrap() {
        let c = e["connections"].as_u64().unwrap();
        // Plausible: payload plus TCP/IP overhead, not wildly more.
        assert!(e["bytes"].as_u64().unwrap() < 6000 * c + 2000 * c, "{e}");
        assert_eq!(e["protocol"], "TCP");
        assert_eq!(e["verdict"], "allowed");
    }
    assert_eq!(graph["health"]["lost"], 0);
    let kinds: Vec<(String, String)> = graph["graph"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("external:api".to_string(), "external".to_string()),
            ("shop/backend-a".to_string(), "pod".to_string()),
            ("shop/backend-b".to_string(), "pod".to_string()),
            ("shop/frontend".to_string(), "pod".to_string()),
        ]
    );

    // veilctl graph (json, text, dot).
    let out = Command::new(bin("veilctl"))
        .args(["graph", "--format", "json", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(edges(&v), expect);
    let out = Command::new(bin("veilctl"))
        .args(["graph", "--format", "dot", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(
        dot.contains("\"shop/frontend\" -> \"shop/backend-b\""),
        "{dot}"
    );
    let out = Command::new(bin("veilctl"))
        .args(["graph", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    // A time window: the last hour has the three edges, the last second none.
    for (since, lines) in [("1h", 3), ("0s", 1)] {
        let out = Command::new(bin("veilctl"))
            .args(["graph", "--since", since, "--socket"])
            .arg(&sock)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.lines().count(), lines, "--since {since}: {text}");
    }

    // HTTP: /api/v1/graph, Grafana endpoints, /metrics, /ui.
    let curl = |path: &str| -> String {
        let o = node.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:9590{path}"),
        ]);
        assert!(
            o.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let v: Value = serde_json::from_str(&curl("/api/v1/graph")).unwrap();
    assert_eq!(edges(&v), expect);
    let v: Value = serde_json::from_str(&curl("/api/graph/data")).unwrap();
    assert_eq!(v["edges"].as_array().unwrap().len(), 3);
    let v: Value = serde_json::from_str(&curl("/api/graph/fields")).unwrap();
    assert!(v["edges_fields"].is_array() && v["nodes_fields"].is_array());
    let metrics = curl("/metrics");
    for (src, dns, dst, port, n) in [
        ("frontend", "shop", "backend-a", 8080, 5),
        ("frontend", "shop", "backend-b", 9090, 3),
        ("backend-a", "", "api", 443, 2),
    ] {
        let line = format!(
            "veil_flows_total{{source_namespace=\"shop\",source_workload=\"{src}\",destination_namespace=\"{dns}\",destination_workload=\"{dst}\",destination_kind=\"{}\",destination_port=\"{port}\",protocol=\"TCP\",verdict=\"allowed\"}} {n}",
            if dns.is_empty() { "external" } else { "pod" }
        );
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("veil_flows_total{"))
            .count(),
        3
    );
    assert!(metrics.contains("veil_flow_events_lost_total 0"));
    assert!(!metrics.contains("10.244.1."), "no address in metrics");
    let page = curl("/ui");
    assert!(page.contains("cytoscape.min.js"));
    assert!(curl("/ui/vendor/cytoscape.min.js").len() > 100_000);

    // veilctl flows: every connection's new event, filtered.
    let out = Command::new(bin("veilctl"))
        .args([
            "flows",
            "--output",
            "json",
            "--last",
            "0",
            "--from",
            "shop/frontend",
            "--socket",
        ])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let new = flows.iter().filter(|f| f["event"] == "new").count();
    assert_eq!(new, 8, "frontend opened 8 connections: {flows:?}");
    assert!(flows.iter().all(|f| f["source"]["workload"] == "frontend"));

    // The follower saw the three connections to backend-b open, and nothing else.
    let mut followed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while followed
        .iter()
        .filter(|f: &&Value| f["event"] == "new")
        .count()
        < 3
    {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "--follow printed only {followed:?}");
        if let Ok(l) = line_rx.recv_timeout(left) {
            followed.push(serde_json::from_str(&l).expect("a JSON line"));
        }
    }
    assert!(
        followed
            .iter()
            .all(|f| f["destination"]["workload"] == "backend-b"),
        "{followed:?}"
    );
    drop(follow);

    // The page as a browser runs it: when Chromium is installed, its DOM after
    // the scripts ran lists the three edges.
    if veil_tests::installed("chromium") {
        let args = veil_tests::headless_chromium(
            &dir.join("chromium-dom"),
            &[
                "--virtual-time-budget=4000",
                "--dump-dom",
                "http://127.0.0.1:9590/ui",
            ],
        );
        let o = node.exec(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let dom = String::from_utf8_lossy(&o.stdout);
        for edge in [
            "shop/frontend → shop/backend-a :8080/TCP",
            "shop/frontend → shop/backend-b :9090/TCP",
            "shop/backend-a → external:api :443/TCP",
        ] {
            assert!(dom.contains(edge), "/ui does not show {edge}: {dom}");
        }
        // Workloads are pods only: the external host is counted apart.
        assert!(dom.contains("3 workloads, 3 edges"), "{dom}");
    } else {
        eprintln!("chromium not installed: /ui checked without a browser");
    }

    // Exactly one `closed` record per connection, although each dump (every
    // second here) sees the connection again while it sits in TIME_WAIT.
    std::thread::sleep(Duration::from_secs(4));
    let out = Command::new(bin("veilctl"))
        .args([
            "flows",
            "--output",
            "json",
            "--last",
            "0",
            "--from",
            "shop/frontend",
            "--socket",
        ])
        .arg(&sock)
        .output()
        .unwrap();
    let flows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |ev: &str| flows.iter().filter(|f| f["event"] == ev).count();
    assert_eq!(
        (count("new"), count("closed"), flows.len()),
        (8, 8, 16),
        "one opened and one closed record per connection: {flows:#?}"
    );
    assert!(
        flows
            .iter()
            .filter(|f| f["event"] == "closed")
            .all(|f| f["counters"]["bytes_sent"].as_u64() >= Some(1000)),
        "closed records carry the final counters: {flows:#?}"
    );

    // A long-lived connection shows its bytes while it lives (conntrack
    // accounting in the node's namespace, read by the periodic dump).
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let server = ba.enter(move || {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("10.244.1.3:7070").expect("bind 7070");
        let _ = ready_tx.send(());
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; 40_000];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&[b'r'; 20_000]).expect("write");
        let _ = close_rx.recv_timeout(Duration::from_secs(60));
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server 7070");
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let client = fe.enter(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("10.244.1.3:7070").expect("connect 7070");
        s.write_all(&[b'q'; 40_000]).expect("send");
        let mut buf = vec![0u8; 20_000];
        s.read_exact(&mut buf).expect("answer");
        let _ = hold_rx.recv_timeout(Duration::from_secs(60));
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(&sock, veil_api::method::GRAPH_GET, Value::Null).unwrap();
        let live = r["graph"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["port"] == 7070)
            .cloned();
        if let Some(e) = &live {
            if e["active"] == 1
                && e["bytes_sent"].as_u64() >= Some(40_000)
                && e["bytes_received"].as_u64() >= Some(20_000)
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "a live connection's bytes never showed: {live:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = hold_tx.send(());
    let _ = close_tx.send(());
    client.join().unwrap();
    server.join().unwrap();

    if let Ok(shot) = std::env::var("VEIL_TEST_SCREENSHOT") {
        let args = veil_tests::headless_chromium(
            &dir.join("chromium"),
            &[
                "--window-size=1200,700",
                "--virtual-time-budget=4000",
                &format!("--screenshot={shot}"),
                "http://127.0.0.1:9590/ui",
            ],
        );
        let o = node.exec(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            Path::new(&shot).exists(),
            "no screenshot: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    drop(daemon);
}
