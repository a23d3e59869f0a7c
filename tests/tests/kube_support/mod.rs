//! A fake Kubernetes API server of the tests' own, speaking enough of list
//! and watch for `veild --datastore kube`, bound inside a test namespace on
//! 127.0.0.1, and the `veild` command that uses it.
//!
//! - Lists are answered from [`ApiState`] by path, with the state's
//!   resource version; a path not listed is 404 (an absent CRD kind).
//! - A watch from the current resource version stays open and silent until
//!   the state changes, the server goes down, or 60 s pass; a watch from an
//!   older version gets `410 Gone` (as from a real API server whose history
//!   was compacted), so the client relists and catches up.
//! - Node `GET`/`PATCH` of the daemon's own Node answer the Node; `POST` and
//!   `PUT` (the status Lease, Events) are accepted and echoed.
//! - [`Mode`] takes the server away: `Refused` closes the listener (and every
//!   open watch), `Hanging` accepts connections and never answers.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use veil_tests::{bin, Netns};

/// A request as the fake API server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// JSON body (`Null` when none).
    pub body: Value,
}

/// What the API server holds.
#[derive(Debug, Default)]
pub struct ApiState {
    /// Resource version of every list; bumped by every change.
    pub rv: u64,
    /// Items by list path (`/api/v1/pods`), with the list kind.
    pub lists: BTreeMap<String, (String, Vec<Value>)>,
    /// The daemon's own Node (answers `GET`/`PATCH /api/v1/nodes/<name>`).
    pub node: Value,
}

/// Whether the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serving.
    Up = 0,
    /// Listener closed: connections refused, open watches cut.
    Refused = 1,
    /// Connections accepted, never answered; open watches cut.
    Hanging = 2,
}

/// The server; stops when dropped.
pub struct FakeApi {
    /// Its port on 127.0.0.1 inside the namespace.
    pub port: u16,
    /// What it serves.
    pub state: Arc<Mutex<ApiState>>,
    /// Every request it saw.
    pub log: Arc<Mutex<Vec<Seen>>>,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A Node object: `name` with InternalIP `address`, pod CIDR `cidr`, and
/// `annotations`.
pub fn node(name: &str, address: &str, cidr: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": "1", "annotations": annotations,
                     "labels": {"kubernetes.io/hostname": name, "zone": "z1"}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]}})
}

/// The list paths of every kind `veild` requires (CRD kinds are optional and
/// left out: 404), with no items.
pub fn empty_lists() -> BTreeMap<String, (String, Vec<Value>)> {
    [
        ("/api/v1/nodes", "NodeList"),
        ("/api/v1/namespaces", "NamespaceList"),
        ("/api/v1/pods", "PodList"),
        ("/api/v1/services", "ServiceList"),
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            "EndpointSliceList",
        ),
        (
            "/apis/networking.k8s.io/v1/networkpolicies",
            "NetworkPolicyList",
        ),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_string(), (k.to_string(), Vec::new())))
    .collect()
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "reason": reason, "code": code, "message": reason})
}

impl FakeApi {
    /// Starts the server in `ns`, serving `node` as the daemon's own Node
    /// (also listed) and `lists`.
    pub fn start(
        ns: &Netns,
        own_node: Value,
        mut lists: BTreeMap<String, (String, Vec<Value>)>,
    ) -> FakeApi {
        let nodes = lists
            .entry("/api/v1/nodes".into())
            .or_insert_with(|| ("NodeList".into(), Vec::new()));
        if !nodes
            .1
            .iter()
            .any(|n| n["metadata"]["name"] == own_node["metadata"]["name"])
        {
            nodes.1.insert(0, own_node.clone());
        }
        let state = Arc::new(Mutex::new(ApiState {
            rv: 1,
            lists,
            node: own_node,
        }));
        let listener = ns
            .enter(|| TcpListener::bind("127.0.0.1:0").expect("bind the fake API server"))
            .join()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let api = FakeApi {
            port,
            state,
            log: Arc::default(),
            mode: Arc::new(AtomicU8::new(Mode::Up as u8)),
            stop: Arc::default(),
        };
        let (state, log, mode, stop) = (
            api.state.clone(),
            api.log.clone(),
            api.mode.clone(),
            api.stop.clone(),
        );
        // Accepts on a thread inside the namespace, so that the listener can
        // be closed and bound again there.
        ns.enter(move || {
            let mut listener = Some(listener);
            while !stop.load(Ordering::SeqCst) {
                let m = mode.load(Ordering::SeqCst);
                if m == Mode::Refused as u8 {
                    listener = None;
                } else if listener.is_none() {
                    listener = TcpListener::bind(("127.0.0.1", port)).ok();
                }
                if let Some(l) = &listener {
                    l.set_nonblocking(true).unwrap();
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nonblocking(false);
                        let (st, lg, md) = (state.clone(), log.clone(), mode.clone());
                        std::thread::spawn(move || handle(s, &st, &lg, &md));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        api
    }

    /// Takes the server away, or brings it back.
    pub fn set_mode(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
    }

    /// Replaces the items of list `path` (a change: the resource version moves).
    pub fn set_list(&self, path: &str, items: Vec<Value>) {
        let mut s = self.state.lock().unwrap();
        s.lists.get_mut(path).expect("a known list path").1 = items;
        s.rv += 1;
    }

    /// The WireGuard public keys the daemon published on its Node, in order.
    pub fn key_patches(&self) -> Vec<String> {
        let name = self.state.lock().unwrap().node["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| {
                s.method == "PATCH" && s.target.starts_with(&format!("/api/v1/nodes/{name}"))
            })
            .filter_map(|s| {
                s.body["metadata"]["annotations"]["veil.dev/wireguard-public-key"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://127.0.0.1:{}\"}}\n\
                 users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u}}\ncurrent-context: c\n",
                self.port
            ),
        )
        .unwrap();
        path
    }
}

fn mode_of(m: &AtomicU8) -> u8 {
    m.load(Ordering::SeqCst)
}

fn query_value<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    target
        .split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn handle(mut s: TcpStream, state: &Mutex<ApiState>, log: &Mutex<Vec<Seen>>, mode: &AtomicU8) {
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
    if mode_of(mode) != Mode::Up as u8 {
        // Hanging (or going away): no answer, ever (bounded).
        let deadline = Instant::now() + Duration::from_secs(120);
        while mode_of(mode) != Mode::Up as u8 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        return;
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let (listed, rv) = {
        let st = state.lock().unwrap();
        (st.lists.contains_key(&path), st.rv)
    };
    if method == "GET" && listed && query_value(&target, "watch") == Some("true") {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        );
        if query_value(&target, "resourceVersion") != Some(rv.to_string().as_str()) {
            let gone = json!({"type": "ERROR", "object": status(410, "Expired")});
            let _ = s.write_all((gone.to_string() + "\n").as_bytes());
            return;
        }
        // Nothing to report: silence until a change, an outage or 60 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline
            && mode_of(mode) == Mode::Up as u8
            && state.lock().unwrap().rv == rv
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
        return;
    }
    let (code, v) = {
        let st = state.lock().unwrap();
        let own = format!(
            "/api/v1/nodes/{}",
            st.node["metadata"]["name"].as_str().unwrap_or("")
        );
        match (method.as_str(), &st.lists.get(&path)) {
            ("GET", Some((kind, items))) => (
                200,
                json!({"apiVersion": "v1", "kind": kind,
                       "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            ),
            ("GET" | "PATCH", None) if path == own => (200, st.node.clone()),
            ("GET", None) => (404, status(404, "NotFound")),
            // Lease create and update, Events: accepted.
            ("POST" | "PUT", _) => (201, body),
            _ => (405, status(405, "MethodNotAllowed")),
        }
    };
    let text = serde_json::to_vec(&v).unwrap();
    let _ = write!(
        s,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    let _ = s.write_all(&text);
}

/// `ip netns exec <ns> veild --datastore kube` for node `node_name`, with
/// its socket, state and WireGuard socket directory in `dir`, flows off, HTTP
/// on `http_listen`; stdin and stdout null, stderr to `dir/veild.log`.
pub fn veild_kube(
    ns: &Netns,
    dir: &Path,
    kubeconfig: &Path,
    node_name: &str,
    http_listen: &str,
) -> std::process::Command {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(bin("veild"))
        .args(["--datastore", "kube", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--node-name", node_name, "--underlay-interface", "eth0"])
        .arg("--socket")
        .arg(dir.join("veild.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--wireguard-socket-dir")
        .arg(dir.join("wg"))
        .args(["--http-listen", http_listen, "--flows", "off"])
        .env("VEIL_LEASE_NAMESPACE", "kube-system")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("veild.log")).unwrap());
    cmd
}
