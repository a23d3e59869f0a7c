//! `veild`: the Veil node daemon. Parses configuration, starts tracing, runs.
//! Bad configuration exits with code 64 and a message naming the field.
//! With `--datastore kube`, the Node object fills the flags not given
//! (address, pod CIDR, labels; the name from `NODE_NAME`).
//! `veild install-cni` copies the CNI plugin into place (the DaemonSet's init
//! container) and exits.
//! Logs go to stderr, coloured only when stderr is a terminal.

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use veil_daemon::config::{Config, Flags, LogFormat};

fn main() {
    // `veild install-cni`: the init container's one job, before any flag parsing.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "install-cni") {
        std::process::exit(veil_daemon::cni_install::install_cni_command(args));
    }
    let mut flags = match Flags::try_parse() {
        Ok(f) => f,
        Err(e) if e.use_stderr() => {
            eprintln!("veild: {e}");
            std::process::exit(64);
        }
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veild: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    // `--datastore kube`: the node's name, address, pod CIDR and labels come
    // from its Node object (flags given explicitly win).
    if let Err(e) = rt.block_on(veil_daemon::datastore::kube::node::complete_flags(
        &mut flags,
    )) {
        eprintln!("veild: {e}");
        std::process::exit(1);
    }
    let config = match Config::load(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("veild: {e}");
            std::process::exit(64);
        }
    };
    let filter = std::env::var("VEIL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
    if let Err(e) = rt.block_on(veil_daemon::node::run(config)) {
        tracing::error!(error = %e, "veild failed");
        eprintln!("veild: {e}");
        std::process::exit(1);
    }
}
