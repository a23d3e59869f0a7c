//! Probes as the scenario format defines them, sent from inside a pod's
//! namespace (`veilctl lab probe`): resolve a name through the cluster DNS when
//! the target is a name, then connect. A TCP probe sends an HTTP/1.1 request and
//! reads the answer ([`super::http::request`], on hyper); UDP and SCTP probes send a payload and wait for its echo; a
//! probe to the DNS server's port 53 sends a DNS query. Blocking, bounded by a
//! timeout (3 s by default).
//!
//! Verdict: `allow` when the application's answer came back (and, for HTTP, it
//! is not a 403, which only the node's L7 proxy sends); `deny` otherwise.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::{Deserialize, Serialize};

/// Default probe timeout.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Where a probe goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// An address, connected to without lookup.
    Ip(IpAddr),
    /// A name, resolved through the cluster DNS first.
    Name(String),
}

/// What a probe sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeSpec {
    /// Target.
    pub target: Target,
    /// Port.
    pub port: u16,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// HTTP method and path for TCP probes (default `GET /`).
    #[serde(default)]
    pub http: Option<HttpRequest>,
    /// The Host header (default: the name, or the address).
    #[serde(default)]
    pub host: Option<String>,
    /// Send a DNS query for this name instead of HTTP/echo (probes to kube-dns).
    #[serde(default)]
    pub dns_query: Option<String>,
    /// The DNS server for names (default: the first nameserver of /etc/resolv.conf).
    #[serde(default)]
    pub dns_server: Option<IpAddr>,
    /// Timeout in milliseconds (default 3000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// An HTTP request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
}

/// What happened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// The address a name resolved to.
    pub resolved: Option<IpAddr>,
    /// The application answered.
    pub reached: bool,
    /// HTTP status, for HTTP probes that got an answer.
    pub status: Option<u16>,
    /// The start of the answer (HTTP body, echo, or DNS rcode).
    pub answer: Option<String>,
    /// Why the probe did not get an answer.
    pub error: Option<String>,
}

impl ProbeResult {
    /// `allow` per the scenario format: the application's answer came back, and
    /// it is not the node's 403.
    pub fn allowed(&self) -> bool {
        self.reached && self.status != Some(403)
    }

    fn failed(resolved: Option<IpAddr>, error: impl Into<String>) -> Self {
        ProbeResult {
            resolved,
            error: Some(error.into()),
            ..Default::default()
        }
    }
}

/// The first `nameserver` of a resolv.conf text.
pub fn nameserver(resolv_conf: &str) -> Option<IpAddr> {
    resolv_conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next()?.parse().ok())
            .flatten()
    })
}

/// Builds an A query for `name`.
fn dns_query(name: &str, id: u16) -> Result<Vec<u8>, String> {
    let mut n = Name::from_ascii(name).map_err(|e| format!("{name:?} is not a DNS name: {e}"))?;
    n.set_fqdn(true);
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(n, RecordType::A));
    m.to_vec().map_err(|e| e.to_string())
}

fn dns_exchange_udp(
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Message, String> {
    let sock = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
    sock.connect(server)
        .map_err(|e| format!("dns {server}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    sock.send(query).map_err(|e| format!("dns {server}: {e}"))?;
    let id = u16::from_be_bytes([query[0], query[1]]);
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    loop {
        let n = sock
            .recv(&mut buf)
            .map_err(|e| format!("dns {server}/udp: no answer: {e}"))?;
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if m.metadata.id == id {
                return Ok(m);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("dns {server}/udp: no answer"));
        }
    }
}

fn dns_exchange_tcp(
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Message, String> {
    let mut s = TcpStream::connect_timeout(&server, timeout)
        .map_err(|e| format!("dns {server}/tcp: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(query.len()).map_err(|_| "query too long".to_string())?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(query);
    s.write_all(&out)
        .map_err(|e| format!("dns {server}/tcp: {e}"))?;
    let mut l = [0u8; 2];
    s.read_exact(&mut l)
        .map_err(|e| format!("dns {server}/tcp: no answer: {e}"))?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(l))];
    s.read_exact(&mut msg)
        .map_err(|e| format!("dns {server}/tcp: {e}"))?;
    Message::from_vec(&msg).map_err(|e| format!("dns {server}/tcp: bad answer: {e}"))
}

/// Resolves `name` to an IPv4 address through `server`: UDP, retried over TCP
/// when the answer is truncated.
pub fn resolve(name: &str, server: IpAddr, timeout: Duration) -> Result<IpAddr, String> {
    let query = dns_query(name, rand::random())?;
    let addr = SocketAddr::new(server, 53);
    let mut m = dns_exchange_udp(addr, &query, timeout)?;
    if m.metadata.truncation {
        m = dns_exchange_tcp(addr, &query, timeout)?;
    }
    if m.metadata.response_code != ResponseCode::NoError {
        return Err(format!("{name}: {}", m.metadata.response_code));
    }
    m.answers
        .iter()
        .find_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .ok_or_else(|| format!("{name}: no address"))
}

fn udp_echo(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    let sock = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
    sock.connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    sock.send(payload)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = vec![0u8; 65536];
    let n = sock
        .recv(&mut buf)
        .map_err(|e| format!("no echo from {addr}: {e}"))?;
    buf.truncate(n);
    Ok(buf)
}

fn sctp_echo(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(Protocol::from(libc::IPPROTO_SCTP)),
    )
    .map_err(|e| format!("sctp: {e}"))?;
    s.connect_timeout(&addr.into(), timeout)
        .map_err(|e| format!("connect {addr}/sctp: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut s = std::net::TcpStream::from(s);
    s.write_all(payload)
        .map_err(|e| format!("send to {addr}/sctp: {e}"))?;
    let mut buf = vec![0u8; payload.len()];
    s.read_exact(&mut buf)
        .map_err(|e| format!("no echo from {addr}/sctp: {e}"))?;
    Ok(buf)
}

/// Sends the probe from namespace `netns`, by running `veilctl lab probe-exec`
/// there (`pod` names the source in errors).
pub fn run_in(
    netns: &str,
    veilctl: &std::path::Path,
    spec: &ProbeSpec,
    pod: &str,
) -> Result<ProbeResult, super::LabError> {
    let json = serde_json::to_string(spec).map_err(super::LabError::Spec)?;
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(veilctl)
        .args(["lab", "probe-exec", "--spec", &json])
        .output()
        .map_err(|source| super::LabError::Spawn {
            netns: netns.to_string(),
            program: veilctl.display().to_string(),
            source,
        })?;
    serde_json::from_slice(&out.stdout).map_err(|e| super::LabError::Probe {
        pod: pod.to_string(),
        reason: format!(
            "{e}; stderr: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// Sends the probe (from the current network namespace).
pub fn run(spec: &ProbeSpec) -> ProbeResult {
    let timeout = spec.timeout_ms.map_or(TIMEOUT, Duration::from_millis);
    let dns_server = || {
        spec.dns_server.or_else(|| {
            std::fs::read_to_string("/etc/resolv.conf")
                .ok()
                .and_then(|t| nameserver(&t))
        })
    };
    let (ip, resolved) = match &spec.target {
        Target::Ip(ip) => (*ip, None),
        Target::Name(name) => {
            let Some(server) = dns_server() else {
                return ProbeResult::failed(
                    None,
                    "no DNS server (no nameserver in /etc/resolv.conf)",
                );
            };
            match resolve(name, server, timeout) {
                Ok(ip) => (ip, Some(ip)),
                Err(e) => return ProbeResult::failed(None, format!("lookup failed: {e}")),
            }
        }
    };
    let addr = SocketAddr::new(ip, spec.port);
    let protocol = spec.protocol.to_ascii_uppercase();
    if let Some(name) = &spec.dns_query {
        let query = match dns_query(name, rand::random()) {
            Ok(q) => q,
            Err(e) => return ProbeResult::failed(resolved, e),
        };
        let answer = if protocol == "TCP" {
            dns_exchange_tcp(addr, &query, timeout)
        } else {
            dns_exchange_udp(addr, &query, timeout)
        };
        return match answer {
            Ok(m) => ProbeResult {
                resolved,
                reached: true,
                answer: Some(m.metadata.response_code.to_string()),
                ..Default::default()
            },
            Err(e) => ProbeResult::failed(resolved, e),
        };
    }
    let payload = format!("veil-probe {:016x}\n", rand::random::<u64>()).into_bytes();
    match protocol.as_str() {
        "TCP" => {
            let host = spec.host.clone().unwrap_or_else(|| match &spec.target {
                Target::Name(n) => n.clone(),
                Target::Ip(ip) => ip.to_string(),
            });
            let req = spec.http.clone().unwrap_or(HttpRequest {
                method: "GET".into(),
                path: "/".into(),
            });
            match super::http::request(addr, &req.method, &req.path, &host, timeout) {
                Ok((status, body)) => ProbeResult {
                    resolved,
                    reached: true,
                    status: Some(status),
                    answer: Some(body.chars().take(200).collect()),
                    error: None,
                },
                Err(e) => ProbeResult::failed(resolved, e),
            }
        }
        "UDP" | "SCTP" => {
            let r = if protocol == "UDP" {
                udp_echo(addr, &payload, timeout)
            } else {
                sctp_echo(addr, &payload, timeout)
            };
            match r {
                Ok(echo) if echo == payload => ProbeResult {
                    resolved,
                    reached: true,
                    answer: Some(String::from_utf8_lossy(&echo).trim().to_string()),
                    ..Default::default()
                },
                Ok(other) => ProbeResult::failed(
                    resolved,
                    format!("unexpected answer {:?}", String::from_utf8_lossy(&other)),
                ),
                Err(e) => ProbeResult::failed(resolved, e),
            }
        }
        other => ProbeResult::failed(
            resolved,
            format!("protocol {other:?} is not TCP, UDP or SCTP"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn nameserver_is_the_first_one() {
        let t = "# c\noptions ndots:1\nnameserver 10.244.0.2\nnameserver 10.244.0.3\n";
        assert_eq!(nameserver(t), Some("10.244.0.2".parse().unwrap()));
        assert_eq!(nameserver("search x\n"), None);
    }

    #[test]
    fn a_403_is_a_deny_and_a_200_an_allow() {
        let mut r = ProbeResult {
            reached: true,
            status: Some(200),
            ..Default::default()
        };
        assert!(r.allowed());
        r.status = Some(403);
        assert!(!r.allowed());
        assert!(!ProbeResult::failed(None, "x").allowed());
    }

    #[test]
    fn tcp_probe_sends_http_and_reads_the_answer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nx/a\n")
                .unwrap();
            req
        });
        let r = run(&ProbeSpec {
            target: Target::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port,
            protocol: "TCP".into(),
            http: Some(HttpRequest {
                method: "POST".into(),
                path: "/admin".into(),
            }),
            host: Some("a.x".into()),
            dns_query: None,
            dns_server: None,
            timeout_ms: Some(3000),
        });
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /admin HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Host: a.x\r\n"), "{req}");
        assert!(r.allowed(), "{r:?}");
        assert_eq!(r.answer.as_deref(), Some("x/a\n"));
    }

    #[test]
    fn refused_connections_and_silent_udp_are_denied() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = |protocol: &str| ProbeSpec {
            target: Target::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port,
            protocol: protocol.into(),
            http: None,
            host: None,
            dns_query: None,
            dns_server: None,
            timeout_ms: Some(300),
        };
        let r = run(&spec("TCP"));
        assert!(!r.allowed() && r.error.is_some(), "{r:?}");
        let r = run(&spec("UDP"));
        assert!(!r.allowed(), "{r:?}");
        let r = run(&spec("ICMP"));
        assert!(r.error.unwrap().contains("ICMP"));
    }

    #[test]
    fn dns_exchange_gets_answers_for_known_names_and_nxdomain_otherwise() {
        let records =
            super::super::dns::Records::new([("pay.example.net", Ipv4Addr::new(203, 0, 113, 50))]);
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            for _ in 0..2 {
                let (n, peer) = server.recv_from(&mut buf).unwrap();
                let a = super::super::dns::answer(&buf[..n], &records, Some(512)).unwrap();
                server.send_to(&a, peer).unwrap();
            }
        });
        let q = dns_query("pay.example.net", 7).unwrap();
        let m = dns_exchange_udp(addr, &q, Duration::from_secs(3)).unwrap();
        assert_eq!(m.answers.len(), 1);
        let q = dns_query("nope.example.net", 8).unwrap();
        let m = dns_exchange_udp(addr, &q, Duration::from_secs(3)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        t.join().unwrap();
    }

    #[test]
    fn spec_json_round_trips() {
        let s = ProbeSpec {
            target: Target::Name("pay.example.net".into()),
            port: 443,
            protocol: "TCP".into(),
            http: None,
            host: None,
            dns_query: None,
            dns_server: Some("10.244.0.2".parse().unwrap()),
            timeout_ms: None,
        };
        let t = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ProbeSpec>(&t).unwrap(), s);
    }
}
