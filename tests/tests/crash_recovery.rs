//! A crash during concurrent ADDs leaves nothing behind: a property test of
//! our own. Each round starts concurrent `cni.add` calls (and, like the
//! plugin, a host link then `cni.commit` for each), SIGKILLs veild at a
//! random moment, restarts it, and checks:
//! - every call that failed, failed as "try again later" (the connection
//!   broke or was refused: code 11), never with an undecodable answer (104);
//! - the allocator agrees with the endpoints (`endpoints.json`): the
//!   addresses marked used are exactly those the endpoints hold, no address
//!   twice;
//! - no pending endpoint without its host link survived the restart.
//!
//! Bounded: 6 rounds of 10 ADDs; the seed is printed (`VEIL_CRASH_SEED`
//! replays one). veild runs in a fresh namespace (tests/src/lib.rs `Node`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use veil_tests::{require_root, unique_prefix, Node};

/// xorshift64*: a small seeded generator (the test needs no crate for it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Checks the state file: the allocator against the endpoints. A daemon
/// killed before its first write has no file yet, which is consistent (no
/// endpoints, nothing allocated) as long as no file was ever seen before
/// (`seen`, updated here): once written, it must never go missing.
fn check_state(node: &Node, seen: &mut bool) -> Vec<Value> {
    let path = node.state_dir.join("endpoints.json");
    if !*seen && !path.exists() {
        return Vec::new();
    }
    *seen = true;
    let text = std::fs::read_to_string(&path).expect("endpoints.json");
    let state: Value = serde_json::from_str(&text).expect("endpoints.json parses");
    let used: BTreeSet<String> = state["allocator"]["used"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let endpoints = state["endpoints"].as_array().unwrap().clone();
    let mut held = BTreeSet::new();
    for ep in &endpoints {
        for ip in ep["ips"].as_array().unwrap() {
            let addr = ip.as_str().unwrap().split('/').next().unwrap().to_string();
            assert!(held.insert(addr.clone()), "{addr} held twice: {text}");
        }
    }
    assert_eq!(used, held, "allocator and endpoints disagree: {text}");
    endpoints
}

#[test]
fn sigkill_during_concurrent_adds_leaves_a_consistent_state() {
    require_root();
    let seed = std::env::var("VEIL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| veil_tests::unique_id() | 1);
    eprintln!("VEIL_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let prefix = unique_prefix();
    let mut node = Node::start(&prefix, "10.244.0.0/24");
    let ns = node.netns.name.clone();
    let mut seen = false;
    for round in 0..6u32 {
        let socket = node.socket.clone();
        let calls: Vec<_> = (0..10u32)
            .map(|i| {
                let socket = socket.clone();
                let ns = ns.clone();
                let delay = rng.below(40);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(delay));
                    let id = format!("r{round}c{i}");
                    let host = format!("veilc{round}x{i}");
                    let timeout = Duration::from_secs(20);
                    let add = veil_api::call::<_, Value>(
                        &socket,
                        veil_api::method::CNI_ADD,
                        &json!({"container_id": id, "netns": format!("/var/run/netns/{id}"),
                                "ifname": "eth0", "host_ifname": host, "pod_namespace": "x",
                                "pod_name": id, "network": "veil", "ipam": {"kind": "daemon"}}),
                        timeout,
                    );
                    if add.is_err() {
                        return add.map(|_| ());
                    }
                    // The plugin's wiring: the host end of the pair.
                    let _ = std::process::Command::new("ip")
                        .args(["-n", &ns, "link", "add", &host, "type", "dummy"])
                        .status();
                    veil_api::call::<_, Value>(
                        &socket,
                        veil_api::method::CNI_COMMIT,
                        &json!({"container_id": id, "ifname": "eth0"}),
                        timeout,
                    )
                    .map(|_| ())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.below(120)));
        let pid = node.pid().expect("veild runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL veild");
        for c in calls {
            match c.join().expect("caller thread") {
                Ok(()) => {}
                Err(veil_api::CallError::Io { .. } | veil_api::CallError::Unreachable { .. }) => {}
                // A commit that outlived the kill is answered by nobody;
                // what it must never be is an answer that cannot be decoded.
                Err(e @ veil_api::CallError::Decode { .. }) => {
                    panic!("round {round} (seed {seed}): a killed daemon gave an undecodable answer (code 104): {e}")
                }
                Err(veil_api::CallError::Daemon(e)) => {
                    assert!(
                        e.code == veil_api::code::TRY_AGAIN_LATER
                            || e.code == veil_api::code::INVALID_CONFIG,
                        "round {round} (seed {seed}): {e:?}"
                    );
                }
            }
        }
        node.restart();
        let endpoints = check_state(&node, &mut seen);
        let links = node.netns.links();
        for ep in &endpoints {
            if ep["state"] == "pending" {
                let host = ep["host_ifname"].as_str().unwrap();
                assert!(
                    links.iter().any(|l| l == host),
                    "round {round} (seed {seed}): pending {host} has no link and survived the restart"
                );
            }
        }
        // The next round's churn: DEL half of what is there.
        for ep in endpoints.iter().filter(|_| rng.below(2) == 0) {
            node.call(
                veil_api::method::CNI_DEL,
                json!({"container_id": ep["container_id"], "ifname": "eth0"}),
            )
            .expect(veil_api::method::CNI_DEL);
        }
        check_state(&node, &mut seen);
    }
    // Still allocating after six crashes.
    node.call(
        veil_api::method::CNI_ADD,
        json!({"container_id": "last", "netns": "/var/run/netns/last", "ifname": "eth0",
               "host_ifname": "veillast", "pod_namespace": "x", "pod_name": "last",
               "network": "veil", "ipam": {"kind": "daemon"}}),
    )
    .expect("an ADD after the crashes");
    check_state(&node, &mut seen);
}
