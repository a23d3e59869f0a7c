//! Runs every example scenario (../shared/scenarios/examples, a sibling of
//! the repository) and every scenario of tests/scenarios through the
//! reference evaluator and the compiled program.

use std::path::{Path, PathBuf};

use veil_scenario::{is_scenario_file, run, Scenario};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(is_scenario_file)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn run_dir(dir: &Path) -> (usize, Vec<String>) {
    let mut probes = 0;
    let mut failures = Vec::new();
    for f in files(dir) {
        let text = std::fs::read_to_string(&f).expect("readable scenario");
        let sc = match Scenario::parse(&text) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: invalid: {e}", f.display()));
                continue;
            }
        };
        match run(&sc) {
            Ok(outcomes) => {
                for o in outcomes {
                    probes += 1;
                    if !o.passed() {
                        failures.push(format!(
                            "{}: step {} probe {}: {} -> {} port {}: reference {}, compiled {}, expected {}\n{}",
                            f.display(),
                            o.step,
                            o.index,
                            o.probe.from,
                            o.probe.to,
                            o.probe.port,
                            o.reference,
                            o.compiled,
                            o.probe.expect,
                            o.trace()
                        ));
                    }
                }
            }
            Err(e) => failures.push(format!("{}: {e}", f.display())),
        }
    }
    (probes, failures)
}

#[test]
fn example_scenarios_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/scenarios/examples");
    if !dir.is_dir() {
        eprintln!("skipping: {} not present", dir.display());
        return;
    }
    let (probes, failures) = run_dir(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(probes, 53, "the examples have 53 probes");
}

#[test]
fn repository_scenarios_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
    if !dir.is_dir() {
        eprintln!("skipping: {} not present", dir.display());
        return;
    }
    let (probes, failures) = run_dir(&dir);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(probes > 0);
}

#[test]
fn repository_invalid_scenarios_are_rejected() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios/invalid");
    if !dir.is_dir() {
        eprintln!("skipping: {} not present", dir.display());
        return;
    }
    let all = files(&dir);
    let mut accepted = Vec::new();
    for f in &all {
        let text = std::fs::read_to_string(f).expect("readable scenario");
        let rejected = match Scenario::parse(&text) {
            Err(_) => true,
            Ok(sc) => run(&sc).is_err(),
        };
        if !rejected {
            accepted.push(f.display().to_string());
        }
    }
    assert!(!all.is_empty());
    assert!(
        accepted.is_empty(),
        "invalid scenarios accepted: {accepted:?}"
    );
}
