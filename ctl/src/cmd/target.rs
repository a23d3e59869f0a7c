//! Which daemons a `veilctl` command talks to: `--lab NAME` (every node daemon of
//! that lab, merged) or `--socket PATH` (one daemon; default /run/veil/veild.sock).

use std::path::PathBuf;

/// `--lab` / `--socket`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Target {
    /// Talk to every node daemon of this lab.
    #[arg(long, conflicts_with = "socket")]
    pub lab: Option<String>,
    /// Talk to the daemon on this socket.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

impl Target {
    /// The (node name, socket) pairs to talk to. A missing lab, or a
    /// `--socket` (or the default) that is not a socket, is an error naming
    /// it (exit code [`super::common::USAGE`]).
    pub fn sockets(&self) -> Result<Vec<(String, PathBuf)>, String> {
        match (&self.lab, &self.socket) {
            (Some(lab), _) => crate::lab::node_sockets(lab),
            (None, s) => {
                let s = s
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(veil_api::DEFAULT_SOCKET));
                super::common::check_socket(&s)?;
                Ok(vec![(String::new(), s)])
            }
        }
    }
}
