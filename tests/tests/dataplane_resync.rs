//! The dataplane's periodic resync repairs drift in `inet veil`: a rule deleted
//! by hand comes back, and a table that did not drift is left alone (the
//! read-back of the real kernel's table matches what veild wrote). Runs veild
//! in a fresh network namespace; nothing is touched outside it.

use std::time::Duration;

use veil_tests::{eventually, require_root, unique_prefix, Daemon, Netns, TempDir, VeildArgs};

fn handles(ns: &Netns, chain: &str) -> Vec<(String, String)> {
    let out = ns.exec(&["nft", "-a", "list", "chain", "inet", "veil", chain]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (rule, handle) = l.trim().rsplit_once(" # handle ")?;
            Some((rule.to_string(), handle.to_string()))
        })
        .filter(|(r, _)| r.contains("comment"))
        .collect()
}

#[test]
fn resync_restores_a_rule_deleted_by_hand() {
    require_root();
    let prefix = unique_prefix();
    let ns = Netns::new(&format!("{prefix}-resync"));
    ns.add_underlay("eth0", "eth1", "198.18.0.10/15");
    let dir = TempDir::new(&prefix, "resync");
    let sock = dir.path().join("veild.sock");
    let child = VeildArgs {
        netns: &ns.name,
        node_name: "node-a",
        node_address: "198.18.0.10",
        pod_cidr: "10.244.0.0/24",
        underlay: "eth0",
        socket: &sock,
        state_dir: &dir.path().join("state"),
        datastore_dir: &dir.path().join("ds"),
        http_listen: "127.0.0.1:19590",
    }
    .command()
    .env("VEIL_DATAPLANE_RESYNC_SECONDS", "1")
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("spawn veild");
    let mut d = Daemon(child);
    veil_tests::wait_for_daemon(
        &sock,
        "cni.status",
        Duration::from_secs(20),
        Some(&mut d.0),
        |v| v["ready"] == true,
    )
    .expect("veild ready");

    // One table: the flow collector's rules live in inet veil now.
    let tables = ns.exec(&["nft", "list", "tables"]);
    let tables = String::from_utf8_lossy(&tables.stdout).to_string();
    assert!(tables.contains("table inet veil\n"), "{tables}");
    assert!(!tables.contains("veil_flows"), "{tables}");
    assert!(
        eventually(Duration::from_secs(10), || !handles(
            &ns,
            "flows-prerouting"
        )
        .is_empty()),
        "flow-logging chain missing"
    );

    // Nothing drifted: three resyncs later the rules are the same objects.
    let before = handles(&ns, "forward");
    // The three base rules, then established/related and the two policy
    // dispatch jumps.
    assert_eq!(before.len(), 6, "{before:?}");
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        handles(&ns, "forward"),
        before,
        "resync rewrote an unchanged table"
    );

    // Delete the first fail_closed rule by hand.
    let (rule, handle) = before[0].clone();
    assert!(rule.contains("fail_closed"), "{rule}");
    let out = ns.exec(&[
        "nft", "delete", "rule", "inet", "veil", "forward", "handle", &handle,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(handles(&ns, "forward").len(), 5);

    assert!(
        eventually(Duration::from_secs(10), || {
            let now = handles(&ns, "forward");
            now.len() == 6 && now[0].0 == rule
        }),
        "the deleted rule did not come back: {:?}",
        handles(&ns, "forward")
    );
}
