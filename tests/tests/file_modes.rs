//! veild started under `umask 000` (issue 14): its socket is 0660, the
//! directories it creates are not open to others (socket directory 0750,
//! state and datastore 0700), and its state files are 0600. veild runs in a
//! fresh namespace; its files are in a temporary directory.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use veil_tests::{require_root, unique_prefix, Daemon, Netns, TempDir, VeildArgs};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn under_umask_000_nothing_veild_creates_is_open_to_others() {
    require_root();
    let prefix = unique_prefix();
    let ns = Netns::new(&format!("{prefix}-modes"));
    ns.add_underlay("eth0", "eth1", "198.18.0.10/15");
    let dir = TempDir::new(&prefix, "modes");
    let sock = dir.path().join("run/veil/veild.sock");
    let state = dir.path().join("state");
    let ds = dir.path().join("ds");
    let veild = VeildArgs {
        netns: &ns.name,
        node_name: "node-a",
        node_address: "198.18.0.10",
        pod_cidr: "10.244.0.0/24",
        underlay: "eth0",
        socket: &sock,
        state_dir: &state,
        datastore_dir: &ds,
        http_listen: "127.0.0.1:19590",
    }
    .command();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 000 && exec \"$@\"", "sh"])
        .arg(veild.get_program())
        .args(veild.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut d = Daemon(cmd.spawn().expect("spawn veild"));
    veil_tests::wait_for_daemon(
        &sock,
        veil_api::method::CNI_STATUS,
        Duration::from_secs(20),
        Some(&mut d.0),
        |v| v["ready"] == true,
    )
    .expect("veild ready");
    veil_tests::call(
        &sock,
        veil_api::method::CNI_ADD,
        json!({"container_id": "c1", "netns": "/var/run/netns/c1", "ifname": "eth0",
               "host_ifname": "veilc1", "pod_namespace": "x", "pod_name": "c1",
               "network": "veil", "ipam": {"kind": "daemon"}}),
    )
    .expect("cni.add");
    veil_tests::call(
        &sock,
        veil_api::method::CNI_ADD,
        json!({"container_id": "c2", "netns": "/var/run/netns/c2", "ifname": "eth0",
               "host_ifname": "veilc2", "pod_namespace": "x", "pod_name": "c2",
               "network": "veil", "ipam": {"kind": "daemon"}}),
    )
    .expect("cni.add");
    assert_eq!(mode(&sock), 0o660, "socket");
    assert_eq!(mode(sock.parent().unwrap()), 0o750, "socket directory");
    assert_eq!(mode(&state), 0o700, "state directory");
    assert_eq!(mode(&ds), 0o700, "datastore directory");
    for f in ["endpoints.json", "endpoints.json.prev", "wireguard.key"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    let nodes = ds.join("nodes");
    for e in std::fs::read_dir(&nodes).expect("datastore nodes") {
        let p = e.unwrap().path();
        assert_eq!(mode(&p) & 0o077, 0, "{} is open to others", p.display());
    }
    // CHECK of a container veild does not know: 113 (the README's code),
    // with a message that does not repeat "veild".
    let e = veil_api::call::<_, serde_json::Value>(
        &sock,
        veil_api::method::CNI_CHECK,
        &json!({"container_id": "unknown", "ifname": "eth0"}),
        Duration::from_secs(10),
    )
    .unwrap_err();
    match e {
        veil_api::CallError::Daemon(e) => {
            assert_eq!(e.code, veil_api::code::CHECK_RECORD, "{e:?}");
            assert!(!e.msg.contains("veild"), "{e:?}");
        }
        other => panic!("{other}"),
    }
}
