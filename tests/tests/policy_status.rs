//! `veilctl policy status` against a real `veild` in a network namespace: a
//! policy written to the datastore shows up with the generation of the
//! program it belongs to, an invalid one shows as an error naming its
//! object, and `/metrics` carries the policy gauges.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use veil_tests::{bin, eventually, require_root, unique_prefix, Node};

const ALLOW: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80, protocol: TCP}]
";

const BAD: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Sideways]
";

fn veilctl(args: &[&str]) -> Output {
    Command::new(bin("veilctl"))
        .args(args)
        .output()
        .expect("run veilctl")
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn policy_status(node: &Node) -> Value {
    let o = veilctl(&[
        "policy",
        "status",
        "--socket",
        node.socket.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    v[0].clone()
}

#[test]
fn policy_status_shows_the_policy_written_to_the_datastore_with_its_generation() {
    require_root();
    let prefix = unique_prefix();
    let node = Node::start(&prefix, "10.244.0.0/24");
    let policies = node.socket.parent().unwrap().join("datastore/policies");
    std::fs::create_dir_all(&policies).unwrap();
    let first = policy_status(&node);
    let generation0 = first["generation"].as_u64().expect("generation");

    std::fs::write(policies.join("allow-web.yaml"), ALLOW).unwrap();
    std::fs::write(policies.join("bad.yaml"), BAD).unwrap();
    let mut last = Value::Null;
    let seen = eventually(Duration::from_secs(10), || {
        last = policy_status(&node);
        last["policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "allow-web"))
            && last["policyErrors"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
    });
    assert!(seen, "policy not shown: {last:#}\n{}", node.log());
    let p = last["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "allow-web")
        .unwrap();
    assert_eq!(p["namespace"], "shop");
    assert_eq!(p["kind"], "NetworkPolicy");
    assert_eq!(p["tier"], "default");
    assert_eq!(p["ingressRules"], 1);
    assert!(
        last["generation"].as_u64().unwrap() > generation0,
        "generation did not move from {generation0}: {last:#}"
    );
    let errors = last["policyErrors"].to_string();
    assert!(errors.contains("bad.yaml"), "{errors}");

    // The text form names the node, its generation and the policy.
    let o = veilctl(&[
        "policy",
        "status",
        "--socket",
        node.socket.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("generation {}", last["generation"])),
        "{text}"
    );
    assert!(text.contains("shop/allow-web"), "{text}");
    assert!(text.contains("policy error: "), "{text}");

    // And /metrics has the gauges.
    let out = node.netns.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "http://127.0.0.1:19590/metrics",
    ]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "veil_policy_generation",
        "veil_policy_applied_generation",
        "veil_policy_errors",
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} gauge")),
            "{name}: {body}"
        );
    }
    assert!(body.contains("veil_policy_errors 1"), "{body}");
}
