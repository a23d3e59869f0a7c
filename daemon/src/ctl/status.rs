//! `veilctl status` (being written).

/// Arguments of `veilctl status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command; returns the exit code.
pub fn run(_args: Args) -> i32 {
    2
}
