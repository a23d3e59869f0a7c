//! The Grafana dashboard (`deploy/grafana/veil-flows.json`): it has the
//! panels users need (the Node Graph, denied flows, HTTP rate, errors and
//! p99 per edge), and every panel's PromQL parses: each query, with the
//! dashboard's variables substituted as Grafana does, is put in a rules file
//! that `promtool check rules` (Debian's prometheus, installed by
//! `scripts/setup`) must accept. That the series exist is checked by
//! `veil-daemon`'s `the_grafana_dashboard_queries_only_series_we_export`, and
//! that they return data from a real Prometheus by `graph_lab`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn dashboard() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/veil-flows.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).expect("dashboard JSON")
}

/// Every (panel title, expression).
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or("").to_string(), e.to_string()));
            }
        }
    }
    out
}

#[test]
fn the_dashboard_has_graph_deny_and_http_panels() {
    let d = dashboard();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.iter().any(|p| p["type"] == "nodeGraph"));
    let q = queries(&d);
    let has = |pred: &dyn Fn(&str, &str) -> bool| q.iter().any(|(t, e)| pred(t, e));
    assert!(
        has(&|_, e| e.contains("verdict=\"denied\"")),
        "a denied-flows panel"
    );
    assert!(
        has(&|t, e| t.contains("table") || e.starts_with("topk(")),
        "top denied edges"
    );
    assert!(
        has(&|_, e| e.contains("rate(veil_http_requests_total")),
        "HTTP rate"
    );
    assert!(
        has(&|_, e| e.contains("veil_http_errors_total")),
        "HTTP errors"
    );
    assert!(
        has(&|_, e| e.starts_with("histogram_quantile(0.99")
            && e.contains("veil_http_request_duration_seconds_bucket")),
        "HTTP p99"
    );
    // No two panels overlap on the grid.
    let rects: Vec<(i64, i64, i64, i64)> = panels
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            (
                g["x"].as_i64().unwrap(),
                g["y"].as_i64().unwrap(),
                g["w"].as_i64().unwrap(),
                g["h"].as_i64().unwrap(),
            )
        })
        .collect();
    for (i, a) in rects.iter().enumerate() {
        for b in &rects[i + 1..] {
            let apart =
                a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
            assert!(apart, "panels at {a:?} and {b:?} overlap");
        }
    }
}

#[test]
fn every_panel_query_is_valid_promql() {
    assert!(
        veil_tests::installed("promtool"),
        "promtool is not installed: run scripts/setup (Debian's prometheus)"
    );
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let q = queries(&d);
    assert!(q.len() >= 14, "{} queries", q.len());
    for (i, (title, e)) in q.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$namespace", ".*");
        assert!(!e.contains('$'), "{title}: unknown variable in {e}");
        rules.push_str(&format!(
            "      - record: veil:panel{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(format!("veil-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let o = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        o.status.success(),
        "promtool rejects a panel query:\n{}{}\n{rules}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
