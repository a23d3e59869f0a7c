//! `veilctl flows` (not yet implemented).

/// Arguments of `veilctl flows`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command; returns the exit code.
pub fn run(_args: Args) -> i32 {
    eprintln!("veilctl flows: not implemented yet");
    2
}
