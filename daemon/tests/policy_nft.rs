//! Every scenario's compiled policy, rendered for each of its nodes, is
//! accepted by the real kernel: `nft -j -f -` in a fresh network namespace
//! (root; the namespace is removed at the end, also on failure).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use veil_daemon::dataplane::nftables::policy::{render, LocalEndpoint};
use veil_daemon::dataplane::nftables::{plan, BaseFilter, DesiredTable};
use veil_scenario::Scenario;

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("vpr-{}-{tag}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        Netns(name)
    }

    fn nft(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn scenario_files() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut v = Vec::new();
    for dir in [
        root.join("../shared/scenarios/examples"),
        root.join("tests/scenarios"),
    ] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn every_scenario_renders_to_a_ruleset_the_kernel_accepts() {
    if !nix_is_root() {
        panic!("this test needs root (it creates a network namespace)");
    }
    let files = scenario_files();
    assert!(files.len() > 10, "scenario files found: {}", files.len());
    let ns = Netns::new("all");
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let Ok(sc) = Scenario::parse(&text) else {
            continue;
        };
        let Ok(st) = sc.initial_state() else { continue };
        let c = veil_policy::compile::Compiled::new(&st.cluster, &st.policies);
        for node in &st.cluster.nodes {
            let eps: Vec<LocalEndpoint> = st
                .cluster
                .pods
                .values()
                .filter(|p| p.node == node.name && !p.host_network)
                .enumerate()
                .map(|(i, p)| LocalEndpoint {
                    ifname: format!("veil{i:011x}"),
                    ip: p.ip,
                    pod: Some(p.key()),
                })
                .collect();
            let o = render(c.program(), &eps);
            let mut desired = DesiredTable::new(BaseFilter {
                underlay_interface: "eth0".into(),
                cluster_cidr: "10.244.0.0/16".parse().unwrap(),
                pod_cidr: "10.244.0.0/24".parse().unwrap(),
            });
            desired.policy = o.objects();
            plan::validate(&desired).expect("valid table");
            let doc = plan::to_json(&plan::full(&desired)).unwrap().to_string();
            if let Err(e) = ns.nft(&["-j", "-f", "-"], &doc) {
                panic!(
                    "{}: node {}: nft refused: {e}\n{doc}",
                    f.display(),
                    node.name
                );
            }
            let listed = ns
                .nft(&["-j", "list", "table", "inet", "veil"], "")
                .unwrap();
            assert!(listed.contains("policy-egress"), "{}", f.display());
            checked += 1;
        }
    }
    assert!(checked > 10, "rendered {checked} node programs");
}

fn nix_is_root() -> bool {
    // SAFETY-free: geteuid through the id command keeps this test free of libc.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
