//! Flow records carry their verdict and deciding rule, with real packets in
//! a lab: an allowed connection names the policy and rule that allowed it
//! (read from the connection's conntrack mark), and the direction no policy
//! selects says so; a denied connect attempt is one denied record however
//! many SYNs the client sent. Checked through `veilctl flows` (text and
//! JSON) and the node's `/api/v1/flows` and `/api/v1/graph`.

mod lab_support;

use std::path::PathBuf;
use std::time::Duration;

use lab_support::*;
use serde_json::Value;

/// frontend, api and database on one node, so that one node evaluates both
/// directions of each connection.
const SCENARIO: &str = r#"
name: verdicts
description: allowed and denied connections on one node
cluster:
  nodes: [node-a, node-b]
namespaces:
  - name: store
pods:
  - name: store/frontend
    labels: {role: frontend}
    node: node-a
    ports: [{port: 80}]
  - name: store/api
    labels: {role: api}
    node: node-a
    ports: [{port: 8080}]
  - name: store/database
    labels: {role: database}
    node: node-a
    ports: [{port: 5432}]
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: api-from-frontend, namespace: store}
    spec:
      podSelector: {matchLabels: {role: api}}
      policyTypes: [Ingress]
      ingress:
        - from: [{podSelector: {matchLabels: {role: database}}}]
          ports: [{port: 9999, protocol: TCP}]
        - from: [{podSelector: {matchLabels: {role: frontend}}}]
          ports: [{port: 8080, protocol: TCP}]
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: database-from-api, namespace: store}
    spec:
      podSelector: {matchLabels: {role: database}}
      policyTypes: [Ingress]
      ingress:
        - from: [{podSelector: {matchLabels: {role: api}}}]
          ports: [{port: 5432, protocol: TCP}]
probes:
  - {from: store/frontend, to: store/api, port: 8080, expect: allow}
  - {from: store/frontend, to: store/database, port: 5432, expect: deny}
"#;

fn status_of(lab: &Lab, node: &str) -> Option<Value> {
    let sock = PathBuf::from(format!("/run/veil/labs/{}/{node}/veild.sock", lab.name));
    veil_tests::call(&sock, veil_api::method::NODE_STATUS, Value::Null).ok()
}

/// Every node applied a generation ≥ `min` and holds what it compiled.
fn in_sync(lab: &Lab, min: u64) -> bool {
    ["node-a", "node-b"]
        .iter()
        .all(|n| match status_of(lab, n) {
            Some(s) => {
                let g = s["policyGeneration"].as_u64().unwrap_or(0);
                let a = s["policyAppliedGeneration"].as_u64().unwrap_or(0);
                g >= min && a == g
            }
            None => false,
        })
}

/// Writes the scenario's policies into the lab's datastore and waits until
/// every node's kernel holds them.
fn apply_policies(lab: &Lab) {
    let v: Value = serde_yaml::from_str(SCENARIO).expect("scenario YAML");
    let docs: Vec<String> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
    let before = ["node-a", "node-b"]
        .iter()
        .map(|n| {
            status_of(lab, n)
                .and_then(|s| s["policyGeneration"].as_u64())
                .unwrap_or(0)
        })
        .min()
        .unwrap_or(0);
    let dir = PathBuf::from(format!("/run/veil/labs/{}/datastore/policies", lab.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("verdicts.yaml"), docs.join("\n---\n")).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || in_sync(lab, before + 1)),
        "policy never applied: {}",
        show(&veilctl(&["status", "--lab", &lab.name]))
    );
}

fn probe(lab: &Lab, from: &str, to: &str, port: &str, timeout_ms: &str) -> bool {
    veilctl(&[
        "lab",
        "probe",
        "--name",
        &lab.name,
        "--from",
        from,
        "--to",
        to,
        "--port",
        port,
        "--timeout-ms",
        timeout_ms,
    ])
    .status
    .success()
}

fn flows_json(lab: &Lab, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["flows", "--lab", &lab.name, "--output", "json"];
    args.extend_from_slice(extra);
    let o = veilctl(&args);
    assert!(o.status.success(), "veilctl flows: {}", show(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn pod_of(v: &Value) -> String {
    format!(
        "{}/{}",
        v["namespace"].as_str().unwrap_or(""),
        v["pod"].as_str().unwrap_or("")
    )
}

fn between<'a>(v: &'a [Value], from: &str, to: &str) -> Vec<&'a Value> {
    v.iter()
        .filter(|e| pod_of(&e["source"]) == from && pod_of(&e["destination"]) == to)
        .collect()
}

#[test]
fn allowed_records_name_their_rule_and_a_denied_connect_is_one_record() {
    require_root();
    let path = std::env::temp_dir().join(format!("{}-verdicts.yaml", unique_name()));
    std::fs::write(&path, SCENARIO).unwrap();
    let lab = Lab::up(&["--scenario", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    apply_policies(&lab);

    // Allowed by rule 1 of api-from-frontend (api's ingress); frontend's
    // egress is selected by no policy.
    assert!(probe(&lab, "store/frontend", "store/api", "8080", "3000"));
    let want_ingress = |r: &Value| {
        r["kind"] == "knp"
            && r["policy"] == "store/api-from-frontend"
            && r["rule"] == 1
            && r["direction"] == "ingress"
    };
    let mut last = Vec::new();
    let found = eventually(Duration::from_secs(15), || {
        last = flows_json(&lab, &["--namespace", "store"]);
        between(&last, "store/frontend", "store/api")
            .iter()
            .any(|e| {
                e["verdict"] == "allowed"
                    && e["rule"]["kind"] == "no-policy"
                    && e["rule"]["direction"] == "egress"
                    && want_ingress(&e["ingress_rule"])
            })
    });
    assert!(found, "no allowed record naming its rules: {last:#?}");

    // The text form says it in words.
    let o = veilctl(&["flows", "--lab", &lab.name, "--to", "store/api"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(
            "by no policy selects the pod (egress), default/knp:store/api-from-frontend#1 ingress"
        ),
        "{}",
        show(&o)
    );

    // The node's HTTP API: the flow log and the graph edge's deciding policy.
    let curl = |url: &str| {
        let o = lab.exec(&["--node", "node-a"], &["curl", "-sS", "-m", "10", url]);
        assert!(o.status.success(), "{url}: {}", show(&o));
        serde_json::from_slice::<Value>(&o.stdout).expect("JSON")
    };
    let page = curl("http://127.0.0.1:9590/api/v1/flows?to=store/api");
    let flows = page["flows"].as_array().cloned().unwrap_or_default();
    assert!(
        flows.iter().any(|e| want_ingress(&e["ingress_rule"])),
        "/api/v1/flows: {page:#}"
    );
    let graph = curl("http://127.0.0.1:9590/api/v1/graph");
    let edge = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == "store/frontend" && e["target"] == "store/api")
        .cloned()
        .unwrap_or_else(|| panic!("no frontend -> api edge: {graph:#}"));
    assert!(
        edge["policy"]
            .as_str()
            .unwrap_or("")
            .contains("default/knp:store/api-from-frontend#1 ingress"),
        "{edge:#}"
    );

    // Denied: database accepts only the api. The client retransmits its SYN
    // (a 2.5 s timeout covers the first retransmit at 1 s): still one record,
    // counting the packets.
    assert!(!probe(
        &lab,
        "store/frontend",
        "store/database",
        "5432",
        "2500"
    ));
    let mut denied = Vec::new();
    let ok = eventually(Duration::from_secs(10), || {
        denied = flows_json(&lab, &["--verdict", "denied"]);
        between(&denied, "store/frontend", "store/database")
            .iter()
            .any(|e| e["counters"]["packets_sent"].as_u64().unwrap_or(0) >= 2)
    });
    assert!(ok, "no denied record counting the retransmits: {denied:#?}");
    // Let a late retransmit land before counting.
    std::thread::sleep(Duration::from_secs(3));
    let denied = flows_json(&lab, &["--verdict", "denied"]);
    let d = between(&denied, "store/frontend", "store/database");
    assert_eq!(d.len(), 1, "one denied record per denied attempt: {d:#?}");
    assert_eq!(d[0]["rule"]["tier"], "default", "{:#?}", d[0]);
}
