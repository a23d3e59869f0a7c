//! The daemon's start-up and its CNI methods.
//!
//! Order: open the endpoint table (state survives restarts), install the base
//! packet filter (fail closed before anything else), enable forwarding, publish
//! the node record, start watching the datastore, register the socket methods,
//! start the parts (WireGuard, flows), serve HTTP, mark ready, serve the socket.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use veil_api::{
    AddReply, AddRequest, ApiError, CheckRequest, CommitRequest, DelReply, DelRequest, GcReply,
    GcRequest, IpamMode, StatusReply,
};

use crate::api::{api_error, ApiRegistry};
use crate::config::{Config, WG_OVERHEAD};
use crate::context::NodeContext;
use crate::datastore::local::{watch, LocalDatastore};
use crate::datastore::{DatastoreError, EndpointRecord, NodeRecord, SharedDatastore};
use crate::endpoints::{Endpoint, EndpointError, EndpointState, EndpointTable};
use crate::filter::{render_base, BaseFilter, FilterError, Nft, PacketFilter};

/// Link-local gateway of every pod (answered by proxy ARP on the host veth).
pub const POD_GATEWAY_V4: &str = "169.254.1.1";

/// Error code: invalid request contents (CNI "invalid network config").
const CODE_INVALID: u32 = 7;
/// Error code: allocation failed (ours).
const CODE_IPAM: u32 = 110;
/// Error code: state could not be persisted (ours).
const CODE_STATE: u32 = 111;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The datastore could not be opened.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// The endpoint table could not be opened.
    #[error(transparent)]
    Endpoints(#[from] EndpointError),
    /// The base packet filter could not be installed.
    #[error("installing the base packet filter: {0}")]
    Filter(#[from] FilterError),
    /// A socket or listener could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being opened.
        what: String,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// A part failed to start.
    #[error("starting {part}: {reason}")]
    Part {
        /// Which part.
        part: &'static str,
        /// Why.
        reason: String,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CniLabels {
    method: String,
    result: String,
}

/// Daemon metrics of this module.
#[derive(Clone, Default)]
struct NodeMetrics {
    cni_requests: Family<CniLabels, Counter>,
    endpoints: Gauge,
    allocated: Gauge,
}

impl NodeMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "veil_cni_requests",
            "CNI requests served, by method and result",
            self.cni_requests.clone(),
        );
        reg.register(
            "veil_endpoints",
            "Pod endpoints on this node",
            self.endpoints.clone(),
        );
        reg.register(
            "veil_ipam_allocated_addresses",
            "Addresses allocated from this node's pod CIDR",
            self.allocated.clone(),
        );
    }

    fn count(&self, method: &str, ok: bool) {
        self.cni_requests
            .get_or_create(&CniLabels {
                method: method.to_string(),
                result: if ok { "ok" } else { "error" }.to_string(),
            })
            .inc();
    }

    fn refresh(&self, t: &EndpointTable) {
        self.endpoints.set(t.list().len() as i64);
        self.allocated.set(t.allocated().len() as i64);
    }
}

/// The node record this daemon publishes.
pub fn node_record(config: &Config, annotations: BTreeMap<String, String>) -> NodeRecord {
    NodeRecord {
        name: config.node_name.clone(),
        address: config.node_address,
        pod_cidrs: vec![config.pod_cidr],
        labels: config.node_labels.clone(),
        annotations,
    }
}

fn read_mtu(iface: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The MTU of pods and of the tunnel: underlay MTU − WireGuard overhead.
pub fn pod_mtu(config: &Config) -> u32 {
    let underlay = config
        .underlay_mtu
        .or_else(|| read_mtu(&config.underlay_interface))
        .unwrap_or(1500);
    underlay.saturating_sub(WG_OVERHEAD).max(1280)
}

fn state_err(e: EndpointError) -> ApiError {
    match e {
        EndpointError::Ipam(i) => api_error(CODE_IPAM, i.to_string()),
        other => api_error(CODE_STATE, other.to_string()),
    }
}

fn valid_id(what: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(api_error(
            CODE_INVALID,
            format!("{what} {s:?} is not a valid identifier"),
        ))
    }
}

struct Cni {
    config: Arc<Config>,
    datastore: SharedDatastore,
    endpoints: Arc<EndpointTable>,
    snapshots: tokio::sync::watch::Receiver<Arc<crate::datastore::Snapshot>>,
    ready: Arc<AtomicBool>,
    metrics: NodeMetrics,
    mtu: u32,
}

impl Cni {
    fn reply_for(&self, ep: &Endpoint) -> AddReply {
        let mut gateways = Vec::new();
        if ep.ips.iter().any(|i| i.is_ipv4()) {
            gateways.push(POD_GATEWAY_V4.parse().expect("literal"));
        }
        AddReply {
            ips: ep.ips.clone(),
            gateways,
            mtu: self.mtu,
            host_ifname: ep.host_ifname.clone(),
        }
    }

    fn add(&self, req: AddRequest) -> Result<AddReply, ApiError> {
        valid_id("container ID", &req.container_id)?;
        valid_id("interface name", &req.ifname)?;
        valid_id("host interface name", &req.host_ifname)?;
        if req.host_ifname.len() > 15 {
            return Err(api_error(
                CODE_INVALID,
                format!(
                    "host interface name {:?} is longer than 15 characters",
                    req.host_ifname
                ),
            ));
        }
        let labels = match (&req.pod_namespace, &req.pod_name) {
            (Some(ns), Some(name)) => self
                .snapshots
                .borrow()
                .pod(ns, name)
                .map(|p| p.labels.clone())
                .unwrap_or_default(),
            _ => BTreeMap::new(),
        };
        let ep = Endpoint {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            host_ifname: req.host_ifname.clone(),
            ips: vec![],
            daemon_ipam: true,
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            network: req.network.clone(),
            labels,
            state: EndpointState::Pending,
        };
        let ips = match req.ipam {
            IpamMode::Daemon if req.requested_ips.is_empty() => None,
            IpamMode::Daemon => {
                let mut v = Vec::new();
                for ip in &req.requested_ips {
                    if !self.config.pod_cidr.contains(*ip) {
                        return Err(api_error(
                            CODE_IPAM,
                            format!(
                                "requested address {ip} is outside this node's pod CIDR {}",
                                self.config.pod_cidr
                            ),
                        ));
                    }
                    v.push(*ip);
                }
                return self.add_fixed(ep, v);
            }
            IpamMode::Delegated { ips } => {
                if ips.is_empty() {
                    return Err(api_error(
                        CODE_INVALID,
                        "the delegated IPAM plugin returned no address",
                    ));
                }
                Some(ips)
            }
        };
        let added = self.endpoints.add(ep, ips).map_err(state_err)?;
        if !added.new && added.endpoint.netns != req.netns {
            return Err(api_error(
                CODE_INVALID,
                format!(
                    "container {} interface {} is already attached in {}",
                    req.container_id, req.ifname, added.endpoint.netns
                ),
            ));
        }
        tracing::info!(
            pod.namespace = req.pod_namespace.as_deref().unwrap_or(""),
            pod.name = req.pod_name.as_deref().unwrap_or(""),
            container = %req.container_id,
            ips = %added.endpoint.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
            "endpoint reserved"
        );
        Ok(self.reply_for(&added.endpoint))
    }

    fn add_fixed(&self, ep: Endpoint, ips: Vec<std::net::IpAddr>) -> Result<AddReply, ApiError> {
        // A retried ADD of the same attachment returns its record.
        if let Some(existing) = self.endpoints.get(&ep.container_id, &ep.ifname) {
            return Ok(self.reply_for(&existing));
        }
        let added = self.endpoints.add_claimed(ep, &ips).map_err(state_err)?;
        Ok(self.reply_for(&added))
    }

    fn commit(&self, req: CommitRequest) -> Result<(), ApiError> {
        let ep = self
            .endpoints
            .commit(&req.container_id, &req.ifname)
            .map_err(state_err)?
            .ok_or_else(|| {
                api_error(
                    CODE_INVALID,
                    format!(
                        "container {} interface {} was never added",
                        req.container_id, req.ifname
                    ),
                )
            })?;
        let rec = EndpointRecord {
            node: self.config.node_name.clone(),
            container_id: ep.container_id.clone(),
            ifname: ep.ifname.clone(),
            pod_namespace: ep.pod_namespace.clone(),
            pod_name: ep.pod_name.clone(),
            ips: ep.ips.clone(),
        };
        if let Err(e) = self.datastore.put_endpoint(&rec) {
            // The endpoint works locally; the record is republished by the resync.
            tracing::warn!(error = %e, container = %ep.container_id, "publishing endpoint");
        }
        Ok(())
    }

    fn del(&self, req: DelRequest) -> Result<DelReply, ApiError> {
        let removed = self
            .endpoints
            .remove(&req.container_id, &req.ifname)
            .map_err(state_err)?;
        if let Err(e) =
            self.datastore
                .delete_endpoint(&self.config.node_name, &req.container_id, &req.ifname)
        {
            tracing::warn!(error = %e, container = %req.container_id, "removing endpoint record");
        }
        Ok(DelReply {
            existed: removed.is_some(),
            host_ifname: removed.map(|e| e.host_ifname),
        })
    }

    fn check(&self, req: CheckRequest) -> Result<AddReply, ApiError> {
        let ep = self
            .endpoints
            .get(&req.container_id, &req.ifname)
            .ok_or_else(|| {
                api_error(
                    CODE_INVALID,
                    format!(
                        "veild has no endpoint for container {} interface {}",
                        req.container_id, req.ifname
                    ),
                )
            })?;
        if ep.state != EndpointState::Ready {
            return Err(api_error(
                CODE_INVALID,
                format!("endpoint {} is still pending", ep.display_name()),
            ));
        }
        Ok(self.reply_for(&ep))
    }

    fn gc(&self, req: GcRequest) -> Result<GcReply, ApiError> {
        let keep: std::collections::HashSet<(String, String)> = req
            .valid
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        let mut removed = Vec::new();
        let mut attachments = Vec::new();
        for ep in self.endpoints.list() {
            if keep.contains(&(ep.container_id.clone(), ep.ifname.clone())) {
                continue;
            }
            // Another network's endpoint is not this collection's to release.
            if !req.network.is_empty() && !ep.network.is_empty() && ep.network != req.network {
                continue;
            }
            let r = self.del(DelRequest {
                container_id: ep.container_id.clone(),
                ifname: ep.ifname.clone(),
            })?;
            if let Some(h) = r.host_ifname {
                removed.push(h);
            }
            attachments.push(veil_api::Attachment {
                container_id: ep.container_id.clone(),
                ifname: ep.ifname.clone(),
            });
        }
        Ok(GcReply {
            removed_host_ifnames: removed,
            removed: attachments,
        })
    }

    fn status(&self) -> StatusReply {
        if self.ready.load(Ordering::SeqCst) {
            StatusReply {
                ready: true,
                reason: String::new(),
            }
        } else {
            StatusReply {
                ready: false,
                reason: "veild is starting".into(),
            }
        }
    }
}

fn register_cni(api: &ApiRegistry, cni: Arc<Cni>) {
    macro_rules! method {
        ($name:expr, $req:ty, $f:ident) => {{
            let c = cni.clone();
            api.register($name, move |req: $req| {
                let c = c.clone();
                async move {
                    let res = tokio::task::spawn_blocking(move || {
                        let r = c.$f(req);
                        c.metrics.count($name, r.is_ok());
                        c.metrics.refresh(&c.endpoints);
                        r
                    })
                    .await
                    .map_err(|e| api_error(crate::api::CODE_INTERNAL, e.to_string()))?;
                    res
                }
            });
        }};
    }
    method!(veil_api::method::CNI_ADD, AddRequest, add);
    method!(veil_api::method::CNI_COMMIT, CommitRequest, commit);
    method!(veil_api::method::CNI_DEL, DelRequest, del);
    method!(veil_api::method::CNI_CHECK, CheckRequest, check);
    method!(veil_api::method::CNI_GC, GcRequest, gc);
    let c = cni.clone();
    api.register(veil_api::method::CNI_STATUS, move |_: serde_json::Value| {
        let c = c.clone();
        async move { Ok::<_, ApiError>(c.status()) }
    });
}

/// What `status` answers about the node.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// Underlay address.
    pub address: String,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// Pod MTU.
    pub mtu: u32,
    /// Ready.
    pub ready: bool,
    /// Endpoints.
    pub endpoints: Vec<EndpointStatus>,
    /// Problems the datastore reported.
    pub datastore_errors: Vec<String>,
}

/// One endpoint in `status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// `namespace/name` or container ID.
    pub pod: String,
    /// Addresses.
    pub ips: Vec<String>,
    /// Host veth.
    pub host_ifname: String,
    /// pending / ready.
    pub state: String,
}

/// Keeps local endpoints' labels and published records in line with the datastore.
async fn resync(ctx: NodeContext) {
    let mut rx = ctx.snapshots.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        let snap = rx.borrow_and_update().clone();
        for ep in ctx.endpoints.list() {
            if let (Some(ns), Some(name)) = (&ep.pod_namespace, &ep.pod_name) {
                if let Some(p) = snap.pod(ns, name) {
                    ctx.endpoints.set_labels(ns, name, &p.labels);
                }
            }
            if ep.state == EndpointState::Ready {
                let published = snap.endpoints.iter().any(|r| {
                    r.node == ctx.config.node_name
                        && r.container_id == ep.container_id
                        && r.ifname == ep.ifname
                        && r.ips == ep.ips
                });
                if !published {
                    let rec = EndpointRecord {
                        node: ctx.config.node_name.clone(),
                        container_id: ep.container_id.clone(),
                        ifname: ep.ifname.clone(),
                        pod_namespace: ep.pod_namespace.clone(),
                        pod_name: ep.pod_name.clone(),
                        ips: ep.ips.clone(),
                    };
                    let _ = ctx.datastore.put_endpoint(&rec);
                }
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

fn enable_forwarding(config: &Config) {
    let path = if config.pod_cidr.is_ipv4() {
        "/proc/sys/net/ipv4/ip_forward"
    } else {
        "/proc/sys/net/ipv6/conf/all/forwarding"
    };
    if let Err(e) = std::fs::write(path, "1") {
        tracing::warn!(error = %e, path, "enabling forwarding");
    }
}

/// Starts the daemon and runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), StartError> {
    let config = Arc::new(config);
    let cni_conf = crate::cni_install::CniConf::prepare(&config);
    let endpoints = Arc::new(EndpointTable::open(&config.state_dir, config.pod_cidr)?);
    Nft.apply(&render_base(&BaseFilter {
        underlay_interface: config.underlay_interface.clone(),
        cluster_cidr: config.cluster_cidr,
        pod_cidr: config.pod_cidr,
    }))?;
    enable_forwarding(&config);

    let datastore: SharedDatastore = Arc::new(LocalDatastore::open(&config.datastore_dir)?);
    // Keep annotations other parts published earlier (e.g. the WireGuard key).
    let previous = datastore
        .snapshot()
        .nodes
        .into_iter()
        .find(|n| n.name == config.node_name)
        .map(|n| n.annotations)
        .unwrap_or_default();
    datastore.put_node(&node_record(&config, previous))?;
    let snapshots = watch(datastore.clone(), Duration::from_millis(500));

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = NodeMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    metrics.refresh(&endpoints);
    let ctx = NodeContext {
        config: config.clone(),
        datastore: datastore.clone(),
        snapshots: snapshots.clone(),
        endpoints: endpoints.clone(),
        metrics: Arc::new(Mutex::new(registry)),
        api: ApiRegistry::default(),
        routes: Arc::new(Mutex::new(Vec::new())),
        shutdown: shutdown_rx,
    };
    let mtu = pod_mtu(&config);
    let cni = Arc::new(Cni {
        config: config.clone(),
        datastore: datastore.clone(),
        endpoints: endpoints.clone(),
        snapshots: snapshots.clone(),
        ready: ready.clone(),
        metrics,
        mtu,
    });
    register_cni(&ctx.api, cni);
    register_status(&ctx, ready.clone(), mtu);

    // Parts started here register their methods, metrics and routes on ctx.
    let _wireguard = crate::wireguard::start(ctx.clone())
        .await
        .map_err(|e| StartError::Part {
            part: "wireguard",
            reason: e.to_string(),
        })?;
    if let Err(e) = crate::flows::start(&ctx) {
        tracing::warn!(error = %e, "flow collector not started: no flows nor graph on this node");
    }

    tokio::spawn(resync(ctx.clone()));

    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| StartError::Io {
            what: format!("HTTP listener {}", config.http_listen),
            source,
        })?;
    let app = crate::http::router(ctx.clone(), ready.clone());
    tokio::spawn(async move {
        if let Err(e) = crate::http::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });

    let api_server = ctx.api.clone();
    let socket = config.socket.clone();
    // Bind before announcing readiness so a client never races the socket.
    let serve = tokio::spawn(async move { api_server.serve(&socket).await });
    ready.store(true, Ordering::SeqCst);
    if let Some(c) = &cni_conf {
        c.install().map_err(|e| StartError::Part {
            part: "CNI configuration",
            reason: e.to_string(),
        })?;
    }
    tracing::info!(
        node = %config.node_name,
        pod_cidr = %config.pod_cidr,
        socket = %config.socket.display(),
        http = %config.http_listen,
        endpoints = endpoints.list().len(),
        "veild ready"
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| StartError::Io {
            what: "SIGTERM handler".into(),
            source,
        })?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        r = serve => {
            let msg = match r {
                Ok(Ok(())) => "stopped".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            return Err(StartError::Io {
                what: format!("API socket {}", config.socket.display()),
                source: std::io::Error::other(msg),
            });
        }
    }
    tracing::info!("veild stopping");
    // First: the kubelet must stop sending pods here before the socket goes.
    if let Some(c) = &cni_conf {
        c.remove();
    }
    let _ = shutdown_tx.send(true);
    // Give parts a moment to stop; kernel state (links, routes, filter) stays.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = std::fs::remove_file(&config.socket);
    if config.uninstall_on_exit {
        if let Err(e) = crate::cni_install::uninstall_kernel_state().await {
            tracing::error!(error = %e, "uninstall on exit");
        }
    }
    Ok(())
}

fn register_status(ctx: &NodeContext, ready: Arc<AtomicBool>, mtu: u32) {
    let c = ctx.clone();
    ctx.api
        .register("node.status", move |_: serde_json::Value| {
            let c = c.clone();
            let ready = ready.clone();
            async move {
                let snap = c.snapshots.borrow().clone();
                Ok::<_, ApiError>(NodeStatus {
                    node: c.config.node_name.clone(),
                    address: c.config.node_address.to_string(),
                    pod_cidr: c.config.pod_cidr.to_string(),
                    mtu,
                    ready: ready.load(Ordering::SeqCst),
                    endpoints: c
                        .endpoints
                        .list()
                        .into_iter()
                        .map(|e| EndpointStatus {
                            pod: e.display_name(),
                            ips: e.ips.iter().map(|i| i.ip().to_string()).collect(),
                            host_ifname: e.host_ifname.clone(),
                            state: match e.state {
                                EndpointState::Pending => "pending".into(),
                                EndpointState::Ready => "ready".into(),
                            },
                        })
                        .collect(),
                    datastore_errors: snap.errors.clone(),
                })
            }
        });
}
