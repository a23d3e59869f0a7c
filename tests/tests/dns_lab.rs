//! Egress allowlists by DNS name as real packets: the project's `domains`
//! scenarios through `veilctl lab test`, and one lab where a pod resolves
//! over UDP and TCP through the node's DNS proxy, `veilctl dns` shows what
//! was opened, and veild restarts (the allowance stays in the kernel; the
//! DNS gap is measured and bounded).

mod lab_support;

use std::path::Path;
use std::time::{Duration, Instant};

use lab_support::*;

/// The scenarios of tests/scenarios/ that use `domains` or `domainNames`
/// and need no L7 proxy (l7-with-domains and integration-shop also check
/// HTTP requests).
const DOMAIN_SCENARIOS: &[&str] = &[
    "anp-domainnames.yaml",
    "cnp-admin-egress-peers.yaml",
    "domains-allowance-is-per-pod.yaml",
    "domains-case-insensitive.yaml",
    "domains-dns-denied-in-earlier-tier.yaml",
    "domains-dns-over-tcp.yaml",
    "domains-exact-name.yaml",
    "domains-kube-dns-ingress-denied.yaml",
    "domains-need-dns-over-udp.yaml",
    "domains-ports-still-apply.yaml",
    "domains-rule-deleted.yaml",
    "domains-trailing-dot.yaml",
    "domains-wildcard-one-or-more-labels.yaml",
    "egress-domains-with-dns.yaml",
    "steps-domain-allowance-ends-with-rule.yaml",
];

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn domains_scenarios_pass_as_real_packets() {
    require_root();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let dir = TempDir(std::env::temp_dir().join(format!("{}-dns-scenarios", unique_name())));
    std::fs::create_dir_all(&dir.0).unwrap();
    for f in DOMAIN_SCENARIOS {
        std::fs::copy(src.join(f), dir.0.join(f)).unwrap();
    }
    let o = veilctl(&["lab", "test", dir.0.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(out.trim_end().ends_with("passed, 0 failed"), "{}", show(&o));
    for f in DOMAIN_SCENARIOS {
        let name = f.trim_end_matches(".yaml");
        assert!(
            out.contains(&format!("PASS {name} ")),
            "{name} ran: {}",
            show(&o)
        );
    }
}

const SCENARIO: &str = r#"
name: dns-proxy-e2e
namespaces: [{name: out}]
pods:
  - {name: out/app, labels: {app: app}, ports: [{port: 8080}]}
  - {name: out/free, labels: {app: free}, ports: [{port: 8080}]}
external:
  - {name: api.example.com, ip: 203.0.113.10, ports: [{port: 443}]}
  - {name: other.example.com, ip: 203.0.113.11, ports: [{port: 443}]}
probes: []
"#;

const POLICY: &str = r#"
apiVersion: veil.dev/v1alpha1
kind: NetworkPolicy
metadata: {name: app-out, namespace: out}
spec:
  selector: {matchLabels: {app: app}}
  egress:
    - action: Allow
      destination:
        namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
        selector: {matchLabels: {k8s-app: kube-dns}}
        ports: [53]
    - action: Allow
      protocol: TCP
      destination: {domains: [api.example.com], ports: [443]}
"#;

/// Sends one query (ID 7) from each of two sockets back to back; prints
/// each answer's response code (-1: wrong ID or no answer).
const SAME_ID: &str = r#"
import socket, struct, sys
name = b"".join(bytes([len(l)]) + l for l in b"api.example.com".split(b"."))
q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + name + b"\x00\x00\x01\x00\x01"
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
for s in socks:
    s.settimeout(3)
    s.sendto(q, (sys.argv[1], 53))
codes = []
for s in socks:
    try:
        r = s.recv(4096)
        codes.append(str(r[3] & 0xF) if r[:2] == b"\x00\x07" else "-1")
    except socket.timeout:
        codes.append("-1")
print(" ".join(codes))
"#;

/// node-a's (policy generation, applied generation).
fn generations(lab: &Lab) -> (u64, u64) {
    let sock = format!("/run/veil/labs/{}/node-a/veild.sock", lab.name);
    veil_tests::call(
        Path::new(&sock),
        veil_api::method::NODE_STATUS,
        serde_json::Value::Null,
    )
    .map(|s| {
        (
            s["policyGeneration"].as_u64().unwrap_or(0),
            s["policyAppliedGeneration"].as_u64().unwrap_or(0),
        )
    })
    .unwrap_or((0, 0))
}

/// Writes [`POLICY`] into the lab's datastore; waits until node-a holds it.
fn apply_policy(lab: &Lab) {
    let before = generations(lab).0;
    let dir = format!("/run/veil/labs/{}/datastore/policies", lab.name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(Path::new(&dir).join("dns-test.yaml"), POLICY).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || {
            let (g, a) = generations(lab);
            g > before && a >= g
        }),
        "policy never applied: {}",
        show(&veilctl(&["status", "--lab", &lab.name]))
    );
}

fn dig(lab: &Lab, pod: &str, dns: &str, name: &str, tcp: bool) -> Option<String> {
    let server = format!("@{dns}");
    let mut cmd = vec!["dig", "+short", "+tries=1", "+time=1", &server, name];
    if tcp {
        cmd.push("+tcp");
    }
    let o = lab.in_pod(pod, &cmd);
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !out.is_empty() && !out.starts_with(';')).then_some(out)
}

#[test]
fn dns_proxy_resolves_over_udp_and_tcp_opens_only_what_it_saw_and_survives_restart() {
    require_root();
    let path = std::env::temp_dir().join(format!("{}-dns.yaml", unique_name()));
    std::fs::write(&path, SCENARIO).unwrap();
    let _rm = TempDir(path.clone());
    let lab = Lab::up(&["--scenario", path.to_str().unwrap()]);
    let dns = lab.pod_ip("kube-system/kube-dns");
    apply_policy(&lab);

    // Not resolved yet: the address is closed.
    assert!(lab.curl("out/app", "http://203.0.113.10:443/", 1).is_none());
    // UDP and TCP lookups through the proxy return the answer unchanged.
    let mut udp = None;
    eventually(Duration::from_secs(10), || {
        udp = dig(&lab, "out/app", &dns, "api.example.com", false);
        udp.is_some()
    });
    assert_eq!(udp.as_deref(), Some("203.0.113.10"));
    assert_eq!(
        dig(&lab, "out/app", &dns, "Api.Example.com.", true).as_deref(),
        Some("203.0.113.10")
    );
    // The answer opened the address before it was released.
    assert!(lab.curl("out/app", "http://203.0.113.10:443/", 1).is_some());
    // A name no rule allows resolves but opens nothing.
    assert_eq!(
        dig(&lab, "out/app", &dns, "other.example.com", false).as_deref(),
        Some("203.0.113.11")
    );
    assert!(lab.curl("out/app", "http://203.0.113.11:443/", 1).is_none());
    // Two queries with the same ID in flight from two sockets of the pod
    // (the second cannot share the pod's upstream socket): both answered.
    let o = lab.in_pod("out/app", &["python3", "-c", SAME_ID, &dns]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0 0",
        "{}",
        show(&o)
    );
    // A pod without domain rules resolves as before (not proxied).
    assert!(dig(&lab, "out/free", &dns, "api.example.com", false).is_some());

    // `veilctl dns` names the pod, the name, the address and the rule.
    let o = veilctl(&["dns", "--lab", &lab.name]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        out.contains("api.example.com") && out.contains("203.0.113.10"),
        "{out}"
    );
    assert!(out.contains("out/app-out#1"), "{out}");
    assert!(!out.contains("203.0.113.11"), "{out}");

    // Restart veild: the allowance stays (kernel set + saved cache), and DNS
    // comes back; the gap is measured from the restart command.
    let start = Instant::now();
    let o = veilctl(&["lab", "restart-node", "--name", &lab.name, "node-a"]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(lab.curl("out/app", "http://203.0.113.10:443/", 3).is_some());
    let mut tries = 0;
    let back = loop {
        tries += 1;
        if dig(&lab, "out/app", &dns, "api.example.com", false).is_some() {
            break Some(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(30) {
            break None;
        }
    };
    let back = back.expect("DNS through the proxy works again after the restart");
    eprintln!("DNS gap across a veild restart: {back:?} ({tries} lookups)");
    assert!(back < Duration::from_secs(15), "{back:?}");
}

/// What the scenario format cannot say (it has no CNAMEs, TTLs, waits or
/// long-lived connections): a resolver pod served with a [`Zone`] of its
/// own, and a pod whose DNS goes through the proxy to it.
///
/// [`Zone`]: ctl::lab::dns::Zone
const ZONE_SCENARIO: &str = r#"
name: dns-zone-e2e
namespaces: [{name: out}]
pods:
  - {name: out/app, labels: {app: app}, ports: [{port: 8080}]}
  - {name: out/resolver, labels: {app: resolver}}
external:
  - {name: edge.example.net, ip: 203.0.113.20, ports: [{port: 443}]}
  - {name: big1.example.net, ip: 203.0.113.30, ports: [{port: 443}]}
  - {name: short.example.net, ip: 203.0.113.40, ports: [{port: 443}]}
probes: []
"#;

const ZONE_POLICY: &str = r#"
apiVersion: veil.dev/v1alpha1
kind: NetworkPolicy
metadata: {name: app-out, namespace: out}
spec:
  selector: {matchLabels: {app: app}}
  egress:
    - action: Allow
      destination:
        selector: {matchLabels: {app: resolver}}
        ports: [53]
    - action: Allow
      protocol: TCP
      destination:
        domains: [www.example.com, big.example.com, short.example.net, loop1.example.com]
        ports: [443]
"#;

/// The lab DNS server (`veilctl lab serve`) in a pod's namespace, killed by
/// PID when dropped (it also exits when the namespace goes).
struct Resolver(std::process::Child);
impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_resolver(lab: &Lab, dir: &Path) -> Resolver {
    let status = lab.status();
    let netns = status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "out/resolver")
        .and_then(|p| p["netns"].as_str())
        .unwrap_or_else(|| panic!("out/resolver's namespace in {status}"))
        .to_string();
    let ready = dir.join("resolver.ready");
    let big: Vec<String> = std::iter::once("203.0.113.30".to_string())
        .chain((0..119).map(|i| format!("203.0.113.{}", 130 + i)))
        .collect();
    let spec = serde_json::json!({
        "name": "out/resolver",
        "netns": netns,
        "dns": {
            "edge.example.net": "203.0.113.20",
            "alias.example.org": "203.0.113.20",
            "short.example.net": "203.0.113.40",
        },
        "dnsZone": {
            "cnames": {
                "www.example.com": "a.example.com",
                "a.example.com": "edge.example.net",
                "loop1.example.com": "loop2.example.com",
                "loop2.example.com": "loop1.example.com",
            },
            "ttls": {"short.example.net": 1},
            "addresses": {"big.example.com": big},
        },
        "readyFile": ready,
    });
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(bin("veilctl"))
        .args(["lab", "serve", "--spec", &spec.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the resolver");
    let r = Resolver(child);
    assert!(
        eventually(Duration::from_secs(10), || ready.exists()),
        "the resolver never got ready"
    );
    r
}

fn write_policy(lab: &Lab, text: &str) {
    let before = generations(lab).0;
    let dir = format!("/run/veil/labs/{}/datastore/policies", lab.name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(Path::new(&dir).join("dns-zone-test.yaml"), text).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || {
            let (g, a) = generations(lab);
            g > before && a >= g
        }),
        "policy never applied: {}",
        show(&veilctl(&["status", "--lab", &lab.name]))
    );
}

/// `veil_dns_queries_total{transport=...}` of node-a.
fn proxy_queries(lab: &Lab, transport: &str) -> u64 {
    let o = lab.exec(
        &["--node", "node-a"],
        &["curl", "-s", "http://127.0.0.1:9590/metrics"],
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let needle = format!("veil_dns_queries_total{{transport=\"{transport}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok())
        .unwrap_or(0)
}

const KEEP_ALIVE: &str = r#"
import socket, sys, time
s = socket.create_connection(("203.0.113.40", 443), timeout=3)
ok = 0
for i in range(11):
    s.sendall(b"GET / HTTP/1.1\r\nHost: short.example.net\r\n\r\n")
    data = b""
    while b"short.example.net\n" not in data:
        d = s.recv(4096)
        if not d:
            break
        data += d
    if data.startswith(b"HTTP/1.1 200"):
        ok += 1
    time.sleep(4)
print(ok)
"#;

#[test]
fn dns_proxy_follows_cname_chains_retries_over_tcp_and_keeps_live_connections_past_the_ttl() {
    require_root();
    let dir = TempDir(std::env::temp_dir().join(format!("{}-dns-zone", unique_name())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("s.yaml");
    std::fs::write(&path, ZONE_SCENARIO).unwrap();
    let lab = Lab::up(&["--scenario", path.to_str().unwrap()]);
    let resolver_ip = lab.pod_ip("out/resolver");
    let _resolver = start_resolver(&lab, &dir.0);
    write_policy(&lab, ZONE_POLICY);

    // A chain of two CNAMEs: the asked name is allowed, the chain's end's
    // address opens; the answer is released unchanged.
    assert!(lab.curl("out/app", "http://203.0.113.20:443/", 1).is_none());
    let mut www = None;
    eventually(Duration::from_secs(10), || {
        www = dig(&lab, "out/app", &resolver_ip, "www.example.com", false);
        www.is_some()
    });
    let www = www.expect("www.example.com resolves through the proxy");
    assert_eq!(
        www.lines().collect::<Vec<_>>(),
        vec!["a.example.com.", "edge.example.net.", "203.0.113.20"],
        "{www}"
    );
    // Another name for the same address, allowed by no rule, asked after:
    // the address book now says alias.example.org, but the flow the
    // allowance let through is named by the name that allowed it (the
    // denied attempt before the lookup stays `world`).
    assert_eq!(
        dig(&lab, "out/app", &resolver_ip, "alias.example.org", false).as_deref(),
        Some("203.0.113.20")
    );
    assert!(lab.curl("out/app", "http://203.0.113.20:443/", 3).is_some());
    let mut named = Vec::new();
    eventually(Duration::from_secs(10), || {
        let o = veilctl(&["flows", "--lab", &lab.name, "--output", "json"]);
        named = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains("203.0.113.20") && l.contains(r#""verdict":"allowed""#))
            .map(str::to_string)
            .collect();
        !named.is_empty()
    });
    assert!(!named.is_empty(), "no flow to 203.0.113.20 recorded");
    for l in &named {
        assert!(
            l.contains("www.example.com") && !l.contains("alias.example.org"),
            "{l}"
        );
    }

    // A CNAME loop: SERVFAIL, nothing opens.
    let o = lab.in_pod(
        "out/app",
        &[
            "dig",
            "+tries=1",
            "+time=2",
            &format!("@{resolver_ip}"),
            "loop1.example.com",
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("SERVFAIL"),
        "{}",
        show(&o)
    );

    // 120 addresses (about 2 KB, over dig's EDNS size of 1232 bytes): the
    // UDP answer is truncated, dig retries over TCP
    // through the proxy, and the answer opens the addresses.
    assert!(lab.curl("out/app", "http://203.0.113.30:443/", 1).is_none());
    let tcp_before = proxy_queries(&lab, "tcp");
    let o = lab.in_pod(
        "out/app",
        &[
            "dig",
            "+short",
            "+tries=1",
            "+time=2",
            &format!("@{resolver_ip}"),
            "big.example.com",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(out.lines().count(), 120, "{}", show(&o));
    assert!(
        proxy_queries(&lab, "tcp") > tcp_before,
        "the retry went over TCP"
    );
    assert!(lab.curl("out/app", "http://203.0.113.30:443/", 3).is_some());

    // TTL 1 s: the allowance lasts max(TTL, 30 s) + 5 s. A connection opened
    // in time keeps working past it; a new one afterwards is denied.
    assert!(lab.curl("out/app", "http://203.0.113.40:443/", 1).is_none());
    assert_eq!(
        dig(&lab, "out/app", &resolver_ip, "short.example.net", false).as_deref(),
        Some("203.0.113.40")
    );
    let granted = Instant::now();
    let live = std::process::Command::new(bin("veilctl"))
        .args([
            "lab", "exec", "--name", &lab.name, "out/app", "--", "python3", "-c", KEEP_ALIVE,
        ])
        .output();
    let live = live.expect("run the keep-alive client");
    let ok: u32 = String::from_utf8_lossy(&live.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        granted.elapsed() > Duration::from_secs(40),
        "the client ran past the expiry"
    );
    assert_eq!(
        ok,
        11,
        "every request on the live connection answered: {}",
        show(&live)
    );
    assert!(
        lab.curl("out/app", "http://203.0.113.40:443/", 1).is_none(),
        "a new connection after expiry + grace is denied"
    );
}
