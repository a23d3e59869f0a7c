//! Namespace plumbing for the lab, through iproute2's `ip`.
//!
//! Every command here either names a lab namespace (`ip -n <ns> ...`, `ip netns
//! exec <ns> ...`) or creates/deletes one (`ip netns add|delete`); nothing is ever
//! run against the machine's own namespace. The lab shells out rather than
//! speaking netlink: it runs once per lab, and `ip` keeps the steps readable and
//! identical to what a person would type when debugging.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Where `ip netns exec` finds per-namespace files (`resolv.conf`).
pub const ETC_NETNS_DIR: &str = "/etc/netns";

/// A command that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The program exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

fn show(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs `program args...`, returning its stdout; fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn {
            command: show(program, args),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CommandError::Failed {
            command: show(program, args),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip -n <ns> args...`: an `ip` command inside lab namespace `ns`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String, CommandError> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// `ip netns exec <ns> program args...`.
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> Result<String, CommandError> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Creates namespace `ns` with its loopback up.
pub fn add(ns: &str) -> Result<(), CommandError> {
    run("ip", &["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes namespace `ns`; absent is success.
pub fn delete(ns: &str) -> Result<(), CommandError> {
    if !exists(ns) {
        return Ok(());
    }
    match run("ip", &["netns", "delete", ns]) {
        Ok(_) => Ok(()),
        Err(_) if !exists(ns) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The handle of namespace `ns`.
pub fn path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// Whether namespace `ns` exists.
pub fn exists(ns: &str) -> bool {
    path(ns).exists()
}

/// Names of every namespace starting with `prefix`.
pub fn list_with_prefix(prefix: &str) -> BTreeSet<String> {
    entries_with_prefix(NETNS_DIR, prefix)
}

/// The identity (device, inode) of namespace `ns`, comparable with a process's
/// `/proc/<pid>/ns/net`.
pub fn identity(ns: &str) -> Option<(u64, u64)> {
    let m = std::fs::metadata(path(ns)).ok()?;
    Some((m.dev(), m.ino()))
}

/// The identity of the network namespace of process `pid`.
pub fn identity_of_pid(pid: u32) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    Some((m.dev(), m.ino()))
}

/// Sets sysctl `key=value` inside namespace `ns` (`/proc/sys/net` is per namespace).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), CommandError> {
    exec_in(ns, "sysctl", &["-q", "-w", &format!("{key}={value}")])?;
    Ok(())
}

/// Creates a veth pair: `a` in namespace `ns_a`, `b` in namespace `ns_b`, both up.
pub fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str) -> Result<(), CommandError> {
    ip_in(
        ns_a,
        &[
            "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b,
        ],
    )?;
    ip_in(ns_a, &["link", "set", a, "up"])?;
    ip_in(ns_b, &["link", "set", b, "up"])?;
    Ok(())
}

/// The file `ip netns exec <ns>` bind-mounts onto `/etc/resolv.conf`.
pub fn resolv_conf_path(ns: &str) -> PathBuf {
    Path::new(ETC_NETNS_DIR).join(ns).join("resolv.conf")
}

/// Removes `/etc/netns/<ns>/` (absent is success).
pub fn remove_etc(ns: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(Path::new(ETC_NETNS_DIR).join(ns)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Names of every `/etc/netns/` entry starting with `prefix`.
pub fn etc_with_prefix(prefix: &str) -> BTreeSet<String> {
    entries_with_prefix(ETC_NETNS_DIR, prefix)
}

/// Names of the entries of directory `dir` starting with `prefix` (none when
/// it cannot be read).
fn entries_with_prefix(dir: &str, prefix: &str) -> BTreeSet<String> {
    let Ok(dir) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_command_names_the_command_and_its_stderr() {
        let e = run("sh", &["-c", "echo boom >&2; exit 3"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let e = run("/nonexistent/veil-no-such-program", &[]).unwrap_err();
        assert!(matches!(e, CommandError::Spawn { .. }), "{e}");
    }

    #[test]
    fn unknown_namespaces_do_not_exist_and_have_no_identity() {
        assert!(!exists("vl-nosuchlab-underlay"));
        assert!(identity("vl-nosuchlab-underlay").is_none());
        assert!(list_with_prefix("vl-nosuchlab-").is_empty());
    }
}
