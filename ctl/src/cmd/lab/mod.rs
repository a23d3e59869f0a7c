//! `veilctl lab`: a cluster of network namespaces on this machine
//! (`up`, `down`, `status`, `exec`, `restart-node`, `list`; scenario traffic,
//! `probe` and `test`, is in [`traffic`]).

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::lab::plan::Plan;
use crate::lab::state::{LabLock, LabState};
use crate::lab::up::{Binaries, UpOptions};
use crate::lab::{self, netns, process, LabError, DEFAULT_NAME};
use test::TestArgs;
use traffic::ProbeArgs;

mod interrupt;
mod test;
mod traffic;

/// Arguments of `veilctl lab`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Build a lab: underlay, nodes running veild, pods wired by the veil CNI plugin.
    Up(UpArgs),
    /// Remove everything a lab made (also after a crash). Idempotent.
    Down(NameArg),
    /// List a lab's nodes, pods and external hosts.
    Status(StatusArgs),
    /// Run a command inside a pod's, a node's or the underlay's namespace.
    Exec(ExecArgs),
    /// Restart a node's veild (stopping it first if it runs).
    RestartNode(RestartArgs),
    /// Send one probe from a pod, as a scenario probe does (exit 0 allow, 1 deny).
    Probe(ProbeArgs),
    /// Run scenario files as real traffic, each in a lab of its own.
    Test(TestArgs),
    /// List the labs on this machine.
    List,
    /// Serve a lab pod's ports (run by the lab inside the pod's namespace).
    #[command(hide = true)]
    Serve(ServeArgs),
    /// Send a probe from the current namespace (run by `lab probe` inside the pod's).
    #[command(hide = true)]
    ProbeExec(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct NameArg {
    /// Lab name (1-12 lowercase letters and digits).
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Lab name (1-12 lowercase letters and digits).
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
    /// Number of nodes (without --scenario).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Sample pods per node (without --scenario).
    #[arg(long, default_value_t = 2)]
    pods_per_node: usize,
    /// Build the cluster of this scenario file instead of the sample one.
    #[arg(long, conflicts_with_all = ["nodes", "pods_per_node"])]
    scenario: Option<PathBuf>,
    /// The veild binary (default: next to veilctl).
    #[arg(long)]
    veild: Option<PathBuf>,
    /// Directory of the veil CNI plugin (default: next to veilctl).
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
    /// Keep a half-built lab when a step fails (for debugging; remove it with `lab down`).
    #[arg(long)]
    keep_on_error: bool,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Lab name.
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["pod", "node", "underlay", "external"]))]
struct ExecArgs {
    /// Lab name.
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
    /// The pod, as NAMESPACE/POD.
    pod: Option<String>,
    /// A node's namespace (with that node's WireGuard socket on /var/run/wireguard).
    #[arg(long)]
    node: Option<String>,
    /// The underlay's namespace (the bridge).
    #[arg(long)]
    underlay: bool,
    /// An external host's namespace.
    #[arg(long)]
    external: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct RestartArgs {
    /// Lab name.
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
    /// The node.
    node: String,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// What to serve (JSON, see `lab::serve::ServeSpec`).
    #[arg(long)]
    spec: String,
}

/// Runs the command; returns the exit code.
pub fn run(args: Args) -> i32 {
    let result = match args.cmd {
        Cmd::Up(a) => up(a),
        Cmd::Down(a) => down(&a.name),
        Cmd::Status(a) => status(&a),
        Cmd::Exec(a) => exec(a),
        Cmd::RestartNode(a) => restart_node(&a.name, &a.node),
        Cmd::Probe(a) => traffic::probe(&a),
        Cmd::Test(a) => test::test(a),
        Cmd::List => list(),
        Cmd::Serve(a) => traffic::serve(&a.spec),
        Cmd::ProbeExec(a) => traffic::probe_exec(&a.spec),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("veilctl lab: {e}");
            lab_exit_code(&e)
        }
    }
}

/// 2 for what the user named wrongly (a bad or missing lab, a scenario file
/// that is not one), 1 for everything that failed while doing it.
fn lab_exit_code(e: &LabError) -> i32 {
    use crate::cmd::common::{FAILED, USAGE};
    match e {
        LabError::InvalidName(_)
        | LabError::NotFound(_)
        | LabError::Exists(_)
        | LabError::Scenario { .. }
        | LabError::MissingBinary { .. } => USAGE,
        _ => FAILED,
    }
}

fn need_root() -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

fn up(a: UpArgs) -> Result<i32, LabError> {
    lab::validate_name(&a.name)?;
    need_root()?;
    let plan = match &a.scenario {
        Some(path) => {
            let sc = lab::load_scenario(path)?;
            Plan::from_scenario(&a.name, &sc)?
        }
        None => Plan::sample(&a.name, a.nodes, a.pods_per_node)?,
    };
    let binaries = Binaries::locate(a.veild, a.cni_bin_dir)?;
    let opts = UpOptions {
        plan,
        binaries,
        scenario: a.scenario,
        keep_on_error: a.keep_on_error,
    };
    let state = lab::up::up(&opts, &mut |w| eprintln!("warning: {w}")).inspect_err(|e| {
        if !opts.keep_on_error && !matches!(e, LabError::Exists(_) | LabError::InvalidName(_)) {
            eprintln!(
                "veilctl lab: the half-built lab was removed; `--keep-on-error` keeps it (and its logs) for inspection"
            );
        }
    })?;
    print_state(&state);
    print_hints(&state, &opts.plan);
    Ok(0)
}

/// Example commands for the lab just built: a pod curling another pod on its
/// node, `wg show` on a node, and `down`.
fn print_hints(state: &LabState, plan: &Plan) {
    println!();
    println!("try:");
    let tcp_port = |full: &str| {
        plan.pods
            .iter()
            .find(|p| p.full_name() == full && !p.dns)
            .and_then(|p| p.ports.iter().find(|x| x.protocol == lab::plan::Proto::Tcp))
            .map(|x| x.port)
    };
    let pair = state.pods.iter().filter(|p| !p.host_network).find_map(|p| {
        let q = state.pods.iter().find(|q| {
            q.node == p.node && q.full_name() != p.full_name() && tcp_port(&q.full_name()).is_some()
        })?;
        Some((p, q, tcp_port(&q.full_name())?, q.ip?))
    });
    if let Some((p, q, port, ip)) = pair {
        println!(
            "  veilctl lab exec --name {} {} -- curl -s http://{ip}:{port}/    # {} on the same node",
            state.name,
            p.full_name(),
            q.full_name()
        );
    }
    if let Some(n) = state.nodes.first() {
        println!(
            "  veilctl lab exec --name {} --node {} -- wg show",
            state.name, n.name
        );
    }
    println!("  veilctl lab down --name {}", state.name);
}

fn down(name: &str) -> Result<i32, LabError> {
    lab::validate_name(name)?;
    need_root()?;
    let r = lab::down::down(name)?;
    if r == lab::down::DownReport::default() {
        println!("lab {name}: nothing to remove");
    } else {
        println!(
            "lab {name}: removed {} namespaces, stopped {} processes",
            r.namespaces, r.processes
        );
    }
    Ok(0)
}

fn print_state(s: &LabState) {
    println!("lab {} ({})", s.name, s.dir().display());
    println!();
    println!(
        "{:<16} {:<15} {:<16} {:<8} NETNS",
        "NODE", "ADDRESS", "POD CIDR", "VEILD"
    );
    for n in &s.nodes {
        let pid = n
            .pid
            .filter(|&p| process::runs_in(p, &n.netns))
            .map_or_else(|| "down".to_string(), |p| p.to_string());
        println!(
            "{:<16} {:<15} {:<16} {:<8} {}",
            n.name,
            n.address.to_string(),
            n.pod_cidr.to_string(),
            pid,
            n.netns
        );
    }
    if !s.pods.is_empty() {
        println!();
        println!("{:<32} {:<16} {:<15} NETNS", "POD", "NODE", "IP");
        for p in &s.pods {
            let ip = p.ip.map_or_else(|| "-".to_string(), |i| i.to_string());
            let ip = if p.host_network {
                format!("{ip} (host)")
            } else {
                ip
            };
            println!(
                "{:<32} {:<16} {:<15} {}",
                p.full_name(),
                p.node,
                ip,
                p.netns
            );
        }
    }
    if !s.external.is_empty() {
        println!();
        println!("{:<32} {:<15} NETNS", "EXTERNAL", "IP");
        for x in &s.external {
            println!("{:<32} {:<15} {}", x.name, x.ip.to_string(), x.netns);
        }
    }
    if !s.complete {
        println!();
        println!(
            "(incomplete: `lab up` did not finish; remove it with `veilctl lab down --name {}`)",
            s.name
        );
    }
}

fn status(a: &StatusArgs) -> Result<i32, LabError> {
    let state = LabState::load(&a.name)?;
    match a.output {
        Output::Json => {
            let text = serde_json::to_string_pretty(&state.status_json()).map_err(|source| {
                LabError::State {
                    path: "(status)".into(),
                    source,
                }
            })?;
            println!("{text}");
        }
        Output::Text => print_state(&state),
    }
    Ok(0)
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn exec(a: ExecArgs) -> Result<i32, LabError> {
    need_root()?;
    let state = LabState::load(&a.name)?;
    let target_ns;
    let mut cmd = Command::new("ip");
    if let Some(node) = &a.node {
        let n = state
            .node(node)
            .ok_or_else(|| state.no_such("node", node))?;
        target_ns = n.netns.clone();
        let wg = n.socket.with_file_name("wireguard");
        // `ip netns exec` runs the command in a mount namespace of its own, so the
        // bind mount is private to it.
        cmd.args(["netns", "exec", &n.netns, "sh", "-c"])
            .arg("mkdir -p /var/run/wireguard && mount --bind \"$0\" /var/run/wireguard && exec \"$@\"")
            .arg(&wg);
    } else if a.underlay {
        target_ns = state.underlay_netns.clone();
        cmd.args(["netns", "exec", &target_ns]);
    } else if let Some(x) = &a.external {
        let x = state
            .external
            .iter()
            .find(|e| &e.name == x)
            .ok_or_else(|| state.no_such("external host", x))?;
        target_ns = x.netns.clone();
        cmd.args(["netns", "exec", &target_ns]);
    } else {
        let p = a.pod.as_deref().unwrap_or_default();
        let pod = state.pod(p).ok_or_else(|| state.no_such("pod", p))?;
        target_ns = pod.netns.clone();
        cmd.args(["netns", "exec", &target_ns]);
    }
    cmd.args(&a.command);
    let status = cmd.status().map_err(|source| LabError::Spawn {
        netns: target_ns.clone(),
        program: a.command.join(" "),
        source,
    })?;
    Ok(exit_code(status))
}

fn restart_node(name: &str, node: &str) -> Result<i32, LabError> {
    lab::validate_name(name)?;
    need_root()?;
    let _lock = LabLock::acquire(name)?;
    let mut state = LabState::load(name)?;
    let idx = state
        .nodes
        .iter()
        .position(|n| n.name == node)
        .ok_or_else(|| LabError::NoSuch {
            lab: name.to_string(),
            what: "node",
            name: node.to_string(),
        })?;
    let n = state.nodes[idx].clone();
    if let Some(pid) = n.pid {
        if process::stop(pid, &n.netns, Duration::from_secs(10)) {
            println!("node {node}: stopped veild (pid {pid})");
        }
    }
    if !netns::exists(&n.netns) {
        return Err(LabError::NodeGone {
            node: node.to_string(),
            netns: n.netns.clone(),
        });
    }
    let pid = process::spawn_in(&n.netns, &n.veild_argv, &n.log)?;
    state.nodes[idx].pid = Some(pid);
    state.save()?;
    lab::up::wait_ready(&state.nodes[idx], lab::up::READY_TIMEOUT)?;
    println!("node {node}: veild running (pid {pid}) and ready");
    Ok(0)
}

fn list() -> Result<i32, LabError> {
    let mut names: Vec<String> = match std::fs::read_dir(lab::LABS_ROOT) {
        Ok(d) => d
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| lab::validate_name(n).is_ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    for n in names {
        match LabState::load(&n) {
            Ok(s) => println!(
                "{n}\t{} nodes\t{} pods\t{}",
                s.nodes.len(),
                s.pods.len(),
                if s.complete { "up" } else { "incomplete" }
            ),
            Err(e) => println!("{n}\t({e})"),
        }
    }
    Ok(0)
}
