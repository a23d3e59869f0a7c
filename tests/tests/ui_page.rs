//! The `/ui` page in headless Chromium, on a fixture in the shape of
//! `/api/v1/graph` (checked by parsing it as veil-api's `GraphView`): the
//! page's files are those veild serves (`daemon/ui/`), loaded from a
//! temporary directory, so no server and no network are involved.
//!
//! Checked in the DOM after the scripts ran: the page drew every vertex, no
//! two vertices (labels included) overlap on screen, denied edges are drawn
//! red and allowed ones are not, the header counts workloads apart from
//! nodes and outside addresses. A screenshot is taken too; with
//! `VEIL_UI_SCREENSHOT=docs/ui-graph.png` it refreshes the README's picture.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn edge(src: &str, dst: &str, port: u16, proto: &str, conns: u64, denied: u64, bps: f64) -> Value {
    let now = 1_764_000_000_000u64;
    json!({
        "source": src, "target": dst, "port": port, "protocol": proto,
        "connections": conns, "active": u64::from(conns > 0), "denied": denied,
        "verdict": if conns == 0 && denied > 0 { "denied" } else { "allowed" },
        "bytes": conns * 3000, "bytes_sent": conns * 1000, "bytes_received": conns * 2000,
        "packets_sent": conns * 4, "packets_received": conns * 5,
        "first_seen": now - 600_000, "last_seen": now - 5_000,
        "rate_1m": {"connections_per_second": conns as f64 / 60.0, "bytes_per_second": bps},
        "rate_15m": {"connections_per_second": 0.0, "bytes_per_second": 0.0},
    })
}

fn fixture() -> Value {
    let node = |id: &str, kind: &str, ns: &str, w: &str| json!({"id": id, "namespace": ns, "workload": w, "kind": kind});
    let mut edges = vec![
        edge(
            "shop/frontend",
            "shop/backend-a",
            8080,
            "TCP",
            1200,
            0,
            80_000.0,
        ),
        edge(
            "shop/frontend",
            "shop/backend-b",
            9090,
            "TCP",
            300,
            0,
            2_000.0,
        ),
        edge(
            "shop/backend-a",
            "payments/ledger",
            8443,
            "TCP",
            50,
            0,
            300.0,
        ),
        edge("shop/frontend", "payments/db", 5432, "TCP", 0, 17, 0.0),
        edge("payments/ledger", "payments/db", 5432, "TCP", 40, 0, 500.0),
        edge(
            "shop/backend-a",
            "external:api.example.com",
            443,
            "TCP",
            8,
            0,
            100.0,
        ),
        edge(
            "shop/backend-a",
            "kube-system/kube-dns",
            53,
            "UDP",
            16,
            0,
            10.0,
        ),
        edge("shop/frontend", "node:node-a", 10250, "TCP", 0, 3, 0.0),
        edge("shop/frontend", "node:node-b", 10250, "TCP", 2, 0, 10.0),
        edge("shop/frontend", "world", 443, "TCP", 0, 4, 0.0),
        edge("node:node-a", "shop/frontend", 8080, "TCP", 30, 0, 50.0),
    ];
    edges[3]["policy"] = json!("default/knp:payments/db-only-ledger#0 ingress");
    edges[0]["http"] = json!({
        "requests": 1200, "errors": 12, "denied": 0, "requests_per_second": 20.0,
        "errors_per_second": 0.2, "buckets": [100, 500, 400, 150, 40, 8, 2, 0, 0, 0, 0, 0, 0],
        "latency_sum": 4.2, "p99_seconds": 0.025
    });
    let g = json!({
        "nodes": [
            node("external:api.example.com", "external", "", "api.example.com"),
            node("kube-system/kube-dns", "pod", "kube-system", "kube-dns"),
            node("node:node-a", "node", "", "node-a"),
            node("node:node-b", "node", "", "node-b"),
            node("payments/db", "pod", "payments", "db"),
            node("payments/ledger", "pod", "payments", "ledger"),
            node("shop/backend-a", "pod", "shop", "backend-a"),
            node("shop/backend-b", "pod", "shop", "backend-b"),
            node("shop/frontend", "pod", "shop", "frontend"),
            node("world", "world", "", "world"),
        ],
        "edges": edges,
    });
    // The fixture is what the API serves.
    let view: veil_api::flows::GraphView = serde_json::from_value(g.clone()).expect("GraphView");
    assert_eq!(view.nodes.len(), 10);
    let mut v = serde_json::to_value(&view).unwrap();
    v["node"] = json!("node-a");
    v["scope"] = json!("cluster");
    v
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The page's files as veild serves them, with paths made relative and the
/// API pointed at `graph.json`.
fn page_dir() -> Dir {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/ui");
    let dir = std::env::temp_dir().join(format!("veil-ui-page-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("vendor")).unwrap();
    let html = std::fs::read_to_string(ui.join("index.html")).unwrap();
    assert!(html.contains("src=\"/ui/graph.js\"") && html.contains("data-api=\"/api/v1/graph\""));
    let html = html
        .replace("/ui/vendor/", "vendor/")
        .replace("/ui/graph.js", "graph.js")
        .replace("data-api=\"/api/v1/graph\"", "data-api=\"graph.json\"");
    std::fs::write(dir.join("index.html"), html).unwrap();
    std::fs::copy(ui.join("graph.js"), dir.join("graph.js")).unwrap();
    std::fs::copy(
        ui.join("vendor/cytoscape.min.js"),
        dir.join("vendor/cytoscape.min.js"),
    )
    .unwrap();
    std::fs::write(dir.join("graph.json"), fixture().to_string()).unwrap();
    Dir(dir)
}

fn chromium(dir: &Path, extra: &[&str]) -> std::process::Output {
    let profile = dir.join("profile");
    let url = format!("file://{}/index.html", dir.display());
    let mut args: Vec<&str> = vec![
        "--allow-file-access-from-files",
        "--window-size=1500,850",
        "--virtual-time-budget=5000",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let cmd = veil_tests::headless_chromium(&profile, &args);
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("run chromium")
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let i = tag.find(&key)? + key.len();
    Some(&tag[i..i + tag[i..].find('"')?])
}

#[test]
fn the_page_draws_the_graph_without_overlaps_and_denied_edges_red() {
    assert!(
        veil_tests::installed("chromium"),
        "chromium is not installed: run scripts/setup"
    );
    let dir = page_dir();
    let o = chromium(&dir.0, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&o.stdout);
    let body = dom
        .split("<body")
        .nth(1)
        .and_then(|b| b.split('>').next())
        .unwrap_or_default();
    assert_eq!(
        attr(body, "data-ready"),
        Some("1"),
        "page never drew: {dom}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(attr(body, "data-vertices"), Some("10"), "{body}");
    assert_eq!(
        attr(body, "data-overlaps"),
        Some("0"),
        "vertices overlap: {body}"
    );
    assert!(
        dom.contains("6 workloads, 11 edges · 2 nodes · 2 outside"),
        "header: {dom}"
    );
    let drawn: Vec<&str> = dom.split("<li ").skip(1).collect();
    assert_eq!(drawn.len(), 11, "{dom}");
    let red = "rgb(220,38,38)";
    for li in &drawn {
        let id = attr(li, "data-edge").unwrap();
        let color = attr(li, "data-line-color").unwrap();
        let denied_only = id.ends_with("payments/db") && id.contains("frontend")
            || id.ends_with("node:node-a")
            || id.ends_with("-&gt;world");
        assert_eq!(color == red, denied_only, "{id} drawn {color}");
        assert_eq!(
            attr(li, "data-verdict") == Some("denied"),
            denied_only,
            "{li}"
        );
    }
    // The side table lists every edge per port, denied ones marked.
    assert!(dom.contains("shop/frontend → payments/db :5432/TCP"));
    assert!(dom.contains("0 (17 denied)"));

    let shot = dir.0.join("shot.png");
    let o = chromium(&dir.0, &[&format!("--screenshot={}", shot.display())]);
    let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        len > 20_000,
        "screenshot {len} bytes: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    if let Ok(to) = std::env::var("VEIL_UI_SCREENSHOT") {
        std::fs::copy(&shot, &to).unwrap();
    }
}
