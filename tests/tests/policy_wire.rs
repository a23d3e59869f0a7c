//! Policy enforced on the wire: scenarios as real packets in the lab agree
//! with the in-memory evaluator; a rule deleted by hand comes back; policy
//! stays enforced from the kernel's table while veild is killed, and after it
//! restarts.

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
fn apply_policies(lab: &Lab, scenario: &str) {
    let policies = lab_policy::scenario_policies(&examples().join(scenario));
    lab_policy::write_policies(&lab.name, "wire-test.yaml", &policies, &NODES);
}

const NODES: [&str; 2] = ["node-a", "node-b"];

/// Every node applied a generation ≥ `min` and holds what it compiled.
fn in_sync(lab: &Lab, min: u64) -> bool {
    NODES.iter().all(|n| lab_policy::applied(&lab.name, n, min))
}

fn probe(lab: &Lab, from: &str, to: &str, port: &str) -> bool {
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
        port,
        "--timeout-ms",
        "1500",
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
    apply_policies(&lab, ALLOW_BY_LABEL);
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

fn nix_kill(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -9 {pid}");
}
