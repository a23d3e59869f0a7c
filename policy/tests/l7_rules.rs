//! `Program::connection_rules` (the L7 proxy's view: the deciding rules of a
//! connection, and the `http` conditions each request must meet) agrees
//! with `Program::verdict` on every probe of every repository and example
//! scenario.

use std::path::Path;

use veil_policy::compile::ConnectionRules;
use veil_policy::eval::Verdict;
use veil_scenario::{is_scenario_file, probe_flows, run_steps, Scenario};

fn check_dir(dir: &Path) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut failures = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (0, failures);
    };
    for f in rd.filter_map(|e| e.ok().map(|e| e.path())) {
        if !f
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_scenario_file)
        {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("readable scenario");
        let Ok(sc) = Scenario::parse(&text) else {
            continue;
        };
        let _ = run_steps(&sc, sc.steps.len(), |sc, state, compiled, si| {
            for probe in &sc.steps[si].probes {
                let (_, flow) = probe_flows(&state.cluster, sc, probe);
                let program = compiled.program();
                let by_rules = match program.connection_rules(&flow) {
                    ConnectionRules::Denied(_) => Verdict::Deny,
                    ConnectionRules::Allowed(rules) => {
                        let ok = rules
                            .iter()
                            .all(|r| flow.http.as_ref().is_some_and(|req| r.check(req)));
                        if ok {
                            Verdict::Allow
                        } else {
                            Verdict::Deny
                        }
                    }
                };
                checked += 1;
                let want = program.verdict(&flow);
                if by_rules != want {
                    failures.push(format!(
                        "{}: step {si}: {} -> {:?} port {}: rules say {by_rules}, program {want}",
                        f.display(),
                        probe.from,
                        probe.to,
                        probe.port
                    ));
                }
            }
        });
    }
    (checked, failures)
}

#[test]
fn connection_rules_agree_with_the_program_on_every_scenario_probe() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (a, mut f) = check_dir(&root.join("../tests/scenarios"));
    let (b, g) = check_dir(&root.join("../../shared/scenarios/examples"));
    f.extend(g);
    assert!(a > 100, "only {a} probes checked");
    assert!(f.is_empty(), "{}", f.join("\n"));
    let _ = b;
}
