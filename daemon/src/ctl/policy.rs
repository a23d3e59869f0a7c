//! `veilctl policy` (not yet implemented).

/// Arguments of `veilctl policy`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command; returns the exit code.
pub fn run(_args: Args) -> i32 {
    eprintln!("veilctl policy: not implemented yet");
    2
}
