//! The daemon's HTTP server: `/healthz`, `/readyz`, `/metrics` (Prometheus text
//! format) and the routes other parts registered on the [`NodeContext`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::context::NodeContext;

#[derive(Clone)]
struct HttpState {
    ctx: NodeContext,
    ready: Arc<AtomicBool>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let mut body = String::new();
    let res = {
        let reg = s.ctx.metrics.lock().expect("metrics lock");
        prometheus_client::encoding::text::encode(&mut body, &reg)
    };
    match res {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics: {e}\n"),
        ),
    }
}

/// Builds the router: the built-in endpoints plus every registered route.
pub fn router(ctx: NodeContext, ready: Arc<AtomicBool>) -> Router {
    let extra: Vec<Router> = ctx.routes.lock().expect("routes lock").clone();
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(HttpState { ctx, ready });
    for r in extra {
        app = app.merge(r);
    }
    app
}

/// Serves HTTP on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app).await
}
