//! DNS over TCP: the transparent listener; per pod connection, one upstream
//! connection to the resolver the pod asked (from the pod's address). Queries
//! are relayed as they come (pipelined: the pod need not wait), answers as
//! they come back, each checked against its query (by ID) and released only
//! after its allowances are in the kernel.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use socket2::Type;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use super::metrics::TransportLabels;
use super::{sockets, Proxy, UPSTREAM_TIMEOUT};

/// Queries in flight on one connection.
const MAX_PENDING: usize = 64;

/// Queries in flight by ID: the query and when it came.
type Pending = Arc<Mutex<HashMap<u16, (Vec<u8>, Instant)>>>;

/// Binds the transparent TCP listener.
pub fn bind(port: u16) -> io::Result<TcpListener> {
    let s = sockets::listener(Type::STREAM, port)?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Serves until shutdown.
pub async fn serve(l: TcpListener, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS proxy: TCP accept");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(p, stream, peer).await {
                tracing::debug!(pod = %peer, error = %e, "DNS proxy: TCP connection ended");
            }
        });
    }
}

/// Reads one length-prefixed message; None at a clean end of stream.
pub async fn read_msg<R: AsyncReadExt + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Writes one length-prefixed message.
pub async fn write_msg<W: AsyncWriteExt + Unpin>(w: &mut W, m: &[u8]) -> io::Result<()> {
    let len = u16::try_from(m.len()).map_err(|_| io::Error::other("DNS message over 64 KiB"))?;
    let mut out = Vec::with_capacity(m.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(m);
    w.write_all(&out).await
}

async fn connection(p: Arc<Proxy>, client: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let IpAddr::V4(pod) = peer.ip() else {
        return Ok(());
    };
    let dst = client.local_addr()?;
    let s = sockets::upstream(Type::STREAM, pod)?;
    let up = TcpSocket::from_std_stream(s.into());
    let up = tokio::time::timeout(UPSTREAM_TIMEOUT, up.connect(dst))
        .await
        .map_err(|_| io::Error::other("resolver did not accept in time"))??;
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let pending: Pending = Arc::default();
    let pend = pending.clone();
    let p2 = p.clone();
    let queries = async move {
        while let Some(q) = read_msg(&mut cr).await? {
            p2.metrics
                .queries
                .get_or_create(&TransportLabels {
                    transport: "tcp".into(),
                })
                .inc();
            if q.len() < 2 {
                continue;
            }
            let id = u16::from_be_bytes([q[0], q[1]]);
            {
                let mut m = pend.lock().unwrap_or_else(|e| e.into_inner());
                if m.len() >= MAX_PENDING {
                    p2.metrics.drop("too_many_pending");
                    continue;
                }
                m.insert(id, (q.clone(), Instant::now()));
            }
            write_msg(&mut uw, &q).await?;
        }
        io::Result::Ok(())
    };
    let answers = async move {
        while let Some(a) = read_msg(&mut ur).await? {
            if a.len() < 2 {
                p.metrics.drop("malformed");
                continue;
            }
            let id = u16::from_be_bytes([a[0], a[1]]);
            let q = pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let Some((q, start)) = q else {
                p.metrics.drop("unsolicited");
                continue;
            };
            if let Some(r) = p.release(pod, &q, &a).await {
                write_msg(&mut cw, &r).await?;
            }
            p.metrics.latency.observe(start.elapsed().as_secs_f64());
        }
        io::Result::Ok(())
    };
    // The pod closing its side ends the queries; answers still in flight
    // are relayed until the resolver closes.
    let (a, b) = tokio::join!(queries, answers);
    a.and(b)
}
