//! `veilctl graph`: the service dependency graph of the cluster, merged from
//! every node daemon of a lab (`--lab`) or from one daemon (`--socket`), as
//! text, JSON (the `/api/v1/graph` shape) or Graphviz DOT.

use std::time::Duration;

use veil_api::flows::{GraphParams, GraphReply, GraphView};
use veil_api::method;

use super::target::Target;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per edge.
    Text,
    /// `{"nodes": [...], "edges": [...]}`.
    Json,
    /// Graphviz DOT (`veilctl graph --format dot | dot -Tsvg`).
    Dot,
}

/// Arguments of `veilctl graph`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which daemons.
    #[command(flatten)]
    pub target: Target,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Only edges seen in the last DURATION (`30s`, `5m`, `1h`); counts stay totals.
    #[arg(long, value_parser = super::flows::parse_since)]
    pub since: Option<Duration>,
}

/// Asks every targeted daemon for its graph; returns the merged view and the
/// errors of the daemons that did not answer.
pub fn fetch(target: &Target) -> Result<(GraphView, Vec<String>), String> {
    let sockets = target.sockets()?;
    let mut views = Vec::new();
    let mut errors = Vec::new();
    for (node, socket) in &sockets {
        match veil_api::call::<_, GraphReply>(
            socket,
            method::GRAPH_GET,
            &GraphParams {},
            Duration::from_secs(10),
        ) {
            Ok(r) => views.push(r.graph),
            Err(e) => errors.push(if node.is_empty() {
                e.to_string()
            } else {
                format!("node {node}: {e}")
            }),
        }
    }
    if views.is_empty() {
        return Err(if errors.is_empty() {
            "no daemon to ask".to_string()
        } else {
            errors.join("; ")
        });
    }
    Ok((GraphView::merge(views), errors))
}

/// Runs the command; returns the exit code.
pub fn run(args: Args) -> i32 {
    if let Err(e) = args.target.sockets() {
        eprintln!("veilctl graph: {e}");
        return super::common::USAGE;
    }
    let (view, errors) = match fetch(&args.target) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("veilctl graph: {e}");
            return super::common::FAILED;
        }
    };
    for e in &errors {
        eprintln!("veilctl graph: warning: {e} (graph is partial)");
    }
    let view = match args.since {
        Some(d) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|t| t.as_millis() as u64)
                .unwrap_or(0);
            view.since(now.saturating_sub(d.as_millis() as u64))
        }
        None => view,
    };
    match args.format {
        Format::Text => print!("{}", view.to_text()),
        Format::Dot => print!("{}", view.to_dot()),
        Format::Json => match serde_json::to_string_pretty(&view) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("veilctl graph: cannot encode: {e}");
                return 1;
            }
        },
    }
    if errors.is_empty() {
        super::common::OK
    } else {
        super::common::FAILED
    }
}
