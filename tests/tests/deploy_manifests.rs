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
