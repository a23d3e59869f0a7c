//! The workload servers of lab pods and external hosts (`veilctl lab serve`, a
//! hidden subcommand the lab starts detached inside the pod's namespace).
//!
//! As the scenario format says: every TCP port serves HTTP/1.1 (any request gets
//! 200 and a body naming the pod; [`super::http`], on hyper), UDP and SCTP ports
//! echo what they receive, and the DNS pod serves [`super::dns`] on UDP and TCP
//! port 53. Everything is bounded: at most [`MAX_CONNECTIONS`] connections at
//! once, idle connections close after [`IDLE`], request heads and bodies are
//! size-limited. The server exits on
//! SIGTERM or SIGINT, and when its namespace's handle `/var/run/netns/<ns>` is
//! gone or names another namespace (so `ip netns delete` alone ends it).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::dns;

/// Most connections served at once (TCP, SCTP and DNS over TCP together).
pub const MAX_CONNECTIONS: usize = 256;
/// An idle connection is closed after this long.
pub const IDLE: Duration = Duration::from_secs(10);
/// Most DNS messages per TCP connection.
const MAX_DNS_MESSAGES: usize = 1000;
/// Most bytes echoed per SCTP connection.
const MAX_ECHO: u64 = 16 * 1024 * 1024;

/// What one server process serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServeSpec {
    /// The name in HTTP bodies: `namespace/pod`, or an external host's name.
    pub name: String,
    /// The namespace the server runs in; it exits when that namespace is gone.
    #[serde(default)]
    pub netns: Option<String>,
    /// TCP ports (HTTP/1.1).
    #[serde(default)]
    pub tcp: Vec<u16>,
    /// UDP ports (echo).
    #[serde(default)]
    pub udp: Vec<u16>,
    /// SCTP ports (echo).
    #[serde(default)]
    pub sctp: Vec<u16>,
    /// When set, port 53 on UDP and TCP answers DNS with these names.
    #[serde(default)]
    pub dns: Option<BTreeMap<String, Ipv4Addr>>,
    /// Aliases, TTLs and more addresses for that DNS (tests; [`dns::Zone`]).
    #[serde(default)]
    pub dns_zone: Option<dns::Zone>,
    /// File written (JSON list of warnings) once every port is bound.
    #[serde(default)]
    pub ready_file: Option<PathBuf>,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A port could not be bound.
    #[error("{what} port {port}: cannot bind: {source}")]
    Bind {
        /// tcp, udp, sctp, dns.
        what: &'static str,
        /// The port.
        port: u16,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime or a signal handler could not be set up.
    #[error("cannot start the server: {0}")]
    Setup(#[source] std::io::Error),
    /// The ready file could not be written.
    #[error("{path}: {source}")]
    ReadyFile {
        /// The path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

/// Runs the servers until a signal arrives or the namespace is gone.
pub fn run(spec: ServeSpec) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Setup)?;
    rt.block_on(serve(spec))
}

async fn serve(spec: ServeSpec) -> Result<(), ServeError> {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let body: Arc<str> = Arc::from(format!("{}\n", spec.name));
    let mut warnings = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();

    let dns_records = spec.dns.as_ref().map(|m| {
        Arc::new(
            dns::Records::new(m.iter().map(|(n, ip)| (n.as_str(), *ip)))
                .with_zone(spec.dns_zone.clone().unwrap_or_default()),
        )
    });
    if let Some(records) = &dns_records {
        let udp = UdpSocket::bind(any(53))
            .await
            .map_err(|source| ServeError::Bind {
                what: "dns/udp",
                port: 53,
                source,
            })?;
        let tcp = TcpListener::bind(any(53))
            .await
            .map_err(|source| ServeError::Bind {
                what: "dns/tcp",
                port: 53,
                source,
            })?;
        tasks.spawn(dns_udp(udp, records.clone()));
        tasks.spawn(accept_loop(tcp, limit.clone(), {
            let records = records.clone();
            move |s| dns_tcp(s, records.clone())
        }));
    }
    let is_dns_port = |p: u16| dns_records.is_some() && p == 53;
    for &port in spec.tcp.iter().filter(|&&p| !is_dns_port(p)) {
        let l = TcpListener::bind(any(port))
            .await
            .map_err(|source| ServeError::Bind {
                what: "tcp",
                port,
                source,
            })?;
        let body = body.clone();
        tasks.spawn(accept_loop(l, limit.clone(), move |s| {
            super::http::serve_connection(s, body.clone(), IDLE)
        }));
    }
    for &port in spec.udp.iter().filter(|&&p| !is_dns_port(p)) {
        let s = UdpSocket::bind(any(port))
            .await
            .map_err(|source| ServeError::Bind {
                what: "udp",
                port,
                source,
            })?;
        tasks.spawn(udp_echo(s));
    }
    for &port in &spec.sctp {
        match sctp_listener(port) {
            Ok(l) => {
                tasks.spawn(accept_loop(l, limit.clone(), stream_echo));
            }
            Err(e) => {
                let w = format!("sctp port {port} not served: {e}");
                eprintln!("warning: {w}");
                warnings.push(w);
            }
        }
    }
    if let Some(path) = &spec.ready_file {
        let text = serde_json::to_vec(&warnings).unwrap_or_default();
        std::fs::write(path, text).map_err(|source| ServeError::ReadyFile {
            path: path.display().to_string(),
            source,
        })?;
    }
    eprintln!(
        "serving {}: tcp {:?} udp {:?} sctp {:?} dns {}",
        spec.name,
        spec.tcp,
        spec.udp,
        spec.sctp,
        dns_records.is_some()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Setup)?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(ServeError::Setup)?;
    let netns = spec.netns.clone();
    let gone = async move {
        let Some(ns) = netns else {
            return std::future::pending::<()>().await;
        };
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mine = super::netns::identity_of_pid(std::process::id());
            if super::netns::identity(&ns).is_none() || super::netns::identity(&ns) != mine {
                eprintln!("namespace {ns} is gone; exiting");
                return;
            }
        }
    };
    tokio::select! {
        _ = term.recv() => eprintln!("SIGTERM; exiting"),
        _ = int.recv() => eprintln!("SIGINT; exiting"),
        _ = gone => {}
    }
    tasks.abort_all();
    Ok(())
}

fn sctp_listener(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::IPV4,
        Type::STREAM,
        Some(Protocol::from(libc::IPPROTO_SCTP)),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&any(port).into())?;
    s.listen(128)?;
    s.set_nonblocking(true)?;
    // A one-to-one SCTP socket accepts, reads and writes like a TCP one.
    TcpListener::from_std(std::net::TcpListener::from(s))
}

async fn accept_loop<F, Fut>(listener: TcpListener, limit: Arc<Semaphore>, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let fut = handle(stream);
                tokio::spawn(async move {
                    fut.await;
                    drop(permit);
                });
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn udp_echo(socket: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                let _ = socket.send_to(&buf[..n], peer).await;
            }
            Err(e) => {
                eprintln!("udp: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn stream_echo(stream: TcpStream) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = r.take(MAX_ECHO);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(IDLE, r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn dns_udp(socket: UdpSocket, records: Arc<dns::Records>) {
    let mut buf = vec![0u8; 4096];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                if let Some(reply) = dns::answer(&buf[..n], &records, Some(dns::UDP_PAYLOAD)) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
            Err(e) => {
                eprintln!("dns/udp: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn dns_tcp(mut stream: TcpStream, records: Arc<dns::Records>) {
    for _ in 0..MAX_DNS_MESSAGES {
        let mut len = [0u8; 2];
        match tokio::time::timeout(IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(IDLE, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = dns::answer(&msg, &records, None) else {
            return;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = n.to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServeSpec {
        ServeSpec {
            name: "x/a".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn udp_echoes_datagrams() {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let task = tokio::spawn(udp_echo(s));
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(b"ping 1", addr).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"ping 1");
        task.abort();
    }

    #[tokio::test]
    async fn stream_echo_returns_what_it_reads() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(accept_loop(l, Arc::new(Semaphore::new(4)), stream_echo));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"hello");
        task.abort();
    }

    #[tokio::test]
    async fn dns_over_tcp_is_length_prefixed() {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::{Name, RecordType};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let records = Arc::new(dns::Records::new([(
            "a.example.net",
            Ipv4Addr::new(203, 0, 113, 7),
        )]));
        let task = tokio::spawn(accept_loop(l, Arc::new(Semaphore::new(4)), move |s| {
            dns_tcp(s, records.clone())
        }));
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(
            Name::from_ascii("a.example.net.").unwrap(),
            RecordType::A,
        ));
        let q = q.to_vec().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        c.write_all(&q).await.unwrap();
        let mut len = [0u8; 2];
        c.read_exact(&mut len).await.unwrap();
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut msg).await.unwrap();
        let m = Message::from_vec(&msg).unwrap();
        assert_eq!(m.metadata.id, 7);
        assert_eq!(m.answers.len(), 1);
        task.abort();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(accept_loop(l, Arc::new(Semaphore::new(1)), stream_echo));
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"a").await.unwrap();
        let mut b = [0u8; 1];
        first.read_exact(&mut b).await.unwrap();
        // The second connection is queued by the kernel but not served.
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"b").await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(300), second.read_exact(&mut b)).await;
        assert!(r.is_err(), "second connection must wait for a free slot");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b, b"b");
        task.abort();
    }

    #[test]
    fn spec_round_trips_through_json() {
        let mut s = spec();
        s.tcp = vec![80];
        s.udp = vec![5353];
        s.dns = Some([("a.example.net".to_string(), Ipv4Addr::new(203, 0, 113, 7))].into());
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ServeSpec>(&text).unwrap(), s);
    }
}
