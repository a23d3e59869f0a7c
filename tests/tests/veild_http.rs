//! A real `veild`'s HTTP and log output, checked by the tools that consume
//! them: `/metrics` in both exposition formats (chosen by `Accept`) passes
//! Prometheus' own parsers, and the log written to a file carries no ANSI
//! colour codes.
//!
//! promtool comes from Debian's `prometheus` package (scripts/setup installs
//! it). `promtool check metrics` lints the classic text format 0.0.4 only (it
//! has no OpenMetrics parser: an OpenMetrics body fails it by design, e.g.
//! `unknown metric type "info"`), so the OpenMetrics body is checked by
//! promtool's OpenMetrics importer (`tsdb create-blocks-from openmetrics`),
//! which is Prometheus' strict OpenMetrics parser, after stamping each sample
//! with a timestamp as that importer requires.

use std::process::{Command, Stdio};

use veil_tests::{require_root, unique_prefix, Node, TempDir};

const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn require_promtool() {
    assert!(
        Command::new("promtool")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "promtool is missing: install Debian's `prometheus` package (scripts/setup does)"
    );
}

/// `GET /metrics` from inside the node's namespace: (content type, body).
fn scrape(node: &Node, accept: Option<&str>) -> (String, String) {
    let mut args = vec!["curl", "-sS", "--max-time", "10", "-D", "/dev/stderr"];
    if let Some(a) = accept {
        args.extend(["-H", a]);
    }
    args.push("http://127.0.0.1:19590/metrics");
    let out = node.netns.exec(&args);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let headers = String::from_utf8_lossy(&out.stderr).into_owned();
    let ctype = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no content type in {headers}"));
    (ctype, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn metrics_pass_promtool_in_both_formats() {
    require_root();
    require_promtool();
    let p = unique_prefix();
    let node = Node::start(&p, "10.244.12.0/24");
    // A CNI request (DEL of nothing succeeds), so that the labelled counter
    // `veil_cni_requests` has a sample.
    let cid = format!("{p}gone");
    let netns = format!("/run/netns/{p}-gone");
    let vars = veil_tests::pod_vars(&cid, &netns, "");
    node.cni("DEL", &vars, &node.conf("1.1.0")).ok();

    let (ctype, text) = scrape(&node, None);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        text.contains("# TYPE veil_cni_requests_total counter"),
        "{text}"
    );
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    let (ok, report) = promtool(&["check", "metrics"], &text);
    assert!(ok, "promtool check metrics (0.0.4): {report}\n{text}");

    let (ctype, om) = scrape(&node, Some(&format!("Accept: {OPENMETRICS_ACCEPT}")));
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    let stamped: String = om
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("{l}\n")
            } else {
                // The timestamp goes after the value, before any exemplar.
                match l.find(" # ") {
                    Some(i) => format!("{} 1700000000{}\n", &l[..i], &l[i..]),
                    None => format!("{l} 1700000000\n"),
                }
            }
        })
        .collect();
    let dir = TempDir::new(&p, "om");
    let input = dir.path().join("metrics.om");
    std::fs::write(&input, &stamped).unwrap();
    let blocks = dir.path().join("blocks");
    let (ok, report) = promtool(
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            input.to_str().unwrap(),
            blocks.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "promtool's OpenMetrics parser: {report}\n{om}");
}

#[test]
fn the_log_in_a_file_has_no_colour_codes() {
    require_root();
    let p = unique_prefix();
    let node = Node::start(&p, "10.244.13.0/24");
    let log = node.log();
    assert!(log.contains("INFO"), "the log has lines: {log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape in the log: {log:?}");
}
