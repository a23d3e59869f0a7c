//! Load tool of bench/l7 (run inside lab pods' namespaces):
//!
//! - `serve PORT...`: HTTP/1.1 server answering every request with 200 and
//!   a 1 KiB body (the request body is read and dropped);
//! - `load ADDR RATE CONNS SECONDS`: POSTs of 1 KiB at RATE requests/s spread
//!   over CONNS keep-alive connections; prints `count errors p50 p90 p99`
//!   (milliseconds) as JSON;
//! - `saturate ADDR CONNS SECONDS`: as fast as possible; prints requests/s;
//! - `hold ADDR N SECONDS`: opens N connections, one request each, keeps
//!   them open for SECONDS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

const BODY: usize = 1024;

async fn serve(ports: Vec<u16>) {
    let body = Bytes::from(vec![b'r'; BODY]);
    for port in ports {
        let l = TcpListener::bind(("0.0.0.0", port)).await.expect("bind");
        let body = body.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let body = body.clone();
                            async move {
                                let _ = req.into_body().collect().await;
                                Ok::<_, Infallible>(Response::new(Full::new(body)))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    }
    std::future::pending::<()>().await;
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    tx
}

async fn one(tx: &mut Sender, addr: SocketAddr) -> Result<Duration, ()> {
    let req = Request::post("/api/bench")
        .header("host", addr.to_string())
        .body(Full::new(Bytes::from(vec![b'q'; BODY])))
        .map_err(|_| ())?;
    let t = Instant::now();
    let resp = tx.send_request(req).await.map_err(|_| ())?;
    let ok = resp.status() == 200;
    let _ = resp.into_body().collect().await.map_err(|_| ())?;
    let d = t.elapsed();
    if ok {
        Ok(d)
    } else {
        Err(())
    }
}

fn pct(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

async fn load(addr: SocketAddr, rate: u64, conns: u64, secs: u64) {
    let lat = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let per_conn = Duration::from_secs_f64(conns as f64 / rate as f64);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..conns {
        let lat = lat.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = connect(addr).await;
            // Spread the connections' phases.
            tokio::time::sleep(per_conn.mul_f64(i as f64 / conns as f64)).await;
            let mut tick = tokio::time::interval(per_conn);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < end {
                tick.tick().await;
                match one(&mut tx, addr).await {
                    Ok(d) => lat.lock().await.push(d),
                    Err(()) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tx = connect(addr).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut v = lat.lock().await.clone();
    v.sort();
    println!(
        "{{\"count\":{},\"errors\":{},\"p50\":{:.4},\"p90\":{:.4},\"p99\":{:.4}}}",
        v.len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        pct(&v, 0.5),
        pct(&v, 0.9),
        pct(&v, 0.99)
    );
}

async fn saturate(addr: SocketAddr, conns: u64, secs: u64) {
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = connect(addr).await;
            while Instant::now() < end {
                if one(&mut tx, addr).await.is_ok() {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    tx = connect(addr).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let n = done.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{{\"requests\":{n},\"per_second\":{:.1}}}",
        n as f64 / started.elapsed().as_secs_f64()
    );
}

async fn hold(addr: SocketAddr, n: u64, secs: u64) {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut tx = connect(addr).await;
        let _ = one(&mut tx, addr).await;
        held.push(tx);
    }
    println!("{{\"held\":{}}}", held.len());
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 { a.get(i).and_then(|s| s.parse().ok()).expect("a number") };
    let addr = || -> SocketAddr { a[1].parse().expect("ADDR:PORT") };
    match a.first().map(String::as_str) {
        Some("serve") => serve(a[1..].iter().map(|p| p.parse().expect("port")).collect()).await,
        Some("load") => load(addr(), num(2), num(3), num(4)).await,
        Some("saturate") => saturate(addr(), num(2), num(3)).await,
        Some("hold") => hold(addr(), num(2), num(3)).await,
        _ => {
            eprintln!("usage: l7_bench serve PORT... | load ADDR RATE CONNS SECS | saturate ADDR CONNS SECS | hold ADDR N SECS");
            std::process::exit(64);
        }
    }
}
