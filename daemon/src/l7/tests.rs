//! The proxy's HTTP behaviour, in process over loopback: a real upstream
//! server (hyper), the proxy's connection handler, and a raw TCP client
//! sending bytes as written. Needs root (the upstream socket's `SO_MARK`
//! and `IP_TRANSPARENT`); it changes nothing in any namespace.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use veil_policy::compile::L7Rule;
use veil_policy::model::{Direction, HttpMatch, PathMatch};

use super::metrics::{Edge, L7Metrics};
use super::{conn, Limits, Shared};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Upstream: counts requests; answers `<METHOD> <path> <body bytes>` in a
/// chunked body; answers 101 to an Upgrade and then echoes bytes.
async fn upstream(seen: Arc<AtomicUsize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.fetch_add(1, Ordering::SeqCst);
                        if req.headers().contains_key(hyper::header::UPGRADE) {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(u) = on.await {
                                    let mut io = TokioIo::new(u);
                                    let mut buf = [0u8; 64];
                                    while let Ok(n) = io.read(&mut buf).await {
                                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            });
                            let mut r = Response::new(http_body_util::Either::Right(Full::new(
                                Bytes::new(),
                            )));
                            *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                            r.headers_mut()
                                .insert(hyper::header::UPGRADE, "echo".parse().unwrap());
                            r.headers_mut()
                                .insert(hyper::header::CONNECTION, "upgrade".parse().unwrap());
                            return Ok::<_, Infallible>(r);
                        }
                        let head = format!("{} {} ", req.method(), req.uri());
                        let mut n = 0usize;
                        let mut body = req.into_body();
                        while let Some(Ok(f)) = body.frame().await {
                            n += f.data_ref().map_or(0, |d| d.len());
                        }
                        if head.starts_with("POST /api/len ") {
                            // An answer with a Content-Length.
                            let b = Full::new(Bytes::from(format!("{head}{n}")));
                            return Ok(Response::new(http_body_util::Either::Right(b)));
                        }
                        // A streamed (chunked) answer, in one chunk.
                        let chunks = vec![Ok::<_, Infallible>(hyper::body::Frame::data(
                            Bytes::from(format!("{head}{n}")),
                        ))];
                        let b = http_body_util::StreamBody::new(futures::stream::iter(chunks));
                        Ok(Response::new(http_body_util::Either::Left(b)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn rules() -> Vec<L7Rule> {
    vec![L7Rule {
        policy: "vnp app/api-only".into(),
        tier: "default".into(),
        direction: Direction::Ingress,
        index: 0,
        http: HttpMatch {
            methods: vec!["GET".into(), "POST".into()],
            paths: vec![PathMatch::Prefix("/api/".into())],
            hosts: vec![],
        },
    }]
}

struct Setup {
    proxy: SocketAddr,
    seen: Arc<AtomicUsize>,
    metrics: L7Metrics,
    _senders: (
        watch::Sender<Arc<crate::controller::Desired>>,
        watch::Sender<Arc<crate::datastore::Snapshot>>,
    ),
}

async fn setup(limits: Limits) -> Setup {
    let seen = Arc::new(AtomicUsize::new(0));
    let up = upstream(seen.clone()).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    let (dtx, desired) = watch::channel(Arc::default());
    let (stx, snapshots) = watch::channel(Arc::default());
    let metrics = L7Metrics::default();
    let shared = Arc::new(Shared {
        desired,
        snapshots,
        metrics: metrics.clone(),
        flows: None,
        names: None,
        limits,
    });
    tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = l.accept().await else {
                return;
            };
            let edge = Edge {
                src_namespace: "app".into(),
                src_workload: "client".into(),
                dst_namespace: "app".into(),
                dst_workload: "server".into(),
            };
            tokio::spawn(conn::serve_http(s, peer, up, rules(), edge, shared.clone()));
        }
    });
    Setup {
        proxy,
        seen,
        metrics,
        _senders: (dtx, stx),
    }
}

/// Reads until `n` complete responses are in (or the peer closes, or 5 s).
async fn read_responses(s: &mut TcpStream, n: usize) -> String {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if complete(&text) >= n {
            return text;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return text,
            Ok(Ok(k)) => out.extend_from_slice(&buf[..k]),
        }
    }
}

/// Complete responses in `t` (chunked ends with `0\r\n\r\n`, others by
/// Content-Length).
fn complete(t: &str) -> usize {
    let mut count = 0;
    let mut rest = t;
    while let Some(h) = rest.find("\r\n\r\n") {
        let head = &rest[..h];
        let body = &rest[h + 4..];
        if head.contains(" 100 Continue") || head.contains(" 101 ") {
            count += 1;
            rest = body;
            continue;
        }
        let lower = head.to_ascii_lowercase();
        if lower.contains("transfer-encoding: chunked") {
            let Some(e) = body
                .find("\r\n0\r\n\r\n")
                .or(body.starts_with("0\r\n\r\n").then_some(0))
            else {
                return count;
            };
            count += 1;
            rest = &body[e + if e == 0 { 5 } else { 7 }..];
        } else {
            let len = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() < len {
                return count;
            }
            count += 1;
            rest = &body[len..];
        }
    }
    count
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

macro_rules! root_or_skip {
    () => {
        if !is_root() {
            eprintln!("skipping: needs root (SO_MARK, IP_TRANSPARENT)");
            return;
        }
    };
}

#[tokio::test]
async fn keep_alive_and_pipelining_answer_in_order_and_denied_requests_never_reach_upstream() {
    root_or_skip!();
    let st = setup(Limits::default()).await;
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    c.write_all(
        b"GET /api/a HTTP/1.1\r\nHost: s\r\n\r\n\
          DELETE /api/a HTTP/1.1\r\nHost: s\r\n\r\n\
          GET /admin HTTP/1.1\r\nHost: s\r\n\r\n\
          get /api/a HTTP/1.1\r\nHost: s\r\n\r\n\
          POST /api/b HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await
    .unwrap();
    let t = read_responses(&mut c, 5).await;
    let statuses: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .map(|l| &l[9..12])
        .collect();
    assert_eq!(statuses, ["200", "403", "403", "403", "200"], "{t}");
    assert!(t.contains("GET /api/a 0"), "{t}");
    assert!(t.contains("POST /api/b 3"), "{t}");
    assert!(
        t.contains("DELETE /api/a denied by vnp app/api-only ingress rule 0 (tier default)"),
        "{t}"
    );
    assert_eq!(
        st.seen.load(Ordering::SeqCst),
        2,
        "only allowed requests reach upstream"
    );
    // Keep-alive: the same connection serves another request.
    c.write_all(b"GET /api/c HTTP/1.1\r\nHost: s\r\n\r\n")
        .await
        .unwrap();
    let t = read_responses(&mut c, 1).await;
    assert!(t.contains("GET /api/c 0"), "{t}");
    let mut s = String::new();
    let mut r = prometheus_client::registry::Registry::default();
    st.metrics.register(&mut r);
    prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
    assert!(s.contains("veil_l7_denied_requests_total{src_namespace=\"app\",src_workload=\"client\",dst_namespace=\"app\",dst_workload=\"server\",method=\"DELETE\"} 1"), "{s}");
    assert!(
        s.contains("method=\"OTHER\"} 1"),
        "lower-case get is OTHER: {s}"
    );
}

#[tokio::test]
async fn chunked_and_large_bodies_are_streamed_both_ways() {
    root_or_skip!();
    let st = setup(Limits::default()).await;
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    c.write_all(
        b"POST /api/up HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let t = read_responses(&mut c, 1).await;
    assert!(
        t.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{t}"
    );
    assert!(t.contains("POST /api/up 11"), "{t}");
    // 32 MiB, written while the answer is awaited: streamed, not buffered.
    let size = 32usize << 20;
    let head = format!("POST /api/big HTTP/1.1\r\nHost: s\r\nContent-Length: {size}\r\n\r\n");
    c.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..32 {
        c.write_all(&chunk).await.unwrap();
    }
    let t = read_responses(&mut c, 1).await;
    assert!(t.contains(&format!("POST /api/big {size}")), "{t}");
}

#[tokio::test]
async fn small_bodies_with_a_length_keep_their_framing_both_ways() {
    root_or_skip!();
    let st = setup(Limits::default()).await;
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    c.write_all(
        b"POST /api/len HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhello\
          POST /api/len HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n\r\n\
          POST /api/len HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await
    .unwrap();
    let t = read_responses(&mut c, 3).await;
    let bodies: Vec<&str> = t
        .split("\r\n\r\n")
        .skip(1)
        .map(|b| b.split("HTTP/1.1").next().unwrap_or(""))
        .collect();
    assert_eq!(
        bodies,
        ["POST /api/len 5", "POST /api/len 0", "POST /api/len 3"],
        "{t}"
    );
    assert_eq!(
        t.to_ascii_lowercase().matches("content-length: 15").count(),
        3,
        "{t}"
    );
    assert_eq!(st.seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn expect_100_continue_is_answered_only_for_allowed_requests() {
    root_or_skip!();
    let st = setup(Limits::default()).await;
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    c.write_all(
        b"POST /api/x HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let t = read_responses(&mut c, 1).await;
    assert!(t.starts_with("HTTP/1.1 100 Continue"), "{t}");
    c.write_all(b"data").await.unwrap();
    let t = read_responses(&mut c, 1).await;
    assert!(t.contains("POST /api/x 4"), "{t}");
    let mut d = TcpStream::connect(st.proxy).await.unwrap();
    d.write_all(
        b"POST /private HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let t = read_responses(&mut d, 1).await;
    assert!(t.starts_with("HTTP/1.1 403"), "{t}");
    assert!(!t.contains("100 Continue"), "{t}");
}

#[tokio::test]
async fn an_allowed_upgrade_is_passed_through_byte_for_byte() {
    root_or_skip!();
    let st = setup(Limits::default()).await;
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    c.write_all(b"GET /api/ws HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let t = read_responses(&mut c, 1).await;
    assert!(t.starts_with("HTTP/1.1 101"), "{t}");
    let msg = b"ping over the upgraded connection";
    c.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; 64];
    let mut got = Vec::new();
    while got.len() < msg.len() {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, msg);
}

#[tokio::test]
async fn non_http_and_http_1_0_are_closed() {
    root_or_skip!();
    let st = setup(Limits::default()).await;
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    // A TLS ClientHello's first bytes.
    c.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ])
    .await
    .unwrap();
    assert!(closed(&mut c).await);
    let mut d = TcpStream::connect(st.proxy).await.unwrap();
    d.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    assert!(closed(&mut d).await);
    let mut e = TcpStream::connect(st.proxy).await.unwrap();
    e.write_all(b"GET /api/a HTTP/1.0\r\n\r\n").await.unwrap();
    let t = read_responses(&mut e, 1).await;
    assert!(
        t.starts_with("HTTP/1.1 505") || t.starts_with("HTTP/1.0 505"),
        "{t}"
    );
    assert!(closed(&mut e).await);
    assert_eq!(st.seen.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn hostile_requests_are_refused_and_the_proxy_keeps_serving() {
    root_or_skip!();
    let st = setup(Limits {
        header_timeout: Duration::from_millis(500),
        ..Limits::default()
    })
    .await;
    // Oversized headers.
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    let big = format!(
        "GET /api/a HTTP/1.1\r\nHost: s\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let _ = c.write_all(big.as_bytes()).await;
    let t = read_responses(&mut c, 1).await;
    assert!(t.is_empty() || t.starts_with("HTTP/1.1 431"), "{t}");
    assert!(closed(&mut c).await);
    // Too many header fields (a small head): refused, the connection closed.
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let _ = c
        .write_all(format!("GET /api/a HTTP/1.1\r\nHost: s\r\n{many}\r\n").as_bytes())
        .await;
    let t = read_responses(&mut c, 1).await;
    assert!(t.is_empty() || t.starts_with("HTTP/1.1 431"), "{t}");
    assert!(closed(&mut c).await);
    // Slowloris: a head that never ends is cut off by the header timeout.
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    c.write_all(b"GET /api/a HTTP/1.1\r\nHost: s\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = c.write_all(b"X-Slow: 1\r\n").await;
    }
    assert!(closed(&mut c).await);
    assert!(started.elapsed() < Duration::from_secs(4));
    // Malformed chunking.
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    c.write_all(b"POST /api/a HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nhello\r\n0\r\n\r\n")
        .await
        .unwrap();
    let t = read_responses(&mut c, 1).await;
    assert!(
        !t.contains(" 200 OK") || !t.contains("POST /api/a 5"),
        "{t}"
    );
    assert!(closed(&mut c).await);
    // Smuggling: both Content-Length and Transfer-Encoding.
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    c.write_all(b"POST /api/a HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: s\r\n\r\n")
        .await
        .unwrap();
    let t = read_responses(&mut c, 2).await;
    // Read by its chunked body only (empty), answered, and the connection
    // closed: the smuggled request is never read.
    assert!(t.contains("POST /api/a 0"), "{t}");
    assert!(!t.contains("/admin"), "{t}");
    assert!(closed(&mut c).await);
    let before = st.seen.load(Ordering::SeqCst);
    // Still serving.
    let mut c = TcpStream::connect(st.proxy).await.unwrap();
    c.write_all(b"GET /api/ok HTTP/1.1\r\nHost: s\r\n\r\n")
        .await
        .unwrap();
    let t = read_responses(&mut c, 1).await;
    assert!(t.contains("GET /api/ok 0"), "{t}");
    assert_eq!(st.seen.load(Ordering::SeqCst), before + 1);
    assert_eq!(before, 1, "only the smuggling POST reached upstream");
}

#[tokio::test]
async fn when_the_client_closes_its_upstream_connection_is_closed_and_the_task_ends() {
    root_or_skip!();
    // A raw upstream: answers one request, then reports whether it saw EOF.
    let ul = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = ul.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        let (mut s, _) = ul.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "upstream: EOF before a request");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        closed(&mut s).await
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    let (_dtx, desired) = watch::channel(Arc::default());
    let (_stx, snapshots) = watch::channel(Arc::default());
    let shared = Arc::new(Shared {
        desired,
        snapshots,
        metrics: L7Metrics::default(),
        flows: None,
        names: None,
        limits: Limits::default(),
    });
    let served = tokio::spawn(async move {
        let (s, peer) = l.accept().await.unwrap();
        let edge = Edge {
            src_namespace: "app".into(),
            src_workload: "client".into(),
            dst_namespace: "app".into(),
            dst_workload: "server".into(),
        };
        conn::serve_http(s, peer, up, rules(), edge, shared).await;
    });
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"GET /api/x HTTP/1.1\r\nHost: s\r\n\r\n")
        .await
        .unwrap();
    let t = read_responses(&mut c, 1).await;
    assert!(t.starts_with("HTTP/1.1 200"), "{t}");
    drop(c);
    let saw_eof = tokio::time::timeout(Duration::from_secs(5), upstream)
        .await
        .expect("upstream finished")
        .unwrap();
    assert!(saw_eof, "the upstream connection is closed with its client");
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the connection's task ends")
        .unwrap();
}
