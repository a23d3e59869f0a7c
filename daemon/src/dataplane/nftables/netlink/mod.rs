//! An in-process nf_tables writer for set elements: one netlink batch
//! (BEGIN, NEWSETELEM/DELSETELEM per set, END) on a `NETLINK_NETFILTER`
//! socket, every set message acknowledged, refusals mapped to
//! [`NetlinkError`]. The DNS proxy uses it on its answer path, where running
//! `nft` per answer cost a process (milliseconds) before each release.
//!
//! The nf_tables attributes are encoded by hand ([`encode`], pure and tested
//! against byte fixtures derived from the kernel's uapi headers): no
//! maintained, permissively licensed crate speaks nf_tables (rustables is
//! GPL-3.0; nftnl binds the C libnftnl; netlink-packet-netfilter covers
//! nfqueue/nflog only). netlink-sys provides the socket.
//!
//! It does not create tables, chains or sets (the table manager does, with
//! `nft`), read sets back, or encode interval elements (the `domains` sets
//! are concatenations with timeouts). It writes in veild's own network
//! namespace (where the socket was opened).

pub mod encode;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use netlink_sys::Socket;

pub use encode::{concat_key, Elem, EncodeError, Op, SetOp};

/// How long a batch waits for its acknowledgements.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a batch was not applied (the kernel applies all of it or none).
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The batch could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The netlink socket could not be opened, written or read.
    #[error("nf_tables netlink socket: {0}")]
    Io(#[source] std::io::Error),
    /// No acknowledgement within [`ACK_TIMEOUT`].
    #[error("nf_tables did not acknowledge set {set} in {ACK_TIMEOUT:?}")]
    Timeout {
        /// The first set of the batch.
        set: String,
    },
    /// The table or the set does not exist (ENOENT).
    #[error("set {set} of table {table}: no such table or set")]
    SetMissing {
        /// The table.
        table: String,
        /// The set.
        set: String,
    },
    /// The set is full (ENFILE/ENOSPC) or the kernel is out of memory.
    #[error("set {set}: full or out of memory (errno {errno})")]
    Full {
        /// The set.
        set: String,
        /// The errno.
        errno: i32,
    },
    /// Not allowed (EPERM: no CAP_NET_ADMIN in this namespace).
    #[error("set {set}: not permitted (CAP_NET_ADMIN needed)")]
    Permission {
        /// The set.
        set: String,
    },
    /// The kernel refused the elements as given (EINVAL, EOPNOTSUPP...:
    /// a key of the wrong length, a timeout on a set without the flag).
    #[error("set {set}: the kernel refused the elements: {source}")]
    Refused {
        /// The set.
        set: String,
        /// The errno as an IO error (its message).
        #[source]
        source: std::io::Error,
    },
}

impl NetlinkError {
    fn from_errno(errno: i32, op: &SetOp<'_>) -> Self {
        let set = op.set.to_string();
        match errno {
            libc::ENOENT => NetlinkError::SetMissing {
                table: op.table.to_string(),
                set,
            },
            libc::ENFILE | libc::ENOSPC | libc::ENOMEM => NetlinkError::Full { set, errno },
            libc::EPERM => NetlinkError::Permission { set },
            e => NetlinkError::Refused {
                set,
                source: std::io::Error::from_raw_os_error(e),
            },
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            NetlinkError::Encode(_) => "encode",
            NetlinkError::Io(_) => "io",
            NetlinkError::Timeout { .. } => "timeout",
            NetlinkError::SetMissing { .. } => "set_missing",
            NetlinkError::Full { .. } => "full",
            NetlinkError::Permission { .. } => "permission",
            NetlinkError::Refused { .. } => "refused",
        }
    }
}

/// The writer: one socket, opened on first use and reopened after an IO
/// error; batches are serialized on it.
#[derive(Default)]
pub struct SetWriter {
    sock: Mutex<Option<Socket>>,
    seq: AtomicU32,
}

impl std::fmt::Debug for SetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetWriter").finish_non_exhaustive()
    }
}

fn open() -> std::io::Result<Socket> {
    let mut s = Socket::new(encode::NETLINK_NETFILTER)?;
    s.bind_auto()?;
    // Errors come back without the refused message's payload.
    s.set_cap_ack(true)?;
    let tv = nix::sys::time::TimeVal::new(ACK_TIMEOUT.as_secs() as _, 0);
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .map_err(std::io::Error::from)?;
    Ok(s)
}

impl SetWriter {
    /// A writer; the socket opens on the first batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `ops` in one kernel transaction: every element or none.
    pub fn apply(&self, ops: &[SetOp<'_>]) -> Result<(), NetlinkError> {
        let ops: Vec<&SetOp<'_>> = ops.iter().filter(|o| !o.elems.is_empty()).collect();
        let Some(first) = ops.first() else {
            return Ok(());
        };
        let owned: Vec<SetOp<'_>> = ops.iter().map(|o| (*o).clone()).collect();
        let mut guard = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        // Sequence numbers only grow, so a late answer to an earlier batch
        // (one that timed out) is never taken for this one's.
        let seq = self.seq.fetch_add(1 << 16, Ordering::Relaxed);
        let (bytes, acked) = encode::batch(seq, &owned)?;
        if guard.is_none() {
            *guard = Some(open().map_err(NetlinkError::Io)?);
        }
        let Some(sock) = guard.as_ref() else {
            return Err(NetlinkError::Io(std::io::Error::other(
                "netlink socket not open",
            )));
        };
        let r = exchange(sock, &bytes, acked, &owned, first.set);
        if matches!(
            r,
            Err(NetlinkError::Io(_)) | Err(NetlinkError::Timeout { .. })
        ) {
            *guard = None;
        }
        r
    }
}

/// The set op a message sequence number belongs to (messages are in op order;
/// long lists take several).
fn op_of<'a>(ops: &'a [SetOp<'a>], first: u32, seq: u32) -> &'a SetOp<'a> {
    let mut at = first;
    for o in ops {
        let msgs = encode::batch(0, std::slice::from_ref(o))
            .map(|(_, a)| a.count)
            .unwrap_or(1);
        if seq.wrapping_sub(at) < msgs {
            return o;
        }
        at = at.wrapping_add(msgs);
    }
    &ops[0]
}

fn exchange(
    sock: &Socket,
    bytes: &[u8],
    acked: encode::Acked,
    ops: &[SetOp<'_>],
    first_set: &str,
) -> Result<(), NetlinkError> {
    let sent = sock.send(bytes, 0).map_err(NetlinkError::Io)?;
    if sent != bytes.len() {
        return Err(NetlinkError::Io(std::io::Error::other(format!(
            "short netlink send: {sent} of {} bytes",
            bytes.len()
        ))));
    }
    let mut got = 0u32;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while got < acked.count {
        buf.clear();
        match sock.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(NetlinkError::Timeout {
                    set: first_set.to_string(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(NetlinkError::Io(e)),
        }
        for a in encode::acks(&buf) {
            let ours = acked.contains(a.seq);
            // BEGIN and END are only answered on error.
            let frame = acked.is_frame(a.seq);
            if a.errno != 0 && (ours || frame) {
                let op = if ours {
                    op_of(ops, acked.first, a.seq)
                } else {
                    &ops[0]
                };
                return Err(NetlinkError::from_errno(a.errno, op));
            }
            if ours {
                got += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
