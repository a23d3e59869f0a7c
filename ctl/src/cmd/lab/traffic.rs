//! `veilctl lab probe`: one probe from a pod of a lab, and the hidden subcommands the lab runs inside namespaces (`probe-exec`,
//! `serve`).

use super::{need_root, Output};
use crate::lab::probe::{HttpRequest, ProbeSpec, Target};
use crate::lab::serve::ServeSpec;
use crate::lab::state::LabState;
use crate::lab::{self, LabError, DEFAULT_NAME};

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
