//! Processes the lab starts inside its namespaces (node daemons, workload
//! servers): started detached, and stopped only after checking that the PID
//! still belongs to a process in the expected lab namespace, so that a PID
//! reused by an unrelated process is never signalled.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::netns;
use super::LabError;

/// Starts `argv` detached (new session, stdin from /dev/null, stdout and stderr
/// appended to `log`) inside namespace `ns`, returning its PID. `setsid` and
/// `ip netns exec` both exec in place, so the PID is the program's own.
pub fn spawn_in(ns: &str, argv: &[String], log: &Path) -> Result<u32, LabError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(LabError::Spawn {
            netns: ns.to_string(),
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command line"),
        });
    };
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::io(log, e))?;
    let err = out.try_clone().map_err(|e| LabError::io(log, e))?;
    let child = Command::new("setsid")
        .args(["ip", "netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| LabError::Spawn {
            netns: ns.to_string(),
            program: program.clone(),
            source,
        })?;
    Ok(child.id())
}

/// Whether process `pid` is alive inside namespace `ns`.
pub fn runs_in(pid: u32, ns: &str) -> bool {
    match (netns::identity_of_pid(pid), netns::identity(ns)) {
        (Some(a), Some(b)) => a == b && !is_zombie(pid),
        _ => false,
    }
}

/// Whether process `pid` exists and has not exited (in whatever namespace: a
/// process just started is in its parent's until `ip netns exec` switches).
pub fn alive(pid: u32) -> bool {
    !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_none_or(|s| s == "Z" || s == "X")
}

/// Whether `pid` is one of our launchers still on its way into `ns`: `setsid ip
/// netns exec <ns> ...` or `ip netns exec <ns> ...` (a reused PID never has
/// that command line).
fn entering(pid: u32, ns: &str) -> bool {
    alive(pid) && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| is_launcher(&c, ns))
}

/// The namespace a NUL-separated command line `[setsid] ip netns exec <ns> ...`
/// is entering.
fn launcher_target(cmdline: &[u8]) -> Option<&[u8]> {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let args = match args.first() {
        Some(&b"setsid") => &args[1..],
        _ => &args[..],
    };
    match args {
        [ip, netns, exec, ns, _, ..] if ip == b"ip" && netns == b"netns" && exec == b"exec" => {
            Some(ns)
        }
        _ => None,
    }
}

/// Whether a NUL-separated command line is `[setsid] ip netns exec <ns> ...`.
fn is_launcher(cmdline: &[u8], ns: &str) -> bool {
    launcher_target(cmdline) == Some(ns.as_bytes())
}

/// Processes still on their way into a namespace whose name starts with
/// `prefix` (`[setsid] ip netns exec <ns> ...`), as (pid, namespace).
pub fn launchers_into(prefix: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let ns = std::str::from_utf8(launcher_target(&cmdline)?).ok()?;
            ns.starts_with(prefix).then(|| (pid, ns.to_string()))
        })
        .collect()
}

/// Waits until `pid` no longer runs in `ns`, up to `timeout`.
fn wait_gone(pid: u32, ns: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !runs_in(pid, ns) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops `pid` if it still runs in `ns`: SIGTERM, then SIGKILL after `grace`.
/// Returns whether a process was signalled.
pub fn stop(pid: u32, ns: &str, grace: Duration) -> bool {
    if pid == std::process::id() {
        return false;
    }
    if !runs_in(pid, ns) && entering(pid, ns) {
        // Started a moment ago and still on its way in (`setsid`, `ip netns
        // exec`): give it time to arrive, or it would outlive its namespace.
        let deadline = Instant::now() + Duration::from_secs(3);
        while entering(pid, ns) && !runs_in(pid, ns) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if !runs_in(pid, ns) {
        return false;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    if !wait_gone(pid, ns, grace) {
        if runs_in(pid, ns) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
        wait_gone(pid, ns, Duration::from_secs(5));
    }
    true
}

/// Every process (but this one) whose network namespace is one of `namespaces`,
/// as (pid, namespace).
pub fn in_namespaces(namespaces: &BTreeSet<String>) -> Vec<(u32, String)> {
    let ids: Vec<((u64, u64), &String)> = namespaces
        .iter()
        .filter_map(|ns| netns::identity(ns).map(|id| (id, ns)))
        .collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Some(id) = netns::identity_of_pid(pid) else {
            continue;
        };
        if let Some((_, ns)) = ids.iter().find(|(i, _)| *i == id) {
            found.push((pid, (*ns).clone()));
        }
    }
    found
}

/// The last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_but_not_in_a_lab_namespace() {
        assert!(!is_zombie(std::process::id()));
        assert!(!runs_in(std::process::id(), "vl-nosuchlab-node-a"));
    }

    #[test]
    fn stopping_a_process_outside_the_namespace_signals_nothing() {
        // Our own PID and an unrelated namespace: never signalled.
        assert!(!stop(
            std::process::id(),
            "vl-nosuchlab-node-a",
            Duration::from_millis(10)
        ));
    }

    #[test]
    fn only_our_launch_command_lines_count_as_entering() {
        let ns = "vl-t-n-node-a";
        assert!(is_launcher(
            b"setsid\0ip\0netns\0exec\0vl-t-n-node-a\0veild\0",
            ns
        ));
        assert!(is_launcher(b"ip\0netns\0exec\0vl-t-n-node-a\0veild\0", ns));
        assert!(!is_launcher(b"ip\0netns\0exec\0vl-t-n-node-b\0veild\0", ns));
        assert!(!is_launcher(b"sleep\x005\0", ns));
        assert!(!is_launcher(b"", ns));
        assert_eq!(
            launcher_target(b"ip\0netns\0exec\0vl-t-x\0sh\0"),
            Some(&b"vl-t-x"[..])
        );
        assert!(launchers_into("vl-nosuchlab-").is_empty());
        assert!(!entering(std::process::id(), ns));
    }

    #[test]
    fn no_namespaces_means_no_processes() {
        let mut set = BTreeSet::new();
        set.insert("vl-nosuchlab-node-a".to_string());
        assert!(in_namespaces(&set).is_empty());
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&p, 2), "c\nd");
        assert_eq!(log_tail(&dir.path().join("none"), 2), "");
    }
}
