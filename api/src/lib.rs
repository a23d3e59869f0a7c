//! veil-api: the wire protocol of `veild`'s unix socket (`/run/veil/veild.sock`)
//! and its one client.
//!
//! One request per connection: the client writes one JSON [`Request`] followed by
//! a newline, the daemon answers with one JSON [`Reply`] followed by a newline and
//! closes. The CNI plugin, `veilctl` and the end-to-end tests all speak it through
//! [`call`]. Every method's name is a constant in [`method`] (written nowhere
//! else), and every method's parameter and answer types are defined here
//! ([`cni`], [`node`], [`policy`], [`wireguard`], [`flows`]), so that the daemon and its
//! clients cannot disagree on a shape.
//!
//! What it does not do: serve the socket (that is `veild`'s `ApiRegistry`), or
//! define the CNI spec's own result objects (the plugin's).

pub mod client;
pub mod cni;
pub mod code;
pub mod flows;
pub mod method;
pub mod node;
pub mod policy;
pub mod wireguard;

use serde::{Deserialize, Serialize};

pub use client::{call, CallError};
pub use cni::{
    AddReply, AddRequest, Attachment, CheckRequest, CommitRequest, DelReply, DelRequest, GcReply,
    GcRequest, IpamMode, StatusReply,
};
pub use flows::{FlowFilter, FlowPage, GraphParams, GraphReply, HealthReport};
pub use node::{EndpointStatus, Issue, NodeStatus};
pub use policy::{PolicyEntry, PolicyList, TierEntry};
pub use wireguard::{PeerStatus, Rotated, Status as WireguardStatus};

/// Default path of the daemon's socket.
pub const DEFAULT_SOCKET: &str = "/run/veil/veild.sock";

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Method name, one of [`method`].
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
