//! Who may read what veild serves, with real packets in a 2-node lab
//! (issue 14): a pod curling its own node (tunnel or underlay address) gets no
//! connection on the node's service port; a pod curling the other node gets
//! nothing of `/api/v1/flows` (403 on the underlay address, dropped on the
//! tunnel address); a node reads its peer's flows over WireGuard; veilctl
//! still gets flows and the cluster graph.

mod lab_support;

use std::time::{Duration, Instant};

use lab_support::*;
use serde_json::Value;

const SCENARIO: &str = r#"
name: http-access
cluster:
  nodes: [node-a, node-b]
namespaces:
  - {name: app}
pods:
  - name: app/client
    labels: {app: client}
    node: node-a
  - name: app/server
    labels: {app: server}
    node: node-b
    ports: [{port: 8080, name: http}]
probes: []
"#;

/// `curl` from `pod`: (exit code, body); 3 s per attempt, one attempt.
fn curl(lab: &Lab, pod: &str, url: &str) -> (i32, String) {
    let o = lab.in_pod(pod, &["curl", "-sS", "-m", "3", url]);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// Each node's (underlay address, tunnel address), from `veilctl status`.
fn nodes(lab: &Lab) -> Vec<(String, String, String)> {
    let o = veilctl(&["status", "--lab", &lab.name, "--output", "json"]);
    assert!(o.status.success(), "veilctl status: {}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut out: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let cidr = n["node"]["podCidr"].as_str().unwrap();
            let net = cidr.split('/').next().unwrap();
            let tunnel = format!("{}.1", net.rsplit_once('.').unwrap().0);
            (
                n["node"]["node"].as_str().unwrap().to_string(),
                n["node"]["address"].as_str().unwrap().to_string(),
                tunnel,
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn pods_get_nothing_of_the_flow_log_and_veilctl_still_does() {
    require_root();
    let path = std::env::temp_dir().join(format!("{}-http-access.yaml", unique_name()));
    std::fs::write(&path, SCENARIO).unwrap();
    let lab = Lab::up(&["--scenario", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    let server = lab.pod_ip("app/server");
    assert!(
        lab.curl("app/client", &format!("http://{server}:8080/"), 10)
            .is_some(),
        "client -> server never worked"
    );
    let n = nodes(&lab);
    let (a, b) = (&n[0], &n[1]);
    assert_eq!((a.0.as_str(), b.0.as_str()), ("node-a", "node-b"), "{n:?}");

    // The client's own node: nothing answers on 9590 (host endpoint
    // protection drops the SYN), on either of its addresses.
    for addr in [&a.2, &a.1] {
        let (code, body) = curl(
            &lab,
            "app/client",
            &format!("http://{addr}:9590/api/v1/flows"),
        );
        assert_ne!(code, 0, "a pod reached its node's {addr}:9590: {body}");
        assert!(!body.contains("flows"), "{body}");
        let (code, _) = curl(&lab, "app/client", &format!("http://{addr}:9590/metrics"));
        assert_ne!(
            code, 0,
            "no policy allows the pod to scrape its node's metrics"
        );
    }
    // The other node's underlay address: 403, never the flows.
    let (code, body) = curl(
        &lab,
        "app/client",
        &format!("http://{}:9590/api/v1/flows", b.1),
    );
    assert_eq!(code, 0, "the underlay address answers: {body}");
    assert!(body.starts_with("forbidden"), "{body}");
    for route in ["/api/v1/graph?scope=node", "/api/graph/data", "/ui"] {
        let (_, body) = curl(&lab, "app/client", &format!("http://{}:9590{route}", b.1));
        assert!(body.starts_with("forbidden"), "{route}: {body}");
    }
    // Health and metrics stay reachable there (kubelet, Prometheus).
    let (code, body) = curl(&lab, "app/client", &format!("http://{}:9590/healthz", b.1));
    assert_eq!((code, body.as_str()), (0, "ok\n"));
    // The other node's tunnel address, through WireGuard from a pod address:
    // dropped (only peers' tunnel addresses reach it).
    let (code, body) = curl(
        &lab,
        "app/client",
        &format!("http://{}:9590/api/v1/flows", b.2),
    );
    assert_ne!(code, 0, "a remote pod reached the node API: {body}");

    // A node reads its peer's flows over WireGuard (from its tunnel address).
    let o = lab.exec(
        &["--node", "node-a"],
        &[
            "curl",
            "-sS",
            "-m",
            "5",
            "--interface",
            &a.2,
            &format!("http://{}:9590/api/v1/flows", b.2),
        ],
    );
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", show(&o)));
    assert!(v.is_object(), "{v}");
    // ... but not from its underlay address.
    let o = lab.exec(
        &["--node", "node-a"],
        &[
            "curl",
            "-sS",
            "-m",
            "5",
            &format!("http://{}:9590/api/v1/flows", b.1),
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("forbidden"),
        "{}",
        show(&o)
    );

    // veilctl: flows and the cluster graph, through the sockets; the
    // daemons' own cluster view fetched its peer over WireGuard.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = veilctl(&["flows", "--lab", &lab.name, "--output", "json"]);
        assert!(o.status.success(), "veilctl flows: {}", show(&o));
        if String::from_utf8_lossy(&o.stdout).contains("app/server") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no flow to app/server: {}",
            show(&o)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let o = veilctl(&["graph", "--lab", &lab.name, "--format", "json"]);
    assert!(o.status.success(), "veilctl graph: {}", show(&o));
    let o = lab.exec(
        &["--node", "node-a"],
        &[
            "curl",
            "-sS",
            "-m",
            "10",
            "http://127.0.0.1:9590/api/v1/graph",
        ],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", show(&o)));
    assert!(
        v.get("errors").is_none(),
        "peer graph not fetched over WireGuard: {v:#}"
    );
}
