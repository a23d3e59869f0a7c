//! L7 HTTP policy on the wire: veild's transparent proxy, as real packets in
//! the lab. Every L7 scenario (those combining `http` with a DNS allowlist,
//! `domains`, too) passes in `veilctl lab test` with the same summary as
//! `veilctl policy test`;
//! across nodes one proxy (the client's node) checks both sides' rules and
//! counts the requests per edge and records denied flows; with the proxy's
//! veild killed, steered connections are refused and other traffic flows.

mod lab_support;

use std::path::PathBuf;
use std::time::Duration;

use lab_support::*;
use serde_json::Value;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("veil-l7-{}", unique_name()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The L7 scenarios (`http` rules) of the examples and of tests/scenarios.
fn l7_scenarios() -> (TempDir, Vec<String>) {
    let dir = TempDir::new();
    let mut names = Vec::new();
    let sources = [
        root().join("../shared/scenarios/examples"),
        root().join("tests/scenarios"),
    ];
    for src in sources {
        for e in std::fs::read_dir(&src).expect("scenario folder").flatten() {
            let p = e.path();
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if p.extension().is_none_or(|x| x != "yaml") || !text.contains("http:") {
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            std::fs::copy(&p, dir.0.join(&name)).unwrap();
            names.push(name);
        }
    }
    names.sort();
    (dir, names)
}

#[test]
fn lab_test_passes_every_l7_scenario_as_real_packets() {
    require_root();
    let (dir, names) = l7_scenarios();
    for want in [
        "l7-path-rule.yaml",
        "l7-methods.yaml",
        "l7-both-sides-across-nodes.yaml",
        // `domains` and `http` in one rule: the proxy evaluates the domains
        // peer by the DNS proxy's allowance.
        "l7-with-domains.yaml",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    let d = dir.0.to_str().unwrap();
    let mem = veilctl(&["policy", "test", d]);
    assert!(mem.status.success(), "policy test: {}", show(&mem));
    let wire = veilctl(&["lab", "test", d]);
    let out = String::from_utf8_lossy(&wire.stdout);
    assert!(
        wire.status.success(),
        "lab test of {names:?}: {}",
        show(&wire)
    );
    assert!(out.contains(" 0 failed"), "{out}");
    assert!(out.contains("(HTTP 403)"), "the node answers 403: {out}");
    // The domain-allowed address is reached through the proxy, and the
    // requests the http rule refuses are refused by the node, not unanswered.
    for (probe, answer) in [
        ("#0", "(HTTP 200)"),
        ("#1", "(HTTP 403)"),
        ("#2", "(HTTP 403)"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("PASS l7-with-domains {probe}:"))
                    && l.ends_with(answer)),
            "l7-with-domains {probe} {answer}: {out}"
        );
    }
    let summary = |s: &str| s.lines().last().unwrap_or_default().to_string();
    assert_eq!(
        summary(&String::from_utf8_lossy(&mem.stdout)),
        summary(&out),
        "in memory vs as packets"
    );
}

const SCENARIO: &str = "l7-both-sides-across-nodes.yaml";

fn sock(lab: &Lab, node: &str) -> PathBuf {
    PathBuf::from(format!("/run/veil/labs/{}/{node}/veild.sock", lab.name))
}

fn applied(lab: &Lab, nodes: &[&str], min: u64) -> bool {
    nodes.iter().all(|n| {
        veil_tests::call(&sock(lab, n), veil_api::method::NODE_STATUS, Value::Null).is_ok_and(|s| {
            let g = s["policyGeneration"].as_u64().unwrap_or(0);
            g >= min && s["policyAppliedGeneration"].as_u64() == Some(g)
        })
    })
}

/// Writes the scenario's policies into the lab's datastore; waits until both
/// nodes' kernels hold them.
fn apply_policies(lab: &Lab, scenario: &str, nodes: &[&str]) {
    let text = std::fs::read_to_string(root().join("tests/scenarios").join(scenario)).unwrap();
    let v: Value = serde_yaml::from_str(&text).unwrap();
    let docs: Vec<String> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
    // Each node's generation before the write: the policies are in once
    // every node has applied a newer one.
    let generation = |n: &str| {
        veil_tests::call(&sock(lab, n), veil_api::method::NODE_STATUS, Value::Null)
            .ok()
            .and_then(|s| s["policyGeneration"].as_u64())
            .unwrap_or(0)
    };
    let before: Vec<(&str, u64)> = nodes.iter().map(|n| (*n, generation(n))).collect();
    let dir = PathBuf::from(format!("/run/veil/labs/{}/datastore/policies", lab.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("l7-test.yaml"), docs.join("\n---\n")).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || before
            .iter()
            .all(|(n, g)| applied(lab, &[n], g + 1))),
        "policy never applied: {}",
        show(&veilctl(&["status", "--lab", &lab.name]))
    );
}

/// A probe from `from` to `to` port 8080: allowed?, and the JSON result.
fn probe_between(lab: &Lab, from: &str, to: &str, method: &str, path: &str) -> (bool, Value) {
    let o = veilctl(&[
        "lab",
        "probe",
        "--name",
        &lab.name,
        "--from",
        from,
        "--to",
        to,
        "--port",
        "8080",
        "--http-method",
        method,
        "--http-path",
        path,
        "--timeout-ms",
        "2000",
        "-o",
        "json",
    ]);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.success(), v)
}

fn probe(lab: &Lab, method: &str, path: &str) -> (bool, Value) {
    probe_between(lab, "app/client", "app/server", method, path)
}

fn metrics(lab: &Lab, node: &str) -> String {
    let ns = format!("{}n-{node}", lab.prefix());
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "curl", "-sS", "-m", "5"])
        .arg("http://127.0.0.1:9590/metrics")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn veild_pid(lab: &Lab, node: &str) -> u32 {
    let s = lab.status();
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["pid"].as_u64())
        .unwrap_or_else(|| panic!("no pid of {node} in {s}")) as u32
}

#[test]
fn one_proxy_checks_both_sides_counts_per_edge_and_records_denied_flows() {
    require_root();
    let scenario = root().join("tests/scenarios").join(SCENARIO);
    let lab = Lab::up(&["--scenario", scenario.to_str().unwrap()]);
    apply_policies(&lab, SCENARIO, &["node-a", "node-b"]);

    let (ok, v) = probe(&lab, "GET", "/api/items");
    assert!(ok, "allowed: {v}");
    let (ok, v) = probe(&lab, "DELETE", "/api/items");
    assert!(!ok && v["status"] == 403, "egress rule: {v}");
    assert!(
        v["answer"]
            .as_str()
            .is_some_and(|a| a.contains("app/client-reads-and-writes egress rule 0")),
        "the 403 names policy and rule: {v}"
    );
    let (ok, v) = probe(&lab, "GET", "/admin");
    assert!(!ok && v["status"] == 403, "ingress rule: {v}");
    assert!(
        v["answer"]
            .as_str()
            .is_some_and(|a| a.contains("app/server-api-only ingress rule 0")),
        "{v}"
    );

    // One proxy did the work: the client's node.
    let a = metrics(&lab, "node-a");
    let b = metrics(&lab, "node-b");
    let edge = "src_namespace=\"app\",src_workload=\"client\",dst_namespace=\"app\",dst_workload=\"server\"";
    assert!(
        a.contains(&format!(
            "veil_l7_requests_total{{{edge},method=\"GET\",status_class=\"2xx\"}} 1"
        )),
        "{a}"
    );
    assert!(
        a.contains(&format!(
            "veil_l7_denied_requests_total{{{edge},method=\"DELETE\"}} 1"
        )),
        "{a}"
    );
    assert!(
        a.contains("veil_l7_request_duration_seconds_bucket{"),
        "{a}"
    );
    assert!(
        !a.contains("/api/items") && !a.contains("10.244."),
        "no paths nor addresses"
    );
    assert!(
        !b.contains("veil_l7_requests_total{"),
        "node-b proxied nothing: {b}"
    );

    // The same requests are on the graph's edge (the `veil_http_*` series).
    assert!(
        eventually(Duration::from_secs(10), || {
            let m = metrics(&lab, "node-a");
            m.lines()
                .any(|l| l.starts_with("veil_http_requests_total{") && !l.ends_with(" 0"))
                && m.lines()
                    .any(|l| l.starts_with("veil_http_denied_total{") && !l.ends_with(" 0"))
        }),
        "{}",
        metrics(&lab, "node-a")
    );

    // The denied requests are denied flows naming the rule.
    assert!(
        eventually(Duration::from_secs(10), || {
            let o = veilctl(&["flows", "--lab", &lab.name, "--verdict", "denied"]);
            String::from_utf8_lossy(&o.stdout).contains("client-reads-and-writes")
        }),
        "{}",
        show(&veilctl(&[
            "flows",
            "--lab",
            &lab.name,
            "--verdict",
            "denied"
        ]))
    );
}

#[test]
fn with_the_proxy_down_steered_connections_are_refused_and_others_flow() {
    require_root();
    let scenario = root().join("tests/scenarios/l7-methods.yaml");
    let lab = Lab::up(&["--scenario", scenario.to_str().unwrap()]);
    apply_policies(&lab, "l7-methods.yaml", &["node-a"]);
    let read = |m: &str| probe_between(&lab, "docs/reader", "docs/server", m, "/page");
    assert!(read("GET").0);
    let (ok, v) = read("POST");
    assert!(!ok && v["status"] == 403, "{v}");

    let pid = veild_pid(&lab, "node-a");
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(eventually(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    }));
    // Steered: refused (no listener), never passed unchecked.
    let (ok, v) = read("POST");
    assert!(!ok && v["status"].is_null(), "refused, no answer: {v}");
    let (ok, v) = read("GET");
    assert!(
        !ok && v["status"].is_null(),
        "refused while the proxy is down: {v}"
    );
    // Not steered (the reader has no http rule): flows from the kernel's table.
    assert!(
        probe_between(&lab, "docs/server", "docs/reader", "GET", "/").0,
        "unsteered traffic is untouched"
    );

    // Restart: served again, still checked.
    let o = veilctl(&["lab", "restart-node", "--name", &lab.name, "node-a"]);
    assert!(o.status.success(), "restart-node: {}", show(&o));
    assert!(
        eventually(Duration::from_secs(20), || read("GET").0),
        "allowed again after restart"
    );
    let (ok, v) = read("DELETE");
    assert!(!ok && v["status"] == 403, "{v}");
}
