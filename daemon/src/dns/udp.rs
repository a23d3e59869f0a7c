//! DNS over UDP: the transparent listener and the upstream sockets.
//!
//! - The listener reads each query with its pod's address and original
//!   destination (the resolver the pod asked) and hands it to that pair's
//!   [`Upstream`]: one socket per (pod, resolver), bound to the pod's address
//!   and connected to the resolver, shared by the pod's queries to it, which
//!   are told apart by their ID. No task, socket or conntrack entry per query.
//! - Each upstream has one reader task: it reads the answers the kernel
//!   queued, matches each to its query by ID, releases it through
//!   [`Proxy::release_now`] (set write first) and sends it to the pod from
//!   the resolver's address ([`sockets::ReplySockets`]); every second it
//!   answers SERVFAIL to queries older than [`UPSTREAM_TIMEOUT`], and it
//!   closes the upstream after [`IDLE_TICKS`] idle seconds.
//! - A query whose ID is already in flight on its upstream, or beyond
//!   [`MAX_UPSTREAMS`] / [`MAX_PENDING`], goes on its own socket (one task).
//!
//! Answers are read into a 64 KiB buffer, so EDNS(0) sizes pass; a truncated
//! answer is released as it is and the pod retries over TCP
//! ([`super::tcp`]). The source port towards the resolver is the upstream's
//! (stable while it lives), not the pod's: an off-path spoofer must still
//! match the connected resolver's address and port, the pending ID and the
//! question ([`super::answer::inspect`]).

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use socket2::Type;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::metrics::TransportLabels;
use super::{sockets, Proxy, Verdict, UPSTREAM_TIMEOUT};

/// Largest DNS message.
const MAX_MESSAGE: usize = 65_535;
/// Most upstreams (pod, resolver) open at once; beyond, queries go on their
/// own sockets.
pub const MAX_UPSTREAMS: usize = 4096;
/// Most queries in flight on one upstream.
pub const MAX_PENDING: usize = 4096;
/// Seconds without a query before an upstream closes.
pub const IDLE_TICKS: u32 = 30;

/// Binds the transparent UDP listener.
pub fn bind(port: u16) -> io::Result<UdpSocket> {
    let s = sockets::listener(Type::DGRAM, port)?;
    setsockopt(&s, sockopt::Ipv4OrigDstAddr, &true).map_err(io::Error::from)?;
    UdpSocket::from_std(s.into())
}

/// One datagram: bytes, the pod's address, the original destination.
/// `cmsg` is the control buffer, kept by the caller.
#[allow(clippy::ptr_arg)] // nix's `recvmsg` takes the Vec itself (its capacity)
fn recv(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
) -> io::Result<(usize, SocketAddrV4, SocketAddrV4)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(sock.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let src = msg
        .address
        .map(|a| SocketAddrV4::new(a.ip(), a.port()))
        .ok_or_else(|| io::Error::other("datagram without a source"))?;
    let mut dst = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::Ipv4OrigDstAddr(a) = c {
            dst = Some(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            ));
        }
    }
    let dst = dst.ok_or_else(|| io::Error::other("datagram without its original destination"))?;
    Ok((msg.bytes, src, dst))
}

/// A query waiting for its answer.
#[derive(Debug)]
struct Pending {
    query: Vec<u8>,
    /// The pod's address and port (where the answer goes).
    client: SocketAddrV4,
    since: Instant,
}

/// One socket from a pod's address to one resolver, shared by the pod's
/// queries to it (told apart by ID).
#[derive(Debug)]
struct Upstream {
    sock: UdpSocket,
    pod: Ipv4Addr,
    resolver: SocketAddrV4,
    pending: Mutex<HashMap<u16, Pending>>,
    /// A query was sent since the last tick.
    used: AtomicBool,
}

impl Upstream {
    fn pending(&self) -> MutexGuard<'_, HashMap<u16, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the listener and the readers share.
struct Shared {
    proxy: Arc<Proxy>,
    replies: sockets::ReplySockets,
    upstreams: Mutex<HashMap<(Ipv4Addr, SocketAddrV4), Arc<Upstream>>>,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn upstreams(&self) -> MutexGuard<'_, HashMap<(Ipv4Addr, SocketAddrV4), Arc<Upstream>>> {
        self.upstreams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `query` on its upstream (opened if needed) and sends it.
    /// False when it must go on its own socket (ID in flight, limits).
    fn submit(self: &Arc<Self>, query: &[u8], src: SocketAddrV4, dst: SocketAddrV4) -> bool {
        let Some(id) = query.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            return false;
        };
        let up = {
            let mut m = self.upstreams();
            let up = match m.get(&(*src.ip(), dst)) {
                Some(u) => u.clone(),
                None => {
                    if m.len() >= MAX_UPSTREAMS {
                        return false;
                    }
                    let u = match open_upstream(*src.ip(), dst) {
                        Ok(u) => Arc::new(u),
                        Err(e) => {
                            tracing::debug!(pod = %src, resolver = %dst, error = %e, "DNS proxy: upstream socket");
                            return false;
                        }
                    };
                    m.insert((*src.ip(), dst), u.clone());
                    tokio::spawn(read_answers(self.clone(), u.clone()));
                    u
                }
            };
            // Under the table's lock: an idle upstream closing takes it too.
            let mut p = up.pending();
            if p.len() >= MAX_PENDING || p.contains_key(&id) {
                return false;
            }
            p.insert(
                id,
                Pending {
                    query: query.to_vec(),
                    client: src,
                    since: Instant::now(),
                },
            );
            up.used.store(true, Ordering::Relaxed);
            drop(p);
            up
        };
        // Straight to the socket (tokio's `try_send` refuses until the
        // reactor has seen the new socket writable). An error left by an
        // earlier ICMP message is reported by this send: tried once more.
        let send = || socket2::SockRef::from(&up.sock).send(query);
        match send().or_else(|e| match e.kind() {
            io::ErrorKind::WouldBlock => Err(e),
            _ => send(),
        }) {
            Ok(_) => {}
            // The send buffer is full: wait for room in a task.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let s = self.clone();
                let query = query.to_vec();
                tokio::spawn(async move {
                    if let Err(e) = up.sock.send(&query).await {
                        s.unsent(&up, id, &e);
                    }
                });
            }
            Err(e) => self.unsent(&up, id, &e),
        }
        true
    }

    /// The query `id` could not be sent on `up`: SERVFAIL.
    fn unsent(&self, up: &Upstream, id: u16, e: &io::Error) {
        tracing::debug!(pod = %up.pod, resolver = %up.resolver, error = %e, "DNS proxy: query not sent");
        if let Some(p) = up.pending().remove(&id) {
            self.proxy.metrics.drop("upstream_error");
            self.reply(
                up.resolver,
                p.client,
                super::answer::servfail(&p.query).as_deref(),
            );
        }
    }

    fn reply(&self, from: SocketAddrV4, to: SocketAddrV4, bytes: Option<&[u8]>) {
        let Some(bytes) = bytes else { return };
        if let Err(e) = self.replies.send_from(from, SocketAddr::V4(to), bytes) {
            tracing::debug!(pod = %to, error = %e, "DNS proxy: answer not sent");
            self.proxy.metrics.drop("reply_failed");
        }
    }

    /// Releases one answer read on `up`.
    fn on_answer(self: &Arc<Self>, up: &Upstream, answer: &[u8]) {
        let Some(id) = answer.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            self.proxy.metrics.drop("malformed");
            return;
        };
        let Some(p) = up.pending().remove(&id) else {
            // Late (after its SERVFAIL) or never asked.
            self.proxy.metrics.drop("unsolicited");
            return;
        };
        let start = Instant::now();
        match self.proxy.release_now(up.pod, &p.query, answer) {
            Ok(v) => {
                self.proxy
                    .metrics
                    .added_latency
                    .observe(start.elapsed().as_secs_f64());
                match v {
                    Verdict::Unchanged => self.reply(up.resolver, p.client, Some(answer)),
                    Verdict::Replace(r) => self.reply(up.resolver, p.client, r.as_deref()),
                }
                self.proxy
                    .metrics
                    .latency
                    .observe(p.since.elapsed().as_secs_f64());
            }
            // The kernel refused the set write: retried after the next
            // applied policy, without holding up this upstream's answers.
            Err(retry) => {
                let s = self.clone();
                let answer = answer.to_vec();
                let resolver = up.resolver;
                tokio::spawn(async move {
                    let v = retry.finish(&s.proxy).await;
                    s.proxy
                        .metrics
                        .added_latency
                        .observe(start.elapsed().as_secs_f64());
                    match v {
                        Verdict::Unchanged => s.reply(resolver, p.client, Some(&answer)),
                        Verdict::Replace(r) => s.reply(resolver, p.client, r.as_deref()),
                    }
                    s.proxy
                        .metrics
                        .latency
                        .observe(p.since.elapsed().as_secs_f64());
                });
            }
        }
    }

    /// Answers SERVFAIL to the queries of `up` older than
    /// [`UPSTREAM_TIMEOUT`] (all of them when `all`).
    fn expire(&self, up: &Upstream, all: bool, reason: &str) {
        let gone: Vec<Pending> = {
            let mut m = up.pending();
            let old: Vec<u16> = m
                .iter()
                .filter(|(_, p)| all || p.since.elapsed() >= UPSTREAM_TIMEOUT)
                .map(|(id, _)| *id)
                .collect();
            old.iter().filter_map(|id| m.remove(id)).collect()
        };
        for p in gone {
            self.proxy.metrics.drop(reason);
            self.reply(
                up.resolver,
                p.client,
                super::answer::servfail(&p.query).as_deref(),
            );
            self.proxy
                .metrics
                .latency
                .observe(p.since.elapsed().as_secs_f64());
        }
    }

    /// Removes `up` from the table if nothing used it since the last tick.
    fn close_if_idle(&self, up: &Arc<Upstream>) -> bool {
        let mut m = self.upstreams();
        let p = up.pending();
        if !p.is_empty() || up.used.load(Ordering::Relaxed) {
            return false;
        }
        if m.get(&(up.pod, up.resolver))
            .is_some_and(|u| Arc::ptr_eq(u, up))
        {
            m.remove(&(up.pod, up.resolver));
        }
        true
    }
}

fn open_upstream(pod: Ipv4Addr, resolver: SocketAddrV4) -> io::Result<Upstream> {
    let s = sockets::upstream(Type::DGRAM, pod)?;
    s.connect(&SocketAddr::V4(resolver).into())?;
    Ok(Upstream {
        sock: UdpSocket::from_std(s.into())?,
        pod,
        resolver,
        pending: Mutex::new(HashMap::new()),
        used: AtomicBool::new(false),
    })
}

/// The reader of one upstream: answers as they come, timeouts and idleness
/// every second.
async fn read_answers(s: Arc<Shared>, up: Arc<Upstream>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = s.shutdown.clone();
    let mut idle = 0u32;
    loop {
        tokio::select! {
            r = up.sock.readable() => {
                if let Err(e) = r {
                    tracing::debug!(resolver = %up.resolver, error = %e, "DNS proxy: upstream closed");
                    break;
                }
                loop {
                    match up.sock.try_recv(&mut buf) {
                        Ok(n) => s.on_answer(&up, &buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // The resolver refused (ICMP): its queries fail now
                        // rather than at their timeout.
                        Err(e) => {
                            tracing::debug!(resolver = %up.resolver, error = %e, "DNS proxy: upstream");
                            s.expire(&up, true, "upstream_error");
                            break;
                        }
                    }
                }
            }
            _ = tick.tick() => {
                s.expire(&up, false, "upstream_timeout");
                if up.used.swap(false, Ordering::Relaxed) {
                    idle = 0;
                } else {
                    idle += 1;
                    if idle >= IDLE_TICKS && s.close_if_idle(&up) {
                        return;
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
    // A broken socket: out of the table, its queries answered SERVFAIL.
    s.upstreams().remove(&(up.pod, up.resolver));
    s.expire(&up, true, "upstream_error");
}

/// Serves until shutdown.
pub async fn serve(sock: UdpSocket, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in);
    let queries = proxy
        .metrics
        .queries
        .get_or_create(&TransportLabels {
            transport: "udp".into(),
        })
        .clone();
    let shared = Arc::new(Shared {
        proxy,
        replies: sockets::ReplySockets::default(),
        upstreams: Mutex::new(HashMap::new()),
        shutdown: shutdown.clone(),
    });
    loop {
        let got = tokio::select! {
            r = sock.async_io(Interest::READABLE, || recv(&sock, &mut buf, &mut cmsg)) => r,
            _ = shutdown.changed() => return,
        };
        let (n, src, dst) = match got {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "DNS proxy: UDP receive");
                continue;
            }
        };
        queries.inc();
        let query = &buf[..n];
        if !shared.submit(query, src, dst) {
            tokio::spawn(alone(shared.clone(), query.to_vec(), src, dst));
        }
    }
}

/// A query on its own socket (its ID is in flight on its upstream, or the
/// upstreams are at their limits).
async fn alone(s: Arc<Shared>, query: Vec<u8>, src: SocketAddrV4, dst: SocketAddrV4) {
    let start = Instant::now();
    let reply = match exchange(&s.proxy, &query, src, dst).await {
        Ok(Some(answer)) => s.proxy.release(*src.ip(), &query, &answer).await,
        Ok(None) => {
            s.proxy.metrics.drop("upstream_timeout");
            super::answer::servfail(&query)
        }
        Err(e) => {
            tracing::debug!(pod = %src, resolver = %dst, error = %e, "DNS proxy: upstream");
            s.proxy.metrics.drop("upstream_error");
            super::answer::servfail(&query)
        }
    };
    s.reply(dst, src, reply.as_deref());
    s.proxy
        .metrics
        .latency
        .observe(start.elapsed().as_secs_f64());
}

/// Sends `query` to `dst` from the pod's address on a socket of its own; the
/// first answer with the query's ID, or None on timeout.
async fn exchange(
    p: &Proxy,
    query: &[u8],
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> io::Result<Option<Vec<u8>>> {
    let sock = UdpSocket::from_std(sockets::upstream(Type::DGRAM, *src.ip())?.into())?;
    sock.connect(dst).await?;
    sock.send(query).await?;
    let id = query.get(..2);
    // Not zeroed: `recv_buf` only exposes what the kernel wrote.
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_MESSAGE);
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        buf.clear();
        match tokio::time::timeout_at(deadline, sock.recv_buf(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(None),
        };
        if buf.get(..2) == id {
            buf.shrink_to_fit();
            return Ok(Some(buf));
        }
        p.metrics.drop("unsolicited");
    }
}
