//! The service graph page `/ui`: static HTML (`daemon/ui/index.html`), its
//! script (`daemon/ui/graph.js`) and the vendored cytoscape.js with its
//! licence, compiled into `veild` (no build step, no CDN: clusters without
//! internet access get the same page). The page reads `/api/v1/graph`; it
//! keeps no state on the server.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page.
pub const INDEX_HTML: &str = include_str!("../../ui/index.html");
/// Its script.
pub const GRAPH_JS: &str = include_str!("../../ui/graph.js");
const CYTOSCAPE_JS: &str = include_str!("../../ui/vendor/cytoscape.min.js");
const CYTOSCAPE_LICENSE: &str = include_str!("../../ui/vendor/cytoscape.LICENSE");

fn asset(content_type: &'static str, body: &'static str, cache: bool) -> Response {
    let cache = if cache { "max-age=86400" } else { "no-cache" };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}

/// The page's routes, ready to merge into the daemon's server.
pub(super) fn routes() -> Router {
    let page = || async { Html(INDEX_HTML) };
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route(
            "/ui/graph.js",
            get(|| async { asset("application/javascript; charset=utf-8", GRAPH_JS, false) }),
        )
        .route(
            "/ui/vendor/cytoscape.min.js",
            get(|| async { asset("application/javascript; charset=utf-8", CYTOSCAPE_JS, true) }),
        )
        .route(
            "/ui/vendor/cytoscape.LICENSE",
            get(|| async { asset("text/plain; charset=utf-8", CYTOSCAPE_LICENSE, true) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_the_vendored_library_and_the_graph() {
        assert!(INDEX_HTML.contains("/ui/vendor/cytoscape.min.js"));
        assert!(INDEX_HTML.contains("/ui/graph.js"));
        assert!(INDEX_HTML.contains("/api/v1/graph"));
        assert!(GRAPH_JS.contains("window="));
        assert!(CYTOSCAPE_JS.len() > 100_000);
        assert!(
            CYTOSCAPE_LICENSE.contains("MIT")
                || CYTOSCAPE_LICENSE.contains("Permission is hereby granted")
        );
        // Nothing is fetched from elsewhere.
        for text in [INDEX_HTML, GRAPH_JS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }

    #[test]
    fn the_script_parses() {
        if !veil_node_available() {
            // The page test in tests/tests/ui_page.rs runs it in Chromium.
            eprintln!("node not installed: graph.js parsed only by the browser test");
            return;
        }
        let dir = std::env::temp_dir().join(format!("veil-ui-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("graph.js");
        std::fs::write(&f, GRAPH_JS).unwrap();
        let o = std::process::Command::new("node")
            .arg("--check")
            .arg(&f)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            o.status.success(),
            "graph.js does not parse: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn veil_node_available() -> bool {
        std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }
}
