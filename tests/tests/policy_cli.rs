//! `veilctl policy test` as a user runs it: the example scenarios of the contract,
//! the project's scenario suite, and the invalid files (exit 2, message naming
//! the file and the reason).

use std::path::{Path, PathBuf};
use std::process::Command;

use veil_tests::{bin, unique_prefix, TempDir};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn policy_test(path: &Path) -> (i32, String, String) {
    let out = Command::new(bin("veilctl"))
        .args(["policy", "test"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn summary(stdout: &str) -> (usize, usize) {
    let last = stdout.lines().last().unwrap_or_default();
    let words: Vec<&str> = last.split_whitespace().collect();
    assert!(
        words.len() >= 4 && words[1] == "passed," && words[3] == "failed",
        "no summary line in {last:?}"
    );
    (words[0].parse().unwrap(), words[2].parse().unwrap())
}

#[test]
fn project_suite_passes_with_hundreds_of_probes() {
    let (code, out, err) = policy_test(&repo().join("tests/scenarios"));
    assert_eq!(code, 0, "{out}\n{err}");
    let (passed, failed) = summary(&out);
    assert_eq!(failed, 0);
    assert!(passed >= 400, "only {passed} probes ran");
}

#[test]
fn contract_examples_pass() {
    let dir = repo().join("../shared/scenarios/examples");
    if !dir.exists() {
        panic!(
            "{} is missing (shared/ must sit beside the repository)",
            dir.display()
        );
    }
    let (code, out, err) = policy_test(&dir);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(summary(&out), (53, 0));
}

#[test]
fn every_invalid_file_exits_2_naming_the_file() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("tests/scenarios/invalid")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        n += 1;
        let (code, out, err) = policy_test(&path);
        assert_eq!(code, 2, "{}: exit {code}\n{out}\n{err}", path.display());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            err.contains(name) || out.contains(name),
            "{}: the message does not name the file:\n{err}{out}",
            path.display()
        );
    }
    assert!(n >= 30, "only {n} invalid files");
}

#[test]
fn a_wrong_expectation_fails_with_exit_1_and_a_trace() {
    let dir = TempDir::new(&unique_prefix(), "policy-cli");
    let src = std::fs::read_to_string(
        repo().join("../shared/scenarios/examples/default-deny-namespace.yaml"),
    )
    .unwrap();
    let flipped = src.replacen("port: 8080, expect: deny", "port: 8080, expect: allow", 1);
    assert_ne!(src, flipped);
    let f = dir.join("flipped.yaml");
    std::fs::write(&f, flipped).unwrap();
    let (code, out, _) = policy_test(&f);
    drop(dir);
    assert_eq!(code, 1, "{out}");
    let (_, failed) = summary(&out);
    assert_eq!(failed, 1, "{out}");
}
