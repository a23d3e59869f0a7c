//! `lab up`: builds a lab from a [`Plan`], recording each step in `lab.json`
//! before taking it so that `lab down` can undo a half-built lab. On failure the
//! lab is removed again (unless asked to keep it for debugging).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use veil_api::{method, StatusReply};

use super::cni;
use super::netns;
use super::plan::{Plan, PlanPod, PlanPort, Proto, UNDERLAY_PREFIX};
use super::process;
use super::serve::ServeSpec;
use super::state::{ExternalState, LabLock, LabState, NodeState, PodState};
use super::{lab_dir, validate_name, LabError, LABS_ROOT};
use veil_daemon::datastore::local::LocalDatastore;
use veil_daemon::datastore::{DatastoreWriter, NamespaceRecord, PodPort, PodRecord};

/// The bridge in the underlay namespace.
pub const BRIDGE: &str = "br0";
/// The underlay interface of nodes and external hosts.
pub const UNDERLAY_IF: &str = "eth0";
/// The pods' interface.
pub const POD_IF: &str = "eth0";
/// The daemons' HTTP listen address (inside each node's namespace).
pub const HTTP_LISTEN: &str = "0.0.0.0:9590";
/// How long a node daemon may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a workload server may take to bind its ports.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The programs the lab runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The node daemon.
    pub veild: PathBuf,
    /// `veilctl` itself (for `lab serve`).
    pub veilctl: PathBuf,
    /// Directories holding CNI plugins (CNI_PATH); the first holds `veil`.
    pub cni_path: Vec<PathBuf>,
}

impl Binaries {
    /// The programs next to the running `veilctl` (overridable), with the
    /// system's CNI plugin directories after the `veil` plugin's own.
    pub fn locate(veild: Option<PathBuf>, cni_bin_dir: Option<PathBuf>) -> Result<Self, LabError> {
        let me = std::env::current_exe().map_err(|e| LabError::io("/proc/self/exe", e))?;
        let dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
        let veild = veild.unwrap_or_else(|| dir.join("veild"));
        let cni_dir = cni_bin_dir.unwrap_or_else(|| dir.clone());
        for (what, p) in [
            ("veild", veild.clone()),
            ("veil (CNI plugin)", cni_dir.join("veil")),
        ] {
            if !p.is_file() {
                return Err(LabError::MissingBinary {
                    what,
                    path: p.display().to_string(),
                });
            }
        }
        let mut cni_path = vec![cni_dir];
        for d in ["/opt/cni/bin", "/usr/lib/cni"] {
            let d = PathBuf::from(d);
            if d.is_dir() && !cni_path.contains(&d) {
                cni_path.push(d);
            }
        }
        Ok(Binaries {
            veild,
            veilctl: me,
            cni_path,
        })
    }
}

/// Options of `lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// What to build.
    pub plan: Plan,
    /// Programs.
    pub binaries: Binaries,
    /// The scenario file, if any (recorded).
    pub scenario: Option<PathBuf>,
    /// Keep a half-built lab when a step fails (for debugging).
    pub keep_on_error: bool,
}

/// Builds the lab; returns its state. Warnings (e.g. unsupported SCTP) go to
/// `warn`.
pub fn up(opts: &UpOptions, warn: &mut dyn FnMut(String)) -> Result<LabState, LabError> {
    let name = opts.plan.lab.clone();
    validate_name(&name)?;
    std::fs::create_dir_all(LABS_ROOT).map_err(|e| LabError::io(LABS_ROOT, e))?;
    let dir = lab_dir(&name);
    let leftovers = netns::list_with_prefix(&super::prefix(&name));
    if !leftovers.is_empty() {
        return Err(LabError::Exists(name));
    }
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(LabError::Exists(name))
        }
        Err(e) => return Err(LabError::io(&dir, e)),
    }
    let lock = LabLock::acquire(&name)?;
    let mut state = LabState::new(&name);
    state.cluster_cidr = Some(opts.plan.cluster_cidr.into());
    state.scenario = opts.scenario.clone();
    state.cni_plugin = opts.binaries.cni_path.first().map(|d| d.join("veil"));
    let result = build(opts, &mut state, warn);
    match result {
        Ok(()) => {
            state.complete = true;
            state.save()?;
            drop(lock);
            Ok(state)
        }
        Err(e) => {
            let _ = state.save();
            if !opts.keep_on_error {
                let _ = super::down::remove(&name);
            }
            drop(lock);
            Err(e)
        }
    }
}

fn mkdir(p: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(p).map_err(|e| LabError::io(p, e))
}

fn build(
    opts: &UpOptions,
    state: &mut LabState,
    warn: &mut dyn FnMut(String),
) -> Result<(), LabError> {
    let plan = &opts.plan;
    let dir = state.dir();
    state.save()?;

    // The underlay: a bridge in a namespace of its own.
    netns::add(&state.underlay_netns)?;
    let u = state.underlay_netns.clone();
    netns::ip_in(&u, &["link", "add", BRIDGE, "type", "bridge"])?;
    netns::ip_in(&u, &["link", "set", BRIDGE, "up"])?;

    // Nodes.
    for node in &plan.nodes {
        let ndir = dir.join(&node.name);
        mkdir(&ndir.join("state"))?;
        mkdir(&ndir.join("wireguard"))?;
        let socket = ndir.join("veild.sock");
        let log = ndir.join("veild.log");
        let mut argv = vec![
            opts.binaries.veild.display().to_string(),
            "--node-name".into(),
            node.name.clone(),
            "--node-address".into(),
            node.address.to_string(),
            "--underlay-interface".into(),
            UNDERLAY_IF.into(),
            "--pod-cidr".into(),
            node.pod_cidr.to_string(),
            "--cluster-cidr".into(),
            plan.cluster_cidr.to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--state-dir".into(),
            ndir.join("state").display().to_string(),
            "--datastore".into(),
            "local".into(),
            "--datastore-dir".into(),
            state.datastore_dir().display().to_string(),
            "--http-listen".into(),
            HTTP_LISTEN.into(),
            "--wireguard-socket-dir".into(),
            ndir.join("wireguard").display().to_string(),
        ];
        for (k, v) in &node.labels {
            argv.push("--node-label".into());
            argv.push(format!("{k}={v}"));
        }
        state.nodes.push(NodeState {
            name: node.name.clone(),
            netns: node.netns.clone(),
            address: IpAddr::V4(node.address),
            pod_cidr: node.pod_cidr.into(),
            labels: node.labels.clone(),
            socket,
            veild_argv: argv,
            log,
            pid: None,
        });
        state.save()?;
        netns::add(&node.netns)?;
        netns::veth(&u, &node.bridge_port, &node.netns, UNDERLAY_IF)?;
        netns::ip_in(&u, &["link", "set", &node.bridge_port, "master", BRIDGE])?;
        let addr = format!("{}/{UNDERLAY_PREFIX}", node.address);
        netns::ip_in(&node.netns, &["addr", "add", &addr, "dev", UNDERLAY_IF])?;
        if !plan.external.is_empty() {
            // External hosts are on the same bridge, reached on-link.
            netns::ip_in(
                &node.netns,
                &[
                    "route",
                    "add",
                    super::plan::EXTERNAL_CIDR,
                    "dev",
                    UNDERLAY_IF,
                ],
            )?;
        }
        netns::sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
    }

    // External hosts.
    for x in &plan.external {
        state.external.push(ExternalState {
            name: x.name.clone(),
            netns: x.netns.clone(),
            ip: IpAddr::V4(x.ip),
            server_pids: Vec::new(),
        });
        state.save()?;
        netns::add(&x.netns)?;
        netns::veth(&u, &x.bridge_port, &x.netns, UNDERLAY_IF)?;
        netns::ip_in(&u, &["link", "set", &x.bridge_port, "master", BRIDGE])?;
        netns::ip_in(
            &x.netns,
            &["addr", "add", &format!("{}/24", x.ip), "dev", UNDERLAY_IF],
        )?;
        netns::ip_in(
            &x.netns,
            &[
                "route",
                "add",
                &format!("198.18.0.0/{UNDERLAY_PREFIX}"),
                "dev",
                UNDERLAY_IF,
            ],
        )?;
    }

    // What the API server would know before the pods are wired.
    let store = LocalDatastore::open(state.datastore_dir())?;
    for ns in &plan.namespaces {
        store.put_namespace(&NamespaceRecord {
            name: ns.name.clone(),
            labels: ns.labels.clone(),
        })?;
    }
    for pod in &plan.pods {
        store.put_pod(&pod_record(pod))?;
    }

    // Node daemons.
    for i in 0..state.nodes.len() {
        let n = &state.nodes[i];
        let pid = process::spawn_in(&n.netns, &n.veild_argv, &n.log)?;
        state.nodes[i].pid = Some(pid);
        state.save()?;
    }
    for n in &state.nodes {
        wait_ready(n, READY_TIMEOUT)?;
    }

    // Pods: the DNS pod first, so the others' resolv.conf can name it.
    let mut order: Vec<&PlanPod> = plan.pods.iter().filter(|p| p.dns).collect();
    order.extend(plan.pods.iter().filter(|p| !p.dns));
    let mut dns_ip: Option<Ipv4Addr> = None;
    mkdir(&dir.join("pods"))?;
    for pod in order {
        let node = state
            .node(&pod.node)
            .cloned()
            .ok_or_else(|| state.no_such("node", &pod.node))?;
        let mut ps = PodState {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            netns: pod.netns.clone(),
            node: pod.node.clone(),
            ip: None,
            host_network: pod.host_network,
            container_id: String::new(),
            server_pids: Vec::new(),
        };
        if pod.host_network {
            ps.ip = Some(node.address);
            state.pods.push(ps);
            state.save()?;
        } else {
            ps.container_id = cni::new_container_id();
            state.pods.push(ps);
            state.save()?;
            netns::add(&pod.netns)?;
            if let Some(ip) = dns_ip {
                write_resolv_conf(&pod.netns, ip)?;
            }
            let ip = wire_pod(
                pod,
                &node,
                &state.pods.last().expect("just pushed").container_id,
                &opts.binaries,
            )?;
            state.pods.last_mut().expect("just pushed").ip = Some(IpAddr::V4(ip));
            state.save()?;
            if pod.dns {
                dns_ip = Some(ip);
                write_resolv_conf(&pod.netns, ip)?;
            }
        }
    }

    // Workload servers.
    let records = plan.dns_records();
    for pod in &plan.pods {
        if pod.ports.is_empty() {
            continue;
        }
        let stem = format!("{}.{}", pod.namespace, pod.name);
        let spec = serve_spec(
            &pod.full_name(),
            &pod.netns,
            &pod.ports,
            pod.dns.then(|| records.clone()),
            dir.join("pods").join(format!("{stem}.ready")),
        );
        let log = dir.join("pods").join(format!("{stem}.log"));
        let pid = start_server(&opts.binaries, &pod.netns, &spec, &log)?;
        let idx = state
            .pods
            .iter()
            .position(|p| p.namespace == pod.namespace && p.name == pod.name)
            .expect("every planned pod is recorded");
        state.pods[idx].server_pids.push(pid);
        state.save()?;
        wait_served(pid, &pod.netns, &spec, &log, warn)?;
    }
    if !plan.external.is_empty() {
        mkdir(&dir.join("external"))?;
    }
    for (i, x) in plan.external.iter().enumerate() {
        if x.ports.is_empty() {
            continue;
        }
        let spec = serve_spec(
            &x.name,
            &x.netns,
            &x.ports,
            None,
            dir.join("external").join(format!("{}.ready", x.name)),
        );
        let log = dir.join("external").join(format!("{}.log", x.name));
        let pid = start_server(&opts.binaries, &x.netns, &spec, &log)?;
        state.external[i].server_pids.push(pid);
        state.save()?;
        wait_served(pid, &x.netns, &spec, &log, warn)?;
    }
    Ok(())
}

/// The datastore record of a planned pod.
pub fn pod_record(pod: &PlanPod) -> PodRecord {
    PodRecord {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        labels: pod.labels.clone(),
        node: Some(pod.node.clone()),
        host_network: pod.host_network,
        service_account: pod.service_account.clone(),
        ports: pod
            .ports
            .iter()
            .map(|p| PodPort {
                port: p.port,
                protocol: p.protocol.as_str().to_string(),
                name: p.name.clone(),
            })
            .collect(),
    }
}

/// The server spec of a pod or external host.
pub fn serve_spec(
    name: &str,
    ns: &str,
    ports: &[PlanPort],
    dns: Option<BTreeMap<String, Ipv4Addr>>,
    ready_file: PathBuf,
) -> ServeSpec {
    let of = |proto| {
        ports
            .iter()
            .filter(|p| p.protocol == proto)
            .map(|p| p.port)
            .collect()
    };
    ServeSpec {
        name: name.to_string(),
        netns: Some(ns.to_string()),
        tcp: of(Proto::Tcp),
        udp: of(Proto::Udp),
        sctp: of(Proto::Sctp),
        dns,
        dns_zone: None,
        ready_file: Some(ready_file),
    }
}

fn write_resolv_conf(ns: &str, dns: Ipv4Addr) -> Result<(), LabError> {
    let path = netns::resolv_conf_path(ns);
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    let text = format!("# veil lab: the cluster DNS (kube-system/kube-dns)\nnameserver {dns}\noptions timeout:2 attempts:2\n");
    std::fs::write(&path, text).map_err(|e| LabError::io(&path, e))
}

fn wire_pod(
    pod: &PlanPod,
    node: &NodeState,
    container_id: &str,
    bins: &Binaries,
) -> Result<Ipv4Addr, LabError> {
    let mut args = vec![
        ("IgnoreUnknown".to_string(), "1".to_string()),
        ("K8S_POD_NAMESPACE".to_string(), pod.namespace.clone()),
        ("K8S_POD_NAME".to_string(), pod.name.clone()),
        (
            "K8S_POD_INFRA_CONTAINER_ID".to_string(),
            container_id.to_string(),
        ),
    ];
    let mut runtime_config = serde_json::json!({});
    if let Some(ip) = pod.ip {
        args.push(("IP".to_string(), ip.to_string()));
        runtime_config = serde_json::json!({"ips": [format!("{ip}/32")]});
    }
    let list = cni::conflist(&node.socket);
    let conflist_path = node.socket.with_file_name("10-veil.conflist");
    if !conflist_path.exists() {
        let text = serde_json::to_vec_pretty(&list).unwrap_or_default();
        std::fs::write(&conflist_path, text).map_err(|e| LabError::io(&conflist_path, e))?;
    }
    let netns_path = netns::path(&pod.netns);
    let inv = cni::Invocation {
        runtime_netns: &node.netns,
        cni_path: &bins.cni_path,
        container_id,
        netns_path: &netns_path,
        ifname: POD_IF,
        args: &args,
        runtime_config,
    };
    let result = cni::add(&list, &inv).map_err(|error| LabError::Cni {
        pod: pod.full_name(),
        error,
    })?;
    let ip = cni::result_ipv4(&result).ok_or_else(|| LabError::Cni {
        pod: pod.full_name(),
        error: cni::CniError::BadOutput {
            plugin: "veil".into(),
            status: "0".into(),
            output: result.to_string(),
            stderr: "no IPv4 address in the result".into(),
        },
    })?;
    if let Some(want) = pod.ip {
        if want != ip {
            return Err(LabError::AddressMismatch {
                pod: pod.full_name(),
                want,
                got: ip,
            });
        }
    }
    Ok(ip)
}

/// Waits until the node's daemon answers `cni.status` ready.
pub fn wait_ready(node: &NodeState, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match veil_api::call::<_, StatusReply>(
            &node.socket,
            method::CNI_STATUS,
            &serde_json::Value::Null,
            Duration::from_secs(5),
        ) {
            Ok(s) if s.ready => return Ok(()),
            Ok(s) => last = format!("not ready: {}", s.reason),
            Err(e) => last = e.to_string(),
        }
        let alive = node.pid.is_some_and(process::alive);
        if !alive || Instant::now() >= deadline {
            let why = if alive { "timed out" } else { "veild exited" };
            return Err(LabError::NotReady {
                node: node.name.clone(),
                reason: format!(
                    "{why} ({last}); end of {}:\n{}",
                    node.log.display(),
                    process::log_tail(&node.log, 15)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_server(bins: &Binaries, ns: &str, spec: &ServeSpec, log: &Path) -> Result<u32, LabError> {
    let json = serde_json::to_string(spec).unwrap_or_default();
    let argv = vec![
        bins.veilctl.display().to_string(),
        "lab".into(),
        "serve".into(),
        "--spec".into(),
        json,
    ];
    process::spawn_in(ns, &argv, log)
}

fn wait_served(
    pid: u32,
    ns: &str,
    spec: &ServeSpec,
    log: &Path,
    warn: &mut dyn FnMut(String),
) -> Result<(), LabError> {
    let Some(ready) = &spec.ready_file else {
        return Ok(());
    };
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read(ready) {
            let warnings: Vec<String> = serde_json::from_slice(&text).unwrap_or_default();
            for w in warnings {
                warn(format!("{}: {w}", spec.name));
            }
            return Ok(());
        }
        if !process::alive(pid) || Instant::now() >= deadline {
            return Err(LabError::ServerNotStarted {
                name: spec.name.clone(),
                netns: ns.to_string(),
                log: log.display().to_string(),
                tail: process::log_tail(log, 10),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests;
