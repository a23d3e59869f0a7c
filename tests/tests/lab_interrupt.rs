//! An interrupted `veilctl lab test` removes the lab it was running: its
//! namespaces and its directory, and exits 128 + the signal.

use std::process::{Command, Stdio};
use std::time::Duration;

use veil_tests::{bin, eventually, require_root};

fn namespaces_with(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn sigterm_during_lab_test_removes_its_lab() {
    require_root();
    let scenario = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios/basics-no-policy-allows-everything.yaml");
    let mut child = Command::new(bin("veilctl"))
        .args(["lab", "test", scenario.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The lab's name, as `lab test` derives it for its first scenario.
    let lab = format!("lt{:08x}", child.id().wrapping_mul(31));
    let prefix = format!("vl-{lab}-");
    let up = eventually(Duration::from_secs(60), || {
        std::path::Path::new(&format!("/run/veil/labs/{lab}/lab.json")).exists()
            && !namespaces_with(&prefix).is_empty()
    });
    // Interrupt it (also when the lab never came up, so the child ends).
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = eventually(Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !status {
        let _ = child.kill();
        let _ = child.wait();
    }
    let left = namespaces_with(&prefix);
    if !left.is_empty() {
        // Clean up before failing: the lab is ours.
        let _ = Command::new(bin("veilctl"))
            .args(["lab", "down", "--name", &lab])
            .status();
    }
    assert!(up, "lab {lab} never came up");
    assert!(status, "veilctl lab test did not exit after SIGTERM");
    assert!(left.is_empty(), "namespaces left after SIGTERM: {left:?}");
    assert!(
        !std::path::Path::new(&format!("/run/veil/labs/{lab}")).exists(),
        "lab directory left after SIGTERM"
    );
}
