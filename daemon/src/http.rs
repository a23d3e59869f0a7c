//! The daemon's HTTP server: `/healthz`, `/readyz`, `/metrics` (public) and
//! the routes other parts registered on the [`NodeContext`] (private: they
//! name pods; [`access`] says who may read them). It listens on
//! `httpListen` and, when that is not a wildcard address, also on the node's
//! tunnel address (the node-to-node API).
//!
//! `/metrics` speaks both exposition formats: OpenMetrics 1.0.0 (what
//! prometheus-client writes) when the scraper's `Accept` prefers
//! `application/openmetrics-text`, and the classic Prometheus text format
//! 0.0.4 otherwise, converted by [`to_text_004`] (counters and info metrics
//! renamed to their sample names, no `# UNIT`, `# EOF`, `_created` nor
//! exemplars). Both pass `promtool check metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::context::NodeContext;

pub mod access;

pub use access::ConnAddrs;

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

/// Content type of OpenMetrics 1.0.0.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(s): State<HttpState>, headers: HeaderMap) -> impl IntoResponse {
    let mut body = String::new();
    let res = {
        let reg = s.ctx.metrics.lock().expect("metrics lock");
        prometheus_client::encoding::text::encode(&mut body, &reg)
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match res {
        Ok(()) if wants_openmetrics(accept) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body)
        }
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, TEXT_004)],
            to_text_004(&body),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics: {e}\n"),
        ),
    }
}

/// Whether an `Accept` header prefers OpenMetrics to the classic text
/// format: its best `q` for `application/openmetrics-text` is positive and at
/// least its best for `text/plain` (or `text/*`, `*/*`).
pub fn wants_openmetrics(accept: &str) -> bool {
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse().unwrap_or(0.0));
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    om > 0.0 && om >= text
}

/// Where a sample line's labels end (after `}`), or its name when it has none.
fn sample_name_end(line: &str) -> (usize, usize) {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    if !line[name_end..].starts_with('{') {
        return (name_end, name_end);
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line.char_indices().skip(name_end) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return (name_end, i + 1),
            _ => {}
        }
    }
    (name_end, line.len())
}

/// Converts OpenMetrics text (as prometheus-client writes it) to the
/// Prometheus text format 0.0.4: a counter family `x` becomes `x_total` in
/// `# HELP`/`# TYPE` (its samples already are), an info family `x` becomes
/// the gauge `x_info`, `unknown` becomes `untyped`; `# UNIT`, `# EOF`,
/// `_created` samples and exemplars are dropped. Histograms, gauges and
/// summaries keep their names and samples.
pub fn to_text_004(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    // The current family's name and type, as OpenMetrics wrote them.
    let mut family: (&str, &str) = ("", "");
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            family = (name, ty);
            let (exposed, ty) = match ty {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_string(), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_string(), ty),
                _ => (name.to_string(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(n, _)| *n == name) {
                out.push_str(&format!(
                    "# HELP {exposed} {}\n",
                    text.replace("\\\"", "\"")
                ));
            }
            out.push_str(&format!("# TYPE {exposed} {ty}\n"));
        } else if line.starts_with('#') || line.trim().is_empty() {
            // # UNIT, # EOF and comments have no 0.0.4 form.
        } else {
            let (name_end, labels_end) = sample_name_end(line);
            let name = &line[..name_end];
            if matches!(family.1, "counter" | "histogram" | "summary")
                && name.strip_prefix(family.0) == Some("_created")
            {
                continue;
            }
            // An exemplar follows " # " after the value.
            let sample = match line[labels_end..].find(" # ") {
                Some(i) => &line[..labels_end + i],
                None => line,
            };
            out.push_str(sample.trim_end());
            out.push('\n');
        }
    }
    out
}

/// Builds the router: the built-in (public) endpoints plus every registered
/// route, the latter behind [`access::guard`].
pub fn router(ctx: NodeContext, ready: Arc<AtomicBool>) -> Router {
    let extra: Vec<Router> = ctx.routes.lock().expect("routes lock").clone();
    let access = access::Access::new(
        &ctx.config.node_name,
        access::first_host(ctx.config.pod_cidr),
        ctx.config.http_private_networks.clone(),
        ctx.snapshots.clone(),
    );
    let mut private = Router::new();
    for r in extra {
        private = private.merge(r);
    }
    let private = private.layer(axum::middleware::from_fn_with_state(access, access::guard));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(HttpState { ctx, ready })
        .merge(private)
}

/// Serves HTTP on `listener` until the process ends (each request knows both
/// ends of its connection, for [`access`]).
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<ConnAddrs>(),
    )
    .await
}

/// The listeners of the HTTP server: `listen`, and the node's tunnel address
/// on the same port when `listen` does not already cover it. The tunnel
/// listener is bound with `IP_FREEBIND`: the address appears on `veil-wg`
/// later.
pub fn listeners(
    listen: std::net::SocketAddr,
    tunnel: std::net::IpAddr,
) -> std::io::Result<Vec<tokio::net::TcpListener>> {
    let mut out = vec![bind(listen, false)?];
    let covered = listen.ip().is_unspecified() || listen.ip() == tunnel;
    if !covered {
        out.push(bind(
            std::net::SocketAddr::new(tunnel, listen.port()),
            true,
        )?);
    }
    Ok(out)
}

fn bind(addr: std::net::SocketAddr, freebind: bool) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if freebind {
        s.set_freebind_v4(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::{Registry, Unit};

    fn sample_registry() -> String {
        let mut r = Registry::default();
        let c: Family<Vec<(String, String)>, Counter> = Family::default();
        c.get_or_create(&vec![("method".into(), "add".into())])
            .inc();
        r.register("veil_cni_requests", "CNI requests", c);
        let g: Gauge = Gauge::default();
        g.set(3);
        r.register_with_unit("veil_uptime", "Uptime", Unit::Seconds, g);
        let h = Histogram::new([0.1, 1.0]);
        h.observe(0.5);
        r.register("veil_apply_seconds", "Apply time", h);
        r.register(
            "veil_build",
            "Build",
            Info::new(vec![("version".to_string(), "0.1.0".to_string())]),
        );
        let b: Counter = Counter::default();
        r.register_with_unit("veil_wg_sent", "Bytes sent", Unit::Bytes, b);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
        s
    }

    #[test]
    fn openmetrics_converts_to_the_classic_text_format() {
        let om = sample_registry();
        assert!(om.contains("# EOF"), "{om}");
        let text = to_text_004(&om);
        let expected = "\
# HELP veil_cni_requests_total CNI requests.
# TYPE veil_cni_requests_total counter
veil_cni_requests_total{method=\"add\"} 1
# HELP veil_uptime_seconds Uptime.
# TYPE veil_uptime_seconds gauge
veil_uptime_seconds 3
# HELP veil_apply_seconds Apply time.
# TYPE veil_apply_seconds histogram
veil_apply_seconds_sum 0.5
veil_apply_seconds_count 1
veil_apply_seconds_bucket{le=\"0.1\"} 0
veil_apply_seconds_bucket{le=\"1.0\"} 1
veil_apply_seconds_bucket{le=\"+Inf\"} 1
# HELP veil_build_info Build.
# TYPE veil_build_info gauge
veil_build_info{version=\"0.1.0\"} 1
# HELP veil_wg_sent_bytes_total Bytes sent.
# TYPE veil_wg_sent_bytes_total counter
veil_wg_sent_bytes_total 0
";
        assert_eq!(text, expected);
    }

    #[test]
    fn created_samples_and_exemplars_are_dropped() {
        let om = "# HELP x X.\n# TYPE x counter\nx_total{a=\"} # \"} 2 # {trace_id=\"1\"} 1.0\nx_created 17\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"} # \"} 2\n"
        );
    }

    #[test]
    fn accept_header_picks_the_format() {
        // Prometheus 2.x and 3.x scrapers.
        assert!(wants_openmetrics("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"));
        assert!(wants_openmetrics("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"));
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
        assert!(!wants_openmetrics(
            "text/plain, application/openmetrics-text;q=0.5"
        ));
    }
}
