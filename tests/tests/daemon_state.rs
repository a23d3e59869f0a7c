//! `veild` state survives a SIGKILL: after a restart it knows every endpoint and
//! allocation, never hands out an address still in use, and serves the socket API.
//! Runs veild inside a fresh network namespace (it installs its nftables table
//! and enables forwarding there, never in the machine's own namespace).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test creates network namespaces and must run as root"
    );
}

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("vtd{}-{tag}", std::process::id() % 100000);
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        let n = Netns(name);
        n.ip(&["link", "set", "lo", "up"]);
        n.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ]);
        n.ip(&["addr", "add", "198.18.0.10/15", "dev", "eth0"]);
        n.ip(&["link", "set", "eth0", "up"]);
        n
    }
    fn ip(&self, args: &[&str]) {
        let ok = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "ip -n {} {:?}", self.0, args);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(ns: &Netns, dir: &Path) -> Daemon {
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(bin("veild"))
        .args(["--node-name", "node-a", "--node-address", "198.18.0.10"])
        .args([
            "--pod-cidr",
            "10.244.0.0/24",
            "--underlay-interface",
            "eth0",
        ])
        .arg("--socket")
        .arg(dir.join("veild.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--datastore-dir")
        .arg(dir.join("ds"))
        .args(["--http-listen", "127.0.0.1:19590"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn veild");
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(v) = call(dir, "cni.status", Value::Null) {
            if v["ready"] == true {
                return d;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("veild did not become ready");
}

fn call(dir: &Path, method: &str, params: Value) -> Result<Value, String> {
    veil_call(&dir.join("veild.sock"), method, params)
}

fn veil_call(sock: &Path, method: &str, params: Value) -> Result<Value, String> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::os::unix::net::UnixStream::connect(sock).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = serde_json::to_vec(&json!({"method": method, "params": params})).unwrap();
    line.push(b'\n');
    (&s).write_all(&line).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
    match v.get("ok") {
        Some(ok) => Ok(ok.clone()),
        None => Err(v.to_string()),
    }
}

fn add(dir: &Path, id: &str) -> String {
    add_in(dir, id, "veil")
}

fn add_in(dir: &Path, id: &str, network: &str) -> String {
    let r = call(
        dir,
        "cni.add",
        json!({"container_id": id, "netns": format!("/var/run/netns/{id}"), "ifname": "eth0",
               "host_ifname": format!("veil{id}"), "pod_namespace": "x", "pod_name": id,
               "network": network, "ipam": {"kind": "daemon"}}),
    )
    .expect("cni.add");
    call(
        dir,
        "cni.commit",
        json!({"container_id": id, "ifname": "eth0"}),
    )
    .expect("cni.commit");
    r["ips"][0].as_str().unwrap().to_string()
}

#[test]
fn endpoints_and_allocations_survive_sigkill() {
    require_root();
    let ns = Netns::new("state");
    let dir = std::env::temp_dir().join(format!("veil-state-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = start(&ns, &dir);
    let a = add(&dir, "aaa");
    let b = add(&dir, "bbb");
    assert_ne!(a, b);
    // SIGKILL: no chance to save anything at exit.
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    let _d2 = start(&ns, &dir);
    let status = call(&dir, "node.status", Value::Null).unwrap();
    let eps = status["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2, "{status}");
    let c = add(&dir, "ccc");
    assert!(c != a && c != b, "{c} was handed out again");
    // The published endpoint records are in the shared datastore.
    let published = std::fs::read_dir(dir.join("ds/endpoints/node-a"))
        .unwrap()
        .count();
    assert_eq!(published, 3);
    // DEL is idempotent and releases.
    call(
        &dir,
        "cni.del",
        json!({"container_id": "aaa", "ifname": "eth0"}),
    )
    .unwrap();
    let again = call(
        &dir,
        "cni.del",
        json!({"container_id": "aaa", "ifname": "eth0"}),
    )
    .unwrap();
    assert_eq!(again["existed"], false);
    // The fail-closed table is in the node's namespace.
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "nft", "list", "table", "inet", "veil",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("fail_closed"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gc_releases_only_the_collected_networks_endpoints() {
    require_root();
    let ns = Netns::new("gc");
    let dir = std::env::temp_dir().join(format!("veil-gc-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _d = start(&ns, &dir);
    add_in(&dir, "keep1", "net-a");
    add_in(&dir, "stale1", "net-a");
    add_in(&dir, "other1", "net-b");
    let r = call(
        &dir,
        "cni.gc",
        json!({"valid": [{"containerID": "keep1", "ifname": "eth0"}], "network": "net-a"}),
    )
    .unwrap();
    assert_eq!(r["removed_host_ifnames"], json!(["veilstale1"]), "{r}");
    let status = call(&dir, "node.status", Value::Null).unwrap();
    let mut pods: Vec<String> = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pod"].as_str().unwrap().to_string())
        .collect();
    pods.sort();
    assert_eq!(pods, ["x/keep1", "x/other1"]);
    let _ = std::fs::remove_dir_all(&dir);
}
