//! `veilctl`: the Veil command-line tool.

use clap::{Parser, Subcommand};
use veil_ctl::cmd as ctl;

#[derive(Parser)]
#[command(name = "veilctl", version, about = "Veil command-line tool")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// This node (or every lab node): endpoints, peers, health.
    Status(ctl::status::Args),
    /// Policies: `test`, `trace` (scenarios), `status` (the daemons).
    Policy(ctl::policy::Args),
    /// The service dependency graph.
    Graph(ctl::graph::Args),
    /// Recent and live flows.
    Flows(ctl::flows::Args),
    /// What the DNS proxies opened for `domains` rules.
    Dns(ctl::dns::Args),
    /// WireGuard: `status` (peers, handshakes) and `rotate-key`.
    Wireguard(ctl::wireguard::Args),
    /// A cluster of network namespaces on this machine.
    Lab(ctl::lab::Args),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Status(a) => ctl::status::run(a),
        Cmd::Policy(a) => ctl::policy::run(a),
        Cmd::Graph(a) => ctl::graph::run(a),
        Cmd::Flows(a) => ctl::flows::run(a),
        Cmd::Dns(a) => ctl::dns::run(a),
        Cmd::Wireguard(a) => ctl::wireguard::run(a),
        Cmd::Lab(a) => ctl::lab::run(a),
    };
    std::process::exit(code);
}
