//! `veilctl wireguard`: `rotate-key` (make-before-break key rotation on each
//! targeted daemon) and `status` (peers and handshakes). [`format_status`] is
//! the text form `veilctl status` can reuse.

use std::time::Duration;

use veil_api::wireguard::{Rotated, Status};
use veil_api::{call, method};

use super::common::{Output, FAILED, USAGE};
use super::target::Target;

/// Arguments of `veilctl wireguard`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Generate a new node key and switch to it without interrupting traffic.
    RotateKey {
        #[command(flatten)]
        target: Target,
    },
    /// Peers, endpoints, handshakes and counters.
    Status {
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Text rendering of a `wireguard.status` answer.
pub fn format_status(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  wireguard {}  key {}  endpoint {}  tunnel {}  mtu {}",
        s.device, s.public_key, s.endpoint, s.tunnel_address, s.mtu
    );
    for p in &s.peers {
        let hs = match p.handshake_age_seconds {
            Some(a) => format!("handshake {a:.0}s ago"),
            None => "no handshake yet".to_string(),
        };
        let _ = writeln!(
            out,
            "    peer {:<20} {:<22} {:<18} {}{}  lanes {}/{} up  rx {} B  tx {} B  key {}",
            p.node,
            p.endpoint,
            p.allowed_ips.join(","),
            hs,
            if p.rotating { " (key change)" } else { "" },
            p.lanes_established,
            p.lanes,
            p.rx_bytes,
            p.tx_bytes,
            p.public_key
        );
    }
    for r in &s.refused {
        let _ = writeln!(out, "    refused: {r}");
    }
    let nonzero: Vec<String> = s
        .counters
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !nonzero.is_empty() {
        let _ = writeln!(out, "    counters: {}", nonzero.join(" "));
    }
    out
}

/// Runs the command; returns the exit code.
pub fn run(args: Args) -> i32 {
    let (target, rotate, json) = match &args.cmd {
        Cmd::RotateKey { target } => (target, true, false),
        Cmd::Status { target, output } => (target, false, *output == Output::Json),
    };
    let sockets = match target.sockets() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("veilctl wireguard: {e}");
            return USAGE;
        }
    };
    let mut code = 0;
    for (node, socket) in sockets {
        let label = if node.is_empty() {
            socket.display().to_string()
        } else {
            node
        };
        if rotate {
            let r: Result<Rotated, _> = call(
                &socket,
                method::WIREGUARD_ROTATE_KEY,
                &serde_json::Value::Null,
                Duration::from_secs(30),
            );
            match r {
                Ok(r) => println!(
                    "{label}: rotated {} -> {}",
                    r.old_public_key, r.new_public_key
                ),
                Err(e) => {
                    eprintln!("veilctl wireguard rotate-key: {label}: {e}");
                    code = FAILED;
                }
            }
        } else {
            let r: Result<Status, _> = call(
                &socket,
                method::WIREGUARD_STATUS,
                &serde_json::Value::Null,
                Duration::from_secs(5),
            );
            match r {
                Ok(s) if json => {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default())
                }
                Ok(s) => print!("{label}\n{}", format_status(&s)),
                Err(e) => {
                    eprintln!("veilctl wireguard status: {label}: {e}");
                    code = FAILED;
                }
            }
        }
    }
    code
}
