//! Table tests of `veil_cni::run`/`execute` without a process: a fake `veild`
//! (a unix-socket server in the test speaking the api protocol) and the
//! in-memory link layer.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use veil_cni::links::fake::FakeLinks;
use veil_cni::links::{IfaceState, LinkError, Links, PodLinkSpec, Wired};
use veil_cni::plugin::host_ifname;

const NETNS: &str = "/run/netns/pod-a";

/// Knobs and state of the fake daemon.
#[derive(Default)]
struct DaemonState {
    calls: Vec<(String, Value)>,
    endpoints: BTreeMap<(String, String), Value>,
    next: u32,
    not_ready: bool,
    fail_commit: bool,
    add_error: Option<(u32, String)>,
    dual_stack: bool,
}

struct FakeDaemon {
    socket: PathBuf,
    state: Arc<Mutex<DaemonState>>,
    _dir: tempfile::TempDir,
}

impl FakeDaemon {
    fn start() -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("veild.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let state = Arc::new(Mutex::new(DaemonState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    continue;
                }
                let req: Value = serde_json::from_str(&line).unwrap();
                let reply = answer(&mut st.lock().unwrap(), &req);
                let mut out = serde_json::to_vec(&reply).unwrap();
                out.push(b'\n');
                let _ = (&conn).write_all(&out);
            }
        });
        FakeDaemon {
            socket,
            state,
            _dir: dir,
        }
    }

    fn methods(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .map(|(m, _)| m.clone())
            .collect()
    }

    fn params(&self, method: &str) -> Value {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, p)| p.clone())
            .unwrap_or(Value::Null)
    }

    fn endpoints(&self) -> usize {
        self.state.lock().unwrap().endpoints.len()
    }
}

fn answer(st: &mut DaemonState, req: &Value) -> Value {
    let m = req["method"].as_str().unwrap().to_string();
    let p = req["params"].clone();
    st.calls.push((m.clone(), p.clone()));
    let key = || {
        (
            p["container_id"].as_str().unwrap_or_default().to_string(),
            p["ifname"].as_str().unwrap_or_default().to_string(),
        )
    };
    match m.as_str() {
        "cni.add" => {
            if let Some((code, msg)) = &st.add_error {
                return json!({"error": {"code": code, "msg": msg}});
            }
            let k = key();
            if !st.endpoints.contains_key(&k) {
                st.next += 1;
                let ips = if p["ipam"]["kind"] == "delegated" {
                    p["ipam"]["ips"].clone()
                } else if let Some(first) = p["requested_ips"].as_array().and_then(|a| a.first()) {
                    json!([format!("{}/32", first.as_str().unwrap())])
                } else if st.dual_stack {
                    json!([
                        format!("10.244.1.{}/32", st.next + 1),
                        format!("fd00:10:244::{:x}/128", st.next + 1)
                    ])
                } else {
                    json!([format!("10.244.1.{}/32", st.next + 1)])
                };
                let gateways = if st.dual_stack {
                    json!(["169.254.1.1", "fe80::1"])
                } else {
                    json!(["169.254.1.1"])
                };
                st.endpoints.insert(
                    k.clone(),
                    json!({"ips": ips, "gateways": gateways, "mtu": 1450,
                           "host_ifname": p["host_ifname"]}),
                );
            }
            json!({"ok": st.endpoints[&k]})
        }
        "cni.commit" if st.fail_commit => json!({"error": {"code": 102, "msg": "disk full"}}),
        "cni.commit" => json!({"ok": null}),
        "cni.del" => {
            let e = st.endpoints.remove(&key());
            json!({"ok": {"existed": e.is_some(), "host_ifname": e.map(|e| e["host_ifname"].clone())}})
        }
        "cni.check" => match st.endpoints.get(&key()) {
            Some(e) => json!({"ok": e}),
            None => json!({"error": {"code": 3, "msg": "no such endpoint"}}),
        },
        "cni.status" if st.not_ready => {
            json!({"ok": {"ready": false, "reason": "datastore not synced"}})
        }
        "cni.status" => json!({"ok": {"ready": true}}),
        "cni.gc" => {
            let valid: Vec<(String, String)> = p["valid"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["containerID"].as_str().unwrap().to_string(),
                        a["ifname"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            let gone: Vec<(String, String)> = st
                .endpoints
                .keys()
                .filter(|k| !valid.contains(k))
                .cloned()
                .collect();
            let hosts: Vec<Value> = gone
                .iter()
                .map(|k| st.endpoints.remove(k).unwrap()["host_ifname"].clone())
                .collect();
            let removed: Vec<Value> = gone
                .iter()
                .map(|(c, i)| json!({"containerID": c, "ifname": i}))
                .collect();
            json!({"ok": {"removed_host_ifnames": hosts, "removed": removed}})
        }
        _ => json!({"error": {"code": 101, "msg": "unknown method"}}),
    }
}

fn env(cmd: &str, cid: &str, ifname: &str) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("CNI_COMMAND".to_string(), cmd.to_string());
    if !cid.is_empty() {
        v.insert("CNI_CONTAINERID".into(), cid.into());
        v.insert("CNI_IFNAME".into(), ifname.into());
        v.insert("CNI_NETNS".into(), NETNS.into());
        v.insert(
            "CNI_ARGS".into(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0".into(),
        );
    }
    v.insert("CNI_PATH".into(), "/nonexistent".into());
    v
}

fn conf(version: &str, socket: &Path) -> Value {
    json!({"cniVersion": version, "name": "veilnet", "type": "veil",
           "socket": socket, "someUnknownKey": {"x": [1, 2]}})
}

struct Out {
    code: i32,
    json: Value,
}

fn exec(vars: &BTreeMap<String, String>, conf: &Value, links: &mut dyn Links) -> Out {
    let stdin = serde_json::to_vec(conf).unwrap();
    exec_raw(vars, &stdin, links)
}

fn exec_raw(vars: &BTreeMap<String, String>, stdin: &[u8], links: &mut dyn Links) -> Out {
    let mut out = Vec::new();
    let code = veil_cni::execute(vars, stdin, &mut out, links);
    let json = if out.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}): {:?}",
                String::from_utf8_lossy(&out)
            )
        })
    };
    Out { code, json }
}

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[test]
fn add_answers_in_the_format_of_every_version() {
    for v in VERSIONS {
        let d = FakeDaemon::start();
        let mut links = FakeLinks::with_namespaces(&[NETNS]);
        let out = exec(&env("ADD", "c1", "eth0"), &conf(v, &d.socket), &mut links);
        assert_eq!(out.code, 0, "{v}: {}", out.json);
        let r = &out.json;
        let host = host_ifname("c1", "eth0");
        assert_eq!(r["cniVersion"], v);
        assert_eq!(r["interfaces"][0]["name"], host.as_str());
        assert!(r["interfaces"][0].get("sandbox").is_none());
        assert_eq!(r["interfaces"][1]["name"], "eth0");
        assert_eq!(r["interfaces"][1]["sandbox"], NETNS);
        assert_eq!(
            r["interfaces"][1]["mac"],
            links.pods[&(NETNS.into(), "eth0".into())].mac.as_str()
        );
        assert_eq!(r["ips"][0]["address"], "10.244.1.2/32");
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(r["ips"][0]["interface"], 1);
        let has_version = r["ips"][0].get("version").is_some();
        assert_eq!(has_version, v.starts_with('0'), "{v}: {r}");
        let has_mtu = r["interfaces"][1].get("mtu").is_some();
        assert_eq!(has_mtu, v == "1.1.0", "{v}: {r}");
        assert!(r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["dst"] == "0.0.0.0/0" && x["gw"] == "169.254.1.1"));
        assert_eq!(r["dns"], json!({}));
        // The daemon heard the pod's identity and the host end's name.
        let p = d.params("cni.add");
        assert_eq!(p["pod_namespace"], "shop");
        assert_eq!(p["pod_name"], "web-0");
        assert_eq!(p["host_ifname"], host.as_str());
        assert_eq!(p["network"], "veilnet");
        assert_eq!(p["ipam"]["kind"], "daemon");
        assert_eq!(d.methods(), vec!["cni.add", "cni.commit"]);
        // The kernel side: MTU from the daemon, the address, the routes.
        let pod = &links.pods[&(NETNS.into(), "eth0".into())];
        assert_eq!(pod.mtu, 1450);
        assert_eq!(pod.addrs, vec!["10.244.1.2/32".parse().unwrap()]);
        assert!(links.host.contains_key(&host));
    }
}

#[test]
fn ipv6_addresses_get_a_host_prefix_and_their_own_gateway() {
    for v in ["0.4.0", "1.1.0"] {
        let d = FakeDaemon::start();
        d.state.lock().unwrap().dual_stack = true;
        let mut links = FakeLinks::with_namespaces(&[NETNS]);
        let out = exec(&env("ADD", "c1", "eth0"), &conf(v, &d.socket), &mut links);
        assert_eq!(out.code, 0, "{}", out.json);
        let r = &out.json;
        assert_eq!(r["ips"][1]["address"], "fd00:10:244::2/128", "{r}");
        assert_eq!(r["ips"][1]["gateway"], "fe80::1");
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
        if v == "0.4.0" {
            assert_eq!(r["ips"][1]["version"], "6");
        }
        assert!(
            r["routes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["dst"] == "::/0" && x["gw"] == "fe80::1"),
            "{r}"
        );
        let pod = &links.pods[&(NETNS.into(), "eth0".into())];
        assert_eq!(pod.addrs.len(), 2);
        // CHECK sees both families' routes.
        let mut c = conf(v, &d.socket);
        c["prevResult"] = out.json.clone();
        assert_eq!(exec(&env("CHECK", "c1", "eth0"), &c, &mut links).code, 0);
    }
}

#[test]
fn mtu_in_the_config_overrides_the_daemon() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let mut c = conf("1.1.0", &d.socket);
    c["mtu"] = json!(1300);
    let out = exec(&env("ADD", "c1", "eth0"), &c, &mut links);
    assert_eq!(out.code, 0, "{}", out.json);
    assert_eq!(out.json["interfaces"][1]["mtu"], 1300);
    assert_eq!(links.pods[&(NETNS.into(), "eth0".into())].mtu, 1300);
}

#[test]
fn fixed_addresses_come_from_runtime_config_or_cni_args() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let mut c = conf("1.0.0", &d.socket);
    c["runtimeConfig"] = json!({"ips": ["10.244.1.77/24"]});
    let out = exec(&env("ADD", "c1", "eth0"), &c, &mut links);
    assert_eq!(out.code, 0, "{}", out.json);
    assert_eq!(d.params("cni.add")["requested_ips"], json!(["10.244.1.77"]));
    assert_eq!(out.json["ips"][0]["address"], "10.244.1.77/32");

    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let mut e = env("ADD", "c1", "eth0");
    e.insert("CNI_ARGS".into(), "K8S_POD_NAME=x;IP=10.244.1.88".into());
    let out = exec(&e, &conf("1.0.0", &d.socket), &mut links);
    assert_eq!(out.code, 0, "{}", out.json);
    assert_eq!(d.params("cni.add")["requested_ips"], json!(["10.244.1.88"]));
}

#[test]
fn chained_add_appends_to_prev_result() {
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let d = FakeDaemon::start();
        let mut links = FakeLinks::with_namespaces(&[NETNS]);
        let mut c = conf(v, &d.socket);
        c["prevResult"] = json!({
            "cniVersion": v,
            "interfaces": [{"name": "dummy0", "mac": "02:00:00:00:00:99"}],
            "ips": [{"address": "192.0.2.5/24", "interface": 0}],
            "routes": [{"dst": "192.0.2.0/24"}],
            "dns": {"nameservers": ["10.96.0.10"]}
        });
        let out = exec(&env("ADD", "c1", "eth0"), &c, &mut links);
        assert_eq!(out.code, 0, "{}", out.json);
        let r = &out.json;
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["interfaces"][0]["name"], "dummy0");
        assert_eq!(r["ips"][0]["address"], "192.0.2.5/24");
        assert_eq!(r["ips"][0]["interface"], 0);
        assert_eq!(r["ips"][1]["interface"], 2, "{r}");
        assert_eq!(r["routes"][0]["dst"], "192.0.2.0/24");
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
    }
}

#[test]
fn failed_wiring_rolls_back_the_daemon_reservation() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    links.fail_wire = Some(1); // EPERM
    let out = exec(
        &env("ADD", "c1", "eth0"),
        &conf("1.1.0", &d.socket),
        &mut links,
    );
    assert_eq!(out.code, 1);
    assert_eq!(out.json["code"], 101, "{}", out.json);
    assert_eq!(out.json["cniVersion"], "1.1.0");
    assert!(out.json.get("interfaces").is_none(), "no partial result");
    assert_eq!(d.methods(), vec!["cni.add", "cni.del"]);
    assert_eq!(d.endpoints(), 0);
    assert!(links.host.is_empty() && links.pods.is_empty());
}

#[test]
fn failed_commit_rolls_back_links_and_reservation() {
    let d = FakeDaemon::start();
    d.state.lock().unwrap().fail_commit = true;
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let out = exec(
        &env("ADD", "c1", "eth0"),
        &conf("1.0.0", &d.socket),
        &mut links,
    );
    assert_eq!(out.json["code"], 102, "{}", out.json);
    assert_eq!(d.methods(), vec!["cni.add", "cni.commit", "cni.del"]);
    assert!(links.host.is_empty() && links.pods.is_empty(), "{links:?}");
    assert_eq!(d.endpoints(), 0);
}

#[test]
fn existing_interface_is_an_error_before_anything_is_reserved() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    links.pods.insert(
        (NETNS.into(), "eth0".into()),
        IfaceState {
            name: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            up: true,
            veth: false,
            addrs: vec![],
            routes: vec![],
        },
    );
    let out = exec(
        &env("ADD", "c1", "eth0"),
        &conf("1.0.0", &d.socket),
        &mut links,
    );
    assert_eq!(out.json["code"], 102, "{}", out.json);
    assert!(d.methods().is_empty());
}

#[test]
fn missing_netns_is_an_invalid_variable() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[]);
    let out = exec(
        &env("ADD", "c1", "eth0"),
        &conf("1.0.0", &d.socket),
        &mut links,
    );
    assert_eq!(out.json["code"], 4, "{}", out.json);
    assert!(out.json["msg"].as_str().unwrap().contains(NETNS));
    assert!(d.methods().is_empty());
}

#[test]
fn unreachable_daemon_is_try_again_later_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let c = conf("1.1.0", &dir.path().join("nobody.sock"));
    let out = exec(&env("ADD", "c1", "eth0"), &c, &mut links);
    assert_eq!(out.json["code"], 11, "{}", out.json);
    assert!(links.host.is_empty() && links.pods.is_empty());
    assert!(links.calls.iter().all(|c| !c.starts_with("wire")));
}

#[test]
fn daemon_error_codes_pass_through() {
    let d = FakeDaemon::start();
    d.state.lock().unwrap().add_error =
        Some((7, "10.244.9.9 is outside this node's pod CIDR".into()));
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let out = exec(
        &env("ADD", "c1", "eth0"),
        &conf("1.0.0", &d.socket),
        &mut links,
    );
    assert_eq!(out.json["code"], 7);
    assert!(
        out.json["msg"].as_str().unwrap().contains("outside"),
        "{}",
        out.json
    );
}

#[test]
fn del_is_idempotent() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let c = conf("1.0.0", &d.socket);
    assert_eq!(exec(&env("ADD", "c1", "eth0"), &c, &mut links).code, 0);
    for round in 0..2 {
        let out = exec(&env("DEL", "c1", "eth0"), &c, &mut links);
        assert_eq!(out.code, 0, "round {round}: {}", out.json);
        assert_eq!(out.json, Value::Null, "DEL prints nothing");
    }
    assert!(links.host.is_empty() && links.pods.is_empty());
    assert_eq!(d.endpoints(), 0);
    // Without CNI_NETNS, and with a namespace that is gone.
    let mut e = env("DEL", "c1", "eth0");
    e.remove("CNI_NETNS");
    assert_eq!(exec(&e, &c, &mut links).code, 0);
    e.insert("CNI_NETNS".into(), "/run/netns/gone".into());
    assert_eq!(exec(&e, &c, &mut links).code, 0);
    // A daemon that never heard of the container.
    assert_eq!(exec(&env("DEL", "never", "eth0"), &c, &mut links).code, 0);
}

#[test]
fn del_with_daemon_down_removes_links_then_asks_to_retry() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    assert_eq!(
        exec(
            &env("ADD", "c1", "eth0"),
            &conf("1.0.0", &d.socket),
            &mut links
        )
        .code,
        0
    );
    let dir = tempfile::tempdir().unwrap();
    let down = conf("1.0.0", &dir.path().join("down.sock"));
    let out = exec(&env("DEL", "c1", "eth0"), &down, &mut links);
    assert_eq!(out.json["code"], 11, "{}", out.json);
    assert!(links.host.is_empty() && links.pods.is_empty());
    // The retry, with the daemon back, releases the address.
    let out = exec(
        &env("DEL", "c1", "eth0"),
        &conf("1.0.0", &d.socket),
        &mut links,
    );
    assert_eq!(out.code, 0);
    assert_eq!(d.endpoints(), 0);
}

fn added(d: &FakeDaemon, links: &mut FakeLinks, v: &str) -> Value {
    let out = exec(&env("ADD", "c1", "eth0"), &conf(v, &d.socket), links);
    assert_eq!(out.code, 0, "{}", out.json);
    let mut c = conf(v, &d.socket);
    c["prevResult"] = out.json;
    c
}

#[test]
fn check_passes_after_add_and_names_what_is_wrong() {
    let key = (NETNS.to_string(), "eth0".to_string());
    type Breaker = fn(&mut FakeLinks, &(String, String));
    let cases: Vec<(&str, Breaker, u64, &str)> = vec![
        ("intact", |_, _| {}, 0, ""),
        (
            "pod iface gone",
            |l, k| {
                l.pods.remove(k);
            },
            110,
            "missing",
        ),
        (
            "pod iface down",
            |l, k| l.pods.get_mut(k).unwrap().up = false,
            110,
            "down",
        ),
        (
            "mtu changed",
            |l, k| l.pods.get_mut(k).unwrap().mtu = 9000,
            110,
            "MTU",
        ),
        (
            "address gone",
            |l, k| l.pods.get_mut(k).unwrap().addrs.clear(),
            111,
            "10.244.1.2/32",
        ),
        (
            "default route gone",
            |l, k| {
                l.pods
                    .get_mut(k)
                    .unwrap()
                    .routes
                    .retain(|r| r.dst.prefix() != 0)
            },
            112,
            "default route",
        ),
        (
            "host route gone",
            |l, _| {
                for h in l.host.values_mut() {
                    h.routes.clear();
                }
            },
            112,
            "on the node",
        ),
        (
            "host end gone",
            |l, _| l.host.clear(),
            110,
            "host interface",
        ),
    ];
    for (name, breaker, code, needle) in cases {
        let d = FakeDaemon::start();
        let mut links = FakeLinks::with_namespaces(&[NETNS]);
        let c = added(&d, &mut links, "1.0.0");
        breaker(&mut links, &key);
        let out = exec(&env("CHECK", "c1", "eth0"), &c, &mut links);
        if code == 0 {
            assert_eq!(out.code, 0, "{name}: {}", out.json);
            assert_eq!(out.json, Value::Null);
        } else {
            assert_eq!(out.json["code"], code, "{name}: {}", out.json);
            assert!(
                out.json["msg"].as_str().unwrap().contains(needle),
                "{name}: {}",
                out.json
            );
        }
    }
}

#[test]
fn check_compares_prev_result_with_the_daemon_record() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let mut c = added(&d, &mut links, "1.1.0");
    c["prevResult"]["ips"][0]["address"] = json!("10.244.1.99/32");
    let out = exec(&env("CHECK", "c1", "eth0"), &c, &mut links);
    assert_eq!(out.json["code"], 113, "{}", out.json);
    // The daemon forgot the endpoint: its error comes through.
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let c = added(&d, &mut links, "1.1.0");
    d.state.lock().unwrap().endpoints.clear();
    let out = exec(&env("CHECK", "c1", "eth0"), &c, &mut links);
    assert_eq!(out.json["code"], 3, "{}", out.json);
}

#[test]
fn check_needs_version_0_4_and_a_prev_result() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    for v in ["0.3.0", "0.3.1"] {
        let c = added(&d, &mut links, v);
        let out = exec(&env("CHECK", "c1", "eth0"), &c, &mut links);
        assert_eq!(out.json["code"], 1, "{v}: {}", out.json);
        exec(&env("DEL", "c1", "eth0"), &c, &mut links);
    }
    let out = exec(
        &env("CHECK", "c1", "eth0"),
        &conf("1.0.0", &d.socket),
        &mut links,
    );
    assert_eq!(out.json["code"], 7, "{}", out.json);
}

#[test]
fn status_reports_readiness_as_code_50() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::default();
    let out = exec(
        &env("STATUS", "", ""),
        &conf("1.1.0", &d.socket),
        &mut links,
    );
    assert_eq!(out.code, 0, "{}", out.json);
    d.state.lock().unwrap().not_ready = true;
    let out = exec(
        &env("STATUS", "", ""),
        &conf("1.1.0", &d.socket),
        &mut links,
    );
    assert_eq!(out.json["code"], 50);
    assert!(out.json["msg"]
        .as_str()
        .unwrap()
        .contains("datastore not synced"));
    let dir = tempfile::tempdir().unwrap();
    let out = exec(
        &env("STATUS", "", ""),
        &conf("1.1.0", &dir.path().join("x.sock")),
        &mut links,
    );
    assert_eq!(out.json["code"], 50, "{}", out.json);
    let out = exec(
        &env("STATUS", "", ""),
        &conf("1.0.0", &d.socket),
        &mut links,
    );
    assert_eq!(out.json["code"], 1, "{}", out.json);
}

#[test]
fn gc_releases_what_is_not_valid_and_deletes_its_links() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS, "/run/netns/pod-b"]);
    let c = conf("1.1.0", &d.socket);
    assert_eq!(exec(&env("ADD", "c1", "eth0"), &c, &mut links).code, 0);
    let mut e = env("ADD", "c2", "eth0");
    e.insert("CNI_NETNS".into(), "/run/netns/pod-b".into());
    assert_eq!(exec(&e, &c, &mut links).code, 0);
    let mut g = c.clone();
    g["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    let out = exec(&env("GC", "", ""), &g, &mut links);
    assert_eq!(out.code, 0, "{}", out.json);
    assert_eq!(d.params("cni.gc")["network"], "veilnet");
    assert!(links.host.contains_key(&host_ifname("c1", "eth0")));
    assert!(!links.host.contains_key(&host_ifname("c2", "eth0")));
    assert_eq!(d.endpoints(), 1);
    // Without the list GC refuses rather than collecting everything; before 1.1.0 it does not exist.
    assert_eq!(exec(&env("GC", "", ""), &c, &mut links).json["code"], 7);
    let mut old = g.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(exec(&env("GC", "", ""), &old, &mut links).json["code"], 1);
    assert_eq!(d.endpoints(), 1);
}

#[test]
fn version_lists_every_supported_version() {
    let mut links = FakeLinks::default();
    let mut e = BTreeMap::new();
    e.insert("CNI_COMMAND".to_string(), "VERSION".to_string());
    let out = exec_raw(&e, br#"{"cniVersion":"0.4.0"}"#, &mut links);
    assert_eq!(out.code, 0);
    assert_eq!(
        out.json,
        json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn bad_input_gives_the_spec_codes_and_one_error_object() {
    let d = FakeDaemon::start();
    let good = serde_json::to_vec(&conf("1.0.0", &d.socket)).unwrap();
    type Case = (BTreeMap<String, String>, Vec<u8>, u64, &'static str);
    let cases: Vec<Case> = vec![
        (env("ADD", "c1", "eth0"), b"{not json".to_vec(), 6, "1.1.0"),
        (
            env("ADD", "c1", "eth0"),
            br#"{"cniVersion":"0.2.0","name":"n"}"#.to_vec(),
            1,
            "1.1.0",
        ),
        (
            env("ADD", "c1", "eth0"),
            br#"{"cniVersion":"1.0.0"}"#.to_vec(),
            7,
            "1.0.0",
        ),
        (
            env("ADD", "c1", "eth0"),
            br#"{"cniVersion":"0.3.1","name":"n","ipam":{"type":"x/y"}}"#.to_vec(),
            7,
            "0.3.1",
        ),
        (BTreeMap::new(), good.clone(), 4, "1.0.0"),
        (env("FROB", "c1", "eth0"), good.clone(), 4, "1.0.0"),
        (env("ADD", "bad/id", "eth0"), good.clone(), 4, "1.0.0"),
        (
            env("ADD", "c1", "waytoolongifname0"),
            good.clone(),
            4,
            "1.0.0",
        ),
        (
            {
                let mut e = env("ADD", "c1", "eth0");
                e.remove("CNI_NETNS");
                e
            },
            good.clone(),
            4,
            "1.0.0",
        ),
        (
            {
                let mut e = env("ADD", "c1", "eth0");
                e.insert("CNI_ARGS".into(), "garbage".into());
                e
            },
            good.clone(),
            4,
            "1.0.0",
        ),
    ];
    for (vars, stdin, code, version) in cases {
        let mut links = FakeLinks::with_namespaces(&[NETNS]);
        let out = exec_raw(&vars, &stdin, &mut links);
        assert_eq!(out.code, 1);
        assert_eq!(out.json["code"], code, "{vars:?} {}", out.json);
        assert_eq!(out.json["cniVersion"], version, "{}", out.json);
        assert!(out.json["msg"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(out.json.get("details").is_some());
        assert!(links.calls.is_empty());
    }
    assert!(d.methods().is_empty());
}

/// A link layer that panics: the plugin answers an error object, not a crash.
struct PanickingLinks;

impl Links for PanickingLinks {
    fn pod_iface(&mut self, _: &str, _: &str) -> Result<Option<IfaceState>, LinkError> {
        panic!("boom")
    }
    fn host_iface(&mut self, _: &str) -> Result<Option<IfaceState>, LinkError> {
        panic!("boom")
    }
    fn wire(&mut self, _: &PodLinkSpec) -> Result<Wired, LinkError> {
        panic!("boom")
    }
    fn delete_host(&mut self, _: &str) -> Result<bool, LinkError> {
        panic!("boom")
    }
    fn delete_pod(&mut self, _: &str, _: &str) -> Result<bool, LinkError> {
        panic!("boom")
    }
}

#[test]
fn a_panic_becomes_an_internal_error_object() {
    let d = FakeDaemon::start();
    let out = exec(
        &env("ADD", "c1", "eth0"),
        &conf("1.0.0", &d.socket),
        &mut PanickingLinks,
    );
    assert_eq!(out.code, 1);
    assert_eq!(out.json["code"], 100);
    assert!(out.json["msg"].as_str().unwrap().contains("boom"));
}

/// A fake IPAM plugin: a shell script that logs its invocations and answers
/// like host-local; with `refuse_1_1`, it speaks only up to 1.0.0 (as Debian's
/// containernetworking-plugins 1.1.1 does).
fn fake_ipam(dir: &Path, refuse_1_1: bool) -> PathBuf {
    let log = dir.join("ipam.log");
    let script = format!(
        r#"#!/bin/sh
conf=$(cat)
echo "$CNI_COMMAND $CNI_CONTAINERID $(echo "$conf" | grep -o '"cniVersion":"[^"]*"')" >> {log}
if [ "$CNI_COMMAND" = VERSION ]; then
  echo '{{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"{extra}]}}'; exit 0
fi
if [ {refuse} = 1 ] && echo "$conf" | grep -q '"cniVersion":"1.1.0"'; then
  echo '{{"code":1,"msg":"incompatible CNI versions"}}'; exit 1
fi
case "$CNI_COMMAND" in
  ADD) echo '{{"cniVersion":"1.0.0","ips":[{{"address":"10.244.7.3/24","gateway":"10.244.7.1"}}],"dns":{{"nameservers":["10.96.0.10"]}}}}';;
esac
exit 0
"#,
        log = log.display(),
        extra = if refuse_1_1 { "" } else { r#","1.1.0""# },
        refuse = u8::from(refuse_1_1),
    );
    let path = dir.join("fake-ipam");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    log
}

#[test]
fn delegated_ipam_is_run_from_cni_path_for_add_and_del() {
    for refuse in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let log = fake_ipam(dir.path(), refuse);
        let d = FakeDaemon::start();
        let mut links = FakeLinks::with_namespaces(&[NETNS]);
        let mut c = conf("1.1.0", &d.socket);
        c["ipam"] = json!({"type": "fake-ipam", "ranges": [[{"subnet": "10.244.7.0/24"}]]});
        let mut e = env("ADD", "c1", "eth0");
        e.insert(
            "CNI_PATH".into(),
            format!("/nonexistent:{}", dir.path().display()),
        );
        let out = exec(&e, &c, &mut links);
        assert_eq!(out.code, 0, "{}", out.json);
        assert_eq!(out.json["ips"][0]["address"], "10.244.7.3/32");
        assert_eq!(out.json["dns"]["nameservers"][0], "10.96.0.10");
        let p = d.params("cni.add");
        assert_eq!(
            p["ipam"],
            json!({"kind": "delegated", "ips": ["10.244.7.3/32"]})
        );
        e.insert("CNI_COMMAND".into(), "DEL".into());
        assert_eq!(exec(&e, &c, &mut links).code, 0);
        let log = std::fs::read_to_string(log).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        if refuse {
            assert_eq!(
                lines,
                vec![
                    r#"ADD c1 "cniVersion":"1.1.0""#,
                    r#"VERSION c1 "cniVersion":"0.4.0""#,
                    r#"ADD c1 "cniVersion":"1.0.0""#,
                    r#"DEL c1 "cniVersion":"1.1.0""#,
                    r#"VERSION c1 "cniVersion":"0.4.0""#,
                    r#"DEL c1 "cniVersion":"1.0.0""#,
                ],
                "{log}"
            );
        } else {
            assert_eq!(
                lines,
                vec![
                    r#"ADD c1 "cniVersion":"1.1.0""#,
                    r#"DEL c1 "cniVersion":"1.1.0""#
                ],
                "{log}"
            );
        }
    }
}

#[test]
fn delegated_ipam_is_released_when_the_daemon_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let log = fake_ipam(dir.path(), false);
    let d = FakeDaemon::start();
    d.state.lock().unwrap().add_error = Some((102, "disk full".into()));
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let mut c = conf("1.1.0", &d.socket);
    c["ipam"] = json!({"type": "fake-ipam"});
    let mut e = env("ADD", "c1", "eth0");
    e.insert("CNI_PATH".into(), dir.path().display().to_string());
    let out = exec(&e, &c, &mut links);
    assert_eq!(out.json["code"], 102, "{}", out.json);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.lines().any(|l| l.starts_with("DEL c1")), "{log}");
}

#[test]
fn gc_releases_delegated_allocations_with_del_when_the_plugin_has_no_gc() {
    let dir = tempfile::tempdir().unwrap();
    let log = fake_ipam(dir.path(), true);
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let mut c = conf("1.1.0", &d.socket);
    c["ipam"] = json!({"type": "fake-ipam"});
    let mut e = env("ADD", "c1", "eth0");
    e.insert("CNI_PATH".into(), dir.path().display().to_string());
    assert_eq!(exec(&e, &c, &mut links).code, 0);
    c["cni.dev/valid-attachments"] = json!([]);
    let mut g = env("GC", "", "");
    g.insert("CNI_PATH".into(), dir.path().display().to_string());
    let out = exec(&g, &c, &mut links);
    assert_eq!(out.code, 0, "{}", out.json);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.lines().any(|l| l == r#"DEL c1 "cniVersion":"1.0.0""#),
        "{log}"
    );
    assert!(!log.contains("GC"), "{log}");
    assert!(links.host.is_empty());
}

#[test]
fn missing_ipam_plugin_fails_before_the_daemon_is_asked() {
    let d = FakeDaemon::start();
    let mut links = FakeLinks::with_namespaces(&[NETNS]);
    let mut c = conf("1.0.0", &d.socket);
    c["ipam"] = json!({"type": "no-such-ipam"});
    let out = exec(&env("ADD", "c1", "eth0"), &c, &mut links);
    assert_eq!(out.json["code"], 103, "{}", out.json);
    assert!(out.json["msg"].as_str().unwrap().contains("no-such-ipam"));
    assert!(d.methods().is_empty());
}
