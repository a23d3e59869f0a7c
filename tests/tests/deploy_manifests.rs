//! Every Kubernetes manifest under deploy/ (CRDs included, validated as
//! CustomResourceDefinitions) passes `kubernetes-validate --strict` against the
//! Kubernetes 1.33 schemas. The tool bundles its schemas, so this runs offline;
//! `scripts/setup` installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml")
            && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        {
            out.push(p);
        }
    }
}

#[test]
fn every_manifest_validates_against_kubernetes_1_33() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files = Vec::new();
    yaml_files(&deploy, &mut files);
    assert!(files.len() >= 4, "manifests found: {files:?}");
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.33.0", "--strict", "--quiet"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate is required (pip install kubernetes-validate; scripts/setup does it): {e}")
        });
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The Grafana dashboard as a provisioning ConfigMap (label `grafana_dashboard`,
/// the convention of Grafana's dashboard sidecar), rendered from
/// deploy/grafana/veil-flows.json.
fn dashboard_configmap(json: &str) -> String {
    let mut out = String::from(
        "# Generated from deploy/grafana/veil-flows.json; do not edit. Refresh with\n\
         # VEIL_UPDATE_GOLDEN=1 cargo test -p veil-tests --test deploy_manifests\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: veil-grafana-dashboard\n  namespace: kube-system\n  labels:\n    \
         app.kubernetes.io/name: veil\n    grafana_dashboard: \"1\"\n\
         data:\n  veil-flows.json: |\n",
    );
    for line in json.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn grafana_dashboard_configmap_is_rendered_from_the_dashboard_json() {
    let json = std::fs::read_to_string(deploy_dir().join("grafana/veil-flows.json")).unwrap();
    let want = dashboard_configmap(&json);
    let path = deploy_dir().join("grafana/dashboard-configmap.yaml");
    if std::env::var_os("VEIL_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "stale {}; refresh with VEIL_UPDATE_GOLDEN=1 cargo test -p veil-tests --test deploy_manifests",
        path.display()
    );
    // And it carries the dashboard unchanged.
    let v: serde_yaml::Value = serde_yaml::from_str(&have).unwrap();
    assert_eq!(v["data"]["veil-flows.json"].as_str(), Some(json.as_str()));
}

fn docs(path: &Path) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect()
}

#[test]
fn kustomization_lists_every_cluster_manifest_that_exists() {
    let deploy = deploy_dir();
    let k = &docs(&deploy.join("kustomization.yaml"))[0];
    let listed: Vec<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    for r in &listed {
        assert!(deploy.join(r).is_file(), "kustomization lists missing {r}");
    }
    let mut files = Vec::new();
    yaml_files(&deploy, &mut files);
    for f in files {
        let rel = f
            .strip_prefix(&deploy)
            .unwrap()
            .to_string_lossy()
            .to_string();
        if rel.starts_with("prometheus-operator/") {
            continue; // needs the operator's CRDs: its own kustomization
        }
        assert!(
            listed.contains(&rel),
            "{rel} is not in deploy/kustomization.yaml"
        );
    }
}

#[test]
fn daemonset_runs_veild_on_the_host_network_with_probes_and_the_cni_init_container() {
    let deploy = deploy_dir();
    let ds = docs(&deploy.join("daemonset/veil-node.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap();
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    assert_eq!(
        spec["priorityClassName"].as_str(),
        Some("system-node-critical")
    );
    let c = &spec["containers"][0];
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(c["securityContext"]["privileged"].as_bool(), Some(false));
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--datastore=kube"), "{args:?}");
    let init = &spec["initContainers"][0];
    let cmd: Vec<&str> = init["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&cmd[..2], ["/usr/local/bin/veild", "install-cni"]);
    let host_paths: Vec<&str> = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for p in [
        "/run/veil",
        "/var/lib/veil",
        "/etc/cni/net.d",
        "/opt/cni/bin",
    ] {
        assert!(
            host_paths.contains(&p),
            "hostPath {p} missing: {host_paths:?}"
        );
    }
    // The service account it runs as is the one the RBAC binds.
    let sa = spec["serviceAccountName"].as_str().unwrap();
    let rbac = docs(&deploy.join("rbac/veil-node.yaml"));
    for b in rbac
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        assert_eq!(b["subjects"][0]["name"].as_str(), Some(sa));
        assert_eq!(b["subjects"][0]["namespace"], ds["metadata"]["namespace"]);
    }
}
