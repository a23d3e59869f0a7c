//! `veilctl lab probe` and `veilctl lab test`: scenario traffic in a lab
//! (one probe from a pod, or whole scenario files each in a lab of its own),
//! and the hidden subcommands the lab runs inside namespaces (`probe-exec`,
//! `serve`).

use std::path::PathBuf;
use std::time::Duration;

use super::{need_root, Output};
use crate::lab::probe::{HttpRequest, ProbeSpec, Target};
use crate::lab::serve::ServeSpec;
use crate::lab::state::LabState;
use crate::lab::up::Binaries;
use crate::lab::{self, LabError, DEFAULT_NAME};

#[derive(Debug, clap::Args)]
pub(super) struct TestArgs {
    /// Scenario files, or folders of them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Keep each lab afterwards (named after its scenario's position: lt0, lt1, ...).
    #[arg(long)]
    keep: bool,
    /// Extra time after every daemon reports a change applied, before its
    /// probes run (ms).
    #[arg(long, default_value_t = 0)]
    settle_ms: u64,
    /// The veild binary (default: next to veilctl).
    #[arg(long)]
    veild: Option<PathBuf>,
    /// Directory of the veil CNI plugin (default: next to veilctl).
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(super) struct ProbeArgs {
    /// Lab name.
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
    /// The source pod, NAMESPACE/POD.
    #[arg(long)]
    from: String,
    /// A pod (NAMESPACE/POD), an external host's name (resolved through the
    /// cluster DNS), or an address.
    #[arg(long)]
    to: String,
    /// Port number (1 to 65535).
    #[arg(long, value_parser = crate::cmd::common::port)]
    port: u16,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// HTTP method (TCP).
    #[arg(long, default_value = "GET")]
    http_method: String,
    /// HTTP path (TCP).
    #[arg(long, default_value = "/")]
    http_path: String,
    /// Timeout in milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub(super) fn probe(a: &ProbeArgs) -> Result<i32, LabError> {
    need_root()?;
    let state = LabState::load(&a.name)?;
    let from = state
        .pod(&a.from)
        .ok_or_else(|| state.no_such("pod", &a.from))?;
    let mut spec = ProbeSpec {
        target: Target::Name(a.to.clone()),
        port: a.port,
        protocol: a.protocol.to_ascii_uppercase(),
        http: Some(HttpRequest {
            method: a.http_method.clone(),
            path: a.http_path.clone(),
        }),
        host: None,
        dns_query: None,
        dns_server: None,
        timeout_ms: Some(a.timeout_ms),
    };
    let dns_pod = state
        .pods
        .iter()
        .find(|p| p.namespace == "kube-system" && p.name == "kube-dns");
    spec.dns_server = dns_pod.and_then(|p| p.ip);
    if let Ok(ip) = a.to.parse() {
        spec.target = Target::Ip(ip);
    } else if a.to.contains('/') {
        let to = state
            .pod(&a.to)
            .ok_or_else(|| state.no_such("pod", &a.to))?;
        let ip = to.ip.ok_or_else(|| state.no_such("pod address", &a.to))?;
        spec.target = Target::Ip(ip);
        spec.host = Some(format!("{}.{}", to.name, to.namespace));
        if dns_pod.is_some_and(|d| d.full_name() == to.full_name()) && a.port == 53 {
            spec.dns_query = Some("veil-probe.invalid".into());
        }
    }
    let me = std::env::current_exe().map_err(|e| LabError::io("/proc/self/exe", e))?;
    let result = lab::probe::run_in(&from.netns, &me, &spec, &a.from)?;
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string(&result).map_err(LabError::Spec)?
        ),
        Output::Text => {
            let verdict = if result.allowed() { "allow" } else { "deny" };
            let detail = match (&result.status, &result.answer, &result.error) {
                (_, _, Some(e)) => e.clone(),
                (Some(st), Some(body), _) => format!("{st} {}", body.trim()),
                (None, Some(ans), _) => ans.clone(),
                _ => String::new(),
            };
            let via = result
                .resolved
                .map(|ip| format!(" (resolved {ip})"))
                .unwrap_or_default();
            println!(
                "{verdict}  {} -> {}:{}/{}{via}  {detail}",
                a.from, a.to, a.port, spec.protocol
            );
        }
    }
    Ok(if result.allowed() { 0 } else { 1 })
}

/// The scenario files named on the command line (folders: their `.yaml`
/// and `.yml` files, sorted).
fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LabError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| LabError::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(veil_scenario::is_scenario_file)
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

pub(super) fn test(a: TestArgs) -> Result<i32, LabError> {
    need_root()?;
    let files = scenario_files(&a.paths)?;
    let binaries = Binaries::locate(a.veild, a.cni_bin_dir)?;
    let (mut passed, mut failed, mut invalid) = (0usize, 0usize, 0usize);
    if !a.keep {
        super::interrupt::install();
    }
    for (i, f) in files.iter().enumerate() {
        let sc = match lab::load_scenario(f) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                invalid += 1;
                continue;
            }
        };
        let name = if a.keep {
            format!("lt{i}")
        } else {
            format!(
                "lt{:08x}",
                std::process::id().wrapping_mul(31).wrapping_add(i as u32)
            )
        };
        let opts = lab::test::TestOptions {
            lab: name.clone(),
            binaries: binaries.clone(),
            settle: Duration::from_millis(a.settle_ms),
            keep: a.keep,
        };
        let mut report = |o: &lab::test::Outcome| {
            let step = if sc.has_steps {
                format!(" step {}", o.step)
            } else {
                String::new()
            };
            let detail = match (&o.result.error, &o.result.status) {
                (Some(e), _) => format!(" ({e})"),
                (None, Some(st)) => format!(" (HTTP {st})"),
                _ => String::new(),
            };
            println!(
                "{} {}{} #{}: {} -> {} port {}/{}: {} (expected {}){detail}",
                if o.passed() { "PASS" } else { "FAIL" },
                sc.name,
                step,
                o.index,
                o.probe.from,
                o.probe.to,
                o.probe.port,
                o.probe.protocol,
                o.verdict(),
                o.probe.expect
            );
        };
        if !a.keep {
            super::interrupt::set_current(Some(name.clone()));
        }
        let run = lab::test::run(&sc, f, &opts, &mut report);
        super::interrupt::set_current(None);
        match run {
            Ok(outcomes) => {
                for o in &outcomes {
                    if o.passed() {
                        passed += 1;
                    } else {
                        failed += 1;
                    }
                }
                if a.keep {
                    println!("(lab {name} kept: veilctl lab down --name {name})");
                }
            }
            Err(e) => {
                eprintln!("error: {}: {e}", f.display());
                invalid += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if invalid > 0 {
        2
    } else if failed > 0 {
        1
    } else {
        0
    })
}

pub(super) fn probe_exec(spec: &str) -> Result<i32, LabError> {
    let spec: ProbeSpec = serde_json::from_str(spec).map_err(LabError::Spec)?;
    let result = lab::probe::run(&spec);
    println!(
        "{}",
        serde_json::to_string(&result).map_err(LabError::Spec)?
    );
    Ok(0)
}

pub(super) fn serve(spec: &str) -> Result<i32, LabError> {
    let spec: ServeSpec = serde_json::from_str(spec).map_err(LabError::Spec)?;
    lab::serve::run(spec)?;
    Ok(0)
}
