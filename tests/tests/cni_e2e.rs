//! The `veil` CNI binary run exactly as a container runtime runs it
//! (environment + configuration on stdin, in the node's namespace) against a
//! real `veild`, in fresh network namespaces: every command in every
//! supported version, the error codes, DEL twice and after the namespace is
//! gone, chaining with the reference plugins, delegated host-local IPAM, 100
//! pods added and deleted without leftovers, 50 concurrent ADDs.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};
use veil_tests::{require_root, unique_prefix, Netns, Node};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web";

fn pod_ip(result: &Value) -> String {
    let a = result["ips"]
        .as_array()
        .and_then(|ips| {
            ips.iter()
                .find(|ip| ip["interface"] == 1 || ip["interface"].is_null())
        })
        .and_then(|ip| ip["address"].as_str())
        .unwrap_or_else(|| panic!("no address in {result}"));
    a.split('/').next().unwrap().to_string()
}

fn with_prev(mut conf: Value, prev: &Value) -> Value {
    conf["prevResult"] = prev.clone();
    conf
}

/// Whether `ping` from `from` reaches `to` (3 tries, bounded).
fn pings(from: &Netns, to: &str) -> bool {
    let out = from.exec(&["ping", "-c", "1", "-W", "2", to]);
    if out.status.success() {
        return true;
    }
    let out = from.exec(&["ping", "-c", "2", "-W", "2", to]);
    out.status.success()
}

#[test]
fn every_command_in_every_version() {
    require_root();
    let p = unique_prefix();
    let node = Node::start(&p, "10.244.11.0/24");

    let v = node
        .cni("VERSION", &[], &json!({"cniVersion": "1.1.0"}))
        .ok();
    assert_eq!(
        v,
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );

    for (i, version) in VERSIONS.iter().enumerate() {
        let pod = Netns::new(&format!("{p}-pod{i}"));
        let cid = format!("{p}c{i}");
        let path = pod.path();
        let vars = veil_tests::pod_vars(&cid, &path, POD_ARGS);
        let conf = node.conf(version);

        let r = node.cni("ADD", &vars, &conf).ok();
        assert_eq!(r["cniVersion"], *version);
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            version.starts_with('0'),
            "{r}"
        );
        assert_eq!(
            r["interfaces"][1].get("mtu").is_some(),
            *version == "1.1.0",
            "{r}"
        );
        assert_eq!(r["interfaces"][1]["name"], "eth0");
        assert_eq!(r["interfaces"][1]["sandbox"], pod.path());
        let host = r["interfaces"][0]["name"].as_str().unwrap().to_string();
        assert!(host.starts_with("veil") && host.len() <= 15, "{host}");
        let ip = pod_ip(&r);
        assert!(ip.starts_with("10.244.11."), "{ip}");

        // Inside the pod: the address, the routes, the MAC reported.
        let addrs = pod.ip_json(&["-4", "addr", "show", "eth0"]);
        assert_eq!(addrs[0]["addr_info"][0]["local"], ip.as_str(), "{addrs}");
        assert_eq!(addrs[0]["addr_info"][0]["prefixlen"], 32);
        let link = pod.ip_json(&["link", "show", "eth0"]);
        assert_eq!(link[0]["address"], r["interfaces"][1]["mac"], "{link}");
        let routes = pod.ip("-4 route show".split(' ').collect::<Vec<_>>().as_slice());
        assert!(
            routes.contains("default via 169.254.1.1 dev eth0"),
            "{routes}"
        );
        assert!(routes.contains("169.254.1.1 dev eth0"), "{routes}");
        // On the node: the host end, proxy ARP, the /32 route; the node reaches the pod.
        assert!(node.veil_links().contains(&host));
        let proxy = node
            .netns
            .exec(&["cat", &format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp")]);
        assert_eq!(String::from_utf8_lossy(&proxy.stdout).trim(), "1");
        assert!(node.pod_routes().contains(&ip), "{:?}", node.pod_routes());
        assert!(pings(&node.netns, &ip), "node cannot ping pod {ip}");
        // The daemon knows the pod by name.
        let eps = node.endpoints();
        assert!(
            eps.iter()
                .any(|e| e["pod"] == "shop/web" && e["ips"][0] == ip.as_str()),
            "{eps:?}"
        );

        let checked = node.cni("CHECK", &vars, &with_prev(conf.clone(), &r));
        if version.starts_with("0.3") {
            checked.err(1);
        } else {
            assert_eq!(checked.ok(), Value::Null);
        }
        let status = node.cni("STATUS", &[], &conf);
        let gc_conf = {
            let mut c = conf.clone();
            c["cni.dev/valid-attachments"] = json!([{"containerID": cid, "ifname": "eth0"}]);
            c
        };
        let gc = node.cni("GC", &[], &gc_conf);
        if *version == "1.1.0" {
            status.ok();
            gc.ok();
            // GC kept the valid attachment.
            assert!(node.veil_links().contains(&host));
            assert_eq!(node.endpoints().len(), 1);
        } else {
            status.err(1);
            gc.err(1);
        }

        // DEL twice (with prevResult, as runtimes of 0.4.0+ send it).
        for _ in 0..2 {
            assert_eq!(
                node.cni("DEL", &vars, &with_prev(conf.clone(), &r)).ok(),
                Value::Null
            );
        }
        assert!(node.veil_links().is_empty(), "{:?}", node.veil_links());
        assert!(node.pod_routes().is_empty());
        assert!(node.endpoints().is_empty());
        assert!(!pod.links().contains(&"eth0".to_string()));
    }
}

#[test]
fn pods_on_one_node_reach_each_other() {
    require_root();
    let p = unique_prefix();
    let node = Node::start(&p, "10.244.12.0/24");
    let a = Netns::new(&format!("{p}-a"));
    let b = Netns::new(&format!("{p}-b"));
    let conf = node.conf("1.0.0");
    let (ca, cb) = (format!("{p}a"), format!("{p}b"));
    let (pa, pb) = (a.path(), b.path());
    let ra = node
        .cni("ADD", &veil_tests::pod_vars(&ca, &pa, ""), &conf)
        .ok();
    let rb = node
        .cni("ADD", &veil_tests::pod_vars(&cb, &pb, ""), &conf)
        .ok();
    let (ipa, ipb) = (pod_ip(&ra), pod_ip(&rb));
    assert_ne!(ipa, ipb);
    assert!(pings(&a, &ipb), "{ipa} cannot ping {ipb}");
    assert!(pings(&b, &ipa), "{ipb} cannot ping {ipa}");
    assert!(pings(&a, "198.18.0.10"), "pod cannot reach its node");
    for (c, pth) in [(&ca, &pa), (&cb, &pb)] {
        node.cni("DEL", &veil_tests::pod_vars(c, pth, ""), &conf)
            .ok();
    }
}

#[test]
fn error_codes_of_the_binary() {
    require_root();
    let p = unique_prefix();
    let node = Node::start(&p, "10.244.13.0/24");
    let pod = Netns::new(&format!("{p}-pod"));
    let cid = format!("{p}c");
    let path = pod.path();
    let vars = veil_tests::pod_vars(&cid, &path, "");
    let conf = node.conf("1.0.0");

    let bad_json = veil_tests::run_cni(&node.netns, "ADD", &vars, "{\"cniVersion\": ");
    assert_eq!(bad_json.clone().err(6)["cniVersion"], "1.1.0");
    node.cni(
        "ADD",
        &vars,
        &json!({"cniVersion": "0.2.0", "name": "x", "type": "veil"}),
    )
    .err(1);
    node.cni(
        "ADD",
        &vars,
        &json!({"cniVersion": "1.0.0", "type": "veil"}),
    )
    .err(7);
    let e = node
        .cni(
            "ADD",
            &vars,
            &json!({"cniVersion": "0.4.0", "name": "n", "mtu": "big"}),
        )
        .err(7);
    assert_eq!(e["cniVersion"], "0.4.0");
    node.cni(
        "ADD",
        &[("CNI_CONTAINERID", &cid), ("CNI_IFNAME", "eth0")],
        &conf,
    )
    .err(4);
    node.cni("FROB", &vars, &conf).err(4);
    node.cni(
        "ADD",
        &veil_tests::pod_vars(&cid, "/run/netns/does-not-exist", ""),
        &conf,
    )
    .err(4);

    // The node's own namespace is not a container's.
    node.cni(
        "ADD",
        &veil_tests::pod_vars(&cid, &format!("/run/netns/{}", node.netns.name), ""),
        &conf,
    )
    .err(4);
    assert!(node.endpoints().is_empty());

    // The daemon away: ADD says "try again later" and leaves nothing; STATUS says 50.
    let mut away = conf.clone();
    away["socket"] = json!(format!("/tmp/{p}-nobody.sock"));
    node.cni("ADD", &vars, &away).err(11);
    assert!(node.veil_links().is_empty());
    assert!(!pod.links().contains(&"eth0".to_string()));
    let mut away11 = away.clone();
    away11["cniVersion"] = json!("1.1.0");
    node.cni("STATUS", &[], &away11).err(50);

    // An interface of that name already in the pod.
    pod.ip(&["link", "add", "eth0", "type", "bridge"]);
    node.cni("ADD", &vars, &conf).err(102);
    assert!(node.endpoints().is_empty());
    // DEL leaves the foreign (non-veth) interface alone.
    node.cni("DEL", &vars, &conf).ok();
    assert!(pod.links().contains(&"eth0".to_string()));
}

#[test]
fn del_succeeds_when_the_namespace_is_gone_and_when_the_daemon_comes_back() {
    require_root();
    let p = unique_prefix();
    let mut node = Node::start(&p, "10.244.14.0/24");
    let conf = node.conf("1.0.0");
    let cid = format!("{p}c");
    let path;
    {
        let pod = Netns::new(&format!("{p}-pod"));
        path = pod.path();
        node.cni("ADD", &veil_tests::pod_vars(&cid, &path, ""), &conf)
            .ok();
        // The namespace disappears with the pod (runtime removed it first).
    }
    let vars = veil_tests::pod_vars(&cid, &path, "");
    node.cni("DEL", &vars, &conf).ok();
    node.cni("DEL", &vars, &conf).ok();
    assert!(node.veil_links().is_empty());
    assert!(node.endpoints().is_empty());
    // Never heard of it.
    node.cni(
        "DEL",
        &veil_tests::pod_vars("never-added", &path, ""),
        &conf,
    )
    .ok();

    // The daemon down during DEL: the links go, the answer is "try again later";
    // the retry once it is back releases the address.
    let pod = Netns::new(&format!("{p}-pod2"));
    let path2 = pod.path();
    let vars2 = veil_tests::pod_vars(&cid, &path2, "");
    node.cni("ADD", &vars2, &conf).ok();
    node.stop();
    node.cni("DEL", &vars2, &conf).err(11);
    assert!(node.veil_links().is_empty());
    assert!(!pod.links().contains(&"eth0".to_string()));
    node.restart();
    assert_eq!(
        node.endpoints().len(),
        1,
        "veild forgot the endpoint across a restart"
    );
    node.cni("DEL", &vars2, &conf).ok();
    assert!(node.endpoints().is_empty());
}

#[test]
fn gc_releases_stale_attachments() {
    require_root();
    let p = unique_prefix();
    let node = Node::start(&p, "10.244.15.0/24");
    let conf = node.conf("1.1.0");
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("{p}-pod{i}"))).collect();
    let cids: Vec<String> = (0..3).map(|i| format!("{p}c{i}")).collect();
    let paths: Vec<String> = pods.iter().map(Netns::path).collect();
    for i in 0..3 {
        node.cni("ADD", &veil_tests::pod_vars(&cids[i], &paths[i], ""), &conf)
            .ok();
    }
    let mut g = conf.clone();
    g["cni.dev/valid-attachments"] = json!([{"containerID": cids[0], "ifname": "eth0"}]);
    node.cni("GC", &[], &g).ok();
    assert_eq!(node.veil_links().len(), 1, "{:?}", node.veil_links());
    assert_eq!(node.endpoints().len(), 1);
    assert!(pods[1].links().iter().all(|l| l != "eth0"));
    node.cni("DEL", &veil_tests::pod_vars(&cids[0], &paths[0], ""), &conf)
        .ok();
}

#[test]
fn chained_with_the_reference_plugins() {
    require_root();
    let p = unique_prefix();
    let node = Node::start(&p, "10.244.16.0/24");
    let pod = Netns::new(&format!("{p}-pod"));
    let cid = format!("{p}c");
    let path = pod.path();
    let vars = veil_tests::pod_vars(&cid, &path, "");
    // conflist: loopback → veil → tuning, as a runtime executes it.
    let version = "1.0.0";
    let lo = json!({"cniVersion": version, "name": "veil-e2e", "type": "loopback"});
    let r0 =
        veil_tests::run_cni_plugin(&node.netns, "/usr/lib/cni/loopback", "ADD", &vars, &lo).ok();
    let r1 = node
        .cni("ADD", &vars, &with_prev(node.conf(version), &r0))
        .ok();
    assert_eq!(r1["interfaces"][0]["name"], "lo", "{r1}");
    let ours = r1["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ip| ip["address"].as_str().unwrap().starts_with("10.244.16."))
        .unwrap_or_else(|| panic!("{r1}"));
    let idx = ours["interface"].as_u64().unwrap() as usize;
    assert_eq!(r1["interfaces"][idx]["name"], "eth0", "{r1}");
    let tuning = json!({"cniVersion": version, "name": "veil-e2e", "type": "tuning",
                        "sysctl": {"net.ipv4.conf.eth0.rp_filter": "0"}});
    let r2 = veil_tests::run_cni_plugin(
        &node.netns,
        "/usr/lib/cni/tuning",
        "ADD",
        &vars,
        &with_prev(tuning.clone(), &r1),
    )
    .ok();
    // CHECK of the whole chain with the final result; DEL in reverse order.
    node.cni("CHECK", &vars, &with_prev(node.conf(version), &r2))
        .ok();
    veil_tests::run_cni_plugin(
        &node.netns,
        "/usr/lib/cni/tuning",
        "DEL",
        &vars,
        &with_prev(tuning, &r2),
    )
    .ok();
    node.cni("DEL", &vars, &with_prev(node.conf(version), &r2))
        .ok();
    veil_tests::run_cni_plugin(
        &node.netns,
        "/usr/lib/cni/loopback",
        "DEL",
        &vars,
        &with_prev(lo, &r2),
    )
    .ok();
    assert!(node.veil_links().is_empty());
}

#[test]
fn delegated_host_local_ipam() {
    require_root();
    let p = unique_prefix();
    let node = Node::start(&p, "10.244.17.0/24");
    let data = veil_tests::TempDir::new(&p, "host-local");
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let pod = Netns::new(&format!("{p}-pod{i}"));
        let cid = format!("{p}c{i}");
        let path = pod.path();
        let vars = veil_tests::pod_vars(&cid, &path, "");
        let mut conf = node.conf(version);
        conf["ipam"] = json!({
            "type": "host-local",
            "dataDir": data.path().display().to_string(),
            "ranges": [[{"subnet": "10.244.17.0/24", "rangeStart": "10.244.17.200", "rangeEnd": "10.244.17.250"}]]
        });
        let r = node.cni("ADD", &vars, &conf).ok();
        let ip = pod_ip(&r);
        let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
        assert!(
            (200..=250).contains(&last),
            "{ip} is not from host-local's range"
        );
        assert!(
            data.path().join("veil-e2e").join(&ip).exists(),
            "host-local did not record {ip}"
        );
        assert!(pings(&node.netns, &ip));
        node.cni("CHECK", &vars, &with_prev(conf.clone(), &r)).ok();
        node.cni("DEL", &vars, &conf).ok();
        node.cni("DEL", &vars, &conf).ok();
        assert!(
            !data.path().join("veil-e2e").join(&ip).exists(),
            "host-local kept {ip}"
        );
        assert!(node.endpoints().is_empty());
        assert!(node.veil_links().is_empty());
    }
}

#[test]
fn hundred_pods_added_and_deleted_leave_nothing_behind() {
    require_root();
    let p = unique_prefix();
    let node = Node::start(&p, "10.244.18.0/24");
    let conf = node.conf("1.1.0");
    let links_before = node.netns.links();
    let addrs_before = node.netns.ip(&["addr", "show"]);
    let pods: Vec<Netns> = (0..100).map(|i| Netns::new(&format!("{p}-p{i}"))).collect();
    let cids: Vec<String> = (0..100).map(|i| format!("{p}c{i}")).collect();
    let paths: Vec<String> = pods.iter().map(Netns::path).collect();
    let mut ips = BTreeSet::new();
    for i in 0..100 {
        let r = node
            .cni(
                "ADD",
                &veil_tests::pod_vars(&cids[i], &paths[i], POD_ARGS),
                &conf,
            )
            .ok();
        assert!(ips.insert(pod_ip(&r)), "address handed out twice");
    }
    assert_eq!(node.veil_links().len(), 100);
    assert_eq!(node.endpoints().len(), 100);
    for i in 0..100 {
        node.cni(
            "DEL",
            &veil_tests::pod_vars(&cids[i], &paths[i], POD_ARGS),
            &conf,
        )
        .ok();
    }
    assert_eq!(node.netns.links(), links_before, "links left behind");
    assert_eq!(
        node.netns.ip(&["addr", "show"]),
        addrs_before,
        "addresses changed"
    );
    assert!(node.pod_routes().is_empty(), "{:?}", node.pod_routes());
    assert!(node.endpoints().is_empty());
    for pod in &pods {
        assert_eq!(pod.links(), vec!["lo".to_string()]);
    }
    // The daemon's persisted allocations are empty too.
    let state: Value = serde_json::from_slice(
        &std::fs::read(node.state_dir.join("endpoints.json")).expect("endpoints.json"),
    )
    .unwrap();
    assert_eq!(state["endpoints"], json!([]), "{state}");
    assert_eq!(state["allocator"]["used"], json!([]), "{state}");
}

#[test]
fn fifty_concurrent_adds_get_fifty_addresses() {
    require_root();
    let p = unique_prefix();
    let node = Arc::new(Node::start(&p, "10.244.19.0/24"));
    let conf = node.conf("1.0.0");
    let pods: Vec<Netns> = (0..50).map(|i| Netns::new(&format!("{p}-p{i}"))).collect();
    let paths: Vec<String> = pods.iter().map(Netns::path).collect();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let node = node.clone();
            let conf = conf.clone();
            let path = paths[i].clone();
            let cid = format!("{p}c{i}");
            std::thread::spawn(move || {
                pod_ip(
                    &node
                        .cni("ADD", &veil_tests::pod_vars(&cid, &path, ""), &conf)
                        .ok(),
                )
            })
        })
        .collect();
    let ips: BTreeSet<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(ips.len(), 50, "{ips:?}");
    assert_eq!(node.veil_links().len(), 50);
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let node = node.clone();
            let conf = conf.clone();
            let path = paths[i].clone();
            let cid = format!("{p}c{i}");
            std::thread::spawn(move || {
                node.cni("DEL", &veil_tests::pod_vars(&cid, &path, ""), &conf)
                    .ok();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(node.veil_links().is_empty());
    assert!(node.endpoints().is_empty());
}

#[test]
fn logs_go_to_the_log_file_never_to_stdout() {
    require_root();
    let p = unique_prefix();
    let node = Node::start(&p, "10.244.20.0/24");
    let pod = Netns::new(&format!("{p}-pod"));
    let dir = veil_tests::TempDir::new(&p, "log");
    let log = dir.path().join("veil.log");
    let mut conf = node.conf("1.0.0");
    conf["logFile"] = json!(log.display().to_string());
    let cid = format!("{p}c");
    let path = pod.path();
    let vars = veil_tests::pod_vars(&cid, &path, "");
    let add = node.cni("ADD", &vars, &conf);
    assert!(add.stderr.is_empty(), "{}", add.stderr);
    let r = add.ok();
    assert_eq!(r["cniVersion"], "1.0.0");
    let del = node.cni("DEL", &vars, &conf);
    assert!(del.stdout.is_empty(), "{}", del.stdout);
    del.ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("pod added") && text.contains(&cid), "{text}");
}
