//! L7 HTTP policy on the wire: veild's transparent proxy, as real packets in
//! the lab. Every L7 scenario (those combining `http` with a DNS allowlist,
//! `domains`, too) passes in `veilctl lab test` with the same summary as
//! `veilctl policy test`;
//! across nodes one proxy (the client's node) checks both sides' rules and
//! counts the requests per edge and records denied flows; with the proxy's
//! veild killed, steered connections are refused and other traffic flows;
//! removing every `http` rule keeps an open keep-alive connection going
//! through the proxy while new connections are no longer steered.

mod lab_support;

use std::path::PathBuf;
use std::time::Duration;

use lab_support::*;
use serde_json::Value;
use veil_tests::lab_policy;

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

/// The policies of a scenario of tests/scenarios.
fn scenario_policies(scenario: &str) -> Vec<Value> {
    lab_policy::scenario_policies(&root().join("tests/scenarios").join(scenario))
}

/// Writes the scenario's policies into the lab's datastore; waits until the
/// kernels of `nodes` hold them.
fn apply_policies(lab: &Lab, scenario: &str, nodes: &[&str]) {
    write_policies(lab, &scenario_policies(scenario), nodes);
}

/// Writes `policies` into the lab's datastore (replacing what the test wrote
/// before); waits until the kernels of `nodes` hold them.
fn write_policies(lab: &Lab, policies: &[Value], nodes: &[&str]) {
    lab_policy::write_policies(&lab.name, "l7-test.yaml", policies, nodes);
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

    let pid = lab.veild_pid("node-a");
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

/// Sends `GET path` on `conn` (keep-alive) and reads the answer: its status.
fn keep_alive_get(
    conn: &mut std::io::BufReader<std::net::TcpStream>,
    path: &str,
) -> std::io::Result<u16> {
    use std::io::{BufRead, Read, Write};
    write!(
        conn.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: server\r\n\r\n"
    )?;
    let mut status = 0;
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if status == 0 {
            status = l
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok(status)
}

/// The statuses answered on a keep-alive connection, or those and why it ended.
type KeepAlive = Result<Vec<u16>, (Vec<u16>, String)>;

/// The statuses of `GET /api/items` sent every 200 ms on one keep-alive
/// connection from a thread in the pod's network namespace `netns`, until
/// `stop` is set (at most 60 s); the first error ends it.
fn keep_alive_client(
    netns: String,
    server: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<KeepAlive> {
    std::thread::spawn(move || {
        let fd = std::fs::File::open(format!("/run/netns/{netns}")).expect("pod netns");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut seen = Vec::new();
        let stream = match std::net::TcpStream::connect_timeout(&server, Duration::from_secs(3)) {
            Ok(s) => s,
            Err(e) => return Err((seen, format!("connect: {e}"))),
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut conn = std::io::BufReader::new(stream);
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < end {
            match keep_alive_get(&mut conn, "/api/items") {
                Ok(s) => seen.push(s),
                Err(e) => {
                    let what = format!("request {}: {e}", seen.len());
                    return Err((seen, what));
                }
            }
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(seen)
    })
}

/// `veil_l7_requests_total` of the client→server edge for `method`, 2xx.
fn proxied(lab: &Lab, node: &str, method: &str) -> u64 {
    let edge = "src_namespace=\"app\",src_workload=\"client\",dst_namespace=\"app\",dst_workload=\"server\"";
    let series =
        format!("veil_l7_requests_total{{{edge},method=\"{method}\",status_class=\"2xx\"}} ");
    metrics(lab, node)
        .lines()
        .find_map(|l| l.strip_prefix(&series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[test]
fn removing_the_last_http_rule_keeps_proxied_connections_and_steers_no_new_one() {
    use std::sync::atomic::{AtomicBool, Ordering};
    require_root();
    let scenario = root().join("tests/scenarios").join(SCENARIO);
    let lab = Lab::up(&["--scenario", scenario.to_str().unwrap()]);
    let nodes = ["node-a", "node-b"];
    let policies = scenario_policies(SCENARIO);
    write_policies(&lab, &policies, &nodes);
    assert!(probe(&lab, "GET", "/api/items").0, "proxied and allowed");

    // A keep-alive connection through the proxy (the client's node).
    let server: std::net::SocketAddr = format!("{}:8080", lab.pod_ip("app/server"))
        .parse()
        .unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let client = keep_alive_client(
        format!("{}p-app.client", lab.prefix()),
        server,
        stop.clone(),
    );
    assert!(
        eventually(Duration::from_secs(10), || proxied(&lab, "node-a", "GET")
            >= 3),
        "the connection goes through the proxy: {}",
        metrics(&lab, "node-a")
    );

    // Every `http` of the cluster removed: the same rules at L3/L4 only.
    let l4_only: Vec<Value> = policies
        .iter()
        .map(|p| {
            let mut p = p.clone();
            for dir in ["ingress", "egress"] {
                if let Some(rules) = p["spec"][dir].as_array_mut() {
                    for r in rules {
                        r.as_object_mut().unwrap().remove("http");
                    }
                }
            }
            p
        })
        .collect();
    assert_ne!(l4_only, policies);
    write_policies(&lab, &l4_only, &nodes);
    // The node's routes change (as when a pod comes or goes): the kernel's
    // cached routes of established sockets are dropped, so only the rules
    // keep the connection's packets on the node's stack.
    for node in nodes {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", &format!("{}n-{node}", lab.prefix())])
            .args(["ip", "route", "flush", "cache"])
            .output()
            .unwrap();
        assert!(o.status.success(), "route cache flush on {node}");
    }
    let during = proxied(&lab, "node-a", "GET");
    // Its next requests are still answered, through the proxy.
    assert!(
        eventually(Duration::from_secs(10), || proxied(&lab, "node-a", "GET")
            >= during + 3),
        "the open connection still goes through the proxy: {}",
        metrics(&lab, "node-a")
    );
    stop.store(true, Ordering::SeqCst);
    let seen = client.join().expect("client thread");
    let seen = seen.unwrap_or_else(|(seen, e)| {
        panic!(
            "the open connection was cut after {} answers {seen:?}: {e}",
            seen.len()
        )
    });
    assert!(seen.iter().all(|s| *s == 200), "{seen:?}");

    // New connections are no longer steered: a DELETE (403 before) passes
    // and the proxy never sees it.
    let (ok, v) = probe(&lab, "DELETE", "/api/items");
    assert!(ok && v["status"] == 200, "L4 allow now: {v}");
    assert_eq!(
        proxied(&lab, "node-a", "DELETE"),
        0,
        "{}",
        metrics(&lab, "node-a")
    );
    assert_eq!(
        proxied(&lab, "node-b", "DELETE"),
        0,
        "{}",
        metrics(&lab, "node-b")
    );
}
