//! Policy enforced on the wire: scenarios as real packets in the lab agree
//! with the in-memory evaluator; a rule deleted by hand comes back; policy
//! stays enforced from the kernel's table while veild is killed, and after it
//! restarts; an established allowed connection lives through the kill and
//! the restart while no denied connection ever gets through.

mod lab_support;

use std::path::PathBuf;
use std::time::Duration;

use lab_support::*;
use veil_tests::lab_policy;

/// The contract's examples and the project's suite that need neither the
/// DNS proxy (`domains`) nor the L7 proxy (`http` rules): those two arrive
/// with their own issues.
fn l3_l4_scenarios() -> (tempdir::Dir, usize) {
    let dir = tempdir::Dir::new("policy-wire");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut n = 0;
    for src in [root.join("../shared/scenarios/examples")] {
        for e in std::fs::read_dir(&src).expect("examples").flatten() {
            let p = e.path();
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if p.extension().is_none_or(|x| x != "yaml")
                || text.contains("domains:")
                || text.contains("domainNames:")
                || text.contains("http:")
            {
                continue;
            }
            std::fs::copy(&p, dir.0.join(p.file_name().unwrap())).unwrap();
            n += 1;
        }
    }
    (dir, n)
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "veil-{tag}-{}-{:x}",
                std::process::id(),
                veil_tests::unique_id()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn lab_test_agrees_with_policy_test_on_every_l3_l4_example() {
    require_root();
    let (dir, n) = l3_l4_scenarios();
    assert!(n >= 8, "examples found: {n}");
    let d = dir.0.to_str().unwrap();
    let mem = veilctl(&["policy", "test", d]);
    assert!(mem.status.success(), "policy test: {}", show(&mem));
    let wire = veilctl(&["lab", "test", d]);
    let out = String::from_utf8_lossy(&wire.stdout);
    assert!(wire.status.success(), "lab test: {}", show(&wire));
    assert!(out.contains(" 0 failed"), "{out}");
    // Same number of probes both ways.
    let summary = |s: &str| s.lines().last().unwrap_or_default().to_string();
    assert_eq!(
        summary(&String::from_utf8_lossy(&mem.stdout)),
        summary(&out),
        "in memory vs as packets"
    );
}

const ALLOW_BY_LABEL: &str = "networkpolicy-allow-by-label.yaml";

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/scenarios/examples")
}

/// Writes the scenario's policies into the lab's datastore and waits until
/// every node's kernel holds them.
fn apply_policies(lab: &Lab, scenario: &std::path::Path) {
    let policies = lab_policy::scenario_policies(scenario);
    lab_policy::write_policies(&lab.name, "wire-test.yaml", &policies, &NODES);
}

const NODES: [&str; 2] = ["node-a", "node-b"];

/// Every node applied a generation ≥ `min` and holds what it compiled.
fn in_sync(lab: &Lab, min: u64) -> bool {
    NODES.iter().all(|n| lab_policy::applied(&lab.name, n, min))
}

fn probe(lab: &Lab, from: &str, to: &str, port: &str) -> bool {
    probe_within(&lab.name, from, to, port, "1500")
}

fn probe_within(lab: &str, from: &str, to: &str, port: &str, timeout_ms: &str) -> bool {
    let o = veilctl(&[
        "lab",
        "probe",
        "--name",
        lab,
        "--from",
        from,
        "--to",
        to,
        "--port",
        port,
        "--timeout-ms",
        timeout_ms,
    ]);
    o.status.success()
}

fn nft(lab: &Lab, args: &[&str]) -> String {
    let ns = format!("{}n-node-a", lab.prefix());
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "nft"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn deleted_rule_comes_back_and_policy_outlives_a_killed_veild() {
    require_root();
    let scenario = examples().join(ALLOW_BY_LABEL);
    let lab = Lab::up(&["--scenario", scenario.to_str().unwrap()]);
    apply_policies(&lab, &scenario);
    assert!(probe(&lab, "store/frontend", "store/api", "8080"));
    assert!(!probe(&lab, "store/frontend", "store/database", "5432"));

    // The deny is attributed: a denied flow naming the tier default that
    // dropped it (database's ingress: only the api is allowed).
    assert!(
        eventually(Duration::from_secs(10), || {
            let o = veilctl(&["flows", "--lab", &lab.name, "--verdict", "denied"]);
            let out = String::from_utf8_lossy(&o.stdout);
            out.contains("store/frontend") && out.contains("denied by default/default ingress")
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

    // Drift: empty the default-deny chain by hand; the resync refills it.
    nft(
        &lab,
        &["flush", "chain", "inet", "veil", "t-default-in-deny"],
    );
    assert!(!nft(
        &lab,
        &["list", "chain", "inet", "veil", "t-default-in-deny"]
    )
    .contains("drop"));
    assert!(
        eventually(Duration::from_secs(25), || nft(
            &lab,
            &["list", "chain", "inet", "veil", "t-default-in-deny"]
        )
        .contains("drop")),
        "resync did not restore the chain"
    );

    // SIGKILL: the kernel's table keeps enforcing.
    let pid = lab.veild_pid("node-a");
    nix_kill(pid);
    assert!(eventually(
        Duration::from_secs(5),
        || !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    ));
    assert!(
        !probe(&lab, "store/frontend", "store/database", "5432"),
        "denied while veild is dead"
    );
    // (Traffic between nodes needs veild: WireGuard runs in it, fail-closed.)
    assert!(
        probe(&lab, "kube-system/kube-dns", "store/frontend", "80"),
        "allowed on the node while veild is dead"
    );

    // Restart: reconciles to the same policy.
    let o = veilctl(&["lab", "restart-node", "--name", &lab.name, "node-a"]);
    assert!(o.status.success(), "restart-node: {}", show(&o));
    assert!(eventually(Duration::from_secs(20), || in_sync(&lab, 1)));
    assert!(
        !probe(&lab, "store/frontend", "store/database", "5432"),
        "denied after restart"
    );
    assert!(
        probe(&lab, "store/api", "store/database", "5432"),
        "allowed after restart"
    );
}

/// Three pods of one node (traffic between nodes needs veild: WireGuard runs
/// in it): only the api may reach the database.
const ONE_NODE: &str = r#"
name: restart-keeps-policy
cluster:
  nodes: [node-a, node-b]
namespaces:
  - name: store
pods:
  - {name: store/frontend, labels: {role: frontend}, node: node-a, ports: [{port: 80}]}
  - {name: store/api, labels: {role: api}, node: node-a, ports: [{port: 8080}]}
  - {name: store/database, labels: {role: database}, node: node-a, ports: [{port: 5432}]}
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: database-from-api, namespace: store}
    spec:
      podSelector: {matchLabels: {role: database}}
      policyTypes: [Ingress]
      ingress:
        - from: [{podSelector: {matchLabels: {role: api}}}]
          ports: [{port: 5432, protocol: TCP}]
probes: []
"#;

/// A TCP connection made inside network namespace `netns` (a socket stays in
/// the namespace it was made in).
fn connect_in(netns: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open the pod's netns");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })
    .join()
    .unwrap()
    .expect("connecting from the pod")
}

/// One keep-alive HTTP request on `s`; whether a whole `200` came back.
fn request(s: &mut std::net::TcpStream) -> Result<(), String> {
    use std::io::{Read, Write};
    s.write_all(b"GET / HTTP/1.1\r\nHost: database.store\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut b = [0u8; 512];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut b).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed by the server".into());
        }
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") || head.contains("connection: close") {
        return Err(format!("answer: {head}"));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length: {head}"))?;
    while buf.len() < head_end + len {
        let n = s.read(&mut b).map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("closed in the body".into());
        }
        buf.extend_from_slice(&b[..n]);
    }
    Ok(())
}

#[test]
fn established_connection_survives_killed_veild_and_no_denied_connection_passes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    require_root();
    let dir = tempdir::Dir::new("policy-restart");
    let scenario = dir.0.join("restart.yaml");
    std::fs::write(&scenario, ONE_NODE).unwrap();
    let lab = Lab::up(&["--scenario", scenario.to_str().unwrap()]);
    apply_policies(&lab, &scenario);
    assert!(probe(&lab, "store/api", "store/database", "5432"));
    assert!(!probe(&lab, "store/frontend", "store/database", "5432"));

    // The established connection: api -> database, a request every 500 ms
    // (the server closes connections idle for 10 s).
    let s = lab.status();
    let api_ns = s["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "store/api")
        .and_then(|p| p["netns"].as_str())
        .expect("netns of store/api")
        .to_string();
    let db: std::net::SocketAddr = format!("{}:5432", lab.pod_ip("store/database"))
        .parse()
        .unwrap();
    let mut conn = connect_in(&api_ns, db);
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    request(&mut conn).expect("first request on the established connection");
    let stop = Arc::new(AtomicBool::new(false));
    let keepalive = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<usize, String> {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 400 {
                request(&mut conn).map_err(|e| format!("request {n}: {e}"))?;
                n += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(n)
        })
    };
    // Denied new connections, tried over and over through the kill and the
    // restart: not one may pass.
    let watcher = {
        let stop = stop.clone();
        let name = lab.name.clone();
        std::thread::spawn(move || {
            let (mut tried, mut passed) = (0, 0);
            while !stop.load(Ordering::Relaxed) && tried < 400 {
                if probe_within(&name, "store/frontend", "store/database", "5432", "400") {
                    passed += 1;
                }
                tried += 1;
            }
            (tried, passed)
        })
    };

    let pid = lab.veild_pid("node-a");
    nix_kill(pid);
    assert!(eventually(
        Duration::from_secs(5),
        || !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    ));
    std::thread::sleep(Duration::from_secs(2));
    let o = veilctl(&["lab", "restart-node", "--name", &lab.name, "node-a"]);
    assert!(o.status.success(), "restart-node: {}", show(&o));
    assert!(eventually(Duration::from_secs(20), || in_sync(&lab, 1)));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (tried, passed) = watcher.join().unwrap();
    let served = keepalive.join().unwrap();
    eprintln!(
        "denied connections tried: {tried}, passed: {passed}; established connection: {served:?}"
    );
    assert_eq!(
        passed, 0,
        "{passed} of {tried} denied connections got through"
    );
    assert!(tried >= 4, "only {tried} denied connections tried");
    let served = served.expect("the established connection broke");
    assert!(
        served >= 6,
        "only {served} requests on the established connection"
    );
    assert!(
        probe(&lab, "store/api", "store/database", "5432"),
        "new allowed connections after the restart"
    );
}

fn nix_kill(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -9 {pid}");
}
