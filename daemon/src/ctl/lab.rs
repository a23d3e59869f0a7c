//! `veilctl lab` (not yet implemented).

/// Arguments of `veilctl lab`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command; returns the exit code.
pub fn run(_args: Args) -> i32 {
    eprintln!("veilctl lab: not implemented yet");
    2
}
