//! `veilctl status`: each daemon's node, endpoints, (when the WireGuard part
//! answers `wireguard.status`) its peers, its policy generation and the one its
//! dataplane holds, and its datastore, policy and dataplane errors.

use std::time::Duration;

use veil_api::{call, method, CallError, NodeStatus, WireguardStatus};

use super::common::{Output, FAILED, OK, USAGE};
use super::target::Target;

/// Arguments of `veilctl status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// The policy line of a node: program generation, the generation its
/// dataplane holds, and whether they agree.
pub fn format_policy_generation(n: &NodeStatus) -> String {
    format!(
        "  policy generation {}  applied {}  {}\n",
        n.policy_generation,
        n.policy_applied_generation,
        if n.policy_applied_generation >= n.policy_generation {
            "in sync"
        } else {
            "applying"
        }
    )
}

/// Runs the command; returns the exit code.
pub fn run(args: Args) -> i32 {
    let sockets = match args.target.sockets() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("veilctl status: {e}");
            return USAGE;
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
    if args.output == Output::Json {
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
            print!("{}", format_policy_generation(n));
            for err in &n.datastore_errors {
                println!("  datastore error: {err}");
            }
            for err in &n.policy_errors {
                println!("  policy error: {err}");
            }
            if let Some(err) = &n.dataplane_error {
                println!("  dataplane error: {err}");
            }
        }
    }
    if failed {
        FAILED
    } else {
        OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(generation: u64, applied: u64) -> NodeStatus {
        NodeStatus {
            node: "n".into(),
            address: "198.18.0.10".into(),
            pod_cidr: "10.244.0.0/24".into(),
            mtu: 1420,
            ready: true,
            endpoints: vec![],
            datastore_errors: vec![],
            policy_generation: generation,
            policy_applied_generation: applied,
            policy_errors: vec![],
            dataplane_error: None,
        }
    }

    #[test]
    fn status_shows_the_policy_generation_and_the_applied_one() {
        assert_eq!(
            format_policy_generation(&node(7, 7)),
            "  policy generation 7  applied 7  in sync\n"
        );
        assert_eq!(
            format_policy_generation(&node(7, 6)),
            "  policy generation 7  applied 6  applying\n"
        );
    }
}
