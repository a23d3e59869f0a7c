//! veil-daemon: the node daemon `veild` and the CLI `veilctl`.
//!
//! `veild` owns the node's pod CIDR, IP allocation and endpoint table, serves the
//! CNI plugin and `veilctl` on a unix socket, publishes the node to the datastore,
//! keeps the node's kernel state through `dataplane` (the fail-closed `inet veil` table first), runs the WireGuard datapath
//! and the flow collector, and serves `/metrics`, `/healthz`, `/readyz` and the
//! graph API over HTTP. The data flow: `datastore` (watch → keyed store) →
//! `controller` (pure: WireGuard peers, the policy program compiled with
//! `veil-policy`) → the parts that apply it. It does not evaluate policy
//! itself: that is `veil-policy`.

pub mod api;
pub mod cni_install;
pub mod config;
pub mod context;
pub mod controller;
pub mod dataplane;
pub mod datastore;
pub mod dns;
pub mod endpoints;
pub mod flows;
pub mod fsutil;
pub mod http;
pub mod ipam;
pub mod l7;
pub mod node;
pub mod wireguard;
