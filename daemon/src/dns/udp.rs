//! DNS over UDP: the transparent listener, one task per query. The query
//! goes to the resolver the pod asked (its original destination) from the
//! pod's address (a socket kept per pod, [`UpstreamPool`]); the answer (unchanged, or SERVFAIL) goes back from the
//! resolver's address. Answers are read into a 64 KiB buffer, so EDNS(0)
//! sizes pass; a truncated answer is released as it is and the pod retries
//! over TCP ([`super::tcp`]).

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use socket2::Type;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::metrics::TransportLabels;
use super::{sockets, Proxy, UPSTREAM_TIMEOUT};

/// Largest DNS message.
const MAX_MESSAGE: usize = 65_535;
/// Idle upstream sockets kept per pod.
const POOL_PER_POD: usize = 8;
/// Pods with idle upstream sockets kept (beyond: the pool starts over).
const POOL_PODS: usize = 4096;

/// Upstream sockets (bound to a pod's address, marked) kept for the pod's
/// next query: creating one cost seven system calls and a reactor
/// registration per query. A socket goes back only after a matched answer,
/// drained; each use connects it to that query's resolver.
#[derive(Debug, Default)]
pub struct UpstreamPool {
    idle: std::sync::Mutex<std::collections::HashMap<Ipv4Addr, Vec<UdpSocket>>>,
}

impl UpstreamPool {
    fn take(&self, pod: Ipv4Addr) -> io::Result<UdpSocket> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&pod)
            .and_then(Vec::pop);
        match pooled {
            Some(s) => Ok(s),
            None => UdpSocket::from_std(sockets::upstream(Type::DGRAM, pod)?.into()),
        }
    }

    fn give(&self, pod: Ipv4Addr, s: UdpSocket) {
        let mut scratch = [0u8; 512];
        while s.try_recv(&mut scratch).is_ok() {}
        let mut m = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= POOL_PODS && !m.contains_key(&pod) {
            m.clear();
        }
        let v = m.entry(pod).or_default();
        if v.len() < POOL_PER_POD {
            v.push(s);
        }
    }
}

/// Binds the transparent UDP listener.
pub fn bind(port: u16) -> io::Result<UdpSocket> {
    let s = sockets::listener(Type::DGRAM, port)?;
    setsockopt(&s, sockopt::Ipv4OrigDstAddr, &true).map_err(io::Error::from)?;
    UdpSocket::from_std(s.into())
}

/// One datagram: bytes, the pod's address, the original destination.
fn recv(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4, SocketAddrV4)> {
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
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

/// Serves until shutdown.
pub async fn serve(sock: UdpSocket, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let queries = proxy
        .metrics
        .queries
        .get_or_create(&TransportLabels {
            transport: "udp".into(),
        })
        .clone();
    let replies = Arc::new(sockets::ReplySockets::default());
    let pool = Arc::new(UpstreamPool::default());
    loop {
        let got = tokio::select! {
            r = sock.async_io(Interest::READABLE, || recv(&sock, &mut buf)) => r,
            _ = shutdown.changed() => return,
        };
        let (n, src, dst) = match got {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "DNS proxy: UDP receive");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let p = proxy.clone();
        let replies = replies.clone();
        let pool = pool.clone();
        queries.inc();
        tokio::spawn(async move {
            let start = Instant::now();
            let out = exchange(&p, &pool, &query, src, dst).await;
            let reply = match out {
                Ok(Some(answer)) => p.release(*src.ip(), &query, &answer).await,
                Ok(None) => {
                    p.metrics.drop("upstream_timeout");
                    super::answer::servfail(&query)
                }
                Err(e) => {
                    tracing::debug!(pod = %src, resolver = %dst, error = %e, "DNS proxy: upstream");
                    p.metrics.drop("upstream_error");
                    super::answer::servfail(&query)
                }
            };
            if let Some(r) = reply {
                if let Err(e) = replies.send_from(dst, SocketAddr::V4(src), &r) {
                    tracing::debug!(pod = %src, error = %e, "DNS proxy: answer not sent");
                    p.metrics.drop("reply_failed");
                }
            }
            p.metrics.latency.observe(start.elapsed().as_secs_f64());
        });
    }
}

/// Sends `query` to `dst` from the pod's address; the first answer with the
/// query's ID, or None on timeout.
async fn exchange(
    p: &Proxy,
    pool: &UpstreamPool,
    query: &[u8],
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> io::Result<Option<Vec<u8>>> {
    let sock = pool.take(*src.ip())?;
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
            pool.give(*src.ip(), sock);
            return Ok(Some(buf));
        }
        p.metrics.drop("id_mismatch");
    }
}
