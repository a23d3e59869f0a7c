//! The test bed: three network namespaces `vbp-<pid>-{cli,node,srv}`; the
//! node routes between the two pods through veths whose host ends are named
//! like pod interfaces. Addresses in 10.244.0.0/16 only, nothing in the root
//! namespace. The namespaces (and the processes started in them) are removed
//! when the [`Bed`] is dropped, also on panic; namespaces left by a run that
//! was killed are removed at the start of the next one.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::{CLI_IF, CLI_IP, SRV_IF, SRV_IP};

const PREFIX: &str = "vbp-";

/// Removes `vbp-<pid>-*` namespaces whose creating process is gone.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale namespace {name} (pid {pid} is gone)");
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// The namespaces and the processes running in them.
pub struct Bed {
    prefix: String,
    created: Vec<String>,
    children: Vec<Child>,
    /// This executable (re-executed inside the namespaces).
    pub exe: String,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Bed {
    /// Creates the namespaces, links, addresses and routes.
    pub fn up() -> Result<Bed> {
        let mut bed = Bed {
            prefix: format!("{PREFIX}{}", std::process::id()),
            created: Vec::new(),
            children: Vec::new(),
            exe: std::env::current_exe()?.to_string_lossy().into_owned(),
        };
        for n in ["cli", "node", "srv"] {
            let ns = bed.ns(n);
            run(&["ip", "netns", "add", &ns])?;
            bed.created.push(ns);
            bed.in_ns(n, &["ip", "link", "set", "lo", "up"])?;
        }
        let node = bed.ns("node");
        for (pod, hif, net, ip) in [("cli", CLI_IF, "0", CLI_IP), ("srv", SRV_IF, "1", SRV_IP)] {
            let pns = bed.ns(pod);
            run(&[
                "ip", "link", "add", hif, "netns", &node, "type", "veth", "peer", "name", "eth0",
                "netns", &pns,
            ])?;
            bed.in_ns(
                pod,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )?;
            bed.in_ns(pod, &["ip", "link", "set", "eth0", "up"])?;
            bed.in_ns(
                "node",
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.244.{net}.1/24"),
                    "dev",
                    hif,
                ],
            )?;
            bed.in_ns("node", &["ip", "link", "set", hif, "up"])?;
            bed.in_ns(
                pod,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.244.{net}.1"),
                ],
            )?;
        }
        bed.in_ns("node", &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for n in ["node", "cli", "srv"] {
            // Strict reverse-path filtering is not what is measured here.
            bed.in_ns(n, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])?;
        }
        bed.in_ns("cli", &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
        bed.in_ns(
            "cli",
            &["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000"],
        )?;
        Ok(bed)
    }

    /// The full name of namespace `n`.
    pub fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }

    /// Runs a command in namespace `n`, failing on a non-zero exit.
    pub fn in_ns(&self, n: &str, args: &[&str]) -> Result<()> {
        let ns = self.ns(n);
        let mut v = vec!["ip", "netns", "exec", ns.as_str()];
        v.extend_from_slice(args);
        run(&v)
    }

    /// A command to run in namespace `n`.
    pub fn cmd(&self, n: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(n)]).args(args);
        c
    }

    /// Starts a long-running process in namespace `n`; killed on drop.
    pub fn spawn(&mut self, n: &str, args: &[&str]) -> Result<()> {
        let child = self
            .cmd(n, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {args:?} in {n}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Waits (at most `limit`) until `cli` can open a connection to the
    /// server's `port`.
    pub fn wait_reachable(&self, port: u16, limit: Duration) -> Result<()> {
        let t = Instant::now();
        let mut last = String::new();
        while t.elapsed() < limit {
            let out = self
                .cmd("cli", &[&self.exe, "probe", &port.to_string()])
                .output()?;
            if out.status.success() {
                return Ok(());
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{SRV_IP}:{port} not reachable from the client within {limit:?}: {last}")
    }

    /// Replaces the node's ruleset: `None` flushes it, `Some(doc)` loads an
    /// `nft -j` document. Returns the time `nft` took.
    pub fn load(&self, doc: Option<&str>) -> Result<Duration> {
        let t = Instant::now();
        let mut c = self
            .cmd("node", &["nft"])
            .args(match doc {
                Some(_) => vec!["-j", "-f", "-"],
                None => vec!["flush", "ruleset"],
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nft")?;
        if let Some(d) = doc {
            c.stdin
                .take()
                .context("nft stdin")?
                .write_all(d.as_bytes())?;
        }
        drop(c.stdin.take());
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft refused the ruleset: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(t.elapsed())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.created {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
