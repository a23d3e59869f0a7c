//! veil-ctl: `veilctl`, the Veil command-line tool, and the lab.
//!
//! [`cmd`] holds the subcommands (each owns its clap arguments and a
//! `run(args) -> i32` returning the exit code); [`lab`] builds a cluster of
//! network namespaces on one machine, each node running `veild`, pods wired by
//! the real `veil` CNI binary; [`cni`] runs CNI plugins the way a container
//! runtime does (the lab and the end-to-end tests both use it). It talks to
//! daemons only through `veil-api`.

pub mod cmd;
pub mod cni;
pub mod lab;
