//! HTTP/1.1 for the lab, on hyper: the workload server's side ([`serve_connection`]:
//! every request gets 200 and a body naming the pod) and the probe's side
//! ([`request`]: one request, the status and the start of the body).
//!
//! Both are bounded: the server limits header count and size, drains request
//! bodies up to [`MAX_BODY`] (a larger one closes the connection after the
//! answer), closes a connection idle for its `idle` time or after
//! [`MAX_REQUESTS`] requests; the client keeps at most [`MAX_ANSWER`] bytes of
//! a body and gives each step (connect, answer, body) the probe's timeout.
//! Header names are written in title case (`Content-Length`), as the lab's
//! own hand-written server and client did and as scripts reading raw answers
//! expect.
//!
//! What it does not do: TLS, HTTP/2, or routing: the path and method do not
//! change the answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// Largest request body drained; a larger one closes the connection.
pub const MAX_BODY: u64 = 1024 * 1024;
/// Most requests per connection.
pub const MAX_REQUESTS: usize = 1000;
/// Most header lines per request.
const MAX_HEADERS: usize = 100;
/// Largest request head buffered (hyper's minimum is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// Most bytes of an answer's body the client keeps.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Reads and discards `body`, up to [`MAX_BODY`] bytes and `idle` between
/// frames; whether it was read whole.
async fn drain(mut body: Incoming, idle: Duration) -> bool {
    let mut total = 0u64;
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    total += d.len() as u64;
                    if total > MAX_BODY {
                        return false;
                    }
                }
            }
            Ok(None) => return true,
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// Serves HTTP/1.1 on `stream` until the client closes, a request says
/// `Connection: close` (or is HTTP/1.0 without keep-alive), the connection
/// stays idle for `idle`, or it has served [`MAX_REQUESTS`]. Every request
/// gets `200 OK` with `body` (`text/plain`); a request hyper cannot parse
/// gets its 4xx and the connection closes.
pub async fn serve_connection(stream: TcpStream, body: Arc<str>, idle: Duration) {
    let served = Arc::new(AtomicUsize::new(0));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let body = body.clone();
        let served = served.clone();
        async move {
            let n = served.fetch_add(1, Ordering::Relaxed) + 1;
            let drained = drain(req.into_body(), idle).await;
            let mut resp = Response::new(Full::new(Bytes::from(body.as_bytes().to_vec())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            if !drained || n >= MAX_REQUESTS {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        if !e.is_incomplete_message() && !e.is_timeout() {
            eprintln!("http: {e}");
        }
    }
}

/// Sends one request (`method path`, `Host: host`, `Connection: close`) to
/// `addr` and returns the status and the start of the body (what arrived of
/// it within `timeout`, at most [`MAX_ANSWER`] bytes). Runs on a runtime of
/// its own: for blocking callers.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(exchange(addr, method, path, host, timeout))
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .header(USER_AGENT, "veil-lab-probe")
        .header(ACCEPT, "*/*")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request {path:?} for {host:?}: {e}"))?;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect {addr}: timed out"))?
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let conn = tokio::spawn(conn);
    let answer = tokio::time::timeout(timeout, sender.send_request(req)).await;
    let resp = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            conn.abort();
            return Err(if e.is_parse() {
                format!("no HTTP answer from {addr}: {e}")
            } else {
                format!("no answer from {addr}: {e}")
            });
        }
        Err(_) => {
            conn.abort();
            return Err(format!("no answer from {addr}: timed out"));
        }
    };
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut kept = Vec::new();
    while kept.len() < MAX_ANSWER {
        match tokio::time::timeout(timeout, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let room = MAX_ANSWER - kept.len();
                    kept.extend_from_slice(&d[..d.len().min(room)]);
                }
            }
            // The end, or a body cut short: keep what came.
            Ok(None) | Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    conn.abort();
    Ok((status, String::from_utf8_lossy(&kept).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Sends `request` on one connection to a server answering with the body
    /// `x/a` (idle time `idle`) and reads until the server closes it (5 s at
    /// most).
    async fn exchange_raw(request: &[u8], idle: Duration) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            serve_connection(s, Arc::from("x/a\n"), idle).await;
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out))
            .await
            .expect("the server closes the connection")
            .unwrap();
        task.abort();
        out
    }

    async fn http_exchange(request: &[u8]) -> String {
        exchange_raw(request, Duration::from_secs(10)).await
    }

    #[tokio::test]
    async fn http_answers_every_request_with_the_pod_name() {
        let out = http_exchange(b"GET / HTTP/1.1\r\nHost: a.x\r\n\r\nPOST /admin HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /z HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
        assert_eq!(out.matches("\r\n\r\nx/a\n").count(), 3, "{out}");
        assert!(out.contains("Connection: close"), "{out}");
        assert!(out.contains("Content-Type: text/plain"), "{out}");
    }

    #[tokio::test]
    async fn chunked_bodies_are_drained() {
        let out = http_exchange(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.0\r\n\r\n").await;
        assert_eq!(out.matches("200 OK").count(), 2, "{out}");
    }

    #[tokio::test]
    async fn http10_closes_unless_asked_to_keep_alive() {
        // Closed after one answer (the exchange ends), the second request unread.
        let out = http_exchange(b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n").await;
        assert_eq!(out.matches("200 OK").count(), 1, "{out}");
        let out = http_exchange(
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(out.matches("200 OK").count(), 2, "{out}");
    }

    #[tokio::test]
    async fn head_requests_get_no_body() {
        let out = http_exchange(b"HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(!out.contains("x/a"), "{out}");
    }

    #[tokio::test]
    async fn garbage_gets_400_and_a_closed_connection() {
        for bad in [
            &b"HELLO\r\n\r\n"[..],
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1\r\nnocolon\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        ] {
            let out = http_exchange(bad).await;
            assert!(
                out.starts_with("HTTP/1.1 400"),
                "{:?}: {out}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn oversized_bodies_are_answered_then_the_connection_closes() {
        let mut req = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 10
        )
        .into_bytes();
        req.extend(std::iter::repeat_n(b'a', MAX_BODY as usize + 10));
        req.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let out = http_exchange(&req).await;
        assert_eq!(out.matches("200 OK").count(), 1, "{out}");
        assert!(out.contains("Connection: close"), "{out}");
    }

    #[tokio::test]
    async fn idle_connections_are_closed() {
        let out = exchange_raw(b"", Duration::from_millis(200)).await;
        assert!(!out.contains("200 OK"), "{out}");
        let out = exchange_raw(b"GET / HTTP/1.1\r\n\r\n", Duration::from_millis(200)).await;
        assert_eq!(out.matches("200 OK").count(), 1, "{out}");
    }

    #[test]
    fn the_client_reads_status_and_body_from_the_server() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let l = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = l.local_addr().unwrap();
        rt.spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            serve_connection(s, Arc::from("x/a\n"), Duration::from_secs(5)).await;
        });
        let (status, body) =
            request(addr, "DELETE", "/p?q=1", "a.x", Duration::from_secs(3)).unwrap();
        assert_eq!((status, body.as_str()), (200, "x/a\n"));
    }

    #[test]
    fn an_answer_that_is_not_http_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"SSH-2.0-x\r\n");
        });
        let e = request(addr, "GET", "/", "a.x", Duration::from_secs(3)).unwrap_err();
        assert!(e.contains("no HTTP answer"), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn bad_methods_and_paths_are_errors_not_panics() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let t = Duration::from_millis(200);
        assert!(request(addr, "GE T", "/", "a", t)
            .unwrap_err()
            .contains("method"));
        assert!(request(addr, "GET", "/a b", "a", t).is_err());
    }
}
