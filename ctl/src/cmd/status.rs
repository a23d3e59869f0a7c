//! `veilctl status`: each daemon's node, endpoints and (when the WireGuard part
//! answers `wireguard.status`) its peers.

use std::time::Duration;

use veil_api::{call, method, CallError, NodeStatus, WireguardStatus};

use super::target::Target;

/// Arguments of `veilctl status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Output format: text or json.
    #[arg(long, default_value = "text")]
    output: String,
}

/// Runs the command; returns the exit code.
pub fn run(args: Args) -> i32 {
    let sockets = match args.target.sockets() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("veilctl status: {e}");
            return 2;
        }
    };
    let mut all = Vec::new();
    let mut failed = false;
    for (_, socket) in sockets {
        let node: Result<NodeStatus, _> = call(
            &socket,
            method::NODE_STATUS,
            &serde_json::Value::Null,
            Duration::from_secs(5),
        );
        let node = match node {
            Ok(n) => n,
            Err(e) => {
                eprintln!("veilctl status: {e}");
                failed = true;
                continue;
            }
        };
        let wg: Option<serde_json::Value> = match call(
            &socket,
            method::WIREGUARD_STATUS,
            &serde_json::Value::Null,
            Duration::from_secs(5),
        ) {
            Ok(v) => Some(v),
            Err(CallError::Daemon(_)) => None,
            Err(e) => {
                eprintln!("veilctl status: {e}");
                None
            }
        };
        all.push((node, wg));
    }
    if args.output == "json" {
        let v: Vec<_> = all
            .iter()
            .map(|(n, w)| serde_json::json!({"node": n, "wireguard": w}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for (n, w) in &all {
            println!(
                "node {}  address {}  podCIDR {}  mtu {}  {}",
                n.node,
                n.address,
                n.pod_cidr,
                n.mtu,
                if n.ready { "ready" } else { "NOT READY" }
            );
            for e in &n.endpoints {
                println!(
                    "  pod {:<32} {:<16} {:<16} {}",
                    e.pod,
                    e.ips.join(","),
                    e.host_ifname,
                    e.state
                );
            }
            if let Some(w) = w {
                match serde_json::from_value::<WireguardStatus>(w.clone()) {
                    Ok(s) => print!("{}", super::wireguard::format_status(&s)),
                    Err(_) => println!(
                        "  wireguard: {}",
                        serde_json::to_string(w).unwrap_or_default()
                    ),
                }
            }
            for err in &n.datastore_errors {
                println!("  datastore error: {err}");
            }
            for err in &n.policy_errors {
                println!("  policy error: {err}");
            }
        }
    }
    if failed {
        1
    } else {
        0
    }
}
