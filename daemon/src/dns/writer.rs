//! How the proxy writes allowances into the kernel's `domains` sets.
//!
//! - [`NetlinkSets`] (what veild uses): one nf_tables netlink batch per call,
//!   in-process ([`crate::dataplane::nftables::netlink`]), acknowledged by
//!   the kernel before the answer is released. Should the socket itself fail
//!   (not a refusal naming the set), it falls back to [`NftSets`] and counts
//!   it in `veil_dns_set_write_fallbacks_total`.
//! - [`NftSets`]: the `nft -f -` command, one transaction per call.
//!
//! It does not decide what to write (see [`super::allow`]).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use prometheus_client::metrics::counter::Counter;

use crate::dataplane::nftables::netlink::{self, concat_key, Elem, NetlinkError, Op, SetOp};
use crate::dataplane::nftables::TABLE;

/// One element of a `domains` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The set.
    pub set: String,
    /// The pod.
    pub pod: Ipv4Addr,
    /// The destination.
    pub addr: Ipv4Addr,
    /// Seconds.
    pub timeout: u32,
}

/// Errors writing the kernel's sets.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// `nft` could not be run.
    #[error("cannot run nft: {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the elements (e.g. the set does not exist yet).
    #[error("nft refused the elements: {0}")]
    Refused(String),
    /// The kernel refused the netlink batch.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Adds elements to the kernel's sets, all or none.
pub trait SetWriter: Send + Sync {
    /// Adds (or extends) `elems` in one transaction.
    fn add(&self, elems: &[Element]) -> Result<(), WriteError>;
}

/// The `nft` command (one transaction per call).
#[derive(Debug, Default)]
pub struct NftSets;

/// The `nft -f` script adding `elems`.
pub fn script(elems: &[Element]) -> String {
    let mut s = String::new();
    for e in elems {
        let _ = writeln!(
            s,
            "add element inet {TABLE} {} {{ {} . {} timeout {}s }}",
            e.set, e.pod, e.addr, e.timeout
        );
    }
    s
}

impl SetWriter for NftSets {
    fn add(&self, elems: &[Element]) -> Result<(), WriteError> {
        if elems.is_empty() {
            return Ok(());
        }
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(WriteError::Spawn)?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(script(elems).as_bytes())
                .map_err(WriteError::Spawn)?;
        }
        let out = child.wait_with_output().map_err(WriteError::Spawn)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(WriteError::Refused(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }
}

/// The set operations adding `elems`: one per set, in first-seen order; keys
/// `pod . destination`, timeouts in milliseconds.
pub fn set_ops(elems: &[Element]) -> Vec<(String, Vec<Elem>)> {
    let mut out: Vec<(String, Vec<Elem>)> = Vec::new();
    for e in elems {
        let el = Elem {
            key: concat_key(&[&e.pod.octets(), &e.addr.octets()]),
            timeout_ms: Some(u64::from(e.timeout) * 1000),
        };
        match out.iter_mut().find(|(s, _)| *s == e.set) {
            Some((_, v)) => v.push(el),
            None => out.push((e.set.clone(), vec![el])),
        }
    }
    out
}

/// The in-process netlink writer, with `nft` as its fallback.
#[derive(Debug, Default)]
pub struct NetlinkSets {
    writer: netlink::SetWriter,
    /// Batches written with `nft` because the netlink writer failed.
    pub fallbacks: Counter,
}

impl SetWriter for NetlinkSets {
    fn add(&self, elems: &[Element]) -> Result<(), WriteError> {
        let groups = set_ops(elems);
        let ops: Vec<SetOp<'_>> = groups
            .iter()
            .map(|(set, es)| SetOp {
                op: Op::Add,
                table: TABLE,
                set,
                elems: es,
            })
            .collect();
        match self.writer.apply(&ops) {
            Ok(()) => Ok(()),
            // The kernel's answer about the set stands; `nft` would get the same.
            Err(
                e @ (NetlinkError::SetMissing { .. }
                | NetlinkError::Full { .. }
                | NetlinkError::Permission { .. }),
            ) => Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, reason = e.label(), "netlink set write failed: falling back to nft");
                self.fallbacks.inc();
                NftSets.add(elems)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn script_adds_each_element_with_its_timeout() {
        let s = script(&[Element {
            set: "d1".into(),
            pod: ip("10.244.0.5"),
            addr: ip("203.0.113.1"),
            timeout: 35,
        }]);
        assert_eq!(
            s,
            "add element inet veil d1 { 10.244.0.5 . 203.0.113.1 timeout 35s }\n"
        );
    }

    #[test]
    fn set_ops_group_by_set_with_pod_then_destination_keys_in_milliseconds() {
        let e = |set: &str, addr: &str| Element {
            set: set.into(),
            pod: ip("10.244.0.5"),
            addr: ip(addr),
            timeout: 35,
        };
        let ops = set_ops(&[
            e("d2", "203.0.113.1"),
            e("d1", "203.0.113.2"),
            e("d2", "203.0.113.3"),
        ]);
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].0, "d2");
        assert_eq!(ops[0].1.len(), 2);
        assert_eq!(ops[0].1[1].key, vec![10, 244, 0, 5, 203, 0, 113, 3]);
        assert_eq!(ops[0].1[1].timeout_ms, Some(35_000));
        assert_eq!(ops[1].0, "d1");
    }
}
