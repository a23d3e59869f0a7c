//! The kernel calls of the WireGuard datapath's packet IO: reads and writes
//! on TUN queues, and batched UDP IO (`recvmmsg`/`sendmmsg`, `UDP_SEGMENT`
//! GSO, `UDP_GRO`). Creating and configuring the TUN device is the
//! dataplane's ([`crate::dataplane::tunnel`]).
//!
//! This is the only unsafe module of the datapath. It exists because neither
//! `std` nor `nix` expose `recvmmsg`/`sendmmsg` with per-message control data in a
//! form we can batch without allocating. Every function checks the kernel's
//! return value and turns it into an `io::Error`; buffers handed to the kernel
//! are slices owned by the caller and outlive the call.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Size of `struct virtio_net_hdr` prepended to every TUN packet.
pub const VNET_HDR_LEN: usize = 10;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `read(2)` on a raw descriptor.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// `writev(2)` of two slices (virtio-net header + packet) on a raw descriptor.
pub fn write2(fd: RawFd, a: &[u8], b: &[u8]) -> io::Result<usize> {
    let iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut libc::c_void,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        },
    ];
    // SAFETY: both iovecs point into live slices.
    cvt_size(unsafe { libc::writev(fd, iov.as_ptr(), 2) })
}

/// Waits until `fd` is readable or `timeout_ms` passes; returns readability.
pub fn poll_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(n > 0 && p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0)
}

/// Waits until one of `fds` (at most 32) is readable or `timeout_ms` passes
/// (0: just look); returns a mask of the readable ones (bit `i` for `fds[i]`).
pub fn poll_any(fds: &[RawFd], timeout_ms: i32) -> io::Result<u32> {
    let mut p = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 32];
    let n = fds.len().min(p.len());
    for (slot, &fd) in p.iter_mut().zip(fds) {
        slot.fd = fd;
    }
    // SAFETY: `n` valid pollfds in a local array.
    let r = unsafe { libc::poll(p.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    let mut mask = 0u32;
    for (i, q) in p[..n].iter().enumerate() {
        if q.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
            mask |= 1 << i;
        }
    }
    Ok(mask)
}

/// Enables `UDP_GRO` on a UDP socket: `recvmmsg` may then return several
/// same-size datagrams from one sender glued together, with their size in a
/// control message. Returns whether the kernel accepted it.
pub fn udp_enable_gro(fd: RawFd) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: an int option.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Whether the kernel supports `UDP_SEGMENT` on this socket.
pub fn udp_gso_supported(fd: RawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int option read into a local.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        ) == 0
    }
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: family says sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family says sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// One received datagram (or GRO train) of a [`RecvBatch`].
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Bytes received.
    pub len: usize,
    /// Sender.
    pub from: Option<SocketAddr>,
    /// `UDP_GRO` segment size when several datagrams were glued together.
    pub segment: Option<usize>,
}

/// Reusable state for `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<[u64; 8]>,
    hdrs: Vec<libc::mmsghdr>,
    /// Results of the last call.
    pub got: Vec<Received>,
}

// SAFETY: the raw pointers inside point only into the struct's own vectors.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `n` buffers of `size` bytes.
    pub fn new(n: usize, size: usize) -> Self {
        Self {
            bufs: (0..n).map(|_| vec![0u8; size]).collect(),
            // SAFETY: all-zero is valid for these C structs.
            addrs: vec![unsafe { std::mem::zeroed() }; n],
            iovs: Vec::with_capacity(n),
            cmsgs: vec![[0u64; 8]; n],
            hdrs: Vec::with_capacity(n),
            got: Vec::with_capacity(n),
        }
    }

    /// The buffer of message `i`.
    pub fn buf(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.got[i].len]
    }

    /// Receives up to the batch size without blocking; returns the count
    /// (0 when nothing is waiting).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        self.iovs.clear();
        self.hdrs.clear();
        self.got.clear();
        for i in 0..n {
            self.iovs.push(libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            });
        }
        for i in 0..n {
            // SAFETY: all-zero is a valid mmsghdr.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = std::mem::size_of::<[u64; 8]>();
            self.hdrs.push(h);
        }
        // SAFETY: hdrs point into our own live buffers.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        for i in 0..r as usize {
            let h = &self.hdrs[i];
            let mut segment = None;
            // SAFETY: walking the control buffer the kernel filled, bounded by
            // msg_controllen, with the libc CMSG macros.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const u16);
                        segment = Some(v as usize);
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
            self.got.push(Received {
                len: h.msg_len as usize,
                from: sockaddr_to_std(&self.addrs[i]),
                segment,
            });
        }
        Ok(r as usize)
    }
}

/// One outgoing message of a [`SendBatch`]: a range of the batch buffer, a
/// destination and, for a GSO train, the segment size.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    start: usize,
    len: usize,
    to: SocketAddr,
    segment: u16,
}

/// Reusable state for `sendmmsg`: packets are appended to one buffer.
pub struct SendBatch {
    /// Packet bytes, back to back (its length is a high-water mark; what is
    /// queued is described by the pushed ranges).
    pub data: Vec<u8>,
    out: Vec<Outgoing>,
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<[u64; 4]>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside point only into the struct's own vectors.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            data: Vec::with_capacity(1 << 18),
            out: Vec::new(),
            addrs: Vec::new(),
            iovs: Vec::new(),
            cmsgs: Vec::new(),
            hdrs: Vec::new(),
        }
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Queues `data[start..start + len]` (written by the caller) as one datagram
    /// to `to`, or as a GSO train of `segment`-byte datagrams when `segment` > 0.
    pub fn push(&mut self, start: usize, len: usize, to: SocketAddr, segment: u16) {
        self.out.push(Outgoing {
            start,
            len,
            to,
            segment,
        });
    }

    /// Queues `data[start..start + len]` to `to`, appending it to the previous message as
    /// one more GSO segment when `gso` and the previous message goes to the
    /// same place with segments of this size or larger (the kernel then sends
    /// them as separate datagrams from one `sendmmsg` entry).
    pub fn push_coalesce(&mut self, start: usize, len: usize, to: SocketAddr, gso: bool) {
        if gso && len > 0 {
            if let Some(last) = self.out.last_mut() {
                let seg = if last.segment == 0 {
                    last.len
                } else {
                    last.segment as usize
                };
                if last.to == to
                    && last.start + last.len == start
                    && len <= seg
                    && seg > 0
                    && last.len % seg == 0
                    && last.len + len <= 60_000
                    && last.len / seg < 60
                {
                    last.segment = seg as u16;
                    last.len += len;
                    return;
                }
            }
        }
        self.push(start, len, to, 0);
    }

    /// Sends everything queued with `sendmmsg`, then clears the batch.
    /// Returns the number of messages the kernel refused (dropped).
    pub fn flush(&mut self, fd: RawFd) -> usize {
        let n = self.out.len();
        if n == 0 {
            return 0;
        }
        self.addrs.clear();
        self.iovs.clear();
        self.hdrs.clear();
        self.cmsgs.clear();
        self.cmsgs.resize(n, [0u64; 4]);
        for o in &self.out {
            self.addrs.push(std_to_sockaddr(&o.to));
            self.iovs.push(libc::iovec {
                iov_base: self.data[o.start..].as_ptr() as *mut libc::c_void,
                iov_len: o.len,
            });
        }
        for i in 0..n {
            // SAFETY: all-zero is a valid mmsghdr.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i].0 as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.addrs[i].1;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            let seg = self.out[i].segment;
            if seg > 0 && self.out[i].len > seg as usize {
                h.msg_hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of a u16 fits the 32-byte buffer.
                h.msg_hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
                // SAFETY: the control buffer is ours and large enough.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
                }
            }
            self.hdrs.push(h);
        }
        let mut sent = 0usize;
        let mut dropped = 0usize;
        while sent < n {
            // SAFETY: hdrs[sent..] point into our own live buffers.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[sent..].as_mut_ptr(),
                    (n - sent) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        let _ = poll_writable(fd, 100);
                        continue;
                    }
                    _ => {
                        // Skip the message the kernel refused (e.g. unreachable).
                        tracing::debug!(error = %e, "wireguard: udp send");
                        dropped += 1;
                        sent += 1;
                    }
                }
            } else {
                sent += r as usize;
            }
        }
        // `data` keeps its length: reused without zeroing again.
        self.out.clear();
        dropped
    }
}

fn poll_writable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = cvt(unsafe { libc::poll(&mut p, 1, timeout_ms) })?;
    Ok(n > 0)
}

/// Unused-address helper for callers that need an unspecified address.
pub fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// Sets `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (root may exceed `rmem_max`), falling
/// back to the capped `SO_RCVBUF`/`SO_SNDBUF`.
pub fn set_buffers_force(fd: RawFd, bytes: libc::c_int) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: int options on a valid socket.
        unsafe {
            let p = (&bytes as *const libc::c_int).cast();
            let l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, l) != 0 {
                libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, l);
            }
        }
    }
}
