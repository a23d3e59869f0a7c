//! Helpers of the flow collector's end-to-end tests: pods wired by hand, TCP
//! servers and clients on threads that entered a namespace (namespaces,
//! `veild` and the socket API come from the shared `veil_tests` library).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use veil_tests::{bin, call, require_root, unique_prefix, Daemon, Netns, TempDir, VeildArgs};

/// Wires pod namespace `pod` with address `ip` to the node namespace.
pub fn wire_pod(node: &Netns, pod: &Netns, host_if: &str, ip: &str) {
    node.ip(&[
        "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ]);
    node.ip(&["addr", "add", "10.244.1.1/32", "dev", host_if]);
    node.ip(&["link", "set", host_if, "up"]);
    node.ip(&["route", "add", &format!("{ip}/32"), "dev", host_if]);
    pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["route", "add", "10.244.1.1", "dev", "eth0", "scope", "link"]);
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.244.1.1",
        "dev",
        "eth0",
    ]);
}

/// Serves `conns` connections on `port` in `ns`: reads a request of `req`
/// bytes, answers `resp` bytes.
pub fn serve(
    ns: &Netns,
    ip: &str,
    port: u16,
    conns: usize,
    req: usize,
    resp: usize,
) -> std::thread::JoinHandle<usize> {
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = ns.enter(move || {
        let l = TcpListener::bind(addr).expect("bind");
        let _ = ready_tx.send(());
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < conns && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut buf = vec![0u8; req];
                    if s.read_exact(&mut buf).is_ok() {
                        let _ = s.write_all(&vec![b'r'; resp]);
                    }
                    let _ = s.shutdown(Shutdown::Write);
                    let _ = s.read(&mut [0u8; 1]);
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        served
    });
    // Clients start only once the server listens: a refused SYN is a
    // connection attempt too, and would be counted.
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server did not start");
    h
}

/// Opens `conns` connections from `ns` to `dst`, each sending `req` bytes
/// and reading the answer to its end.
pub fn client(ns: &Netns, dst: &str, conns: usize, req: usize) -> std::thread::JoinHandle<usize> {
    let dst: SocketAddr = dst.parse().unwrap();
    ns.enter(move || {
        let mut done = 0;
        for _ in 0..conns {
            let mut tries = 0;
            loop {
                tries += 1;
                match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
                    Ok(mut s) => {
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        s.write_all(&vec![b'q'; req]).unwrap();
                        let mut answer = Vec::new();
                        let _ = s.read_to_end(&mut answer);
                        done += usize::from(!answer.is_empty());
                        break;
                    }
                    Err(e) if tries < 15 => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => panic!("connect {dst}: {e}"),
                }
            }
        }
        done
    })
}

pub fn write(path: PathBuf, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Publishes pod `namespace/pod` on node `n1` with address `ip` in the
/// datastore directory `ds`, as the CNI path does: the pod (with `labels:`
/// followed by `labels` when given) and its endpoint.
pub fn publish_pod(
    ds: &std::path::Path,
    namespace: &str,
    pod: &str,
    ip: &str,
    labels: Option<&str>,
) {
    let labels = labels.map(|l| format!("labels:\n{l}")).unwrap_or_default();
    write(
        ds.join(format!("pods/{namespace}/{pod}.yaml")),
        &format!("namespace: {namespace}\nname: {pod}\nnode: n1\n{labels}"),
    );
    write(
        ds.join(format!("endpoints/n1/{pod}_eth0.yaml")),
        &format!("node: n1\ncontainerId: {pod}\nifname: eth0\npodNamespace: {namespace}\npodName: {pod}\nips: [\"{ip}/32\"]\n"),
    );
}

/// `veild` of node `n1` (198.18.0.1, pods 10.244.1.0/24, underlay `eth0`,
/// HTTP on 127.0.0.1:9590) in namespace `node`, with its socket
/// (`veild.sock`), state (`state/`) and datastore (`ds/`) in `dir`.
pub fn veild_n1(node: &Netns, dir: &std::path::Path) -> std::process::Command {
    VeildArgs {
        netns: &node.name,
        node_name: "n1",
        node_address: "198.18.0.1",
        pod_cidr: "10.244.1.0/24",
        underlay: "eth0",
        socket: &dir.join("veild.sock"),
        state_dir: &dir.join("state"),
        datastore_dir: &dir.join("ds"),
        http_listen: "127.0.0.1:9590",
    }
    .command()
}
