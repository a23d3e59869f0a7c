//! `veilctl flows`: recent and live flows, like `hubble observe`, from every
//! node daemon of a lab (`--lab`) or one daemon (`--socket`), filtered by
//! namespace, pod, source, destination, port, verdict, deciding policy and
//! age (`--since 5m`); denied flows name the tier, policy and rule that
//! dropped them. Each connection shows once when it opens (`new`) and once
//! when it closes (`closed`, with its final counters). `--follow` keeps
//! polling with each daemon's cursor; `--output text|json|yaml`.

use std::path::Path;
use std::time::Duration;

use veil_api::flows::{FlowEnd, FlowEntry, FlowFilter, FlowPage, Verdict};
use veil_api::method;

use super::target::Target;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per flow.
    Text,
    /// One JSON object per line.
    Json,
    /// One YAML document per flow.
    Yaml,
}

/// Arguments of `veilctl flows`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which daemons.
    #[command(flatten)]
    pub target: Target,
    /// Keep printing new flows.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only flows with either end in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only flows from this workload id (`ns/workload`), workload, pod, `ns/pod` or address.
    #[arg(long)]
    pub from: Option<String>,
    /// Only flows to this workload id, workload, pod, `ns/pod` or address.
    #[arg(long)]
    pub to: Option<String>,
    /// Only flows with this verdict (allowed, denied).
    #[arg(long)]
    pub verdict: Option<Verdict>,
    /// Only flows decided by this policy (`name`, `namespace/name`, `kind:name`).
    #[arg(long)]
    pub policy: Option<String>,
    /// Only flows with either end this pod (`name` or `namespace/name`).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only flows to this destination port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only flows of the last DURATION (`30s`, `5m`, `2h`, `1d`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Duration>,
    /// At most this many recent flows per node before following (0: all kept).
    #[arg(long, default_value_t = 100)]
    pub last: usize,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
}

/// `30s`, `5m`, `2h`, `1d` (a number alone is seconds).
pub fn parse_since(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: expected a duration such as 30s, 5m, 2h or 1d");
    let i = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..i].parse().map_err(|_| bad())?;
    let unit = match &s[i..] {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).map(Duration::from_secs).ok_or_else(bad)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn line(e: &FlowEntry) -> String {
    let end = |x: &FlowEnd| {
        let mut s = match &x.pod {
            Some(p) => format!("{}/{} ({}:{})", x.namespace, p, x.ip, x.port),
            None => format!("{} ({}:{})", x.id, x.ip, x.port),
        };
        if let Some(svc) = &x.service {
            s.push_str(&format!(" service: {svc}"));
        }
        s
    };
    let secs = e.time / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let by = match (&e.rule, &e.ingress_rule, &e.policy) {
        (Some(r), Some(i), _) => format!(" by {r}, {i}"),
        (Some(r), None, _) => format!(" by {r}"),
        (None, _, Some(p)) => format!(" by {p}"),
        _ => String::new(),
    };
    format!(
        "{h:02}:{m:02}:{s:02}.{:03} {:<8} {} -> {} {} {:?} {}{by} {}B/{}B",
        e.time % 1000,
        e.node,
        end(&e.source),
        end(&e.destination),
        e.protocol,
        e.event,
        e.verdict,
        e.counters.bytes_sent,
        e.counters.bytes_received,
    )
}

fn query(socket: &Path, f: &FlowFilter) -> Result<FlowPage, String> {
    veil_api::call::<_, FlowPage>(socket, method::FLOWS_LIST, f, Duration::from_secs(10))
        .map_err(|e| e.to_string())
}

/// Runs the command; returns the exit code.
pub fn run(args: Args) -> i32 {
    let sockets = match args.target.sockets() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("veilctl flows: {e}");
            return super::common::USAGE;
        }
    };
    let base = FlowFilter {
        after: 0,
        namespace: args.namespace.clone(),
        from: args.from.clone(),
        to: args.to.clone(),
        verdict: args.verdict,
        policy: args.policy.clone(),
        limit: args.last,
        pod: args.pod.clone(),
        port: args.port,
        since: args
            .since
            .map(|d| now_ms().saturating_sub(d.as_millis() as u64)),
    };
    let mut cursors = vec![0u64; sockets.len()];
    let mut first = true;
    loop {
        let mut batch = Vec::new();
        let mut ok = 0;
        for (i, (node, socket)) in sockets.iter().enumerate() {
            let f = FlowFilter {
                after: cursors[i],
                limit: if first { args.last } else { 0 },
                ..base.clone()
            };
            match query(socket, &f) {
                Ok(p) => {
                    ok += 1;
                    if p.missed > 0 {
                        eprintln!(
                            "veilctl flows: {} flows of node {node} dropped before they were read",
                            p.missed
                        );
                    }
                    cursors[i] = p.cursor;
                    batch.extend(p.flows);
                }
                Err(e) if first => eprintln!("veilctl flows: node {node}: {e}"),
                Err(_) => {}
            }
        }
        if first && ok == 0 {
            return 1;
        }
        batch.sort_by_key(|e| (e.time, e.seq));
        for e in &batch {
            match args.output {
                Output::Text => println!("{}", line(e)),
                Output::Json => match serde_json::to_string(e) {
                    Ok(s) => println!("{s}"),
                    Err(err) => eprintln!("veilctl flows: cannot encode: {err}"),
                },
                Output::Yaml => match serde_yaml::to_string(e) {
                    Ok(s) => print!("---\n{s}"),
                    Err(err) => eprintln!("veilctl flows: cannot encode: {err}"),
                },
            }
        }
        if !args.follow {
            return 0;
        }
        first = false;
        std::thread::sleep(Duration::from_millis(1000));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_hubble_style_durations() {
        assert_eq!(parse_since("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_since("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_since("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_since("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_since("90"), Ok(Duration::from_secs(90)));
        assert!(parse_since("5 minutes").is_err());
        assert!(parse_since("m").is_err());
        assert!(parse_since("99999999999999999999d").is_err());
    }
}
