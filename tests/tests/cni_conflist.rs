//! The example network configuration list `deploy/cni/10-veil.conflist` (the
//! file the Kubernetes install copies to /etc/cni/net.d) works with the real
//! `veil` binary: ADD, CHECK and DEL of a pod in a fresh namespace against a
//! real `veild`, each plugin's configuration derived from the list as libcni
//! derives it (the plugin's object plus the list's `name` and `cniVersion`,
//! and `prevResult`). Only the daemon's socket differs from the file's
//! (`/run/veil/veild.sock`): the test's daemon listens in a directory of its own.

use serde_json::{Map, Value};
use veil_tests::{pod_vars, require_root, unique_prefix, Netns, Node};

fn conflist() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/cni/10-veil.conflist"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The configuration libcni gives `plugin` of `list`, pointed at `socket`.
fn plugin_conf(list: &Value, plugin: &Value, socket: &str, prev: Option<&Value>) -> Value {
    let mut c: Map<String, Value> = plugin.as_object().expect("plugin object").clone();
    c.insert("name".into(), list["name"].clone());
    c.insert("cniVersion".into(), list["cniVersion"].clone());
    c.insert("socket".into(), Value::String(socket.into()));
    if let Some(p) = prev {
        c.insert("prevResult".into(), p.clone());
    }
    Value::Object(c)
}

#[test]
fn the_example_conflist_is_what_the_install_expects() {
    let list = conflist();
    assert_eq!(list["cniVersion"], "1.1.0");
    assert_eq!(list["name"], "veil");
    let plugins = list["plugins"].as_array().expect("plugins");
    assert_eq!(plugins[0]["type"], "veil");
    assert_eq!(plugins[0]["socket"], "/run/veil/veild.sock");
}

#[test]
fn the_example_conflist_adds_checks_and_deletes_a_pod() {
    require_root();
    let p = unique_prefix();
    let node = Node::start(&p, "10.244.14.0/24");
    let socket = node.socket.display().to_string();
    let list = conflist();
    let plugins = list["plugins"].as_array().expect("plugins").clone();
    let pod = Netns::new(&format!("{p}-pod"));
    let cid = format!("{p}c0");
    let path = pod.path();
    let vars = pod_vars(
        &cid,
        &path,
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web",
    );

    // ADD: each plugin in order, the previous result passed on.
    let mut result: Option<Value> = None;
    for plugin in &plugins {
        let conf = plugin_conf(&list, plugin, &socket, result.as_ref());
        result = Some(node.cni("ADD", &vars, &conf).ok());
    }
    let result = result.expect("a result");
    assert_eq!(result["cniVersion"], "1.1.0");
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {result}"))
        .to_string();
    assert!(ip.starts_with("10.244.14."), "{ip}");
    let ping = node.netns.exec(&["ping", "-c", "1", "-W", "2", &ip]);
    assert!(
        ping.status.success(),
        "the node cannot reach the pod at {ip}"
    );
    assert_eq!(node.endpoints().len(), 1);

    // CHECK: each plugin in order, with the final result.
    for plugin in &plugins {
        let conf = plugin_conf(&list, plugin, &socket, Some(&result));
        assert_eq!(node.cni("CHECK", &vars, &conf).ok(), Value::Null);
    }

    // DEL: each plugin in reverse order, with the final result; twice.
    for _ in 0..2 {
        for plugin in plugins.iter().rev() {
            let conf = plugin_conf(&list, plugin, &socket, Some(&result));
            assert_eq!(node.cni("DEL", &vars, &conf).ok(), Value::Null);
        }
    }
    assert!(node.veil_links().is_empty(), "{:?}", node.veil_links());
    assert!(node.endpoints().is_empty(), "{:?}", node.endpoints());
}
