//! Shared helpers for the end-to-end tests: network namespaces removed by a
//! Drop guard (each name carries a run-unique prefix), the built binaries
//! located next to the test executable, a `veild` started inside a node
//! namespace (killed by PID when dropped), the daemon's socket API (through
//! veil-api's client), and the `veil` CNI binary run exactly as a container
//! runtime runs it (through veil-ctl's [`veil_ctl::cni`]: environment plus
//! configuration on stdin, inside the node's namespace).
//!
//! Everything these helpers create lives in namespaces and temporary
//! directories of their own; nothing touches the machine's own namespace.

pub mod lab_policy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Fails the test with a clear message unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this end-to-end test creates network namespaces and must run as root"
    );
}

/// The built binary `name` (`veil`, `veild`, `veilctl`) in the target
/// directory of this test executable (`target/<profile>/deps/<test>` →
/// `target/<profile>/<name>`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins`",
        p.display()
    );
    p
}

/// A run-unique number: a hash of the time, this process's id and a
/// per-process counter (so two calls, two tests or two runs differ).
pub fn unique_id() -> u64 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in nanos
        .to_le_bytes()
        .into_iter()
        .chain(std::process::id().to_le_bytes())
        .chain(COUNTER.fetch_add(1, Ordering::SeqCst).to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A short run-unique prefix, `vt` + 6 hex digits, for namespaces,
/// directories and processes of one test.
pub fn unique_prefix() -> String {
    format!("vt{:06x}", unique_id() & 0xff_ffff)
}

/// Runs `cmd`, asserting success (the message shows the command and its
/// output); returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `program --version` runs: an optional tool (chromium,
/// prometheus) is installed.
pub fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The command line of a headless Chromium with a throw-away profile in
/// `profile`, followed by `extra` (e.g. `--dump-dom <url>`).
pub fn headless_chromium(profile: &Path, extra: &[&str]) -> Vec<String> {
    [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .chain(extra.iter().map(|a| a.to_string()))
    .collect()
}

/// Waits until `f` holds, checking every 100 ms, up to `timeout`; whether it
/// did.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` (which should carry a [`unique_prefix`]) with
    /// its loopback up.
    pub fn new(name: &str) -> Netns {
        run_ok(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's path, as CNI_NETNS.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip -n <ns> args...`, asserting success; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip -j -n <ns> args...` as JSON.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let out = self.ip(&a);
        if out.trim().is_empty() {
            return json!([]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
    }

    /// Runs a command inside the namespace; returns its output (not asserted).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// Adds an underlay interface `ifname` with address `cidr`, up: one end
    /// of a veth pair whose other end, `peer`, stays down in the namespace
    /// (the underlay has no other side here).
    pub fn add_underlay(&self, ifname: &str, peer: &str, cidr: &str) {
        self.ip(&["link", "add", ifname, "type", "veth", "peer", "name", peer]);
        self.ip(&["addr", "add", cidr, "dev", ifname]);
        self.ip(&["link", "set", ifname, "up"]);
    }

    /// Sets a sysctl (`key=value`) inside the namespace, asserting success.
    pub fn sysctl(&self, kv: &str) {
        let out = self.exec(&["sysctl", "-qw", kv]);
        assert!(out.status.success(), "sysctl {kv} in {}", self.name);
    }

    /// Runs `f` on a thread that entered this namespace (sockets made there
    /// stay there).
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// Names of the links in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A temporary directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/<prefix>-<tag>`.
    pub fn new(prefix: &str, tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("{prefix}-{tag}"));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process (a `veild`), killed by PID and reaped when dropped.
#[derive(Debug)]
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The arguments every test gives a `veild` it starts inside a namespace.
#[derive(Debug, Clone, Copy)]
pub struct VeildArgs<'a> {
    /// The namespace it runs in.
    pub netns: &'a str,
    /// `--node-name`.
    pub node_name: &'a str,
    /// `--node-address`.
    pub node_address: &'a str,
    /// `--pod-cidr`.
    pub pod_cidr: &'a str,
    /// `--underlay-interface`.
    pub underlay: &'a str,
    /// `--socket`.
    pub socket: &'a Path,
    /// `--state-dir`.
    pub state_dir: &'a Path,
    /// `--datastore-dir`.
    pub datastore_dir: &'a Path,
    /// `--http-listen` (inside the namespace).
    pub http_listen: &'a str,
}

impl VeildArgs<'_> {
    /// `ip netns exec <netns> veild <these arguments>`, stdin and stdout
    /// null; the caller adds stderr, further arguments and environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns])
            .arg(bin("veild"))
            .args(["--node-name", self.node_name])
            .args(["--node-address", self.node_address])
            .args(["--pod-cidr", self.pod_cidr])
            .args(["--underlay-interface", self.underlay])
            .arg("--socket")
            .arg(self.socket)
            .arg("--state-dir")
            .arg(self.state_dir)
            .arg("--datastore-dir")
            .arg(self.datastore_dir)
            .args(["--http-listen", self.http_listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }
}

/// Polls `method` on the daemon at `socket` every 50 ms until its answer
/// satisfies `accept`. Fails when `timeout` passes first (or, given the
/// daemon's `child`, when it exits first), saying which.
pub fn wait_for_daemon(
    socket: &Path,
    method: &str,
    timeout: Duration,
    mut child: Option<&mut Child>,
    accept: impl Fn(&Value) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(v) = call(socket, method, Value::Null) {
            if accept(&v) {
                return Ok(());
            }
        }
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("exited with {status}"));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("did not answer {method} within {timeout:?}"))
}

/// A `veild` running in a node namespace of its own, killed (by PID) and its
/// namespace and directory removed when dropped.
#[derive(Debug)]
pub struct Node {
    /// The node's namespace.
    pub netns: Netns,
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// The node's pod CIDR.
    pub pod_cidr: String,
    child: Option<Child>,
    dir: TempDir,
}

impl Node {
    /// Starts a node: namespace `<prefix>-node` with an underlay interface
    /// (`ul0`, one end of a veth pair, 198.18.0.10/15), `veild` with pod CIDR `pod_cidr`, its
    /// socket, state and datastore in a temporary directory; waits until
    /// `cni.status` says ready.
    pub fn start(prefix: &str, pod_cidr: &str) -> Node {
        let netns = Netns::new(&format!("{prefix}-node"));
        netns.add_underlay("ul0", "ul1", "198.18.0.10/15");
        let dir = TempDir::new(prefix, "node");
        let mut node = Node {
            socket: dir.path().join("veild.sock"),
            state_dir: dir.path().join("state"),
            pod_cidr: pod_cidr.to_string(),
            netns,
            child: None,
            dir,
        };
        node.spawn();
        node
    }

    /// Starts the daemon again on the same state, as an operator restarts it
    /// (stopping it first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("veild.log"))
            .expect("log file");
        let datastore = self.dir.path().join("datastore");
        let child = VeildArgs {
            netns: &self.netns.name,
            node_name: &self.netns.name,
            node_address: "198.18.0.10",
            pod_cidr: &self.pod_cidr,
            underlay: "ul0",
            socket: &self.socket,
            state_dir: &self.state_dir,
            datastore_dir: &datastore,
            http_listen: "127.0.0.1:19590",
        }
        .command()
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn veild");
        self.child = Some(child);
        if let Err(e) = wait_for_daemon(
            &self.socket,
            veil_api::method::CNI_STATUS,
            Duration::from_secs(30),
            self.child.as_mut(),
            |v| v["ready"] == true,
        ) {
            panic!("veild {e}: {}", self.log());
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("veild.log")).unwrap_or_default()
    }

    /// The daemon's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Calls a method on this node's daemon.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        call(&self.socket, method, params)
    }

    /// `node.status`'s endpoints.
    pub fn endpoints(&self) -> Vec<Value> {
        self.call(veil_api::method::NODE_STATUS, Value::Null)
            .expect(veil_api::method::NODE_STATUS)["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The pods' host veths (`veil` + 11 hex digits) in the node's namespace.
    pub fn veil_links(&self) -> Vec<String> {
        self.netns
            .links()
            .into_iter()
            .filter(|l| {
                l.len() == 15
                    && l.starts_with("veil")
                    && l[4..].chars().all(|c| c.is_ascii_hexdigit())
            })
            .collect()
    }

    /// Host routes (/32) in the node's namespace to addresses in 10.244.0.0/16
    /// through the pods' veths (the daemon's wider routes and those through
    /// `veil-wg` to remote pod CIDRs are not the plugin's).
    pub fn pod_routes(&self) -> Vec<String> {
        self.netns
            .ip_json(&["-4", "route", "show"])
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r["dev"].as_str() != Some("veil-wg"))
                    .filter_map(|r| r["dst"].as_str().map(str::to_string))
                    .filter(|d| d.starts_with("10.244.") && !d.contains('/'))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs the `veil` binary in this node's namespace as a runtime does.
    pub fn cni(&self, command: &str, vars: &[(&str, &str)], conf: &Value) -> CniRun {
        run_cni(&self.netns, command, vars, &conf.to_string())
    }

    /// A minimal network configuration for this node's daemon.
    pub fn conf(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "veil-e2e", "type": "veil",
               "socket": self.socket.display().to_string()})
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 5 s), by PID.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Calls `method` (one of [`veil_api::method`]) on the daemon at `socket`
/// through veil-api's client, waiting up to 30 s: the answer, or the error
/// answer (or connection failure) as a string.
pub fn call(socket: &Path, method: &str, params: Value) -> Result<Value, String> {
    veil_api::call(socket, method, &params, Duration::from_secs(30)).map_err(|e| e.to_string())
}

/// What one run of the CNI binary produced.
#[derive(Debug, Clone)]
pub struct CniRun {
    /// Exit code.
    pub code: i32,
    /// stdout, parsed (`Null` when empty).
    pub json: Value,
    /// stdout as text.
    pub stdout: String,
    /// stderr as text (logs).
    pub stderr: String,
}

impl CniRun {
    /// Asserts success and returns stdout's JSON.
    pub fn ok(self) -> Value {
        assert_eq!(
            self.code, 0,
            "plugin failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.json
    }

    /// Asserts failure with CNI error code `code`; returns the error object.
    pub fn err(self, code: u64) -> Value {
        assert_ne!(self.code, 0, "plugin succeeded: {}", self.stdout);
        assert_eq!(
            self.json["code"], code,
            "error object: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(self.json["msg"].as_str().is_some_and(|m| !m.is_empty()));
        self.json
    }
}

/// Runs `veil` inside `node` with `CNI_COMMAND=command`, the `vars` and
/// `CNI_PATH=/usr/lib/cni` (nothing else from the test's environment), and
/// `stdin` as the configuration, through veil-ctl's CNI runtime.
pub fn run_cni(node: &Netns, command: &str, vars: &[(&str, &str)], stdin: &str) -> CniRun {
    run_plugin(node, &bin("veil"), command, vars, stdin)
}

/// Runs the CNI plugin at `exe` (e.g. a reference plugin in /usr/lib/cni) as
/// [`run_cni`] runs `veil`.
pub fn run_cni_plugin(
    node: &Netns,
    exe: &str,
    command: &str,
    vars: &[(&str, &str)],
    conf: &Value,
) -> CniRun {
    run_plugin(node, Path::new(exe), command, vars, &conf.to_string())
}

fn run_plugin(
    node: &Netns,
    exe: &Path,
    command: &str,
    vars: &[(&str, &str)],
    stdin: &str,
) -> CniRun {
    let cni_path = [PathBuf::from("/usr/lib/cni")];
    let rt = veil_ctl::cni::Runtime {
        netns: Some(&node.name),
        cni_path: &cni_path,
    };
    let run = veil_ctl::cni::exec(&rt, exe, command, vars, stdin.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let json = run
        .json()
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {:?}", run.stdout));
    CniRun {
        code: run.code(),
        json,
        stdout: run.stdout,
        stderr: run.stderr,
    }
}

/// The attachment variables of a pod (`CNI_CONTAINERID`, `CNI_NETNS`,
/// `CNI_IFNAME`, `CNI_ARGS` with the pod's namespace and name).
pub fn pod_vars<'a>(
    container_id: &'a str,
    netns: &'a str,
    args: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args),
    ]
}
