//! veil-daemon: the node daemon `veild` and the CLI `veilctl`.
//!
//! `veild` owns the node's pod CIDR, IP allocation and endpoint table, serves the
//! CNI plugin and `veilctl` on a unix socket, publishes the node to the datastore,
//! keeps the node's base packet filter (fail-closed), runs the WireGuard datapath
//! and the flow collector, and serves `/metrics`, `/healthz`, `/readyz` and the
//! graph API over HTTP. It does not decide policy: that is `veil-policy`.

pub mod api;
pub mod config;
pub mod context;
pub mod dataplane;
pub mod datastore;
pub mod endpoints;
pub mod filter;
pub mod flows;
pub mod http;
pub mod ipam;
pub mod netns;
pub mod node;
pub mod wireguard;
