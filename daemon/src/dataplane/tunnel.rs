//! The WireGuard device `veil-wg`: a persistent multi-queue TUN device with
//! virtio-net headers and, when the kernel takes them, offloads (checksum,
//! TSO). The device is persistent so that its address and routes survive a
//! daemon restart.
//!
//! It does not read or write packets (the WireGuard datapath does, on the
//! queues returned here) nor set addresses or routes ([`super::links`],
//! [`super::routes`]).
//!
//! Unsafe: neither `std` nor `nix` expose the TUN ioctls (`TUNSETIFF`,
//! `TUNSETOFFLOAD`, `TUNSETPERSIST`). Every call checks the kernel's return
//! value and turns it into an `io::Error`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// TUN offload flags (`TUN_F_*`).
pub const TUN_F_CSUM: u32 = 0x01;
/// TCP segmentation offload, IPv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// TCP segmentation offload, IPv6.
pub const TUN_F_TSO6: u32 = 0x04;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens one queue of the multi-queue TUN device `name` (created if absent)
/// with virtio-net headers. The device is made persistent so that its address
/// and routes survive a daemon restart.
pub fn tun_open_queue(name: &str) -> io::Result<OwnedFd> {
    if name.len() >= libc::IFNAMSIZ || name.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: a NUL-terminated literal path; the returned fd is checked.
    let fd = cvt(unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) })?;
    Ok(fd)
}

/// Marks the device of `fd` persistent (it outlives the process).
pub fn tun_set_persist(fd: RawFd, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument.
    cvt(unsafe { libc::ioctl(fd, TUNSETPERSIST, libc::c_ulong::from(persist)) })?;
    Ok(())
}

/// Enables TUN offloads (`TUN_F_*`): the kernel may then hand us packets with
/// partial checksums and TCP super-packets described by the virtio-net header.
pub fn tun_set_offload(fd: RawFd, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes an integer argument.
    cvt(unsafe { libc::ioctl(fd, TUNSETOFFLOAD, libc::c_ulong::from(flags)) })?;
    Ok(())
}

/// An opened TUN device.
#[derive(Debug)]
pub struct TunDevice {
    /// One descriptor per queue.
    pub queues: Vec<OwnedFd>,
    /// The offloads asked for are on (else none is).
    pub offloads: bool,
}

/// The kernel's TUN devices.
pub trait Tunnel: Send + Sync {
    /// Opens (creating if absent) the persistent multi-queue device `name`
    /// with `queues` queues, and turns on `offload` (`TUN_F_*`) on every queue
    /// or on none.
    fn open(&self, name: &str, queues: usize, offload: u32) -> io::Result<TunDevice>;
}

/// TUN devices through `/dev/net/tun`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxTunnel;

impl Tunnel for LinuxTunnel {
    fn open(&self, name: &str, queues: usize, offload: u32) -> io::Result<TunDevice> {
        let mut fds = Vec::new();
        for _ in 0..queues.max(1) {
            fds.push(tun_open_queue(name)?);
        }
        tun_set_persist(fds[0].as_raw_fd(), true)?;
        let offloads = offload != 0
            && fds
                .iter()
                .all(|t| tun_set_offload(t.as_raw_fd(), offload).is_ok());
        if !offloads {
            for t in &fds {
                let _ = tun_set_offload(t.as_raw_fd(), 0);
            }
        }
        Ok(TunDevice {
            queues: fds,
            offloads,
        })
    }
}

/// A TUN device for unit tests: each queue is one end of a socket pair (the
/// other ends are kept in `peers`), so packets can be written and read.
#[derive(Debug, Default)]
pub struct FakeTunnel {
    /// The test's ends of the queues opened so far.
    pub peers: std::sync::Mutex<Vec<OwnedFd>>,
}

impl Tunnel for FakeTunnel {
    fn open(&self, _name: &str, queues: usize, _offload: u32) -> io::Result<TunDevice> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let mut fds = Vec::new();
        for _ in 0..queues.max(1) {
            let (a, b) = socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            )
            .map_err(io::Error::from)?;
            fds.push(a);
            self.peers.lock().unwrap_or_else(|e| e.into_inner()).push(b);
        }
        Ok(TunDevice {
            queues: fds,
            offloads: false,
        })
    }
}
