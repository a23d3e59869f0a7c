//! End-to-end tests of `veilctl lab` with the real `veild` and `veil` CNI
//! plugin: a two-node lab whose pods reach each other and their node on the same
//! node; traffic between nodes (blocked until WireGuard, never in the clear);
//! `status`, `exec`, `restart-node`; and `down` leaving nothing behind, also after
//! the state was lost or `lab up` was killed half-way. Each test uses its own lab
//! (unique name), removed by a Drop guard; tests run in parallel.

mod lab_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use lab_support::*;

/// Whether pod traffic between nodes flows. It did not before the WireGuard
/// datapath landed (then it must not flow at all); now it must flow, encrypted.
/// Either way no packet with a pod address may cross the underlay.
const CROSS_NODE_TRAFFIC_FLOWS: bool = true;

/// A packet capture on the underlay bridge, started before traffic is sent.
struct Capture {
    child: std::process::Child,
}

impl Capture {
    /// Captures packets matching `filter` on the underlay bridge for up to `secs`.
    fn start(lab: &Lab, filter: &str, secs: u32) -> Capture {
        let mut child = Command::new(bin("veilctl"))
            .args(["lab", "exec", "--name", &lab.name, "--underlay", "--"])
            .args([
                "timeout",
                &secs.to_string(),
                "tcpdump",
                "-l",
                "-n",
                "-i",
                "br0",
                filter,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        // tcpdump says "listening on br0" once the capture runs.
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening on") => break,
                Some(Ok(_)) => continue,
                other => panic!("tcpdump did not start: {other:?}"),
            }
        }
        Capture { child }
    }

    /// Waits for the capture to end; returns the packets seen (one line each).
    fn packets(self) -> Vec<String> {
        let out = self.child.wait_with_output().expect("tcpdump output");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// Pod `from` sends HTTP to `to_ip` on another node. Until WireGuard it gets no
/// answer; with WireGuard it gets one. Never does a packet with a pod address
/// appear on the underlay.
fn assert_cross_node(lab: &Lab, from: &str, to_ip: &str, to_name: &str) {
    let clear = Capture::start(lab, "net 10.244.0.0/16", 8);
    let tunnel = Capture::start(lab, "udp", 8);
    let got = lab.curl(
        from,
        &format!("http://{to_ip}/"),
        if CROSS_NODE_TRAFFIC_FLOWS { 5 } else { 1 },
    );
    let ping = lab.ping(from, to_ip, 1);
    let clear = clear.packets();
    let tunnel = tunnel.packets();
    assert!(
        clear.is_empty(),
        "pod packets crossed the underlay in the clear: {clear:#?}"
    );
    if CROSS_NODE_TRAFFIC_FLOWS {
        assert_eq!(got.as_deref(), Some(format!("{to_name}\n").as_str()));
        assert!(ping, "ping {from} -> {to_ip} between nodes");
        assert!(
            !tunnel.is_empty(),
            "no UDP (WireGuard) packets on the underlay"
        );
    } else {
        assert_eq!(
            got, None,
            "{from} reached {to_ip} on another node before WireGuard"
        );
        assert!(
            !ping,
            "{from} pinged {to_ip} on another node before WireGuard"
        );
    }
}

#[test]
fn two_node_lab_works_restarts_and_goes_away() {
    require_root();
    let links_before = root_links();
    let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "2"]);

    // status --output json: the documented shape.
    let s = lab.status();
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{s}");
    for (i, n) in nodes.iter().enumerate() {
        let mut keys: Vec<&str> = n.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["address", "name", "netns", "pid", "podCIDR"]);
        assert_eq!(n["address"], format!("198.18.0.{}", 10 + i));
        assert_eq!(n["podCIDR"], format!("10.244.{i}.0/24"));
        assert!(n["pid"].as_u64().is_some(), "veild runs: {n}");
        assert!(n["netns"].as_str().unwrap().starts_with(&lab.prefix()));
    }
    let pods = s["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 4, "{s}");
    for p in pods {
        let mut keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["ip", "name", "netns", "node"]);
        let node = nodes.iter().find(|n| n["name"] == p["node"]).unwrap();
        let cidr_prefix = node["podCIDR"].as_str().unwrap().trim_end_matches("0/24");
        assert!(
            p["ip"].as_str().unwrap().starts_with(cidr_prefix),
            "{p} in {node}"
        );
    }
    assert_eq!(s["external"], serde_json::json!([]));

    // Same node: pods reach each other (ping, HTTP) and their node.
    let a0 = "demo/web-a0";
    let a1_ip = lab.pod_ip("demo/api-a1");
    let b0_ip = lab.pod_ip("demo/web-b0");
    assert!(lab.ping(a0, &a1_ip, 5), "ping {a0} -> {a1_ip}");
    assert_eq!(
        lab.curl(a0, &format!("http://{a1_ip}/"), 5).as_deref(),
        Some("demo/api-a1\n")
    );
    assert!(lab.ping(a0, "198.18.0.10", 5), "ping {a0} -> its node");
    assert!(
        lab.ping("demo/api-b1", "198.18.0.11", 5),
        "ping demo/api-b1 -> its node"
    );
    let b1_ip = lab.pod_ip("demo/api-b1");
    assert_eq!(
        lab.curl("demo/api-b1", &format!("http://{b0_ip}/"), 5)
            .as_deref(),
        Some("demo/web-b0\n")
    );
    // The node reaches its pods.
    let o = lab.exec(
        &["--node", "node-a"],
        &["curl", "-s", "-m", "3", &format!("http://{a1_ip}/")],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "demo/api-a1\n",
        "{}",
        show(&o)
    );

    // Between nodes.
    assert_cross_node(&lab, a0, &b0_ip, "demo/web-b0");
    let _ = b1_ip;

    // exec: node, underlay, exit codes, unknown targets.
    let o = lab.exec(
        &["--node", "node-b"],
        &["ip", "-br", "addr", "show", "eth0"],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("198.18.0.11/15"),
        "{}",
        show(&o)
    );
    let o = lab.exec(
        &["--node", "node-a"],
        &["sh", "-c", "mountpoint -q /var/run/wireguard"],
    );
    assert!(
        o.status.success(),
        "the node's WireGuard directory is mounted: {}",
        show(&o)
    );
    let o = lab.exec(&["--underlay"], &["ip", "-br", "link", "show", "br0"]);
    assert!(o.status.success(), "{}", show(&o));
    let o = lab.in_pod(a0, &["sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    let o = lab.in_pod("demo/nope", &["true"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("demo/nope"),
        "{}",
        show(&o)
    );

    // restart-node: a new veild, the pods keep working.
    let old_pid = lab.status()["nodes"][0]["pid"].as_u64().unwrap();
    let o = veilctl(&["lab", "restart-node", "--name", &lab.name, "node-a"]);
    assert!(o.status.success(), "{}", show(&o));
    let new_pid = lab.status()["nodes"][0]["pid"].as_u64().unwrap();
    assert_ne!(old_pid, new_pid);
    assert!(
        !std::path::Path::new(&format!("/proc/{old_pid}")).exists() || {
            let c = std::fs::read(format!("/proc/{old_pid}/cmdline")).unwrap_or_default();
            !String::from_utf8_lossy(&c).contains("veild")
        },
        "the old veild is gone"
    );
    assert_eq!(
        lab.curl(a0, &format!("http://{a1_ip}/"), 5).as_deref(),
        Some("demo/api-a1\n")
    );
    assert!(lab.ping(a0, &a1_ip, 5));

    // down: nothing left, and a second down is fine.
    let name = lab.name.clone();
    drop(lab);
    assert_gone(&name);
    let o = veilctl(&["lab", "down", "--name", &name]);
    assert!(o.status.success(), "second down: {}", show(&o));
    let new_links: Vec<String> = root_links()
        .into_iter()
        .filter(|l| !links_before.contains(l) && (l.starts_with("veil") || l.starts_with("vl-")))
        .collect();
    assert!(
        new_links.is_empty(),
        "links left in the root namespace: {new_links:?}"
    );
}

#[test]
fn down_cleans_up_after_the_state_is_lost() {
    let lab = Lab::up(&["--nodes", "1", "--pods-per-node", "1"]);
    let dir = format!("/run/veil/labs/{}", lab.name);
    assert!(
        !processes_mentioning(&dir).is_empty(),
        "the lab runs processes"
    );
    // As after a crash that lost lab.json: down must find everything by prefix.
    std::fs::remove_file(format!("{dir}/lab.json")).unwrap();
    let o = veilctl(&["lab", "down", "--name", &lab.name]);
    assert!(o.status.success(), "{}", show(&o));
    assert_gone(&lab.name);
}

#[test]
fn down_cleans_up_after_lab_up_is_killed_half_way() {
    require_root();
    let name = unique_name();
    let _guard = Lab { name: name.clone() }; // `lab down` even if an assertion fails
    let mut child = Command::new(bin("veilctl"))
        .args([
            "lab",
            "up",
            "--name",
            &name,
            "--nodes",
            "2",
            "--pods-per-node",
            "3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the underlay exists (somewhere in the middle of the build).
    let started = eventually(Duration::from_secs(20), || {
        !namespaces_with_prefix(&format!("vl-{name}-n-")).is_empty()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "lab up never created a node");
    let o = veilctl(&["lab", "down", "--name", &name]);
    assert!(o.status.success(), "{}", show(&o));
    assert_gone(&name);
}

#[test]
fn bad_names_and_missing_labs_are_errors() {
    require_root();
    // Exit 2: bad usage or a name that does not exist (issue 14).
    let o = veilctl(&["lab", "up", "--name", "Bad-Name"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Bad-Name"),
        "{}",
        show(&o)
    );
    let o = veilctl(&["lab", "status", "--name", "tnolab0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not exist"),
        "{}",
        show(&o)
    );
    let o = veilctl(&["lab", "down", "--name", "tnolab0"]);
    assert!(
        o.status.success(),
        "down of a missing lab succeeds: {}",
        show(&o)
    );
}
