//! The bytes of an nf_tables set-element batch, and the acknowledgements the
//! kernel sends back. Pure: no socket, no allocation beyond the output.
//!
//! Layout (linux/netlink.h, linux/netfilter/nfnetlink.h, nf_tables.h; all
//! netlink headers in host byte order, nf_tables values in network order):
//!
//! ```text
//! nlmsghdr{len, type=NFNL_MSG_BATCH_BEGIN, REQUEST, seq} nfgenmsg{AF_UNSPEC, 0, htons(NFNL_SUBSYS_NFTABLES)}
//! nlmsghdr{len, type=NFTABLES<<8|NEWSETELEM (or DELSETELEM), REQUEST|ACK|CREATE, seq+1}
//!   nfgenmsg{NFPROTO_INET, 0, 0}
//!   NFTA_SET_ELEM_LIST_TABLE "veil\0"
//!   NFTA_SET_ELEM_LIST_SET   "<set>\0"
//!   NFTA_SET_ELEM_LIST_ELEMENTS (nested)
//!     NFTA_LIST_ELEM (nested)
//!       NFTA_SET_ELEM_KEY (nested) { NFTA_DATA_VALUE <key bytes> }
//!       NFTA_SET_ELEM_TIMEOUT be64 milliseconds   (when given)
//!     ...
//! ... one message per set (more when a list outgrows a 16-bit attribute length)
//! nlmsghdr{len, type=NFNL_MSG_BATCH_END, REQUEST, seq+n} nfgenmsg{AF_UNSPEC, 0, htons(NFNL_SUBSYS_NFTABLES)}
//! ```
//!
//! It does not encode tables, chains, rules or sets themselves (the table
//! manager writes those with `nft`), nor interval elements: the `domains`
//! sets are plain concatenations with timeouts.

/// `NETLINK_NETFILTER` (linux/netlink.h).
pub const NETLINK_NETFILTER: isize = 12;

const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const AF_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NFNETLINK_V0: u8 = 0;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

/// `NFT_NAME_MAXLEN` (with the terminating NUL).
pub const NAME_MAX: usize = 256;
/// `NFT_DATA_VALUE_MAXLEN`: the longest key.
pub const KEY_MAX: usize = 64;

/// Add or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `NFT_MSG_NEWSETELEM` with `NLM_F_CREATE` (an element already there is
    /// not an error; its timeout is refreshed).
    Add,
    /// `NFT_MSG_DELSETELEM`.
    Delete,
}

/// One element: its key bytes (see [`concat_key`]) and timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem {
    /// The key, as the set's type lays it out.
    pub key: Vec<u8>,
    /// Timeout in milliseconds (only for sets with the `timeout` flag).
    pub timeout_ms: Option<u64>,
}

/// Elements to add to or delete from one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetOp<'a> {
    /// Add or delete.
    pub op: Op,
    /// The table (family `inet`).
    pub table: &'a str,
    /// The set.
    pub set: &'a str,
    /// The elements.
    pub elems: &'a [Elem],
}

/// Why a batch cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A table or set name is empty, too long, or holds a NUL.
    #[error("nf_tables name {0:?}: empty, over 255 bytes, or with a NUL byte")]
    BadName(String),
    /// A key is empty or longer than [`KEY_MAX`].
    #[error("set {set}: element key of {len} bytes (1 to 64 allowed)")]
    BadKey {
        /// The set.
        set: String,
        /// The key's length.
        len: usize,
    },
}

/// The key of a concatenation: each part padded with zeros to 4 bytes (the
/// kernel's register size), in order. `ipv4_addr . ipv4_addr` is 8 bytes.
pub fn concat_key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| align4(p.len())).sum());
    for p in parts {
        k.extend_from_slice(p);
        k.resize(align4(k.len()), 0);
    }
    k
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn check_name(n: &str) -> Result<(), EncodeError> {
    if n.is_empty() || n.len() >= NAME_MAX || n.as_bytes().contains(&0) {
        return Err(EncodeError::BadName(n.to_string()));
    }
    Ok(())
}

/// A netlink message under construction: lengths are patched on close.
struct Buf(Vec<u8>);

impl Buf {
    fn msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&0u32.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(&flags.to_ne_bytes());
        self.0.extend_from_slice(&seq.to_ne_bytes());
        self.0.extend_from_slice(&0u32.to_ne_bytes());
        self.0.extend_from_slice(&[family, NFNETLINK_V0]);
        self.0.extend_from_slice(&res_id.to_be_bytes());
        at
    }

    fn end_msg(&mut self, at: usize) {
        let len = (self.0.len() - at) as u32;
        self.0[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = (NLA_HDRLEN + data.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(align4(self.0.len()), 0);
    }

    fn str_attr(&mut self, ty: u16, s: &str) {
        let len = (NLA_HDRLEN + s.len() + 1) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self.0.resize(align4(self.0.len()), 0);
    }

    fn nest(&mut self, ty: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nest(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// Encoded size of one element in a list.
fn elem_len(e: &Elem) -> usize {
    let key = NLA_HDRLEN + NLA_HDRLEN + align4(e.key.len());
    let timeout = if e.timeout_ms.is_some() {
        NLA_HDRLEN + 8
    } else {
        0
    };
    NLA_HDRLEN + key + timeout
}

/// Largest element list in one message (its attribute length is 16 bits).
const LIST_MAX: usize = u16::MAX as usize - NLA_HDRLEN;

/// Encodes one batch: BEGIN with sequence `seq`, the set messages, END.
/// Returns the bytes and the sequence numbers of the messages that ask for
/// an acknowledgement (the set messages; numbers wrap around).
pub fn batch(seq: u32, ops: &[SetOp<'_>]) -> Result<(Vec<u8>, Acked), EncodeError> {
    for o in ops {
        check_name(o.table)?;
        check_name(o.set)?;
        if let Some(e) = o
            .elems
            .iter()
            .find(|e| e.key.is_empty() || e.key.len() > KEY_MAX)
        {
            return Err(EncodeError::BadKey {
                set: o.set.to_string(),
                len: e.key.len(),
            });
        }
    }
    let mut b = Buf(Vec::with_capacity(
        64 + ops
            .iter()
            .map(|o| 64 + o.table.len() + o.set.len() + o.elems.iter().map(elem_len).sum::<usize>())
            .sum::<usize>(),
    ));
    let sub = NFNL_SUBSYS_NFTABLES;
    let at = b.msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, AF_UNSPEC, sub);
    b.end_msg(at);
    let mut next = seq.wrapping_add(1);
    let first = next;
    for o in ops {
        let (ty, flags) = match o.op {
            Op::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
            Op::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        };
        // Split the list where it would outgrow its 16-bit length.
        let mut rest = o.elems;
        loop {
            let mut size = 0;
            let n = rest
                .iter()
                .take_while(|e| {
                    size += elem_len(e);
                    size <= LIST_MAX
                })
                .count();
            let (chunk, tail) = rest.split_at(n);
            let at = b.msg((sub << 8) | ty, flags, next, NFPROTO_INET, 0);
            next = next.wrapping_add(1);
            b.str_attr(NFTA_SET_ELEM_LIST_TABLE, o.table);
            b.str_attr(NFTA_SET_ELEM_LIST_SET, o.set);
            let list = b.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            for e in chunk {
                let el = b.nest(NFTA_LIST_ELEM);
                let key = b.nest(NFTA_SET_ELEM_KEY);
                b.attr(NFTA_DATA_VALUE, &e.key);
                b.end_nest(key);
                if let Some(ms) = e.timeout_ms {
                    b.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
                }
                b.end_nest(el);
            }
            b.end_nest(list);
            b.end_msg(at);
            rest = tail;
            if rest.is_empty() {
                break;
            }
        }
    }
    let at = b.msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, next, AF_UNSPEC, sub);
    b.end_msg(at);
    Ok((
        b.0,
        Acked {
            first,
            count: next.wrapping_sub(first),
        },
    ))
}

/// The sequence numbers a batch's set messages carry: `count` from `first`
/// (wrapping); BEGIN is `first - 1`, END `first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The first set message's number.
    pub first: u32,
    /// How many set messages.
    pub count: u32,
}

impl Acked {
    /// Whether `seq` is one of the set messages'.
    pub fn contains(&self, seq: u32) -> bool {
        seq.wrapping_sub(self.first) < self.count
    }

    /// Whether `seq` is BEGIN's or END's.
    pub fn is_frame(&self, seq: u32) -> bool {
        seq == self.first.wrapping_sub(1) || seq == self.first.wrapping_add(self.count)
    }
}

/// One acknowledgement: the sequence number it answers and its error
/// (0 = success, otherwise a positive errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The answered message's sequence number.
    pub seq: u32,
    /// 0, or the errno the kernel refused it with.
    pub errno: i32,
}

/// The acknowledgements (`NLMSG_ERROR` messages) in one datagram from the
/// kernel; other messages are skipped, a truncated tail is ignored.
pub fn acks(buf: &[u8]) -> Vec<Ack> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
            let p = &rest[NLMSG_HDRLEN..];
            let err = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
            out.push(Ack {
                seq,
                errno: err.checked_neg().unwrap_or(i32::MAX),
            });
        }
        rest = &rest[align4(len).min(rest.len())..];
    }
    out
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
