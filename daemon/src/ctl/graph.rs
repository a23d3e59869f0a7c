//! `veilctl graph` (not yet implemented).

/// Arguments of `veilctl graph`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command; returns the exit code.
pub fn run(_args: Args) -> i32 {
    eprintln!("veilctl graph: not implemented yet");
    2
}
