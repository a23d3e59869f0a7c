//! The daemon's start-up sequence (`run`), split by concern:
//! [`cni`] (the CNI methods), [`status`] (`node.status`), [`policy_api`]
//! (`policy.list` and the policy gauges), [`sync`]
//! (datastore → store → controller → desired state).
//!
//! Order: open the endpoint table (state survives restarts), install the base
//! packet filter (fail closed before anything else), enable forwarding, watch
//! the datastore (initial listing, controller), publish the node record,
//! register the socket methods, start the parts (WireGuard, flows), serve
//! HTTP, mark ready, serve the socket.

mod cni;
mod policy_api;
pub mod policy_sync;
mod status;
pub mod sync;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::api::ApiRegistry;
use crate::config::{Config, DatastoreChoice, WG_OVERHEAD};
use crate::context::NodeContext;
use crate::dataplane::nftables::{BaseFilter, DesiredTable, FilterError, FlowLogging};
use crate::dataplane::Filter;
use crate::datastore::local::LocalDatastore;
use crate::datastore::{DatastoreError, NodeRecord, SharedDatastore};
use crate::endpoints::{EndpointError, EndpointTable};

pub use cni::POD_GATEWAY_V4;
pub use status::{EndpointStatus, NodeStatus};

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
    reap_pending(&endpoints)?;
    // Watch the datastore: its initial listing is in when `start` returns.
    let datastore: SharedDatastore = match &config.datastore {
        DatastoreChoice::Local => {
            // The datastore names every pod: a directory veild creates is the
            // owner's only (an existing one, maybe shared with the lab, is left
            // as it is).
            crate::fsutil::create_private_dir(
                &config.datastore_dir,
                crate::endpoints::STATE_DIR_MODE,
            )
            .map_err(|source| StartError::Io {
                what: format!("datastore directory {}", config.datastore_dir.display()),
                source,
            })?;
            Arc::new(LocalDatastore::open(&config.datastore_dir)?)
        }
        DatastoreChoice::Kube(k) => {
            let client = crate::datastore::kube::client(k.kubeconfig.as_deref())
                .await
                .map_err(DatastoreError::from)?;
            Arc::new(crate::datastore::kube::KubeDatastore::new(
                client,
                &config.node_name,
                &k.lease_namespace,
            ))
        }
    };
    let endpoints_changed = Arc::new(tokio::sync::Notify::new());
    let published = sync::start(
        &datastore,
        &config.node_name,
        endpoints.clone(),
        endpoints_changed.clone(),
    )
    .await?;
    // The table (fail-closed base and the policy in force) goes in before
    // anything else is served: with the datastore's initial listing in, so
    // that a restart replaces the kernel's previous table with the same
    // policy, never with an open one (until then the old table stays).
    let initial = published.desired.borrow().clone();
    let rendered = policy_sync::render_desired(&initial);
    let mut table = DesiredTable::new(BaseFilter {
        underlay_interface: config.underlay_interface.clone(),
        cluster_cidr: config.cluster_cidr,
        pod_cidr: config.pod_cidr,
    });
    table.policy = rendered.objects();
    table.host = Some(crate::dataplane::nftables::host::HostProtection {
        pod_cidr: config.pod_cidr,
        tcp_ports: vec![config.http_listen.port()],
        udp_ports: crate::wireguard::lanes::ports(config.wireguard_port),
    });
    let filter = Filter::install(table)?;
    let (applied_tx, applied_rx) =
        tokio::sync::watch::channel(Arc::new(policy_sync::AppliedPolicy {
            generation: initial.generation,
            endpoints: policy_sync::dispatched(&rendered),
            error: None,
        }));
    let (prefixes_tx, prefixes_rx) =
        tokio::sync::watch::channel(Arc::new(rendered.prefixes.clone()));
    enable_forwarding(&config);
    let mut snapshots = published.snapshots.clone();
    publish_node(&datastore, &config, &mut snapshots).await?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = cni::NodeMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(filter.counters()));
    metrics.refresh(&endpoints);
    let ctx = NodeContext {
        config: config.clone(),
        datastore: datastore.clone(),
        snapshots: snapshots.clone(),
        desired: published.desired.clone(),
        policy_applied: applied_rx.clone(),
        log_prefixes: prefixes_rx,
        endpoints: endpoints.clone(),
        metrics: Arc::new(Mutex::new(registry)),
        api: ApiRegistry::default(),
        routes: Arc::new(Mutex::new(Vec::new())),
        shutdown: shutdown_rx,
    };
    let mtu = pod_mtu(&config);
    let cni = Arc::new(cni::Cni {
        config: config.clone(),
        datastore: datastore.clone(),
        endpoints: endpoints.clone(),
        snapshots: snapshots.clone(),
        ready: ready.clone(),
        metrics,
        mtu,
        endpoints_changed,
        applied: applied_rx,
    });
    cni::register_cni(&ctx.api, cni);
    status::register_status(&ctx, published.desired.clone(), ready.clone(), mtu);
    policy_api::register(&ctx);

    // Parts started here register their methods, metrics and routes on ctx.
    let _wireguard = crate::wireguard::start(ctx.clone())
        .await
        .map_err(|e| StartError::Part {
            part: "wireguard",
            reason: e.to_string(),
        })?;
    let mut flows = None;
    match crate::flows::start(&ctx) {
        Ok(h) if h.track_connections => {
            flows = Some(h.flows.clone());
            let flow_logging = Some(FlowLogging {
                dns_nflog_group: crate::flows::dns::NFLOG_GROUP,
            });
            if let Err(e) = filter.update(|d| d.flow_logging = flow_logging) {
                tracing::warn!(error = %e, "flow-logging rules not installed yet: flows may not be seen");
            }
        }
        Ok(h) => flows = Some(h.flows),
        Err(e) => {
            tracing::warn!(error = %e, "flow collector not started: no flows nor graph on this node")
        }
    }
    // The DNS proxy (domains allowlists); without it, pods that domain rules
    // select get no DNS (the steering fails closed).
    let dns = match crate::dns::start(&ctx, flows.clone()).await {
        Ok(p) => {
            // Flows from proxied pods are named by the name that allowed them.
            if let Some(f) = &flows {
                f.set_domain_names(p.clone());
            }
            Some(p)
        }
        Err(e) => {
            tracing::error!(error = %e, "DNS proxy not started: DNS of pods with domain rules fails");
            None
        }
    };
    // The L7 proxy (HTTP rules); without it steered connections are refused.
    // It evaluates `domains` peers by the DNS proxy's allowances.
    let names = dns.map(|p| p as Arc<dyn crate::l7::decide::DomainNames>);
    if let Err(e) = crate::l7::start(&ctx, flows, names, crate::l7::Limits::default()).await {
        tracing::error!(error = %e, "L7 proxy not started: connections decided by http rules are refused");
    }
    tokio::spawn(policy_sync::run(
        filter.clone(),
        published.desired.clone(),
        applied_tx,
        prefixes_tx,
        ctx.shutdown.clone(),
    ));
    tokio::spawn(filter.resync_loop(config.dataplane_resync, ctx.shutdown.clone()));

    tokio::spawn(sync::resync(ctx.clone()));

    let listeners = crate::http::listeners(config.http_listen, endpoints.node_tunnel_address())
        .map_err(|source| StartError::Io {
            what: format!("HTTP listener {}", config.http_listen),
            source,
        })?;
    let app = crate::http::router(ctx.clone(), ready.clone());
    for listener in listeners {
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve(listener, app).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
    }

    let api_server = ctx.api.clone();
    let socket = config.socket.clone();
    // Bind before announcing readiness so a client never races the socket.
    let socket_opts = crate::api::SocketOptions {
        group: config.socket_group,
        ..crate::api::SocketOptions::default()
    };
    let listener =
        crate::api::bind_socket(&socket, &socket_opts).map_err(|source| StartError::Io {
            what: format!("API socket {}", socket.display()),
            source,
        })?;
    let serve = tokio::spawn(async move { api_server.serve_listener(listener, socket_opts).await });
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

/// How long an endpoint may stay pending (reserved, not committed) before a
/// start-up reaps it even though its host link exists: far longer than any
/// ADD (the plugin's calls time out after seconds).
pub const PENDING_MAX_AGE: Duration = Duration::from_secs(300);

/// Releases the pending endpoints a crash left (see
/// [`EndpointTable::reap_pending`]); a host link's existence is asked of the
/// kernel in veild's namespace.
fn reap_pending(endpoints: &EndpointTable) -> Result<(), StartError> {
    let reaped = endpoints.reap_pending(
        |name| nix::net::if_::if_nametoindex(name).is_ok(),
        PENDING_MAX_AGE,
    )?;
    for ep in &reaped {
        tracing::warn!(
            pod = %ep.display_name(),
            container = %ep.container_id,
            host.ifname = %ep.host_ifname,
            ips = %ep.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
            "pending endpoint left by a crash: reaped, its addresses released"
        );
    }
    Ok(())
}

/// Publishes this node's record, keeping the annotations other parts
/// published earlier (e.g. the WireGuard key), and waits until the watch
/// shows it, so that the parts started next see their own node.
async fn publish_node(
    datastore: &SharedDatastore,
    config: &Config,
    snapshots: &mut tokio::sync::watch::Receiver<Arc<crate::datastore::Snapshot>>,
) -> Result<(), StartError> {
    let previous = snapshots
        .borrow()
        .node(&config.node_name)
        .map(|n| n.annotations.clone())
        .unwrap_or_default();
    let rec = node_record(config, previous);
    datastore.put_node(&rec)?;
    let seen = tokio::time::timeout(
        Duration::from_secs(5),
        snapshots.wait_for(|s| s.node(&config.node_name) == Some(&rec)),
    )
    .await;
    if !matches!(seen, Ok(Ok(_))) {
        tracing::warn!(node = %config.node_name, "own node record not seen in the datastore watch after 5 s");
    }
    Ok(())
}
