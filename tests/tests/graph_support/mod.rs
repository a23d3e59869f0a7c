//! Helpers of the flow collector's end-to-end tests: namespaces removed on
//! drop, a veild in a namespace, pods wired by hand, TCP servers and clients
//! on threads that entered a namespace.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test creates network namespaces and must run as root"
    );
}

pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace removed on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(prefix: &str, tag: &str) -> Self {
        let name = format!("{prefix}-{tag}");
        run("ip", &["netns", "add", &name]);
        let n = Netns(name);
        n.ip(&["link", "set", "lo", "up"]);
        n
    }
    pub fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend_from_slice(args);
        run("ip", &a);
    }
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
    /// Runs `f` on a thread that entered this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn call(sock: &Path, method: &str, params: Value) -> Result<Value, String> {
    use std::io::{BufRead, BufReader};
    let s = std::os::unix::net::UnixStream::connect(sock).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut line = serde_json::to_vec(&serde_json::json!({"method": method, "params": params}))
        .map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&s).write_all(&line).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
    if let Some(ok) = v.get("ok") {
        Ok(ok.clone())
    } else {
        Err(answer)
    }
}

/// Wires pod namespace `pod` with address `ip` to the node namespace.
pub fn wire_pod(node: &Netns, pod: &Netns, host_if: &str, ip: &str) {
    node.ip(&[
        "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
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
    let h = ns.spawn(move || {
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
    ns.spawn(move || {
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

pub fn tempfile_dir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{prefix}-graph"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
