//! The service graph of a lab, end to end: two nodes, a frontend calling two
//! backends (one on the other node, through WireGuard) and one backend calling
//! an external host. `veilctl graph --lab`, every node's `/api/v1/graph`
//! (cluster scope, merged over HTTP), the Prometheus series of both daemons
//! (and, when Debian's `prometheus` is installed, a real Prometheus scraping
//! them) and the `/ui` page (when `chromium` is installed) must show exactly
//! those three edges, each connection counted once although a connection
//! between nodes crosses both nodes' conntrack tables.

mod lab_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::*;
use serde_json::Value;

const SCENARIO: &str = r#"
name: graph-e2e
cluster:
  nodes: [node-a, node-b]
namespaces:
  - {name: shop}
pods:
  - name: shop/frontend
    labels: {app: frontend}
    node: node-a
  - name: shop/backend-a
    labels: {app.kubernetes.io/name: backend-a}
    node: node-b
    ports: [{port: 8080, name: http}]
  - name: shop/backend-b
    labels: {app: backend-b}
    node: node-a
    ports: [{port: 9090, name: http}]
external:
  - {name: api.example.com, ip: 203.0.113.10, ports: [{port: 443}]}
probes: []
"#;

/// (source, target, port, connections), sorted.
fn edges(v: &Value) -> Vec<(String, String, u64, u64)> {
    let mut e: Vec<_> = v["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["source"].as_str().unwrap_or("").to_string(),
                e["target"].as_str().unwrap_or("").to_string(),
                e["port"].as_u64().unwrap_or(0),
                e["connections"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    e.sort();
    e
}

/// The edges without backend-a's DNS queries (their number depends on the
/// resolver: A and AAAA, one socket or two); [`dns_edge`] checks those.
fn calls(v: &Value) -> Vec<(String, String, u64, u64)> {
    edges(v)
        .into_iter()
        .filter(|e| !(e.1 == "kube-system/kube-dns" && e.2 == 53))
        .collect()
}

/// backend-a's DNS queries to kube-dns: present, one to four per call.
fn dns_edge(v: &Value) -> bool {
    edges(v).iter().any(|e| {
        e.0 == "shop/backend-a"
            && e.1 == "kube-system/kube-dns"
            && e.2 == 53
            && (1..=8).contains(&e.3)
    })
}

fn expected() -> Vec<(String, String, u64, u64)> {
    vec![
        (
            "shop/backend-a".into(),
            "external:api.example.com".into(),
            443,
            2,
        ),
        ("shop/frontend".into(), "shop/backend-a".into(), 8080, 5),
        ("shop/frontend".into(), "shop/backend-b".into(), 9090, 3),
    ]
}

fn on_node(lab: &Lab, node: &str, cmd: &[&str]) -> String {
    let o = lab.exec(&["--node", node], cmd);
    assert!(o.status.success(), "{cmd:?} on {node}: {}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn lab_graph_shows_exactly_the_calls_made() {
    require_root();
    let path = std::env::temp_dir().join(format!("{}-graph-scenario.yaml", unique_name()));
    std::fs::write(&path, SCENARIO).unwrap();
    let lab = Lab::up(&["--scenario", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    let backend_a = lab.pod_ip("shop/backend-a");
    let backend_b = lab.pod_ip("shop/backend-b");

    // Every call must succeed: the frontend calls backend-a (other node) five
    // times and backend-b (same node) three times, backend-a calls the
    // external host twice by name (so it also asks kube-dns, on node-a).
    for (pod, url, n) in [
        ("shop/frontend", format!("http://{backend_a}:8080/"), 5),
        ("shop/frontend", format!("http://{backend_b}:9090/"), 3),
        (
            "shop/backend-a",
            "http://api.example.com:443/".to_string(),
            2,
        ),
    ] {
        for i in 0..n {
            // One curl is one connection (a lost SYN while WireGuard shakes
            // hands is retransmitted within the same connection); a retried
            // curl would be a second one, so none is retried.
            let o = lab.in_pod(pod, &["curl", "-sS", "-m", "10", "-o", "/dev/null", &url]);
            assert!(
                o.status.success(),
                "{pod} -> {url} (call {i}): {}",
                show(&o)
            );
        }
    }

    // veilctl graph --lab: merged from both nodes, each connection once;
    // closed connections stop being active at the next dump (10 s).
    let deadline = Instant::now() + Duration::from_secs(45);
    let graph = loop {
        let o = veilctl(&["graph", "--lab", &lab.name, "--format", "json"]);
        assert!(o.status.success(), "veilctl graph: {}", show(&o));
        let v: Value = serde_json::from_slice(&o.stdout).expect("graph JSON");
        let settled = v["edges"].as_array().is_some_and(|a| {
            a.iter()
                .all(|e| e["active"] == 0 && e["bytes_received"].as_u64() > Some(0))
        });
        if calls(&v) == expected() && dns_edge(&v) && edges(&v).len() == 4 && settled {
            break v;
        }
        assert!(Instant::now() < deadline, "graph never matched: {v:#}");
        std::thread::sleep(Duration::from_secs(1));
    };
    for e in graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["protocol"] == "TCP")
    {
        let c = e["connections"].as_u64().unwrap();
        // An HTTP exchange with the lab's servers: a few hundred bytes each way.
        let b = e["bytes"].as_u64().unwrap();
        assert!(b >= 200 * c && b <= 20_000 * c, "implausible bytes: {e}");
    }
    let text = veilctl(&["graph", "--lab", &lab.name]);
    assert_eq!(
        String::from_utf8_lossy(&text.stdout).lines().count(),
        4,
        "{}",
        show(&text)
    );

    // Every node's /api/v1/graph shows the whole cluster.
    for node in ["node-a", "node-b"] {
        let body = on_node(
            &lab,
            node,
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "http://127.0.0.1:9590/api/v1/graph",
            ],
        );
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(calls(&v), expected(), "/api/v1/graph on {node}: {v:#}");
        assert!(dns_edge(&v), "{v:#}");
        assert!(v.get("errors").is_none(), "{v:#}");
    }

    // Prometheus series: summed over both daemons, exactly the three edges.
    let mut series: Vec<(String, u64)> = Vec::new();
    for node in ["node-a", "node-b"] {
        let m = on_node(
            &lab,
            node,
            &["curl", "-sS", "-m", "10", "http://127.0.0.1:9590/metrics"],
        );
        assert!(!m.contains("10.244."), "no pod address in metrics");
        assert!(m.contains("veil_flow_events_lost_total 0"), "{m}");
        for l in m.lines().filter(|l| {
            l.starts_with("veil_flows_total{") && !l.contains("destination_port=\"53\"")
        }) {
            let (labels, value) = l.rsplit_once(' ').unwrap();
            series.push((labels.to_string(), value.parse().unwrap()));
        }
    }
    series.sort();
    let want = |src: &str, dst: &str, kind: &str, dns: &str, port: u16, n: u64| {
        (
            format!("veil_flows_total{{source_namespace=\"shop\",source_workload=\"{src}\",destination_namespace=\"{dns}\",destination_workload=\"{dst}\",destination_kind=\"{kind}\",destination_port=\"{port}\",protocol=\"TCP\",verdict=\"allowed\"}}"),
            n,
        )
    };
    let mut expect_series = vec![
        want("backend-a", "api.example.com", "external", "", 443, 2),
        want("frontend", "backend-a", "pod", "shop", 8080, 5),
        want("frontend", "backend-b", "pod", "shop", 9090, 3),
    ];
    expect_series.sort();
    assert_eq!(series, expect_series);

    if veil_tests::installed("prometheus") {
        prometheus_scrapes(&lab);
    } else {
        eprintln!("prometheus not installed: series checked without it");
    }

    if veil_tests::installed("chromium") {
        let profile = format!("/tmp/{}-chromium", lab.name);
        let args = veil_tests::headless_chromium(
            std::path::Path::new(&profile),
            &[
                "--virtual-time-budget=5000",
                "--dump-dom",
                "http://127.0.0.1:9590/ui",
            ],
        );
        let dom = on_node(
            &lab,
            "node-a",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let _ = std::fs::remove_dir_all(&profile);
        for edge in [
            "shop/frontend → shop/backend-a :8080/TCP",
            "shop/frontend → shop/backend-b :9090/TCP",
            "shop/backend-a → external:api.example.com :443/TCP",
            "shop/backend-a → kube-system/kube-dns :53/UDP",
        ] {
            assert!(dom.contains(edge), "/ui does not show {edge}: {dom}");
        }
        // Workloads are pods only: the external host is counted apart.
        assert!(dom.contains("4 workloads, 4 edges"), "{dom}");
    } else {
        eprintln!("chromium not installed: /ui not checked in a browser");
    }
}

/// A real Prometheus in node-a's namespace scrapes both daemons; its query
/// API must return the three edges with their counts.
fn prometheus_scrapes(lab: &Lab) {
    let dir = std::env::temp_dir().join(format!("{}-prometheus", lab.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: veild\n    static_configs:\n      - targets: ['198.18.0.10:9590', '198.18.0.11:9590']\n",
    )
    .unwrap();
    let child = Command::new(bin("veilctl"))
        .args(["lab", "exec", "--name", &lab.name, "--node", "node-a", "--"])
        .arg("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:19090")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    struct Kill(std::process::Child, std::path::PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _guard = Kill(child, dir);
    let query =
        "sum by (source_workload, destination_workload, destination_port) (veil_flows_total{destination_port!=\"53\"})";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = lab.exec(
            &["--node", "node-a"],
            &[
                "curl",
                "-sS",
                "-m",
                "5",
                "-G",
                "http://127.0.0.1:19090/api/v1/query",
                "--data-urlencode",
                &format!("query={query}"),
            ],
        );
        if o.status.success() {
            if let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) {
                let mut got: Vec<(String, String, String, String)> = v["data"]["result"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|r| {
                        let m = &r["metric"];
                        (
                            m["source_workload"].as_str().unwrap_or("").to_string(),
                            m["destination_workload"].as_str().unwrap_or("").to_string(),
                            m["destination_port"].as_str().unwrap_or("").to_string(),
                            r["value"][1].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect();
                got.sort();
                let want = vec![
                    (
                        "backend-a".to_string(),
                        "api.example.com".to_string(),
                        "443".to_string(),
                        "2".to_string(),
                    ),
                    (
                        "frontend".into(),
                        "backend-a".into(),
                        "8080".into(),
                        "5".into(),
                    ),
                    (
                        "frontend".into(),
                        "backend-b".into(),
                        "9090".into(),
                        "3".into(),
                    ),
                ];
                if got == want {
                    dashboard_queries_answer(lab);
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "Prometheus answered {got:?}, want {want:?}"
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never answered: {}",
            show(&o)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Every query of the Grafana dashboard, as Grafana sends it (variables
/// substituted), against the real Prometheus scraping the lab: each is
/// accepted, and each returns data unless it is about denies or HTTP (this
/// lab has no policy and no L7 traffic).
fn dashboard_queries_answer(lab: &Lab) {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/grafana/veil-flows.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let Some(expr) = t["expr"].as_str() else {
                continue;
            };
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$namespace", ".*");
            let optional = ["denied", "veil_policy", "veil_http"]
                .iter()
                .any(|w| q.contains(w));
            // A `rate()` needs two scrapes of a series inside its window: a
            // series first scraped a moment ago has none yet, so ask again
            // (bounded) before calling a panel empty.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let o = lab.exec(
                    &["--node", "node-a"],
                    &[
                        "curl",
                        "-sS",
                        "-m",
                        "5",
                        "-G",
                        "http://127.0.0.1:19090/api/v1/query",
                        "--data-urlencode",
                        &format!("query={q}"),
                    ],
                );
                let v: Value = serde_json::from_slice(&o.stdout)
                    .unwrap_or_else(|_| panic!("{q}: {}", show(&o)));
                assert_eq!(v["status"], "success", "panel {}: {q}: {v}", p["title"]);
                let empty = v["data"]["result"].as_array().is_none_or(|a| a.is_empty());
                if optional || !empty {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "panel {} returns no data: {q}",
                    p["title"]
                );
                std::thread::sleep(Duration::from_secs(1));
            }
            checked += 1;
        }
    }
    assert!(checked >= 14, "{checked} queries");
}
