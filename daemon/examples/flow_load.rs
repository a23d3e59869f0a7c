//! The flow benchmark's load generator (bench/flows): short TCP connections
//! at a fixed rate, each opened without blocking and closed with RST
//! (SO_LINGER 0, so no port waits in TIME_WAIT), many in flight at once; or
//! the server side, accepting and dropping connections on several threads.
//! Bounded in time and in sockets in flight. Runs in the caller's network
//! namespace (`ip netns exec` it into a pod's).
//!
//!   flow_load connect ADDR:PORT RATE SECONDS [THREADS]
//!       prints `made=N failed=N seconds=S`
//!   flow_load serve ADDR:PORT SECONDS [THREADS]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Connections in flight per thread at most.
const IN_FLIGHT: usize = 1024;
/// A connect not done after this is a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn usage() -> ! {
    eprintln!("usage: flow_load connect ADDR:PORT RATE SECONDS [THREADS] | serve ADDR:PORT SECONDS [THREADS]");
    std::process::exit(64)
}

fn arg<T: std::str::FromStr>(a: &[String], i: usize) -> T {
    a.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage())
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("connect") => {
            let dst: SocketAddr = arg(&a, 2);
            let rate: f64 = arg(&a, 3);
            let secs: u64 = arg::<u64>(&a, 4).min(600);
            let threads: usize = a
                .get(5)
                .and_then(|s| s.parse().ok())
                .unwrap_or(1)
                .clamp(1, 64);
            let start = Instant::now();
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let r = rate / threads as f64;
                    std::thread::spawn(move || connect_loop(dst, r, Duration::from_secs(secs)))
                })
                .collect();
            let (mut made, mut failed) = (0u64, 0u64);
            for h in hs {
                let (m, f) = h.join().expect("worker");
                made += m;
                failed += f;
            }
            println!(
                "made={made} failed={failed} seconds={:.2}",
                start.elapsed().as_secs_f64()
            );
        }
        Some("serve") => {
            let addr: SocketAddr = arg(&a, 2);
            let secs: u64 = arg::<u64>(&a, 3).min(900);
            let threads: usize = a
                .get(4)
                .and_then(|s| s.parse().ok())
                .unwrap_or(2)
                .clamp(1, 64);
            let end = Instant::now() + Duration::from_secs(secs);
            let hs: Vec<_> = (0..threads)
                .map(|_| std::thread::spawn(move || serve(addr, end)))
                .collect();
            for h in hs {
                h.join().expect("server");
            }
        }
        _ => usage(),
    }
}

/// Opens connections to `dst` at `rate` per second for `dur`: (made, failed).
fn connect_loop(dst: SocketAddr, rate: f64, dur: Duration) -> (u64, u64) {
    let start = Instant::now();
    let mut inflight: Vec<(Socket, Instant)> = Vec::with_capacity(IN_FLIGHT);
    let (mut launched, mut made, mut failed) = (0u64, 0u64, 0u64);
    loop {
        let now = Instant::now();
        let elapsed = now.duration_since(start);
        let running = elapsed < dur;
        if !running && inflight.is_empty() {
            break;
        }
        if running {
            let due = (elapsed.as_secs_f64() * rate) as u64;
            while launched < due && inflight.len() < IN_FLIGHT {
                launched += 1;
                match open(dst) {
                    Ok(Some(s)) => inflight.push((s, now)),
                    Ok(None) => made += 1,
                    Err(_) => failed += 1,
                }
            }
        }
        let before = inflight.len();
        inflight.retain(|(s, t0)| match s.take_error() {
            Ok(Some(_)) | Err(_) => {
                failed += 1;
                false
            }
            Ok(None) => match s.peer_addr() {
                Ok(_) => {
                    made += 1;
                    close_rst(s);
                    false
                }
                Err(_) if t0.elapsed() > CONNECT_TIMEOUT => {
                    failed += 1;
                    false
                }
                Err(_) => true,
            },
        });
        if inflight.len() == before {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    (made, failed)
}

/// Starts a non-blocking connect: `Ok(None)` when it completed at once (the
/// socket is closed already), `Ok(Some(s))` while in progress.
fn open(dst: SocketAddr) -> std::io::Result<Option<Socket>> {
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    match s.connect(&dst.into()) {
        Ok(()) => {
            close_rst(&s);
            Ok(None)
        }
        Err(e)
            if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == ErrorKind::WouldBlock =>
        {
            Ok(Some(s))
        }
        Err(e) => Err(e),
    }
}

/// Closing with SO_LINGER 0 sends RST: the port is free at once.
fn close_rst(s: &Socket) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// Accepts and drops connections on `addr` until `end` (SO_REUSEPORT: one
/// listener per thread).
fn serve(addr: SocketAddr, end: Instant) {
    let l =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).expect("socket");
    l.set_reuse_port(true).expect("SO_REUSEPORT");
    l.set_reuse_address(true).expect("SO_REUSEADDR");
    l.bind(&addr.into()).expect("bind");
    l.listen(4096).expect("listen");
    l.set_nonblocking(true).expect("nonblocking");
    while Instant::now() < end {
        match l.accept() {
            Ok((c, _)) => drop(c),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}
