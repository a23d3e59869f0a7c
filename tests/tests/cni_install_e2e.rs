//! The Kubernetes install path of the real binaries: `veild install-cni`
//! copies the plugin, `veild --cni-conf-dir` writes its conflist only once ready
//! and removes it on SIGTERM (other CNIs' files untouched), and
//! `--uninstall-on-exit` also removes `veil-wg` and the nftables table. veild
//! runs in a fresh network namespace; the CNI directories are temp dirs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use veil_tests::{bin, require_root, unique_prefix, Daemon, Netns, TempDir, VeildArgs};

#[test]
fn install_cni_copies_the_plugin_by_rename() {
    let prefix = unique_prefix();
    let dir = TempDir::new(&prefix, "bin");
    std::fs::write(dir.join("bridge"), b"other").unwrap();
    let out = Command::new(bin("veild"))
        .arg("install-cni")
        .arg("--from")
        .arg(bin("veil"))
        .arg("--to")
        .arg(dir.path())
        .output()
        .expect("run veild install-cni");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dir.join("veil")).unwrap(),
        std::fs::read(bin("veil")).unwrap()
    );
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["bridge", "veil"], "no temporary file is left");
    // The installed copy is the plugin: it answers VERSION.
    let v = Command::new(dir.join("veil"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("supportedVersions"));
}

#[test]
fn install_cni_with_a_missing_source_fails_naming_it() {
    let prefix = unique_prefix();
    let dir = TempDir::new(&prefix, "bin");
    let out = Command::new(bin("veild"))
        .args(["install-cni", "--from", "/nonexistent/veil", "--to"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/veil"));
}

fn start(ns: &Netns, dir: &Path, extra: &[&str]) -> Daemon {
    let sock = dir.join("veild.sock");
    let mut cmd = VeildArgs {
        netns: &ns.name,
        node_name: "node-a",
        node_address: "198.18.0.10",
        pod_cidr: "10.244.0.0/24",
        underlay: "eth0",
        socket: &sock,
        state_dir: &dir.join("state"),
        datastore_dir: &dir.join("ds"),
        http_listen: "127.0.0.1:19590",
    }
    .command();
    cmd.arg("--cni-conf-dir").arg(dir.join("net.d"));
    cmd.arg("--wireguard-socket-dir").arg(dir.join("wg"));
    cmd.args(extra).stderr(Stdio::null());
    let mut d = Daemon(cmd.spawn().expect("spawn veild"));
    if let Err(e) = veil_tests::wait_for_daemon(
        &sock,
        "cni.status",
        Duration::from_secs(20),
        Some(&mut d.0),
        |v| v["ready"] == true,
    ) {
        panic!("veild did not become ready: {e}");
    }
    d
}

fn sigterm_and_wait(d: &mut Daemon) {
    let pid = nix::unistd::Pid::from_raw(d.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let ok = veil_tests::eventually(Duration::from_secs(10), || {
        matches!(d.0.try_wait(), Ok(Some(_)))
    });
    assert!(ok, "veild did not stop within 10 s of SIGTERM");
}

fn node(prefix: &str, tag: &str) -> Netns {
    let n = Netns::new(&format!("{prefix}-{tag}"));
    n.add_underlay("eth0", "eth1", "198.18.0.10/15");
    n
}

#[test]
fn conflist_is_written_when_ready_and_removed_on_sigterm() {
    require_root();
    let prefix = unique_prefix();
    let ns = node(&prefix, "conf");
    let dir = TempDir::new(&prefix, "conf");
    let netd = dir.join("net.d");
    std::fs::create_dir_all(&netd).unwrap();
    std::fs::write(netd.join("05-other.conflist"), "{\"other\":true}").unwrap();
    // A file left by a crashed run is not trusted: it is rewritten when ready.
    std::fs::write(netd.join("10-veil.conflist"), "stale").unwrap();

    let mut d = start(&ns, dir.path(), &[]);
    let text = std::fs::read_to_string(netd.join("10-veil.conflist")).expect("conflist");
    let v: serde_json::Value = serde_json::from_str(&text).expect("conflist is JSON");
    assert_eq!(v["plugins"][0]["type"], "veil");
    assert_eq!(
        v["plugins"][0]["socket"],
        dir.join("veild.sock").to_str().unwrap()
    );

    sigterm_and_wait(&mut d);
    assert!(!netd.join("10-veil.conflist").exists(), "conflist removed");
    assert_eq!(
        std::fs::read_to_string(netd.join("05-other.conflist")).unwrap(),
        "{\"other\":true}",
        "another CNI's file is untouched"
    );
    // Without --uninstall-on-exit the node stays fail-closed.
    let t = ns.exec(&["nft", "list", "table", "inet", "veil"]);
    assert!(t.status.success(), "the nftables table outlives veild");
}

#[test]
fn uninstall_on_exit_removes_the_table_and_the_wireguard_device() {
    require_root();
    let prefix = unique_prefix();
    let ns = node(&prefix, "unin");
    let dir = TempDir::new(&prefix, "unin");
    let mut d = start(&ns, dir.path(), &["--uninstall-on-exit"]);
    assert!(
        ns.links().iter().any(|l| l == "veil-wg"),
        "{:?}",
        ns.links()
    );
    assert!(ns
        .exec(&["nft", "list", "table", "inet", "veil"])
        .status
        .success());
    sigterm_and_wait(&mut d);
    assert!(!dir.join("net.d/10-veil.conflist").exists());
    assert!(
        !ns.links().iter().any(|l| l == "veil-wg"),
        "{:?}",
        ns.links()
    );
    assert!(!ns
        .exec(&["nft", "list", "table", "inet", "veil"])
        .status
        .success());
}
