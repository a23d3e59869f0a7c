//! The wire protocol of `veild`'s unix socket (`/run/veil/veild.sock`).
//!
//! One request per connection: the client writes one JSON [`Request`] followed by
//! a newline, the daemon answers with one JSON [`Reply`] followed by a newline and
//! closes. The CNI plugin and `veilctl` both speak it. Methods are strings so that
//! the daemon can grow new ones (`status`, `graph`, `flows`, ...) without the CNI
//! plugin knowing their types; the CNI methods' parameter and result types are
//! defined here.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Default path of the daemon's socket.
pub const DEFAULT_SOCKET: &str = "/run/veil/veild.sock";

/// Method names used by the CNI plugin.
pub mod method {
    /// [`super::AddRequest`] → [`super::AddReply`]
    pub const CNI_ADD: &str = "cni.add";
    /// [`super::CommitRequest`] → `null`: the plugin wired the pod; the endpoint is live.
    pub const CNI_COMMIT: &str = "cni.commit";
    /// [`super::DelRequest`] → [`super::DelReply`]
    pub const CNI_DEL: &str = "cni.del";
    /// [`super::CheckRequest`] → [`super::AddReply`] (what the daemon recorded)
    pub const CNI_CHECK: &str = "cni.check";
    /// `null` → [`super::StatusReply`]
    pub const CNI_STATUS: &str = "cni.status";
    /// [`super::GcRequest`] → [`super::GcReply`]
    pub const CNI_GC: &str = "cni.gc";
}

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Method name, e.g. `cni.add`.
    pub method: String,
    /// Method parameters (a JSON value whose type depends on the method).
    #[serde(default)]
    pub params: serde_json::Value,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    /// Success, with the method's result.
    Ok(serde_json::Value),
    /// Failure. `code` uses the CNI error codes where one fits (7 invalid config,
    /// 11 try again later, 50 not available) and 100+ for Veil's own.
    Error(ApiError),
}

/// An error answered by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}")]
pub struct ApiError {
    /// CNI-style error code.
    pub code: u32,
    /// One-line message naming the thing and the reason.
    pub msg: String,
    /// Optional longer details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// Which IP addresses the pod gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum IpamMode {
    /// The daemon allocates from the node's pod CIDR.
    Daemon,
    /// A delegated IPAM plugin already allocated these; the daemon only records them.
    Delegated {
        /// Addresses from the IPAM plugin's result.
        ips: Vec<IpNetwork>,
    },
}

/// `cni.add`: reserve addresses and record the endpoint (pending until `cni.commit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRequest {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS (a path).
    pub netns: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// The host-side veth name the plugin will create.
    pub host_ifname: String,
    /// K8S_POD_NAMESPACE (or the runtime's equivalent), when known.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// K8S_POD_NAME, when known.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// Network name from the CNI config.
    #[serde(default)]
    pub network: String,
    /// Who allocates.
    pub ipam: IpamMode,
    /// Specific addresses asked for (runtimeConfig `ips`, or CNI_ARGS `IP=`), with
    /// daemon IPAM only; the add fails when one is taken or outside the node's CIDR.
    #[serde(default)]
    pub requested_ips: Vec<IpAddr>,
}

/// Answer to `cni.add` and `cni.check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddReply {
    /// The pod's addresses, each as a host prefix (/32 or /128).
    pub ips: Vec<IpNetwork>,
    /// The gateway the pod routes through (link-local, answered by proxy ARP on
    /// the host end of the veth), per address family.
    pub gateways: Vec<IpAddr>,
    /// MTU for the pod's interface.
    pub mtu: u32,
    /// The host-side veth name recorded for the endpoint.
    pub host_ifname: String,
}

/// `cni.commit`: the plugin finished wiring the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

/// `cni.del`: forget the endpoint and release its addresses. Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelRequest {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

/// Answer to `cni.del`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelReply {
    /// Whether the daemon knew the endpoint.
    pub existed: bool,
    /// The host veth recorded for it, so the plugin can remove it.
    #[serde(default)]
    pub host_ifname: Option<String>,
}

/// `cni.check`: what does the daemon know of this attachment?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

/// Answer to `cni.status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Ready to add pods.
    pub ready: bool,
    /// Why not, when not.
    #[serde(default)]
    pub reason: String,
}

/// One attachment, as in `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// `cni.gc`: release every endpoint not in `valid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    /// The attachments to keep.
    pub valid: Vec<Attachment>,
    /// The network being collected (the CNI config's `name`): when not empty,
    /// only endpoints added with this network name are candidates, so that two
    /// networks using Veil on one node do not collect each other's endpoints.
    #[serde(default)]
    pub network: String,
}

/// Answer to `cni.gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReply {
    /// Host veths of the released endpoints (the plugin removes those still present).
    pub removed_host_ifnames: Vec<String>,
    /// The released attachments (the plugin releases their delegated IPAM
    /// allocations with the IPAM plugin's DEL when that plugin has no GC).
    #[serde(default)]
    pub removed: Vec<Attachment>,
}

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The socket could not be reached (daemon down or not yet started).
    #[error("cannot reach veild at {path}: {source}")]
    Unreachable {
        /// Socket path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or timed out mid-call.
    #[error("talking to veild at {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon's answer was not valid JSON of the expected shape.
    #[error("veild at {path} sent an answer that cannot be decoded: {source}")]
    Decode {
        /// Socket path.
        path: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The daemon answered with an error.
    #[error("veild: {0}")]
    Daemon(ApiError),
}

/// Calls `method` on the daemon at `socket` with `params`, blocking, with a timeout.
pub fn call<P: Serialize, R: for<'de> Deserialize<'de>>(
    socket: &Path,
    method: &str,
    params: &P,
    timeout: Duration,
) -> Result<R, CallError> {
    let path = socket.display().to_string();
    let stream = UnixStream::connect(socket).map_err(|source| CallError::Unreachable {
        path: path.clone(),
        source,
    })?;
    let io = |source| CallError::Io {
        path: path.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let req = Request {
        method: method.to_string(),
        params: serde_json::to_value(params).map_err(|source| CallError::Decode {
            path: path.clone(),
            source,
        })?,
    };
    let mut line = serde_json::to_vec(&req).map_err(|source| CallError::Decode {
        path: path.clone(),
        source,
    })?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io)?;
    let reply: Reply = serde_json::from_str(&answer).map_err(|source| CallError::Decode {
        path: path.clone(),
        source,
    })?;
    match reply {
        Reply::Ok(v) => serde_json::from_value(v).map_err(|source| CallError::Decode {
            path: path.clone(),
            source,
        }),
        Reply::Error(e) => Err(CallError::Daemon(e)),
    }
}
