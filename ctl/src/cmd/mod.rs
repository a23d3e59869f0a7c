//! `veilctl` subcommands. Each module owns its clap arguments and a
//! `run(args) -> i32` returning the process exit code.

pub mod common;
pub mod dns;
pub mod flows;
pub mod graph;
pub mod lab;
pub mod policy;
pub mod policy_status;
pub mod status;
pub mod target;
pub mod wireguard;
