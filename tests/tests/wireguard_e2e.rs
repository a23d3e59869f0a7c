//! End-to-end tests of the WireGuard datapath on a lab of network namespaces:
//! an underlay bridge namespace, node namespaces each running `veild`, and
//! pod namespaces wired to their node with a veth (as the CNI plugin does).
//!
//! A capture (tcpdump on the underlay bridge) proves that only UDP to the
//! WireGuard port crosses the underlay and that no pod payload appears in it:
//! before the first handshake, while a peer is unknown, while `veild` is
//! stopped or killed, and during key rotation. Everything is created under a
//! run-unique prefix and removed by Drop guards, also when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use veil_tests::{bin, call, require_root, run_ok, unique_prefix, Netns, VeildArgs};

const WG_PORT: u16 = 51820;
/// WireGuard lanes between two nodes (ports WG_PORT..WG_PORT + LANES).
const LANES: u16 = 4;

fn is_wg_port(p: u16) -> bool {
    (WG_PORT..WG_PORT + LANES).contains(&p)
}
const MARKER: &[u8] = b"VEIL-CLEAR-PAYLOAD-MARKER-7f3a";

/// Tests share two cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Node {
    i: u8,
    ns: Netns,
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Node {
    fn addr(&self) -> String {
        format!("198.18.0.{}", 10 + self.i)
    }
    fn sock(&self) -> PathBuf {
        self.dir.join("veild.sock")
    }
    fn wg_dir(&self) -> PathBuf {
        self.dir.join("wg")
    }
}

struct Pod {
    ns: Netns,
    ip: String,
}

/// Underlay bridge + nodes + pods; everything removed on drop.
struct Lab {
    prefix: String,
    dir: PathBuf,
    ul: Netns,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.daemon.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.pods.clear();
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new(nodes: u8) -> Self {
        let prefix = unique_prefix();
        let dir = std::env::temp_dir().join(format!("{prefix}-lab"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("ds")).unwrap();
        let ul = Netns::new(&format!("{prefix}-ul"));
        ul.ip(&["link", "add", "br0", "type", "bridge"]);
        ul.ip(&["link", "set", "br0", "up"]);
        let mut lab = Lab {
            prefix,
            dir,
            ul,
            nodes: Vec::new(),
            pods: Vec::new(),
        };
        for i in 0..nodes {
            lab.add_node(i);
        }
        lab
    }

    fn add_node(&mut self, i: u8) {
        let ns = Netns::new(&format!("{}-n{i}", self.prefix));
        let peer = format!("n{i}");
        self.ul.ip(&[
            "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.ul.ip(&["link", "set", &peer, "master", "br0", "up"]);
        ns.sysctl("net.ipv6.conf.all.disable_ipv6=1");
        ns.ip(&[
            "addr",
            "add",
            &format!("198.18.0.{}/15", 10 + i),
            "dev",
            "eth0",
        ]);
        ns.ip(&["link", "set", "eth0", "up"]);
        let dir = self.dir.join(format!("n{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        self.nodes.push(Node {
            i,
            ns,
            dir,
            daemon: None,
        });
    }

    fn node(&mut self, i: u8) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.i == i).expect("node")
    }

    /// Starts veild on node `i` and waits until its WireGuard part answers.
    fn start(&mut self, i: u8) {
        let ds = self.dir.join("ds");
        let n = self.node(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("veild.log"))
            .unwrap();
        let sock = n.sock();
        let child = VeildArgs {
            netns: &n.ns.name,
            node_name: &format!("node-{i}"),
            node_address: &n.addr(),
            pod_cidr: &format!("10.244.{i}.0/24"),
            underlay: "eth0",
            socket: &sock,
            state_dir: &n.dir.join("state"),
            datastore_dir: &ds,
            http_listen: "127.0.0.1:9590",
        }
        .command()
        .arg("--wireguard-socket-dir")
        .arg(n.wg_dir())
        .env("VEIL_LOG", "info,veil_daemon::wireguard=debug")
        .stderr(log)
        .spawn()
        .expect("spawn veild");
        n.daemon = Some(child);
        if let Err(e) = veil_tests::wait_for_daemon(
            &sock,
            veil_api::method::WIREGUARD_STATUS,
            Duration::from_secs(30),
            n.daemon.as_mut(),
            |_| true,
        ) {
            panic!("veild on node {i} {e}\n{}", self.log(i));
        }
    }

    fn log(&self, i: u8) -> String {
        let n = self.nodes.iter().find(|n| n.i == i).unwrap();
        std::fs::read_to_string(n.dir.join("veild.log")).unwrap_or_default()
    }

    /// SIGKILL (`kill`) or SIGTERM and wait.
    fn stop(&mut self, i: u8, kill: bool) {
        let n = self.node(i);
        if let Some(mut c) = n.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let sig = if kill {
                nix::sys::signal::Signal::SIGKILL
            } else {
                nix::sys::signal::Signal::SIGTERM
            };
            let _ = nix::sys::signal::kill(pid, sig);
            let _ = c.wait();
        }
    }

    /// A pod on node `i`, wired like the CNI plugin does: /32 address, link-local
    /// gateway answered by proxy ARP, MTU 1420, host route on the node.
    fn add_pod(&mut self, i: u8) -> usize {
        let j = self
            .pods
            .iter()
            .filter(|p| p.ip.starts_with(&format!("10.244.{i}.")))
            .count()
            + 2;
        let ip = format!("10.244.{i}.{j}");
        let ns = Netns::new(&format!("{}-p{i}{j}", self.prefix));
        let host = format!("vp{i}{j}");
        let node = &self.nodes.iter().find(|n| n.i == i).unwrap().ns;
        node.ip(&[
            "link", "add", &host, "mtu", "1420", "type", "veth", "peer", "name", "eth0", "mtu",
            "1420", "netns", &ns.name,
        ]);
        node.ip(&["link", "set", &host, "up"]);
        node.sysctl(&format!("net.ipv4.conf.{host}.proxy_arp=1"));
        node.ip(&["route", "replace", &format!("{ip}/32"), "dev", &host]);
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        let link = node.ip(&["-o", "link", "show", &host]);
        let mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("host veth mac")
            .to_string();
        ns.ip(&[
            "neigh",
            "replace",
            "169.254.1.1",
            "lladdr",
            &mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
            "onlink",
        ]);
        self.pods.push(Pod { ns, ip });
        self.pods.len() - 1
    }

    fn status(&self, i: u8) -> Value {
        let n = self.nodes.iter().find(|n| n.i == i).unwrap();
        call(&n.sock(), veil_api::method::WIREGUARD_STATUS, Value::Null)
            .expect(veil_api::method::WIREGUARD_STATUS)
    }

    /// Waits until node `i` lists `peers` peers.
    fn wait_peers(&self, i: u8, peers: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status(i);
            if s["peers"].as_array().map(|a| a.len()) == Some(peers) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} never had {peers} peers: {s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The metrics text of node `i`.
    fn metrics(&self, i: u8) -> String {
        let n = self.nodes.iter().find(|n| n.i == i).unwrap();
        n.ns.enter(|| {
            let mut s = TcpStream::connect("127.0.0.1:9590").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .join()
        .unwrap()
        .unwrap_or_default()
    }

    /// `wg show veil-wg dump` against node `i`'s UAPI socket (bind-mounted at
    /// /run/wireguard in a private mount namespace).
    fn wg_dump(&self, i: u8) -> String {
        let n = self.nodes.iter().find(|n| n.i == i).unwrap();
        let script = format!(
            "mount -t tmpfs none /run && mkdir -p /run/wireguard && mount --bind {} /run/wireguard && wg show veil-wg dump",
            n.wg_dir().display()
        );
        run_ok(Command::new("unshare").args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]))
    }
}

/// tcpdump on the underlay bridge, writing a pcap file.
struct Capture {
    child: Option<Child>,
    file: PathBuf,
}

impl Capture {
    fn start(lab: &Lab, name: &str) -> Self {
        let file = lab.dir.join(format!("{name}.pcap"));
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ul.name,
                "tcpdump",
                "-i",
                "br0",
                "-n",
                "-U",
                "-s",
                "0",
                "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let _ = err.read_line(&mut line);
        assert!(line.contains("listening"), "tcpdump did not start: {line}");
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        Capture {
            child: Some(child),
            file,
        }
    }

    /// Stops the capture and checks every frame: IPv4 only as UDP to/from the
    /// WireGuard port, never the marker. Returns the number of WireGuard frames.
    fn finish(mut self) -> usize {
        std::thread::sleep(Duration::from_millis(300));
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
        let data = std::fs::read(&self.file).expect("pcap");
        check_pcap(&data).unwrap_or_else(|e| panic!("capture {}: {e}", self.file.display()))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn check_pcap(data: &[u8]) -> Result<usize, String> {
    if data.len() < 24 || data[..4] != [0xd4, 0xc3, 0xb2, 0xa1] {
        return Err("not a little-endian pcap file".into());
    }
    let mut off = 24;
    let mut wg = 0;
    let mut n = 0;
    while off + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[off + 8..off + 12].try_into().unwrap()) as usize;
        off += 16;
        if off + caplen > data.len() {
            break;
        }
        let f = &data[off..off + caplen];
        off += caplen;
        n += 1;
        if f.windows(MARKER.len()).any(|w| w == MARKER) {
            return Err(format!("frame {n} carries pod payload in clear: {f:02x?}"));
        }
        if f.len() < 14 {
            continue;
        }
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        match ethertype {
            0x0806 => {} // ARP between nodes
            0x86dd => {
                // IPv6 is disabled on the underlay; tolerate only ICMPv6 (ND/MLD).
                if f.len() < 54 || f[20] != 58 && f[20] != 0 {
                    return Err(format!("frame {n}: IPv6 non-ICMP on the underlay"));
                }
            }
            0x0800 => {
                let ip = &f[14..];
                let ihl = ((ip[0] & 0x0f) as usize) * 4;
                let (src, dst) = (&ip[12..16], &ip[16..20]);
                if ip[9] == 2 && dst[0] == 224 {
                    continue; // IGMP reports of the bridge itself
                }
                if ip[9] == 1 && src[0] == 198 && dst[0] == 198 && ip.len() >= ihl + 8 + 28 {
                    // ICMP error between nodes (port unreachable while veild is
                    // down) quoting a WireGuard datagram: no pod data.
                    let inner = &ip[ihl + 8..];
                    let iihl = ((inner[0] & 0x0f) as usize) * 4;
                    let quoted_wg = inner[9] == 17
                        && inner.len() >= iihl + 4
                        && is_wg_port(u16::from_be_bytes([inner[iihl + 2], inner[iihl + 3]]));
                    if quoted_wg {
                        continue;
                    }
                }
                let udp_wg = ip[9] == 17 && {
                    let sport = u16::from_be_bytes([ip[ihl], ip[ihl + 1]]);
                    let dport = u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]);
                    // Lane `l` runs between the ports WG_PORT + l of both nodes.
                    is_wg_port(sport) && sport == dport
                };
                if !udp_wg {
                    return Err(format!(
                        "frame {n}: IPv4 proto {} {:?} -> {:?} is not WireGuard UDP",
                        ip[9], src, dst
                    ));
                }
                if src[0] != 198 || dst[0] != 198 {
                    return Err(format!("frame {n}: WireGuard between non-node addresses"));
                }
                wg += 1;
            }
            other => return Err(format!("frame {n}: unexpected ethertype {other:#x}")),
        }
    }
    Ok(wg)
}

/// TCP echo server in a pod; runs until `stop`. Returns once it listens: a
/// client started right after must not find the port closed (on a loaded
/// machine the server thread may not have run yet, and the SYN would be
/// answered with a reset: "connect: Connection refused").
fn echo_server(pod: &Pod, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let ip = pod.ip.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let h = pod.ns.enter(move || {
        let l = TcpListener::bind((ip.as_str(), 7000)).expect("bind echo");
        l.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind((ip.as_str(), 7001)).expect("bind udp echo");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let _ = ready_tx.send(());
        let mut conns: Vec<std::thread::JoinHandle<()>> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok((mut s, _)) = l.accept() {
                let stop = stop.clone();
                conns.push(std::thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let mut buf = vec![0u8; 1 << 16];
                    while !stop.load(Ordering::Relaxed) {
                        match s.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                if buf[0] == b'S' {
                                    // Sink mode: count until EOF, then answer the count.
                                    let mut total = n as u64 - 1;
                                    loop {
                                        match s.read(&mut buf) {
                                            Ok(0) => break,
                                            Ok(m) => total += m as u64,
                                            Err(e)
                                                if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                            Err(_) => return,
                                        }
                                    }
                                    let _ = s.write_all(&total.to_be_bytes());
                                    return;
                                }
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => return,
                        }
                    }
                }));
            }
            let mut b = [0u8; 2048];
            if let Ok((n, from)) = udp.recv_from(&mut b) {
                let _ = udp.send_to(&b[..n], from);
            }
        }
        for c in conns {
            let _ = c.join();
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("echo server listening");
    h
}

/// Continuous request/response over one TCP connection from `pod` to `to`
/// every 10 ms until `stop`; returns (round trips, longest gap, error).
type ProbeResult = (usize, Duration, Option<String>, Vec<(Instant, Duration)>);

/// Starts [`probe`]'s loop and returns once the connection is established (or
/// failed), so that what a test does next happens to an established
/// connection.
fn probe(pod: &Pod, to: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<ProbeResult> {
    probe_counted(pod, to, stop, Arc::new(AtomicUsize::new(0)))
}

/// [`probe`], counting round trips in `done` as they happen.
fn probe_counted(
    pod: &Pod,
    to: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<ProbeResult> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let h = pod.ns.enter(move || {
        let addr: SocketAddr = format!("{to}:7000").parse().unwrap();
        let connected = TcpStream::connect_timeout(&addr, Duration::from_secs(10));
        let _ = ready_tx.send(());
        let mut s = match connected {
            Ok(s) => s,
            Err(e) => return (0, Duration::ZERO, Some(format!("connect: {e}")), Vec::new()),
        };
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut msg = b"E".to_vec();
        msg.extend_from_slice(MARKER);
        let mut buf = vec![0u8; msg.len()];
        let mut last = Instant::now();
        let mut gap = Duration::ZERO;
        let mut n = 0;
        let mut gaps = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = s.write_all(&msg).and_then(|_| s.read_exact(&mut buf)) {
                return (n, gap.max(last.elapsed()), Some(e.to_string()), gaps);
            }
            if buf != msg {
                return (n, gap, Some("echo mismatch".into()), gaps);
            }
            n += 1;
            done.fetch_add(1, Ordering::Relaxed);
            let g = last.elapsed();
            gap = gap.max(g);
            if g > Duration::from_millis(100) {
                gaps.push((last, g));
            }
            last = Instant::now();
            std::thread::sleep(Duration::from_millis(10));
        }
        (n, gap, None, gaps)
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(30));
    h
}

/// Waits (up to `limit`) until the probe counting in `done` completes another
/// round trip: the connection carries traffic again after an outage (TCP's
/// retransmission back-off can keep it silent for seconds after the path is
/// back). Returns how long it took.
fn wait_progress(done: &AtomicUsize, limit: Duration) -> Duration {
    let t = Instant::now();
    let n0 = done.load(Ordering::Relaxed);
    while done.load(Ordering::Relaxed) == n0 && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

/// Busy threads, one per core, competing with `veild` for the CPU until
/// dropped or for at most `limit`.
struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuHog {
    fn start(limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let mut x: u64 = 0;
                    while !stop.load(Ordering::Relaxed) && t0.elapsed() < limit {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(6364136223846793005) + 1);
                        }
                    }
                    x
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends `bytes` over TCP from `pod` to the sink at `to`; returns (acknowledged
/// count, seconds).
fn bulk(pod: &Pod, to: String, bytes: usize) -> (u64, f64) {
    pod.ns
        .enter(move || {
            let t0 = Instant::now();
            let addr: SocketAddr = format!("{to}:7000").parse().unwrap();
            let mut s =
                TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut chunk = vec![0u8; 1 << 16];
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = MARKER[i % MARKER.len()];
            }
            s.write_all(b"S").unwrap();
            let mut left = bytes;
            while left > 0 {
                let k = left.min(chunk.len());
                s.write_all(&chunk[..k]).expect("bulk write");
                left -= k;
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut n = [0u8; 8];
            s.read_exact(&mut n).expect("bulk count");
            (u64::from_be_bytes(n), t0.elapsed().as_secs_f64())
        })
        .join()
        .unwrap()
}

fn udp_echo(pod: &Pod, to: String) -> bool {
    pod.ns
        .enter(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut msg = b"U".to_vec();
            msg.extend_from_slice(MARKER);
            for _ in 0..10 {
                let _ = s.send_to(&msg, format!("{to}:7001"));
                let mut b = [0u8; 256];
                if let Ok(n) = s.recv(&mut b) {
                    if b[..n] == msg[..] {
                        return true;
                    }
                }
            }
            false
        })
        .join()
        .unwrap()
}

/// `ping` from a pod with DF and `size` bytes of ICMP payload (marker pattern).
fn ping(pod: &Pod, to: &str, size: usize, count: u32) -> bool {
    let pattern: String = MARKER[..16].iter().map(|b| format!("{b:02x}")).collect();
    let out = pod.ns.exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        &size.to_string(),
        "-p",
        &pattern,
        to,
    ]);
    out.status.success()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn pods_talk_across_nodes_only_through_wireguard_and_keys_rotate_without_breaking_tcp() {
    require_root();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(2);
    let a = lab.add_pod(0);
    let b = lab.add_pod(1);
    let cap = Capture::start(&lab, "traffic");
    lab.start(0);
    lab.start(1);
    lab.wait_peers(0, 1);
    lab.wait_peers(1, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab.pods[b], stop.clone());
    let b_ip = lab.pods[b].ip.clone();

    // First packets go out before any handshake: queued, then encrypted.
    assert!(
        ping(&lab.pods[a], &b_ip, 56, 3),
        "ping across nodes\n{}\n{}\n{}\n{}",
        lab.status(0),
        lab.status(1),
        lab.nodes[0].ns.ip(&["route"]),
        lab.nodes[1].ns.ip(&["route"])
    );
    // Full-size packets with DF (1420-byte IP packets = pod MTU).
    assert!(ping(&lab.pods[a], &b_ip, 1392, 3), "1420-byte DF ping");
    assert!(
        ping(&lab.pods[b], &lab.pods[a].ip.clone(), 1400 - 28, 2),
        "1400-byte DF ping back"
    );
    assert!(
        udp_echo(&lab.pods[a], b_ip.clone()),
        "UDP echo across nodes"
    );
    let (got, secs) = bulk(&lab.pods[a], b_ip.clone(), 64 << 20);
    assert_eq!(got, 64 << 20, "bulk transfer complete");
    eprintln!(
        "bulk: 64 MiB in {secs:.2} s = {:.0} Mbit/s",
        (64u64 << 23) as f64 / secs / 1e6
    );

    // wg show through the UAPI socket.
    let dump = lab.wg_dump(0);
    let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{dump}");
    assert_eq!(lines[0][2], "51820", "{dump}");
    let st1 = lab.status(1);
    let key1 = st1["publicKey"].as_str().unwrap();
    assert_eq!(lines[1][0], key1, "{dump}");
    assert_eq!(lines[1][2], "198.18.0.11:51820", "{dump}");
    assert_eq!(lines[1][3], "10.244.1.0/24", "{dump}");
    assert!(
        lines[1][4].parse::<u64>().unwrap() > 0,
        "latest handshake: {dump}"
    );
    assert!(lines[1][5].parse::<u64>().unwrap() > 10_000, "rx: {dump}");
    assert!(lines[1][6].parse::<u64>().unwrap() > 60 << 20, "tx: {dump}");
    // Per-peer metrics refresh every second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = lab.metrics(0);
        let ok = metric(&m, "veil_wireguard_peers") == 1.0
            && metric(&m, "veil_wireguard_peer_tx_bytes_total") > 60e6
            && m.contains("veil_wireguard_dropped_no_peer_total")
            && m.contains("veil_wireguard_peer_handshake_age_seconds{peer=\"node-1\"}");
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Key rotation under continuous traffic: make-before-break.
    let old_key = lab.status(0)["publicKey"].as_str().unwrap().to_string();
    let pstop = Arc::new(AtomicBool::new(false));
    let p = probe(&lab.pods[a], b_ip.clone(), pstop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let out = run_ok(
        Command::new(bin("veilctl"))
            .args(["wireguard", "rotate-key", "--socket"])
            .arg(lab.nodes[0].sock()),
    );
    assert!(out.contains("rotated"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s0 = lab.status(0);
        let s1 = lab.status(1);
        let new_key = s0["publicKey"].as_str().unwrap();
        let done = new_key != old_key
            && s1["peers"][0]["publicKey"] == new_key
            && s0["peers"][0]["rotating"] == false
            && s1["peers"][0]["rotating"] == false;
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotation did not complete: {s0} {s1}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    pstop.store(true, Ordering::Relaxed);
    let (n, gap, err, _) = p.join().unwrap();
    eprintln!("rotation: {n} round trips, longest pause {gap:?}");
    assert!(
        err.is_none(),
        "TCP connection broke during rotation: {err:?}"
    );
    assert!(
        gap < Duration::from_secs(2),
        "pause during rotation {gap:?}"
    );
    assert!(ping(&lab.pods[a], &b_ip, 56, 2), "ping after rotation");

    // A node joins: its pods are reachable; then it leaves.
    lab.add_node(2);
    let c = lab.add_pod(2);
    lab.start(2);
    lab.wait_peers(0, 2);
    lab.wait_peers(2, 2);
    assert!(
        ping(&lab.pods[a], &lab.pods[c].ip.clone(), 56, 3),
        "ping to the new node's pod"
    );
    lab.stop(2, false);
    std::fs::remove_file(lab.dir.join("ds/nodes/node-2.yaml")).ok();
    lab.wait_peers(0, 1);
    let routes = lab.nodes[0].ns.ip(&["route", "show", "dev", "veil-wg"]);
    assert!(!routes.contains("10.244.2.0/24"), "{routes}");
    assert!(
        routes.contains("10.244.1.0/24") && routes.contains("src 10.244.0.1"),
        "{routes}"
    );

    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    let wg = cap.finish();
    assert!(wg > 1000, "only {wg} WireGuard frames captured");
}

#[test]
fn nothing_leaves_in_clear_without_peer_or_daemon_and_restart_keeps_tcp() {
    require_root();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(2);
    let a = lab.add_pod(0);
    let b = lab.add_pod(1);
    let b_ip = lab.pods[b].ip.clone();
    let cap = Capture::start(&lab, "failclosed");

    // Phase 1: node-1 unknown (not started): node-0 has no peer for it.
    lab.start(0);
    assert!(
        !ping(&lab.pods[a], &b_ip, 200, 3),
        "ping with no peer must fail"
    );
    let m = lab.metrics(0);
    assert!(
        metric(&m, "veil_wireguard_dropped_no_peer_total") >= 3.0,
        "{m}"
    );

    // Phase 2: peers up, an established TCP connection.
    lab.start(1);
    lab.wait_peers(0, 1);
    lab.wait_peers(1, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab.pods[b], stop.clone());
    let pstop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let p = probe_counted(&lab.pods[a], b_ip.clone(), pstop.clone(), done.clone());
    std::thread::sleep(Duration::from_secs(1));

    // Phase 3: veild stopped on node-0 (SIGTERM), traffic keeps trying.
    let t = Instant::now();
    lab.stop(0, false);
    assert!(
        !ping(&lab.pods[a], &b_ip, 200, 2),
        "no path while veild is stopped"
    );
    lab.start(0);
    eprintln!("restart after SIGTERM took {:?}", t.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    // The outage gap must end before the SIGKILL phase is measured.
    let back = wait_progress(&done, Duration::from_secs(30));
    eprintln!("TCP traffic again {back:?} after the pause above");

    // Phase 4: SIGKILL and immediate restart: the TCP connection survives.
    let t_kill = Instant::now();
    lab.stop(0, true);
    lab.start(0);
    eprintln!("restart after SIGKILL took {:?}", t_kill.elapsed());
    std::thread::sleep(Duration::from_secs(3));
    pstop.store(true, Ordering::Relaxed);
    let (n, _, err, gaps) = p.join().unwrap();
    assert!(
        err.is_none(),
        "TCP connection broke across restarts: {err:?}\n{}",
        lab.log(0)
    );
    assert!(n > 100, "too few round trips: {n}");
    // The pause around the SIGKILL restart (the SIGTERM phase above includes
    // a deliberate outage and is not measured).
    let pause = gaps
        .iter()
        .filter(|(start, d)| *start + *d >= t_kill)
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    eprintln!("SIGKILL restart: {n} round trips in total, traffic pause {pause:?}");
    assert!(pause < Duration::from_secs(5), "pause {pause:?}");
    assert!(ping(&lab.pods[a], &b_ip, 56, 2), "ping after restart");

    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    let wg = cap.finish();
    assert!(wg > 10, "only {wg} WireGuard frames");
}

/// Restart (SIGTERM), SIGKILL and key rotation while every core is busy with
/// other work: the established TCP connection survives all three, nothing
/// leaves in clear while `veild` is down, and the pauses stay bounded.
#[test]
fn restart_kill_and_rotation_hold_while_cpu_is_saturated() {
    require_root();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(2);
    let a = lab.add_pod(0);
    let b = lab.add_pod(1);
    let b_ip = lab.pods[b].ip.clone();
    let cap = Capture::start(&lab, "hog");
    lab.start(0);
    lab.start(1);
    lab.wait_peers(0, 1);
    lab.wait_peers(1, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab.pods[b], stop.clone());
    let hog = CpuHog::start(Duration::from_secs(120));
    let pstop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let p = probe_counted(&lab.pods[a], b_ip.clone(), pstop.clone(), done.clone());
    std::thread::sleep(Duration::from_secs(1));

    // SIGTERM: no path while stopped, then a restart.
    lab.stop(0, false);
    assert!(
        !ping(&lab.pods[a], &b_ip, 200, 2),
        "no path while veild is stopped (under load)"
    );
    let t_term = Instant::now();
    lab.start(0);
    eprintln!("hog: restart after SIGTERM took {:?}", t_term.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let back = wait_progress(&done, Duration::from_secs(30));
    eprintln!("hog: TCP traffic again {back:?} later");

    // SIGKILL and immediate restart.
    let t_kill = Instant::now();
    lab.stop(0, true);
    lab.start(0);
    eprintln!("hog: restart after SIGKILL took {:?}", t_kill.elapsed());
    std::thread::sleep(Duration::from_secs(3));
    wait_progress(&done, Duration::from_secs(30));

    // Key rotation on the restarted node.
    let old_key = lab.status(0)["publicKey"].as_str().unwrap().to_string();
    let t_rot = Instant::now();
    let out = run_ok(
        Command::new(bin("veilctl"))
            .args(["wireguard", "rotate-key", "--socket"])
            .arg(lab.nodes[0].sock()),
    );
    assert!(out.contains("rotated"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s0 = lab.status(0);
        let s1 = lab.status(1);
        let new_key = s0["publicKey"].as_str().unwrap();
        let done = new_key != old_key
            && s1["peers"][0]["publicKey"] == new_key
            && s0["peers"][0]["rotating"] == false
            && s1["peers"][0]["rotating"] == false;
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotation did not complete under load: {s0} {s1}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    pstop.store(true, Ordering::Relaxed);
    let (n, _, err, gaps) = p.join().unwrap();
    drop(hog);
    assert!(
        err.is_none(),
        "TCP connection broke under load: {err:?}\n{}",
        lab.log(0)
    );
    assert!(n > 50, "too few round trips: {n}");
    let worst_after = |t: Instant| {
        gaps.iter()
            .filter(|(start, d)| *start + *d >= t)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    };
    let kill_pause = worst_after(t_kill);
    let rot_pause = worst_after(t_rot);
    eprintln!(
        "hog: {n} round trips, pause after SIGKILL {kill_pause:?}, during rotation {rot_pause:?}"
    );
    assert!(kill_pause < Duration::from_secs(5), "pause {kill_pause:?}");
    assert!(
        rot_pause < Duration::from_secs(2),
        "pause during rotation {rot_pause:?}"
    );
    assert!(
        ping(&lab.pods[a], &b_ip, 56, 2),
        "ping after restarts and rotation"
    );

    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    let wg = cap.finish();
    assert!(wg > 10, "only {wg} WireGuard frames");
}

#[test]
fn nodes_claiming_the_same_key_are_both_refused() {
    require_root();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(3);
    lab.start(0);
    lab.start(1);
    lab.wait_peers(0, 1);
    // node-2 starts with node-1's private key.
    let k = std::fs::read(lab.nodes[1].dir.join("state/wireguard.key")).unwrap();
    std::fs::create_dir_all(lab.nodes[2].dir.join("state")).unwrap();
    std::fs::write(lab.nodes[2].dir.join("state/wireguard.key"), k).unwrap();
    lab.start(2);
    lab.wait_peers(0, 0);
    let s = lab.status(0);
    let refused = s["refused"].to_string();
    assert!(
        refused.contains("node-1")
            && refused.contains("node-2")
            && refused.contains("also claimed"),
        "{s}"
    );
    let m = lab.metrics(0);
    assert_eq!(metric(&m, "veil_wireguard_refused_peers"), 2.0, "{m}");
}
