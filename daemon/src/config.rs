//! `veild` configuration: a YAML file plus flags, each flag also read from a
//! `VEIL_*` environment variable. Flags and variables override the file; the file
//! overrides the defaults. Every problem names the field.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::Parser;
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::flows::resolve::NamedNetwork;

/// Default HTTP listen address.
pub const DEFAULT_HTTP: &str = "0.0.0.0:9590";
/// Default WireGuard UDP port.
pub const DEFAULT_WG_PORT: u16 = 51820;
/// Name of the WireGuard TUN device.
pub const WG_DEVICE: &str = "veil-wg";
/// WireGuard + outer IPv6/UDP overhead subtracted from the underlay MTU.
pub const WG_OVERHEAD: u32 = 80;

/// Command-line flags of `veild` (each also from `VEIL_<NAME>`).
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "veild", version, about = "Veil node daemon")]
pub struct Flags {
    /// Configuration file (YAML).
    #[arg(long, env = "VEIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's name.
    #[arg(long, env = "VEIL_NODE_NAME")]
    pub node_name: Option<String>,
    /// This node's underlay address.
    #[arg(long, env = "VEIL_NODE_ADDRESS")]
    pub node_address: Option<IpAddr>,
    /// The underlay interface (where encrypted traffic leaves).
    #[arg(long, env = "VEIL_UNDERLAY_INTERFACE")]
    pub underlay_interface: Option<String>,
    /// This node's pod CIDR.
    #[arg(long, env = "VEIL_POD_CIDR")]
    pub pod_cidr: Option<IpNetwork>,
    /// The whole cluster's pod CIDR.
    #[arg(long, env = "VEIL_CLUSTER_CIDR")]
    pub cluster_cidr: Option<IpNetwork>,
    /// Unix socket served to the CNI plugin and veilctl.
    #[arg(long, env = "VEIL_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Group owning the socket (name or number; default: root's). Its
    /// members may call veild (the socket is 0660).
    #[arg(long, env = "VEIL_SOCKET_GROUP")]
    pub socket_group: Option<String>,
    /// State directory (allocations, endpoints, keys).
    #[arg(long, env = "VEIL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Datastore: `local` or `kube` (the Kubernetes API).
    #[arg(long, env = "VEIL_DATASTORE")]
    pub datastore: Option<String>,
    /// Kubeconfig file for `--datastore kube` (default: in-cluster, or KUBECONFIG).
    #[arg(long, env = "VEIL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the Lease electing the policy status writer
    /// (`--datastore kube`; default: POD_NAMESPACE, else kube-system).
    #[arg(long, env = "VEIL_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Directory of the local datastore.
    #[arg(long, env = "VEIL_DATASTORE_DIR")]
    pub datastore_dir: Option<PathBuf>,
    /// HTTP listen address (/metrics, /healthz, /readyz, graph API).
    #[arg(long, env = "VEIL_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Networks whose clients may read the private HTTP routes (flows,
    /// graph, UI), besides the peers over WireGuard (comma-separated; default
    /// `127.0.0.0/8,::1/128`; `none` for nobody).
    #[arg(long, env = "VEIL_HTTP_PRIVATE_NETWORKS", value_delimiter = ',')]
    pub http_private_networks: Vec<String>,
    /// Underlay MTU (default: read from the underlay interface).
    #[arg(long, env = "VEIL_UNDERLAY_MTU")]
    pub underlay_mtu: Option<u32>,
    /// WireGuard listen port.
    #[arg(long, env = "VEIL_WIREGUARD_PORT")]
    pub wireguard_port: Option<u16>,
    /// Key rotation interval in seconds (0 = never).
    #[arg(long, env = "VEIL_WIREGUARD_ROTATION_SECONDS")]
    pub wireguard_rotation_seconds: Option<u64>,
    /// Directory of the WireGuard UAPI socket.
    #[arg(long, env = "VEIL_WIREGUARD_SOCKET_DIR")]
    pub wireguard_socket_dir: Option<PathBuf>,
    /// Seconds between reads of the kernel's dataplane state that repair
    /// drift (default 10).
    #[arg(long, env = "VEIL_DATAPLANE_RESYNC_SECONDS")]
    pub dataplane_resync_seconds: Option<u64>,
    /// Log format: plain or json.
    #[arg(long, env = "VEIL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Node label `key=value` (repeatable).
    #[arg(long = "node-label", env = "VEIL_NODE_LABELS", value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Flow collector on or off (off: no flows, graph nor flow metrics).
    #[arg(long, env = "VEIL_FLOWS", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "on")]
    pub flows: Option<bool>,
    /// Seconds between two reads of the whole conntrack table.
    #[arg(long, env = "VEIL_FLOW_DUMP_SECONDS")]
    pub flow_dump_seconds: Option<f64>,
    /// Named external networks, `NAME=CIDR` (comma-separated or repeated).
    #[arg(
        long = "external-network",
        env = "VEIL_EXTERNAL_NETWORKS",
        value_delimiter = ','
    )]
    pub external_networks: Vec<String>,
    /// Most edges the node's service graph keeps.
    #[arg(long, env = "VEIL_FLOW_MAX_EDGES")]
    pub flow_max_edges: Option<usize>,
    /// The daemon owns the machine's initial network namespace (hostNetwork):
    /// enable conntrack accounting and tracking there too.
    #[arg(long, env = "VEIL_FLOW_HOST_NETNS", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub flow_host_netns: Option<bool>,
    /// Turn the TUN offloads (TSO, checksum) and packet coalescing off.
    #[arg(long, env = "VEIL_WG_NO_OFFLOAD", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub wg_no_offload: Option<bool>,
    /// Turn UDP GSO (segmentation offload on send) off.
    #[arg(long, env = "VEIL_WG_NO_GSO", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub wg_no_gso: Option<bool>,
    /// Turn UDP GRO (receive coalescing) off.
    #[arg(long, env = "VEIL_WG_NO_GRO", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub wg_no_gro: Option<bool>,
    /// Turn the coalescing of decrypted packets into TUN super-packets off.
    #[arg(long, env = "VEIL_WG_NO_COALESCE", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub wg_no_coalesce: Option<bool>,
    /// CNI configuration directory (e.g. /etc/cni/net.d): write Veil's conflist
    /// there once ready, remove it on shutdown (default: off).
    #[arg(long, env = "VEIL_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// On shutdown, also remove the nftables table `inet veil` and `veil-wg`
    /// (uninstalling; normally both outlive veild so that the node stays fail-closed).
    #[arg(long, env = "VEIL_UNINSTALL_ON_EXIT")]
    pub uninstall_on_exit: bool,
}

/// The configuration file: the same fields as the flags, camelCase.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    node_name: Option<String>,
    node_address: Option<IpAddr>,
    underlay_interface: Option<String>,
    pod_cidr: Option<IpNetwork>,
    cluster_cidr: Option<IpNetwork>,
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    state_dir: Option<PathBuf>,
    datastore: Option<String>,
    datastore_dir: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    lease_namespace: Option<String>,
    http_listen: Option<SocketAddr>,
    http_private_networks: Option<Vec<String>>,
    underlay_mtu: Option<u32>,
    wireguard_port: Option<u16>,
    wireguard_rotation_seconds: Option<u64>,
    wireguard_socket_dir: Option<PathBuf>,
    log_format: Option<String>,
    #[serde(default)]
    node_labels: BTreeMap<String, String>,
    flows: Option<bool>,
    flow_dump_seconds: Option<f64>,
    #[serde(default)]
    external_networks: Vec<String>,
    flow_max_edges: Option<usize>,
    flow_host_netns: Option<bool>,
    wg_no_offload: Option<bool>,
    wg_no_gso: Option<bool>,
    wg_no_gro: Option<bool>,
    wg_no_coalesce: Option<bool>,
    cni_conf_dir: Option<PathBuf>,
    #[serde(default)]
    uninstall_on_exit: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node name.
    pub node_name: String,
    /// Underlay address.
    pub node_address: IpAddr,
    /// Underlay interface name.
    pub underlay_interface: String,
    /// This node's pod CIDR.
    pub pod_cidr: IpNetwork,
    /// The cluster pod CIDR.
    pub cluster_cidr: IpNetwork,
    /// API socket path.
    pub socket: PathBuf,
    /// Group id owning the socket (`None`: the daemon's group).
    pub socket_group: Option<u32>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Local datastore directory.
    pub datastore_dir: PathBuf,
    /// Which datastore.
    pub datastore: DatastoreChoice,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Networks whose clients may read the private HTTP routes.
    pub http_private_networks: Vec<IpNetwork>,
    /// Underlay MTU, if configured.
    pub underlay_mtu: Option<u32>,
    /// WireGuard port.
    pub wireguard_port: u16,
    /// Key rotation interval.
    pub wireguard_rotation: Option<Duration>,
    /// Directory holding `veil-wg.sock`.
    pub wireguard_socket_dir: PathBuf,
    /// Interval of the dataplane's resync (drift repair).
    pub dataplane_resync: Duration,
    /// Where to install the conflist once ready (`None`: nowhere).
    pub cni_conf_dir: Option<PathBuf>,
    /// Remove the nftables table and `veil-wg` on shutdown.
    pub uninstall_on_exit: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Node labels (kubernetes.io/hostname and kubernetes.io/os are added).
    pub node_labels: BTreeMap<String, String>,
    /// The flow collector's knobs.
    pub flows: FlowConfig,
    /// WireGuard datapath optimisations turned off.
    pub wireguard_tuning: WireguardTuning,
}

/// Where the cluster state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreChoice {
    /// A directory of YAML files (the lab, tests, single host).
    Local,
    /// The Kubernetes API.
    Kube(crate::datastore::kube::KubeSettings),
}

/// The flow collector's knobs (`VEIL_FLOWS`, `VEIL_FLOW_*`, `VEIL_EXTERNAL_NETWORKS`).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowConfig {
    /// Whether the collector runs.
    pub enabled: bool,
    /// How often the whole conntrack table is read.
    pub dump_interval: Duration,
    /// Operator-named external networks.
    pub external_networks: Vec<NamedNetwork>,
    /// Most edges of the node's graph (None: the graph's default).
    pub max_edges: Option<usize>,
    /// Set conntrack accounting and tracking in the initial namespace too.
    pub host_netns: bool,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            enabled: true,
            dump_interval: Duration::from_secs(10),
            external_networks: Vec::new(),
            max_edges: None,
            host_netns: false,
        }
    }
}

/// WireGuard datapath optimisations turned off one by one (benchmarks,
/// kernels that misbehave): `VEIL_WG_NO_OFFLOAD`, `VEIL_WG_NO_GSO`,
/// `VEIL_WG_NO_GRO`, `VEIL_WG_NO_COALESCE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireguardTuning {
    /// No TUN offloads (and hence no coalescing).
    pub no_offload: bool,
    /// No UDP GSO.
    pub no_gso: bool,
    /// No UDP GRO.
    pub no_gro: bool,
    /// No coalescing of decrypted packets.
    pub no_coalesce: bool,
}

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("config file {path}: {source}")]
    Parse {
        /// Path.
        path: String,
        /// YAML error (names the field).
        #[source]
        source: serde_yaml::Error,
    },
    /// A required field is missing.
    #[error("config: {0} is required (flag --{1}, variable {2}, or file field {3})")]
    Missing(&'static str, &'static str, &'static str, &'static str),
    /// A field has a bad value.
    #[error("config: {field}: {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl Config {
    /// Builds the configuration from flags (and the file they name).
    pub fn load(flags: Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                if text.trim().is_empty() {
                    FileConfig::default()
                } else {
                    serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                        path: path.display().to_string(),
                        source,
                    })?
                }
            }
            None => FileConfig::default(),
        };
        Self::merge(flags, file)
    }

    fn merge(f: Flags, c: FileConfig) -> Result<Self, ConfigError> {
        let flows = flow_config(&f, &c)?;
        let node_name = f.node_name.or(c.node_name).ok_or(ConfigError::Missing(
            "node name",
            "node-name",
            "VEIL_NODE_NAME",
            "nodeName",
        ))?;
        if node_name.is_empty()
            || node_name.len() > 253
            || !node_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(ConfigError::Invalid {
                field: "nodeName",
                reason: format!("{node_name:?} is not a valid node name"),
            });
        }
        let node_address = f
            .node_address
            .or(c.node_address)
            .ok_or(ConfigError::Missing(
                "node address",
                "node-address",
                "VEIL_NODE_ADDRESS",
                "nodeAddress",
            ))?;
        let pod_cidr = f.pod_cidr.or(c.pod_cidr).ok_or(ConfigError::Missing(
            "pod CIDR",
            "pod-cidr",
            "VEIL_POD_CIDR",
            "podCIDR",
        ))?;
        let cluster_cidr = f
            .cluster_cidr
            .or(c.cluster_cidr)
            .unwrap_or_else(|| "10.244.0.0/16".parse().expect("literal"));
        if pod_cidr.network() != pod_cidr.ip() {
            return Err(ConfigError::Invalid {
                field: "podCIDR",
                reason: format!("{pod_cidr} has host bits set"),
            });
        }
        if pod_cidr.is_ipv4() && pod_cidr.prefix() > 29 {
            return Err(ConfigError::Invalid {
                field: "podCIDR",
                reason: format!("{pod_cidr} is too small (at most /29)"),
            });
        }
        if !(cluster_cidr.contains(pod_cidr.network())
            && cluster_cidr.prefix() <= pod_cidr.prefix())
        {
            return Err(ConfigError::Invalid {
                field: "podCIDR",
                reason: format!("{pod_cidr} is not inside clusterCIDR {cluster_cidr}"),
            });
        }
        let datastore = f
            .datastore
            .or(c.datastore)
            .unwrap_or_else(|| "local".into());
        let datastore = match datastore.as_str() {
            "local" => DatastoreChoice::Local,
            "kube" => DatastoreChoice::Kube(crate::datastore::kube::KubeSettings {
                kubeconfig: f.kubeconfig.or(c.kubeconfig),
                lease_namespace: f
                    .lease_namespace
                    .or(c.lease_namespace)
                    .or_else(|| std::env::var("POD_NAMESPACE").ok())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "kube-system".into()),
            }),
            other => {
                return Err(ConfigError::Invalid {
                    field: "datastore",
                    reason: format!("{other:?} is not supported (supported: local, kube)"),
                })
            }
        };
        let log_format = match f.log_format.or(c.log_format).as_deref().unwrap_or("plain") {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::Invalid {
                    field: "logFormat",
                    reason: format!("{other:?} is not plain or json"),
                })
            }
        };
        let underlay_mtu = f.underlay_mtu.or(c.underlay_mtu);
        if let Some(m) = underlay_mtu {
            if !(1280..=65535).contains(&m) {
                return Err(ConfigError::Invalid {
                    field: "underlayMtu",
                    reason: format!("{m} is outside 1280..=65535"),
                });
            }
        }
        let mut node_labels = c.node_labels;
        for kv in f.node_labels {
            let (k, v) = kv.split_once('=').ok_or_else(|| ConfigError::Invalid {
                field: "nodeLabels",
                reason: format!("{kv:?} is not key=value"),
            })?;
            node_labels.insert(k.to_string(), v.to_string());
        }
        node_labels.insert("kubernetes.io/hostname".into(), node_name.clone());
        node_labels.insert("kubernetes.io/os".into(), "linux".into());
        let state_dir = f
            .state_dir
            .or(c.state_dir)
            .unwrap_or_else(|| "/var/lib/veil".into());
        let rotation = f
            .wireguard_rotation_seconds
            .or(c.wireguard_rotation_seconds)
            .unwrap_or(0);
        let resync = f.dataplane_resync_seconds.unwrap_or(10);
        if resync == 0 {
            return Err(ConfigError::Invalid {
                field: "dataplaneResyncSeconds",
                reason: "0 is not a positive number of seconds".into(),
            });
        }
        let wireguard_tuning = WireguardTuning {
            no_offload: f.wg_no_offload.or(c.wg_no_offload).unwrap_or(false),
            no_gso: f.wg_no_gso.or(c.wg_no_gso).unwrap_or(false),
            no_gro: f.wg_no_gro.or(c.wg_no_gro).unwrap_or(false),
            no_coalesce: f.wg_no_coalesce.or(c.wg_no_coalesce).unwrap_or(false),
        };
        let socket_group = match f.socket_group.or(c.socket_group) {
            None => None,
            Some(g) => Some(group_id(&g)?),
        };
        let http_private_networks = private_networks(if f.http_private_networks.is_empty() {
            c.http_private_networks.as_deref()
        } else {
            Some(&f.http_private_networks)
        })?;
        Ok(Config {
            http_private_networks,
            socket_group,
            datastore,
            dataplane_resync: Duration::from_secs(resync),
            flows,
            wireguard_tuning,
            node_address,
            underlay_interface: f
                .underlay_interface
                .or(c.underlay_interface)
                .unwrap_or_else(|| "eth0".into()),
            pod_cidr,
            cluster_cidr,
            socket: f
                .socket
                .or(c.socket)
                .unwrap_or_else(|| veil_api::DEFAULT_SOCKET.into()),
            datastore_dir: f
                .datastore_dir
                .or(c.datastore_dir)
                .unwrap_or_else(|| state_dir.join("datastore")),
            state_dir,
            http_listen: f
                .http_listen
                .or(c.http_listen)
                .unwrap_or_else(|| DEFAULT_HTTP.parse().expect("literal")),
            underlay_mtu,
            wireguard_port: f
                .wireguard_port
                .or(c.wireguard_port)
                .unwrap_or(DEFAULT_WG_PORT),
            wireguard_rotation: (rotation > 0).then(|| Duration::from_secs(rotation)),
            wireguard_socket_dir: f
                .wireguard_socket_dir
                .or(c.wireguard_socket_dir)
                .unwrap_or_else(|| "/var/run/wireguard".into()),
            log_format,
            node_labels,
            node_name,
            cni_conf_dir: f.cni_conf_dir.or(c.cni_conf_dir),
            uninstall_on_exit: f.uninstall_on_exit || c.uninstall_on_exit,
        })
    }
}

/// Default of `httpPrivateNetworks`: the node's own namespace.
pub const DEFAULT_PRIVATE_NETWORKS: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// `httpPrivateNetworks`: CIDRs, or `none`; the default when not given.
fn private_networks(given: Option<&[String]>) -> Result<Vec<IpNetwork>, ConfigError> {
    let Some(given) = given else {
        return Ok(DEFAULT_PRIVATE_NETWORKS
            .iter()
            .map(|n| n.parse().expect("literal"))
            .collect());
    };
    given
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && *s != "none")
        .map(|s| {
            s.parse().map_err(|e| ConfigError::Invalid {
                field: "httpPrivateNetworks (VEIL_HTTP_PRIVATE_NETWORKS)",
                reason: format!("{s:?} is not a CIDR: {e}"),
            })
        })
        .collect()
}

/// The id of group `g` (a name, or a number).
fn group_id(g: &str) -> Result<u32, ConfigError> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(gr)) => Ok(gr.gid.as_raw()),
        Ok(None) => Err(ConfigError::Invalid {
            field: "socketGroup",
            reason: format!("no group named {g:?}"),
        }),
        Err(e) => Err(ConfigError::Invalid {
            field: "socketGroup",
            reason: format!("looking up group {g:?}: {e}"),
        }),
    }
}

/// The flow collector's knobs from flags and file, each checked.
fn flow_config(f: &Flags, c: &FileConfig) -> Result<FlowConfig, ConfigError> {
    let mut out = FlowConfig {
        enabled: f.flows.or(c.flows).unwrap_or(true),
        host_netns: f.flow_host_netns.or(c.flow_host_netns).unwrap_or(false),
        ..FlowConfig::default()
    };
    if let Some(s) = f.flow_dump_seconds.or(c.flow_dump_seconds) {
        if !(s > 0.0 && s < 86_400.0) {
            return Err(ConfigError::Invalid {
                field: "flowDumpSeconds (VEIL_FLOW_DUMP_SECONDS)",
                reason: format!("{s}: expected seconds between 0 and 86400"),
            });
        }
        out.dump_interval = Duration::from_secs_f64(s);
    }
    let networks = if f.external_networks.is_empty() {
        &c.external_networks
    } else {
        &f.external_networks
    };
    for part in networks.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        out.external_networks.push(part.parse().map_err(
            |e: crate::flows::resolve::BadNamedNetwork| ConfigError::Invalid {
                field: "externalNetworks (VEIL_EXTERNAL_NETWORKS)",
                reason: e.to_string(),
            },
        )?);
    }
    if let Some(n) = f.flow_max_edges.or(c.flow_max_edges) {
        if n == 0 {
            return Err(ConfigError::Invalid {
                field: "flowMaxEdges (VEIL_FLOW_MAX_EDGES)",
                reason: "0: expected a positive number".into(),
            });
        }
        out.max_edges = Some(n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
