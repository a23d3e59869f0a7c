//! Helpers of the lab end-to-end tests: the built binaries, a lab with a unique
//! name removed by a Drop guard, running commands inside it, and checks that
//! nothing of a lab is left behind.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

pub use veil_tests::{bin, eventually, require_root};

/// A lab name no other test or run uses: `t` + 8 hex digits.
pub fn unique_name() -> String {
    format!("t{:08x}", veil_tests::unique_id() as u32)
}

/// Runs `veilctl args...`.
pub fn veilctl(args: &[&str]) -> Output {
    Command::new(bin("veilctl"))
        .args(args)
        .output()
        .expect("run veilctl")
}

/// Text of an output, for messages.
pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A lab, removed with `veilctl lab down` when dropped.
pub struct Lab {
    /// Its name.
    pub name: String,
}

impl Lab {
    /// `veilctl lab up --name <unique> extra...`; panics with the output on failure.
    pub fn up(extra: &[&str]) -> Lab {
        require_root();
        let lab = Lab {
            name: unique_name(),
        };
        let mut args = vec!["lab", "up", "--name", &lab.name];
        args.extend_from_slice(extra);
        let o = veilctl(&args);
        assert!(o.status.success(), "lab up failed: {}", show(&o));
        lab
    }

    /// `veilctl lab exec --name <lab> target... -- cmd...`.
    pub fn exec(&self, target: &[&str], cmd: &[&str]) -> Output {
        let mut args = vec!["lab", "exec", "--name", &self.name];
        args.extend_from_slice(target);
        args.push("--");
        args.extend_from_slice(cmd);
        veilctl(&args)
    }

    /// Runs `cmd` in pod `ns/name`.
    pub fn in_pod(&self, pod: &str, cmd: &[&str]) -> Output {
        self.exec(&[pod], cmd)
    }

    /// `lab status --output json`.
    pub fn status(&self) -> Value {
        let o = veilctl(&["lab", "status", "--name", &self.name, "--output", "json"]);
        assert!(o.status.success(), "lab status: {}", show(&o));
        serde_json::from_slice(&o.stdout).expect("status is JSON")
    }

    /// The address of pod `ns/name` from the status.
    pub fn pod_ip(&self, pod: &str) -> String {
        let s = self.status();
        s["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .unwrap_or_else(|| panic!("no pod {pod} in {s}"))["ip"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The pid of `node`'s veild, from the status.
    pub fn veild_pid(&self, node: &str) -> u32 {
        let s = self.status();
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .and_then(|n| n["pid"].as_u64())
            .unwrap_or_else(|| panic!("no pid of {node} in {s}")) as u32
    }

    /// The lab's namespace prefix.
    pub fn prefix(&self) -> String {
        format!("vl-{}-", self.name)
    }

    /// `curl` from a pod, up to `tries` times; the body on success.
    pub fn curl(&self, pod: &str, url: &str, tries: usize) -> Option<String> {
        for _ in 0..tries {
            let o = self.in_pod(pod, &["curl", "-s", "-m", "3", url]);
            if o.status.success() {
                return Some(String::from_utf8_lossy(&o.stdout).into_owned());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        None
    }

    /// One ping from a pod (retried up to `tries` times).
    pub fn ping(&self, pod: &str, ip: &str, tries: usize) -> bool {
        (0..tries).any(|_| {
            self.in_pod(pod, &["ping", "-c", "1", "-W", "2", ip])
                .status
                .success()
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let o = veilctl(&["lab", "down", "--name", &self.name]);
        if !o.status.success() {
            eprintln!("lab down {}: {}", self.name, show(&o));
        }
    }
}

/// Namespaces whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// PIDs of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&pid| pid != me)
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(needle))
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Link names of the machine's own namespace.
pub fn root_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that nothing of lab `name` is left: no namespace, no process, no
/// state directory, no resolv.conf.
pub fn assert_gone(name: &str) {
    let prefix = format!("vl-{name}-");
    assert!(
        namespaces_with_prefix(&prefix).is_empty(),
        "namespaces left: {:?}",
        namespaces_with_prefix(&prefix)
    );
    let dir = format!("/run/veil/labs/{name}");
    assert!(
        eventually(Duration::from_secs(5), || processes_mentioning(&dir)
            .is_empty()
            && processes_mentioning(&prefix).is_empty()),
        "processes left: {:?} {:?}",
        processes_mentioning(&dir),
        processes_mentioning(&prefix)
    );
    assert!(!std::path::Path::new(&dir).exists(), "{dir} is still there");
    let etc_left: Vec<String> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(etc_left.is_empty(), "/etc/netns entries left: {etc_left:?}");
}
