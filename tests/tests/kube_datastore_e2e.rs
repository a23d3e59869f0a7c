//! `veild --datastore kube` end to end against a fake API server: a small
//! HTTP server of this test's own, speaking enough of list and watch (and
//! answering the Node patch and the Lease), bound inside the node's network
//! namespace. veild gets no address nor pod CIDR flag: it reads them from
//! its Node object; it must become ready, enforce the NetworkPolicy the API
//! lists, publish its WireGuard key as a Node annotation, and follow a key
//! rotation with a new annotation.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use veil_tests::{bin, call, eventually, require_root, unique_prefix, Daemon, Netns, TempDir};

/// A request as the fake API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    body: Value,
}

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "resourceVersion": "1", "labels": {"kubernetes.io/hostname": "node-a", "zone": "z1"}},
        "spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.10"}]}})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn answer(target: &str, method: &str) -> Option<(u16, Value)> {
    let path = target.split('?').next().unwrap_or("");
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": "not found"});
    Some(match (method, path) {
        ("GET", "/api/v1/nodes/node-a") | ("PATCH", "/api/v1/nodes/node-a") => (200, node()),
        ("GET", "/api/v1/nodes") => (200, list("NodeList", vec![node()])),
        ("GET", "/api/v1/namespaces") => (
            200,
            list(
                "NamespaceList",
                vec![json!({"metadata": {"name": "shop", "labels": {"team": "a"}}})],
            ),
        ),
        ("GET", "/api/v1/pods") => (200, list("PodList", vec![])),
        ("GET", "/api/v1/services") => (200, list("ServiceList", vec![])),
        ("GET", "/apis/discovery.k8s.io/v1/endpointslices") => {
            (200, list("EndpointSliceList", vec![]))
        }
        ("GET", "/apis/networking.k8s.io/v1/networkpolicies") => (
            200,
            list(
                "NetworkPolicyList",
                vec![
                    json!({"metadata": {"name": "deny-all", "namespace": "shop", "uid": "u1",
                                "managedFields": [{"manager": "kubectl"}]},
                   "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
                ],
            ),
        ),
        ("GET", _) => (404, not_found),
        // Lease create, events: accepted.
        ("POST", _) | ("PUT", _) => return None,
        _ => (405, not_found),
    })
}

fn handle(mut s: TcpStream, log: Arc<Mutex<Vec<Seen>>>) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    let _ = r.read_exact(&mut body);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    log.lock().unwrap().push(Seen {
        method: method.clone(),
        target: target.clone(),
        body: body.clone(),
    });
    if method == "GET"
        && target.contains("watch=true")
        && !target.starts_with("/apis/veil.dev")
        && !target.starts_with("/apis/policy.networking")
    {
        // A watch with nothing to report: headers, then silence (bounded).
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        );
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let (code, v) = answer(&target, &method).unwrap_or((201, body));
    let text = serde_json::to_vec(&v).unwrap();
    let _ = write!(
        s,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    let _ = s.write_all(&text);
}

fn key_patches(log: &Mutex<Vec<Seen>>) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "PATCH" && s.target.starts_with("/api/v1/nodes/node-a"))
        .filter_map(|s| {
            s.body["metadata"]["annotations"]["veil.dev/wireguard-public-key"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn veild_with_the_kube_datastore_reads_its_node_and_policies_and_publishes_its_key() {
    require_root();
    let prefix = unique_prefix();
    let ns = Netns::new(&format!("{prefix}-kube"));
    ns.add_underlay("eth0", "eth1", "198.18.0.10/15");
    ns.ip(&["link", "set", "lo", "up"]);
    let dir = TempDir::new(&prefix, "kube");
    let listener: TcpListener = ns
        .enter(|| TcpListener::bind("127.0.0.1:0").expect("bind the fake API server"))
        .join()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let l = l2.clone();
            std::thread::spawn(move || handle(s, l));
        }
    });
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let sock = dir.join("veild.sock");
    let log_file = std::fs::File::create(dir.join("veild.log")).unwrap();
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(bin("veild"))
        .args(["--datastore", "kube", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--node-name", "node-a", "--underlay-interface", "eth0"])
        .arg("--socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--http-listen", "127.0.0.1:19591", "--flows", "off"])
        .env("VEIL_LEASE_NAMESPACE", "kube-system")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn veild");
    let mut d = Daemon(child);
    let logs = || std::fs::read_to_string(dir.join("veild.log")).unwrap_or_default();
    if let Err(e) = veil_tests::wait_for_daemon(
        &sock,
        veil_api::method::CNI_STATUS,
        Duration::from_secs(30),
        Some(&mut d.0),
        |v| v["ready"] == true,
    ) {
        panic!("veild did not become ready: {e}\n{}", logs());
    }
    // Its address and pod CIDR came from the Node object.
    let status = call(&sock, veil_api::method::NODE_STATUS, Value::Null).unwrap();
    assert!(status.to_string().contains("10.244.7.0/24"), "{status}");
    // The NetworkPolicy listed by the API is in force.
    let policies = call(&sock, veil_api::method::POLICY_LIST, Value::Null).unwrap();
    assert!(
        policies.to_string().contains("deny-all"),
        "{policies}\n{}",
        logs()
    );
    // The WireGuard key is published on the Node, and follows a rotation.
    assert!(
        eventually(Duration::from_secs(15), || !key_patches(&log).is_empty()),
        "no Node annotation patch: {:?}\n{}",
        log.lock().unwrap(),
        logs()
    );
    let first = key_patches(&log)[0].clone();
    call(&sock, veil_api::method::WIREGUARD_ROTATE_KEY, Value::Null).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || key_patches(&log)
            .iter()
            .any(|k| *k != first)),
        "the rotated key was not published: {:?}",
        key_patches(&log)
    );
    // The absent CRD kinds were asked for, and skipped.
    assert!(logs().contains("CRD not installed"), "{}", logs());
}
