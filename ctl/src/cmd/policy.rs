//! `veilctl policy`: run scenario files through the policy engine
//! (`test`), or explain one connection (`trace`); both are in memory (no
//! network, no daemon). `status` asks the daemons which policies they
//! enforce ([`super::policy_status`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use veil_policy::model::Protocol;
use veil_policy::Verdict;
use veil_scenario::{self as scenario, evaluate_probe, is_scenario_file, Scenario};

/// Arguments of `veilctl policy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Run scenario files (or every *.yaml of directories) through the
    /// reference evaluator and the compiled program.
    Test(TestArgs),
    /// Explain how one connection is decided in a scenario's cluster.
    Trace(TraceArgs),
    /// Per node: the policies in force, their generation, the errors.
    Status(super::policy_status::StatusArgs),
}

#[derive(Debug, clap::Args)]
struct TestArgs {
    /// Scenario files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Print the trace of every probe, not only of failures.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Debug, clap::Args)]
struct TraceArgs {
    /// The scenario file giving the cluster and the policies.
    #[arg(long)]
    scenario: PathBuf,
    /// Source pod, NS/POD.
    #[arg(long)]
    from: String,
    /// Destination: NS/POD, an external host's name, or an address.
    #[arg(long)]
    to: String,
    /// Destination port: a number or a port name of the destination.
    #[arg(long)]
    port: String,
    /// TCP (default), UDP or SCTP.
    #[arg(long)]
    protocol: Option<String>,
    /// HTTP method of the request (TCP).
    #[arg(long)]
    http_method: Option<String>,
    /// HTTP path of the request (TCP).
    #[arg(long)]
    http_path: Option<String>,
    /// Host header (default as for probes).
    #[arg(long)]
    http_host: Option<String>,
    /// Evaluate after the changes of this step (0-based; default: the first step).
    #[arg(long, default_value_t = 0)]
    step: usize,
}

/// Runs the command; returns the exit code.
pub fn run(args: Args) -> i32 {
    match args.cmd {
        Cmd::Test(a) => test(a),
        Cmd::Trace(a) => trace(a),
        Cmd::Status(a) => super::policy_status::run(a),
    }
}

fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(is_scenario_file)
                })
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // A file that is not a YAML mapping is not a scenario: say so in words
    // rather than with the parser's type names.
    match serde_yaml::from_str::<serde_yaml::Value>(&text) {
        Ok(serde_yaml::Value::Mapping(_)) => {}
        Ok(other) => {
            let found = match other {
                serde_yaml::Value::Null => "an empty document",
                serde_yaml::Value::Bool(_) => "a boolean",
                serde_yaml::Value::Number(_) => "a number",
                serde_yaml::Value::String(_) => "plain text",
                serde_yaml::Value::Sequence(_) => "a list",
                _ => "something else",
            };
            return Err(format!(
                "{}: not a scenario: expected a YAML mapping with name, pods and probes, found {found}",
                path.display()
            ));
        }
        Err(e) => return Err(format!("{}: not YAML: {e}", path.display())),
    }
    Scenario::parse(&text).map_err(|e| format!("{}: {}", path.display(), humanize(&e.to_string())))
}

/// Replaces the parser's Rust type names (`expected struct RawPod`) with
/// what a user writes (`expected a mapping`).
fn humanize(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("struct ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "struct ".len()..];
        let end = after
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(after.len());
        out.push_str("a mapping");
        rest = &after[end..];
    }
    out.push_str(rest);
    out.replace("expected a a mapping", "expected a mapping")
}

fn describe(p: &scenario::Probe) -> String {
    let port = match &p.port_name {
        Some(n) => format!("{n} ({}/{})", p.port, p.protocol),
        None => format!("{}/{}", p.port, p.protocol),
    };
    let mut s = format!("{} -> {} port {port}", p.from, p.to);
    if p.explicit_http {
        if let Some(h) = &p.http {
            s.push_str(&format!(" http {} {}", h.method, h.path));
        }
    }
    s
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn test(a: TestArgs) -> i32 {
    let files = match collect(&a.paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let (mut passed, mut failed, mut invalid) = (0usize, 0usize, 0usize);
    let mut names: BTreeMap<(PathBuf, String), PathBuf> = BTreeMap::new();
    for f in files {
        let sc = match load(&f) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                invalid += 1;
                continue;
            }
        };
        let dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
        if let Some(other) = names.insert((dir, sc.name.clone()), f.clone()) {
            eprintln!(
                "error: {}: name: {:?} is already the name of {}",
                f.display(),
                sc.name,
                other.display()
            );
            invalid += 1;
            continue;
        }
        let outcomes = match scenario::run(&sc) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {}: {e}", f.display());
                invalid += 1;
                continue;
            }
        };
        for o in outcomes {
            let ok = o.passed();
            let step = if sc.has_steps {
                format!(" step {}", o.step)
            } else {
                String::new()
            };
            let verdict = if o.compiled == o.reference {
                o.reference.to_string()
            } else {
                format!("{} (compiled program: {})", o.reference, o.compiled)
            };
            println!(
                "{} {}{} #{}: {}: {} (expected {})",
                if ok { "PASS" } else { "FAIL" },
                sc.name,
                step,
                o.index,
                describe(&o.probe),
                verdict,
                o.probe.expect
            );
            if !ok || a.verbose {
                print!("{}", indent(&o.trace()));
            }
            if ok {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if invalid > 0 {
        2
    } else if failed > 0 {
        1
    } else {
        0
    }
}

fn trace(a: TraceArgs) -> i32 {
    let sc = match load(&a.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let protocol = match a
        .protocol
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None => None,
        Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some("SCTP") => Some(Protocol::Sctp),
        Some(other) => {
            eprintln!("error: --protocol: {other:?} is not TCP, UDP or SCTP");
            return 2;
        }
    };
    let http = match (a.http_method, a.http_path) {
        (None, None) => None,
        (m, p) => Some((
            m.unwrap_or_else(|| "GET".into()),
            p.unwrap_or_else(|| "/".into()),
            a.http_host,
        )),
    };
    let probe = match sc.probe(&a.from, &a.to, &a.port, protocol, http) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if a.step >= sc.steps.len() {
        eprintln!("error: --step: the scenario has {} step(s)", sc.steps.len());
        return 2;
    }
    let mut outcome = None;
    let res = scenario::run_steps(&sc, a.step + 1, |sc, state, compiled, si| {
        if si == a.step {
            outcome = Some(evaluate_probe(sc, state, compiled, si, 0, &probe));
        }
    });
    if let Err(e) = res {
        eprintln!("error: {}: {e}", a.scenario.display());
        return 2;
    }
    let Some(o) = outcome else {
        eprintln!("error: step {} not reached", a.step);
        return 2;
    };
    println!("{}", describe(&o.probe));
    if let Some(h) = &o.probe.http {
        println!("request: {} {} (Host: {})", h.method, h.path, h.host);
    }
    print!("{}", o.trace());
    println!("verdict: {}", o.reference);
    if o.compiled != o.reference {
        return 1;
    }
    match o.reference {
        Verdict::Allow | Verdict::Deny => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> Option<PathBuf> {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/scenarios/examples");
        d.is_dir().then_some(d)
    }

    fn test_args(paths: Vec<PathBuf>) -> TestArgs {
        TestArgs {
            paths,
            verbose: false,
        }
    }

    #[test]
    fn examples_pass_with_exit_0() {
        let Some(d) = examples() else { return };
        assert_eq!(test(test_args(vec![d])), 0);
    }

    #[test]
    fn a_wrong_expectation_exits_1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("s.yaml");
        std::fs::write(
            &f,
            "name: s\nnamespaces: [{name: a}]\npods:\n  - {name: a/x, ports: [{port: 80}]}\n  - {name: a/y, ports: [{port: 80}]}\nprobes:\n  - {from: a/x, to: a/y, port: 80, expect: deny}\n",
        )
        .expect("write");
        assert_eq!(test(test_args(vec![f])), 1);
    }

    #[test]
    fn an_invalid_or_missing_file_exits_2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("bad.yaml");
        std::fs::write(&f, "name: bad\nprobes: []\nbogus: 1\n").expect("write");
        assert_eq!(test(test_args(vec![f])), 2);
        assert_eq!(test(test_args(vec![dir.path().join("missing.yaml")])), 2);
    }

    #[test]
    fn duplicate_names_in_a_folder_are_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = "name: same\nnamespaces: [{name: a}]\npods: [{name: a/x, ports: [{port: 80}]}]\nprobes: [{from: a/x, to: a/x, port: 80, expect: allow}]\n";
        std::fs::write(dir.path().join("one.yaml"), body).expect("write");
        std::fs::write(dir.path().join("two.yaml"), body).expect("write");
        assert_eq!(test(test_args(vec![dir.path().to_path_buf()])), 2);
    }

    #[test]
    fn trace_runs_on_an_example() {
        let Some(d) = examples() else { return };
        let code = trace(TraceArgs {
            scenario: d.join("l7-path-rule.yaml"),
            from: "books/web".into(),
            to: "books/api".into(),
            port: "http".into(),
            protocol: None,
            http_method: Some("GET".into()),
            http_path: Some("/catalog/1".into()),
            http_host: None,
            step: 0,
        });
        assert_eq!(code, 0);
        let bad = trace(TraceArgs {
            scenario: d.join("l7-path-rule.yaml"),
            from: "books/nope".into(),
            to: "books/api".into(),
            port: "80".into(),
            protocol: None,
            http_method: None,
            http_path: None,
            http_host: None,
            step: 0,
        });
        assert_eq!(bad, 2);
    }

    #[test]
    fn a_file_that_is_not_a_scenario_is_named_in_words_not_rust_types() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hostname");
        std::fs::write(&p, "myhost\n").unwrap();
        let e = load(&p).unwrap_err();
        assert!(
            e.contains("not a scenario") && e.contains("plain text"),
            "{e}"
        );
        assert!(!e.contains("Raw"), "{e}");
        assert_eq!(
            humanize("x: expected struct RawPod at line 1"),
            "x: expected a mapping at line 1"
        );
    }
}
