//! `veilctl wireguard` (not yet implemented).

/// Arguments of `veilctl wireguard`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command; returns the exit code.
pub fn run(_args: Args) -> i32 {
    eprintln!("veilctl wireguard: not implemented yet");
    2
}
