//! `veilctl lab up --scenario`: the scenario's nodes (with labels), namespaces,
//! labelled pods (fixed IP, hostNetwork), the implicit kube-dns answering the
//! external hosts' names, workload servers (HTTP on TCP ports, echo on UDP), and
//! external hosts on the underlay.

mod lab_support;

use lab_support::*;

const SCENARIO: &str = r#"
name: lab-e2e
cluster:
  nodes:
    - {name: node-a, labels: {pool: system}}
    - node-b
namespaces:
  - {name: shop, labels: {team: blue}}
pods:
  - name: shop/web
    labels: {app: web}
    node: node-a
    ip: 10.244.0.10
    ports: [{port: 8080, name: http}, {port: 5353, protocol: UDP, name: echo}]
  - name: shop/client
    labels: {app: client}
    node: node-a
  - name: shop/agent
    labels: {app: agent}
    node: node-b
    hostNetwork: true
    ports: [{port: 9100, name: metrics}]
external:
  - {name: api.example.com, ip: 203.0.113.10, ports: [{port: 443}]}
probes: []
"#;

fn write_scenario(text: &str) -> (std::path::PathBuf, impl Drop) {
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let path = std::env::temp_dir().join(format!("{}-scenario.yaml", unique_name()));
    std::fs::write(&path, text).unwrap();
    (path.clone(), Rm(path))
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn scenario_lab_serves_dns_http_udp_and_external_hosts() {
    require_root();
    let (path, _rm) = write_scenario(SCENARIO);
    let lab = Lab::up(&["--scenario", path.to_str().unwrap()]);

    let s = lab.status();
    let pods = s["pods"].as_array().unwrap();
    let names: Vec<&str> = pods.iter().map(|p| p["name"].as_str().unwrap()).collect();
    for want in [
        "shop/web",
        "shop/client",
        "shop/agent",
        "kube-system/kube-dns",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    assert_eq!(lab.pod_ip("shop/web"), "10.244.0.10", "fixed IP");
    assert_eq!(
        lab.pod_ip("shop/agent"),
        "198.18.0.11",
        "hostNetwork pod uses its node's address"
    );
    let agent = pods.iter().find(|p| p["name"] == "shop/agent").unwrap();
    assert_eq!(agent["netns"], format!("{}n-node-b", lab.prefix()));
    assert_eq!(
        s["external"],
        serde_json::json!([{"name": "api.example.com", "netns": format!("{}x-api.example.com", lab.prefix()), "ip": "203.0.113.10"}])
    );
    let dns_ip = lab.pod_ip("kube-system/kube-dns");

    // What the daemons learn from the datastore: pod labels, node labels.
    let dir = format!("/run/veil/labs/{}/datastore", lab.name);
    let web = std::fs::read_to_string(format!("{dir}/pods/shop/web.yaml")).unwrap();
    assert!(web.contains("app: web"), "{web}");
    let ns = std::fs::read_to_string(format!("{dir}/namespaces/shop.yaml")).unwrap();
    assert!(ns.contains("team: blue"), "{ns}");
    assert!(
        eventually(std::time::Duration::from_secs(10), || {
            std::fs::read_to_string(format!("{dir}/nodes/node-a.yaml"))
                .is_ok_and(|t| t.contains("pool: system"))
        }),
        "node-a publishes its label pool=system"
    );

    // DNS through the pod's resolv.conf: UDP, TCP, and NXDOMAIN.
    let o = lab.in_pod("shop/client", &["cat", "/etc/resolv.conf"]);
    assert!(
        stdout(&o).contains(&format!("nameserver {dns_ip}")),
        "{}",
        show(&o)
    );
    let o = lab.in_pod(
        "shop/client",
        &["dig", "+short", "+time=2", "+tries=3", "api.example.com"],
    );
    assert_eq!(stdout(&o).trim(), "203.0.113.10", "{}", show(&o));
    let o = lab.in_pod(
        "shop/client",
        &[
            "dig",
            "+tcp",
            "+short",
            "+time=2",
            "+tries=3",
            "API.example.com",
        ],
    );
    assert_eq!(stdout(&o).trim(), "203.0.113.10", "{}", show(&o));
    let o = lab.in_pod(
        "shop/client",
        &["dig", "+time=2", "+tries=3", "nope.example.com"],
    );
    assert!(stdout(&o).contains("status: NXDOMAIN"), "{}", show(&o));

    // HTTP to a pod: 200 and a body naming it, for any request.
    assert_eq!(
        lab.curl("shop/client", "http://10.244.0.10:8080/", 5)
            .as_deref(),
        Some("shop/web\n")
    );
    let o = lab.in_pod(
        "shop/client",
        &[
            "curl",
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-d",
            "x=1",
            "http://10.244.0.10:8080/admin",
        ],
    );
    assert_eq!(stdout(&o), "200", "{}", show(&o));

    // UDP echo.
    let mut echoed = String::new();
    for _ in 0..5 {
        let o = lab.in_pod(
            "shop/client",
            &["sh", "-c", "echo hello-udp | nc -u -w 2 10.244.0.10 5353"],
        );
        echoed = stdout(&o);
        if echoed.contains("hello-udp") {
            break;
        }
    }
    assert!(echoed.contains("hello-udp"), "UDP echo: {echoed:?}");

    // The hostNetwork pod serves on its node's address.
    let o = lab.exec(
        &["--node", "node-b"],
        &["curl", "-s", "-m", "3", "http://198.18.0.11:9100/"],
    );
    assert_eq!(stdout(&o), "shop/agent\n", "{}", show(&o));

    // External hosts are on the underlay, reached from the nodes.
    let o = lab.exec(
        &["--node", "node-a"],
        &["curl", "-s", "-m", "3", "http://203.0.113.10:443/"],
    );
    assert_eq!(stdout(&o), "api.example.com\n", "{}", show(&o));
    // ... and from pods, masqueraded by their node (replies come back through the
    // fail-closed filter, which lets replies of masqueraded connections in).
    let o = lab.in_pod(
        "shop/client",
        &["curl", "-s", "-m", "3", "http://api.example.com:443/"],
    );
    assert_eq!(stdout(&o), "api.example.com\n", "{}", show(&o));
    let o = lab.exec(
        &["--external", "api.example.com"],
        &["ip", "-br", "addr", "show", "eth0"],
    );
    assert!(stdout(&o).contains("203.0.113.10/24"), "{}", show(&o));

    // `lab probe`: scenario probes from a pod (exit 0 allow, 1 deny).
    let probe = |to: &str, port: &str, proto: &str| {
        veilctl(&[
            "lab",
            "probe",
            "--name",
            &lab.name,
            "--from",
            "shop/client",
            "--to",
            to,
            "--port",
            port,
            "--protocol",
            proto,
        ])
    };
    let o = probe("shop/web", "8080", "TCP");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).starts_with("allow") && stdout(&o).contains("shop/web"),
        "{}",
        show(&o)
    );
    let o = probe("10.244.0.10", "5353", "UDP");
    assert_eq!(o.status.code(), Some(0), "UDP echo probe: {}", show(&o));
    let o = probe("kube-system/kube-dns", "53", "UDP");
    assert_eq!(o.status.code(), Some(0), "DNS probe: {}", show(&o));
    let o = probe("shop/web", "9999", "TCP");
    assert_eq!(o.status.code(), Some(1), "closed port: {}", show(&o));
    let o = probe("unknown.example.com", "443", "TCP");
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stdout(&o).contains("lookup failed"), "{}", show(&o));

    let name = lab.name.clone();
    drop(lab);
    assert_gone(&name);
}

#[test]
fn an_invalid_scenario_is_refused_before_anything_is_built() {
    require_root();
    let (path, _rm) =
        write_scenario("name: bad\nnamespaces: [{name: x}]\npods: [{name: y/a}]\nprobes: []\n");
    let name = unique_name();
    let o = veilctl(&[
        "lab",
        "up",
        "--name",
        &name,
        "--scenario",
        path.to_str().unwrap(),
    ]);
    // An invalid scenario is bad usage: exit 2, as `policy test` (issue 14).
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(path.to_str().unwrap()),
        "names the file: {err}"
    );
    assert!(err.contains("pods[0]"), "names the field: {err}");
    assert_gone(&name);
}

#[test]
fn lab_test_runs_steps_as_real_traffic_and_reports_each_probe() {
    require_root();
    let (path, _rm) = write_scenario(
        r#"
name: lab-test-e2e
namespaces: [{name: a}]
pods:
  - {name: a/x, labels: {app: x}, ports: [{port: 8080}]}
  - {name: a/y, labels: {app: y}, ports: [{port: 9000, protocol: UDP}]}
steps:
  - probes:
      - {from: a/x, to: a/y, port: 9000, protocol: UDP, expect: allow}
      - {from: a/y, to: a/x, port: 8080, expect: allow}
  - labels: [{pod: a/x, labels: {app: z}}]
    probes:
      - {from: a/y, to: a/x, port: 8080, http: {method: POST, path: /p}, expect: allow}
      - {from: a/x, to: kube-system/kube-dns, port: 53, protocol: UDP, expect: allow}
      - {from: a/y, to: a/x, port: 8080, expect: deny}   # wrong on purpose: nothing denies it
"#,
    );
    let o = veilctl(&["lab", "test", "--settle-ms", "500", path.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "one probe fails: {}", show(&o));
    assert!(out.ends_with("4 passed, 1 failed\n"), "{}", show(&o));
    assert!(
        out.contains(
            "PASS lab-test-e2e step 0 #0: a/x -> a/y port 9000/UDP: allow (expected allow)"
        ),
        "{}",
        show(&o)
    );
    assert!(
        out.contains(
            "FAIL lab-test-e2e step 1 #2: a/y -> a/x port 8080/TCP: allow (expected deny)"
        ),
        "{}",
        show(&o)
    );
    // Its lab is gone.
    let left: Vec<String> = namespaces_with_prefix("vl-lt")
        .into_iter()
        .filter(|n| n.ends_with("-p-a.x") || n.ends_with("-p-a.y"))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}
