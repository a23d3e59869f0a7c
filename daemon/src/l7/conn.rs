//! One steered connection: decide it from the policy program (the deciding
//! rules of both directions), then serve it as HTTP/1.1 with hyper, checking
//! every request against every deciding `http` rule. Allowed requests go to
//! the original destination on one upstream connection per client
//! connection (opened at the first allowed request, from the client's
//! address); denied ones get 403 and never reach the application.
//!
//! HTTP/1.1 in full through hyper: keep-alive, pipelining (answered in
//! order), chunked bodies both ways, bodies streamed (never buffered
//! whole), `Expect: 100-continue` (the 100 goes out only when the request is
//! allowed and its body is read), and Upgrade (an allowed request whose
//! answer is 101 has both sides joined byte for byte). A request carrying
//! both `Content-Length` and `Transfer-Encoding` (a smuggling attempt) is
//! read by its chunked body only and the connection is closed after the
//! answer (what follows is never read); anything that is not HTTP/1.1 closes the
//! connection and is recorded as a denied flow.
//!
//! One task per client connection does all of its work: the client side
//! (hyper's server connection), the checks, and the upstream side (hyper's
//! client connection, polled by the same task rather than spawned), so a
//! request and its answer cross no channel to another task or thread; a
//! body of at most [`SMALL_BODY`] bytes announced by `Content-Length` goes
//! out with its head in one write on each leg.
//!
//! It does not cache, retry, rewrite headers or speak HTTP/2 or TLS.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use veil_policy::compile::{ConnectionRules, L7Rule};
use veil_policy::eval::Flow;
use veil_policy::model::{HttpRequest, Protocol};

use super::metrics::{Edge, EdgeSeries};
use super::{net, Shared};

/// The body of an answer: the application's, or the proxy's own.
pub type Body = Either<Incoming, Full<Bytes>>;

type Upstream = hyper::client::conn::http1::SendRequest<Body>;

/// An upstream connection's I/O driver, polled by the task that serves its
/// client connection.
type Uplink = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Bodies of at most this many bytes, announced by `Content-Length`, are
/// read whole and forwarded with their head in one write; others are
/// streamed.
pub const SMALL_BODY: u64 = 16 * 1024;

/// The `Content-Length` of `h` when it is at most [`SMALL_BODY`] (not 0) and
/// no `Transfer-Encoding` is present.
fn small_length(h: &hyper::HeaderMap) -> Option<u64> {
    if h.contains_key(TRANSFER_ENCODING) || h.contains_key(UPGRADE) {
        return None;
    }
    let n: u64 = h.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()?;
    (n > 0 && n <= SMALL_BODY).then_some(n)
}

/// `body` whole when its head announced a small length, else streamed.
async fn small_or_streamed(h: &hyper::HeaderMap, body: Incoming) -> Result<Body, hyper::Error> {
    if small_length(h).is_none() {
        return Ok(Either::Left(body));
    }
    Ok(Either::Right(Full::new(body.collect().await?.to_bytes())))
}

/// What a request is checked against, and where it goes.
struct ConnState {
    shared: Arc<Shared>,
    client: SocketAddr,
    dst: SocketAddr,
    rules: Vec<L7Rule>,
    series: EdgeSeries,
    upstream: Mutex<Option<Upstream>>,
    /// Hands a new upstream connection's driver to the serving task.
    uplinks: mpsc::UnboundedSender<Uplink>,
}

/// Serves one accepted connection until it ends.
pub async fn handle(stream: TcpStream, client: SocketAddr, shared: Arc<Shared>) {
    let Ok(dst) = stream.local_addr() else { return };
    if dst == net::listen_addr() {
        // A direct connection to the listener, not a steered one.
        return;
    }
    let program = shared.desired.borrow().program.clone();
    let flow = Flow {
        src: client.ip(),
        dst: dst.ip(),
        protocol: Protocol::Tcp,
        port: dst.port(),
        dns_name: None,
        http: None,
    };
    match super::decide::connection_rules(&program, &flow, shared.names.as_deref()) {
        ConnectionRules::Denied(dir) => {
            tracing::info!(src = %client, dst = %dst, direction = %dir, "L7 proxy: connection denied at L4 by the current policy; closed");
            shared.metrics.closed("denied at L4");
        }
        ConnectionRules::Allowed(rules) if rules.is_empty() => {
            // The policy changed since the kernel steered it: no http rule
            // decides it any more, so it is passed as bytes.
            splice(stream, client, dst, &shared).await;
        }
        ConnectionRules::Allowed(rules) => {
            let edge = shared.metrics.bounded(shared.edge(&program, client, dst));
            serve_http(stream, client, dst, rules, edge, shared).await
        }
    }
}

async fn splice(mut stream: TcpStream, client: SocketAddr, dst: SocketAddr, shared: &Shared) {
    match net::connect_upstream(client, dst).await {
        Ok(mut up) => {
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
        }
        Err(e) => {
            tracing::debug!(src = %client, dst = %dst, error = %e, "L7 proxy: upstream unreachable");
            shared.metrics.closed("upstream unreachable");
        }
    }
}

/// Serves `stream` (from `client`, for `dst`) as HTTP/1.1, checking each
/// request against `rules`.
pub async fn serve_http(
    stream: TcpStream,
    client: SocketAddr,
    dst: SocketAddr,
    rules: Vec<L7Rule>,
    edge: Edge,
    shared: Arc<Shared>,
) {
    let (uplinks, mut new_uplinks) = mpsc::unbounded_channel();
    let st = Arc::new(ConnState {
        series: shared.metrics.series(edge),
        shared,
        client,
        dst,
        rules,
        upstream: Mutex::new(None),
        uplinks,
    });
    let limits = st.shared.limits;
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let svc_state = st.clone();
    let svc = hyper::service::service_fn(move |req| {
        let st = svc_state.clone();
        async move { Ok::<_, Infallible>(st.request(req).await) }
    });
    let mut conn = Box::pin(
        b.serve_connection(TokioIo::new(stream), svc)
            .with_upgrades(),
    );
    // The client side and the upstream side(s) on this one task.
    let mut running = FuturesUnordered::new();
    let result = loop {
        tokio::select! {
            biased;
            Some(up) = new_uplinks.recv() => running.push(up),
            Some(()) = running.next(), if !running.is_empty() => {}
            r = &mut conn => break r,
        }
    };
    drop(conn);
    // The client is gone (or upgraded): let the upstream side finish (an
    // upgrade hands its socket over; an idle one closes once its sender is
    // dropped).
    st.upstream.lock().await.take();
    new_uplinks.close();
    while let Some(up) = new_uplinks.recv().await {
        running.push(up);
    }
    while running.next().await.is_some() {}
    if let Err(e) = result {
        let reason = if e.is_parse() || e.is_parse_too_large() || e.is_parse_status() {
            "not HTTP/1.1"
        } else if e.is_timeout() {
            "header timeout"
        } else {
            "connection error"
        };
        tracing::info!(src = %st.client, dst = %st.dst, reason, error = %e, "L7 proxy: connection closed");
        st.shared.metrics.closed(reason);
        if reason != "connection error" {
            st.shared
                .record_denied(st.client, st.dst, st.rules.first(), reason);
        }
    }
}

fn answer(status: StatusCode, text: String, close: bool) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// The request as the policy sees it.
pub fn policy_request<B>(req: &Request<B>) -> HttpRequest {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default();
    HttpRequest {
        method: req.method().as_str().to_string(),
        path,
        host,
    }
}

/// Why a request is refused before any rule is consulted, if it is. (A
/// request with both `Content-Length` and `Transfer-Encoding` rarely gets
/// here: hyper drops the length, reads the chunked body and closes the
/// connection after the answer, so a smuggled request is never read.)
pub fn malformed<B>(req: &Request<B>) -> Option<&'static str> {
    if req.version() != Version::HTTP_11 {
        return Some("not HTTP/1.1");
    }
    let h = req.headers();
    if h.contains_key(CONTENT_LENGTH) && h.contains_key(TRANSFER_ENCODING) {
        return Some("both Content-Length and Transfer-Encoding");
    }
    None
}

impl ConnState {
    async fn request(&self, mut req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let preq = policy_request(&req);
        if let Some(why) = malformed(&req) {
            tracing::info!(src = %self.client, dst = %self.dst, reason = why, "L7 proxy: request refused");
            self.shared.metrics.closed(why);
            self.shared
                .record_denied(self.client, self.dst, self.rules.first(), why);
            let status = if why == "not HTTP/1.1" {
                StatusCode::HTTP_VERSION_NOT_SUPPORTED
            } else {
                StatusCode::BAD_REQUEST
            };
            return answer(status, format!("{why}\n"), true);
        }
        if let Some(rule) = self.rules.iter().find(|r| !r.check(&preq)) {
            let path = preq.path.split('?').next().unwrap_or("");
            tracing::info!(
                src = %self.client, dst = %self.dst, method = %preq.method, path,
                policy = %rule.policy, direction = %rule.direction, rule = rule.index,
                "L7 proxy: request denied"
            );
            self.series.denied(&preq.method);
            self.shared
                .record_request(self.client, self.dst, &preq.method, 403, started.elapsed());
            self.shared.record_denied(
                self.client,
                self.dst,
                Some(rule),
                &format!("{} {path}", preq.method),
            );
            return answer(
                StatusCode::FORBIDDEN,
                format!(
                    "403 Forbidden: {} {path} denied by {} {} rule {} (tier {})\n",
                    preq.method,
                    rule.policy,
                    rule.direction.to_string().to_lowercase(),
                    rule.index,
                    rule.tier
                ),
                false,
            );
        }
        let client_upgrade = req
            .headers()
            .contains_key(UPGRADE)
            .then(|| hyper::upgrade::on(&mut req));
        let head = req.method() == hyper::Method::HEAD;
        let (parts, body) = req.into_parts();
        let body = match small_or_streamed(&parts.headers, body).await {
            Ok(b) => b,
            Err(e) => {
                tracing::info!(src = %self.client, dst = %self.dst, error = %e, "L7 proxy: request body cut short");
                return answer(StatusCode::BAD_REQUEST, "bad request body\n".into(), true);
            }
        };
        let req = Request::from_parts(parts, body);
        let mut up = self.upstream.lock().await;
        if up.as_ref().is_none_or(|s| s.is_closed()) {
            match self.connect().await {
                Ok(s) => *up = Some(s),
                Err(e) => {
                    tracing::info!(src = %self.client, dst = %self.dst, error = %e, "L7 proxy: upstream unreachable");
                    self.shared.metrics.closed("upstream unreachable");
                    return answer(
                        StatusCode::BAD_GATEWAY,
                        "upstream unreachable\n".into(),
                        true,
                    );
                }
            }
        }
        let Some(sender) = up.as_mut() else {
            return answer(
                StatusCode::BAD_GATEWAY,
                "upstream unreachable\n".into(),
                true,
            );
        };
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(src = %self.client, dst = %self.dst, error = %e, "L7 proxy: upstream failed");
                *up = None;
                return answer(StatusCode::BAD_GATEWAY, "upstream failed\n".into(), true);
            }
        };
        drop(up);
        let status = resp.status().as_u16();
        let elapsed = started.elapsed();
        self.series
            .request(&preq.method, status, elapsed.as_secs_f64());
        self.shared
            .record_request(self.client, self.dst, &preq.method, status, elapsed);
        let mut resp = resp;
        if status == 101 {
            if let Some(client_upgrade) = client_upgrade {
                let server_upgrade = hyper::upgrade::on(&mut resp);
                // The upstream side upgrades once its (empty) body is gone.
                let (parts, _) = resp.into_parts();
                let resp = Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
                tokio::spawn(async move {
                    match tokio::join!(client_upgrade, server_upgrade) {
                        (Ok(c), Ok(s)) => {
                            let _ = tokio::io::copy_bidirectional(
                                &mut TokioIo::new(c),
                                &mut TokioIo::new(s),
                            )
                            .await;
                        }
                        (c, s) => {
                            tracing::debug!(client = ?c.err(), upstream = ?s.err(), "L7 proxy: upgrade failed");
                        }
                    }
                });
                return resp;
            }
        }
        let (parts, body) = resp.into_parts();
        // A HEAD, 204 or 304 answer may announce a length without a body.
        if head || status == 204 || status == 304 {
            return Response::from_parts(parts, Either::Left(body));
        }
        match small_or_streamed(&parts.headers, body).await {
            Ok(body) => Response::from_parts(parts, body),
            Err(e) => {
                tracing::info!(src = %self.client, dst = %self.dst, error = %e, "L7 proxy: upstream answer cut short");
                answer(StatusCode::BAD_GATEWAY, "upstream failed\n".into(), true)
            }
        }
    }

    async fn connect(&self) -> std::io::Result<Upstream> {
        let stream = net::connect_upstream(self.client, self.dst).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        // Polled by the serving task (see `serve_http`), not spawned. If
        // that task is gone the request fails with "upstream failed".
        let _ = self.uplinks.send(Box::pin(async move {
            let _ = conn.with_upgrades().await;
        }));
        Ok(sender)
    }
}
