//! HTTP surfaces of the flows: `/api/v1/graph` (JSON, the cluster's graph by
//! default, merged from every node's `?scope=node` view; `?scope=node` for
//! this node only), `/api/v1/flows` (the flow log), the Grafana Node Graph API
//! data source endpoints (`/api/graph/fields`, `/api/graph/data`,
//! `/api/health`). The page `/ui` is in [`super::ui`]. `?window=5m|1h|all`
//! on `/api/v1/graph` keeps the edges seen in that window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::watch;
use veil_graph::{FlowFilter, GraphView, Verdict};

use super::{now_ms, Flows};
use crate::context::NodeContext;
use crate::datastore::Snapshot;

/// How long a peer has to answer, connection included.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest graph accepted from a peer.
const MAX_PEER_BODY: usize = 64 << 20;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The other nodes' HTTP servers, from the datastore, and the (pooled)
/// client that fetches their graphs.
#[derive(Clone)]
pub(super) struct Peers {
    node: String,
    port: u16,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    client: HttpClient,
}

impl Peers {
    pub(super) fn from_context(ctx: &NodeContext) -> Self {
        Peers {
            node: ctx.config.node_name.clone(),
            port: ctx.config.http_listen.port(),
            snapshots: ctx.snapshots.clone(),
            client: {
                let mut c = HttpConnector::new();
                c.set_connect_timeout(Some(PEER_TIMEOUT));
                c.set_nodelay(true);
                Client::builder(TokioExecutor::new()).build(c)
            },
        }
    }

    fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.snapshots
            .borrow()
            .nodes
            .iter()
            .filter(|n| n.name != self.node)
            // The node-to-node API: the peer's tunnel address, through
            // WireGuard (crate::http::access).
            .filter_map(|n| {
                let tunnel = crate::http::access::tunnel_address(n)?;
                Some((n.name.clone(), SocketAddr::new(tunnel, self.port)))
            })
            .collect()
    }
}

#[derive(Clone)]
struct AppState {
    flows: Arc<Flows>,
    peers: Peers,
}

/// Why a peer's graph could not be had.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    /// The request could not be made or answered.
    #[error("{addr}: {source}")]
    Request {
        addr: SocketAddr,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The peer answered something else than 200.
    #[error("{addr}: HTTP status {status}")]
    Status { addr: SocketAddr, status: u16 },
    /// The body could not be read (or was larger than [`MAX_PEER_BODY`]).
    #[error("{addr}: reading the answer: {reason}")]
    Body { addr: SocketAddr, reason: String },
    /// No complete answer in time.
    #[error("{addr}: no answer within {0:?}", PEER_TIMEOUT)]
    Timeout { addr: SocketAddr },
    /// The answer is not a graph.
    #[error("{addr}: {source}")]
    Decode {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
}

/// Fetches `path` from `addr` over plain HTTP/1.1 (peers are in the cluster).
async fn http_get(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<Bytes, PeerError> {
    let uri: hyper::Uri = format!("http://{addr}{path}")
        .parse()
        .expect("an address and an absolute path make a URI");
    let fetch = async {
        let resp = client
            .get(uri)
            .await
            .map_err(|source| PeerError::Request { addr, source })?;
        if resp.status() != StatusCode::OK {
            return Err(PeerError::Status {
                addr,
                status: resp.status().as_u16(),
            });
        }
        let body = Limited::new(resp.into_body(), MAX_PEER_BODY)
            .collect()
            .await
            .map_err(|e| PeerError::Body {
                addr,
                reason: e.to_string(),
            })?;
        Ok(body.to_bytes())
    };
    tokio::time::timeout(PEER_TIMEOUT, fetch)
        .await
        .map_err(|_| PeerError::Timeout { addr })?
}

/// This node's view merged with every peer's; the errors name unreachable peers.
async fn cluster_view(st: &AppState) -> (GraphView, Vec<String>) {
    let mine = st.flows.view(now_ms());
    let peers = st.peers.addresses();
    let client = &st.peers.client;
    let fetched = futures::future::join_all(peers.into_iter().map(|(name, addr)| async move {
        let r = http_get(client, addr, "/api/v1/graph?scope=node")
            .await
            .and_then(|b| {
                serde_json::from_slice::<GraphView>(&b)
                    .map_err(|source| PeerError::Decode { addr, source })
            });
        (name, r)
    }))
    .await;
    let mut views = vec![mine];
    let mut errors = Vec::new();
    for (name, r) in fetched {
        match r {
            Ok(v) => views.push(v),
            Err(e) => errors.push(format!("node {name}: {e}")),
        }
    }
    (GraphView::merge(views), errors)
}

#[derive(Debug, Default, Deserialize)]
struct GraphQuery {
    /// `node` or `cluster` (default).
    scope: Option<String>,
    /// `5m`, `1h`, `30s`, or `all` (default): only edges seen that recently.
    window: Option<String>,
}

/// A window (`30s`, `5m`, `1h`, `all`) in milliseconds; `None` for all.
fn window_ms(w: Option<&str>) -> Result<Option<u64>, String> {
    let Some(w) = w.filter(|w| *w != "all") else {
        return Ok(None);
    };
    let bad = || format!("window {w:?}: expected all or a duration such as 30s, 5m, 1h");
    let (n, unit) = w.split_at(w.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    match n.checked_mul(ms) {
        Some(v) if v > 0 => Ok(Some(v)),
        _ => Err(bad()),
    }
}

async fn graph(State(st): State<AppState>, Query(q): Query<GraphQuery>) -> Response {
    let window = match window_ms(q.window.as_deref()) {
        Ok(w) => w,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let (view, errors, scope) = match q.scope.as_deref() {
        Some("node") => (st.flows.view(now_ms()), Vec::new(), "node"),
        None | Some("cluster") => {
            let (v, e) = cluster_view(&st).await;
            (v, e, "cluster")
        }
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("scope {other:?}: expected node or cluster\n"),
            )
                .into_response()
        }
    };
    let view = match window {
        Some(w) => view.since(now_ms().saturating_sub(w)),
        None => view,
    };
    let mut j = serde_json::to_value(&view).unwrap_or_default();
    if let Some(o) = j.as_object_mut() {
        o.insert("node".into(), st.flows.node().into());
        o.insert("scope".into(), scope.into());
        if !errors.is_empty() {
            o.insert("errors".into(), errors.into());
        }
    }
    Json(j).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct FlowsQuery {
    #[serde(default)]
    after: u64,
    namespace: Option<String>,
    from: Option<String>,
    to: Option<String>,
    verdict: Option<String>,
    policy: Option<String>,
    #[serde(default)]
    limit: usize,
    pod: Option<String>,
    port: Option<u16>,
    since: Option<u64>,
}

async fn flows(State(st): State<AppState>, Query(q): Query<FlowsQuery>) -> Response {
    let verdict = match q.verdict.as_deref().map(str::parse::<Verdict>).transpose() {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let f = FlowFilter {
        after: q.after,
        namespace: q.namespace,
        from: q.from,
        to: q.to,
        verdict,
        policy: q.policy,
        limit: q.limit,
        pod: q.pod,
        port: q.port,
        since: q.since,
    };
    Json(st.flows.flows(&f)).into_response()
}

async fn grafana_data(State(st): State<AppState>) -> Response {
    let (v, _) = cluster_view(&st).await;
    Json(v.grafana_data()).into_response()
}

async fn grafana_fields() -> Response {
    Json(GraphView::grafana_fields()).into_response()
}

/// The routes, ready to merge into the daemon's server.
pub(super) fn routes(flows: Arc<Flows>, peers: Peers) -> Router {
    Router::new()
        .route("/api/v1/graph", get(graph))
        .route("/api/v1/flows", get(flows_handler))
        .route("/api/graph/fields", get(grafana_fields))
        .route("/api/graph/data", get(grafana_data))
        .route("/api/health", get(|| async { "OK" }))
        .with_state(AppState { flows, peers })
}

async fn flows_handler(st: State<AppState>, q: Query<FlowsQuery>) -> Response {
    flows(st, q).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_bad_ones_are_refused() {
        assert_eq!(window_ms(None), Ok(None));
        assert_eq!(window_ms(Some("all")), Ok(None));
        assert_eq!(window_ms(Some("5m")), Ok(Some(300_000)));
        assert_eq!(window_ms(Some("1h")), Ok(Some(3_600_000)));
        assert_eq!(window_ms(Some("90s")), Ok(Some(90_000)));
        assert!(window_ms(Some("soon")).is_err());
        assert!(window_ms(Some("0m")).is_err());
    }
}
