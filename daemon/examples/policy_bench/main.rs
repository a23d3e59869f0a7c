//! Benchmark of enforced policy (issue 9, "Performance"), ratios in one run:
//! - new TCP connections per second (TCP_CRR: connect, one byte each way,
//!   close) and one stream's throughput (iperf3) between two pods of one node
//!   whose `inet veil` table enforces 10,000 rules over 1,000 pods, against
//!   the same node with Veil's table without policy (and with no table);
//! - the time from a policy change to enforcement (incremental compile,
//!   render, incremental `nft` transaction through the table manager), for a
//!   one-rule and a 1,000-rule change, p50 and p99;
//! - the resident memory of what veild holds for that cluster.
//!
//! Run as root: `bench/policy` (or `cargo run --release -p veil-daemon
//! --example policy_bench`). Everything lives in network namespaces named
//! `vbp-<pid>-*`, removed at the end (also on panic or error; namespaces of a
//! killed run are removed by the next). Addresses in 10.244.0.0/16 only.
//! Every loop is bounded in time. Sub-commands (`serve`, `crr`, `probe`,
//! `apply-bench`, `rss`) are the parts it re-executes inside a namespace;
//! `dump <dir>` writes the full table and the batches of the two timed
//! changes as `nft -j` documents, to study them with `nft`, `strace`, `perf`.

mod apply;
mod bed;
mod cluster;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use veil_daemon::dataplane::nftables::plan;
use veil_policy::compile::Compiled;
use veil_policy::PolicySet;

use bed::Bed;
use cluster::{IPERF_PORT, PODS, PORT, RULES, SRV_IP};

/// Length of one measurement round.
const ROUND: Duration = Duration::from_secs(2);
/// Rounds per case (interleaved, median reported).
const ROUNDS: usize = 3;
/// Connect timeout of the CRR client.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// The server exits on its own after this long.
const SERVER_LIFETIME: Duration = Duration::from_secs(600);

fn server_addr(port: u16) -> SocketAddr {
    (SRV_IP.parse::<IpAddr>().unwrap(), port).into()
}

/// CRR server: one byte back per connection.
fn serve() -> Result<()> {
    let l = TcpListener::bind(server_addr(PORT)).context("binding the CRR server")?;
    let deadline = Instant::now() + SERVER_LIFETIME;
    for s in l.incoming() {
        if Instant::now() > deadline {
            break;
        }
        let Ok(mut s) = s else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(&b);
        }
    }
    Ok(())
}

/// One connect + one byte each way; exit status says whether it worked.
fn probe(port: u16) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&server_addr(port), CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {}", server_addr(port)))?;
    if port == PORT {
        s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        s.write_all(&[7])?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).context("reading the echo")?;
    }
    Ok(())
}

/// CRR client: connections per second over one round.
fn crr_client() {
    let to = server_addr(PORT);
    let t = Instant::now();
    let (mut n, mut failed) = (0u64, 0u64);
    while t.elapsed() < ROUND {
        let ok = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
            s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
            let mut b = [7u8; 1];
            s.write_all(&b)?;
            s.read_exact(&mut b)
        })();
        match ok {
            Ok(()) => n += 1,
            Err(_) => failed += 1,
        }
    }
    println!("{:.1} {failed}", n as f64 / t.elapsed().as_secs_f64());
}

fn crr(bed: &Bed) -> Result<f64> {
    let out = bed.cmd("cli", &[&bed.exe, "crr"]).output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let mut w = s.split_whitespace();
    let (Some(rate), Some(failed)) = (w.next(), w.next()) else {
        bail!(
            "crr client said {s:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if failed != "0" {
        eprintln!("  note: {failed} connection attempts failed in this round");
    }
    Ok(rate.parse()?)
}

fn iperf(bed: &Bed) -> Result<f64> {
    let out = bed
        .cmd(
            "cli",
            &[
                "timeout",
                "10",
                "iperf3",
                "-c",
                SRV_IP,
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                "2",
                "--connect-timeout",
                "1000",
                "-J",
            ],
        )
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    match v["end"]["sum_received"]["bits_per_second"].as_f64() {
        Some(b) => Ok(b / 1e9),
        None => bail!("iperf3 failed: {}", v["error"]),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn wire(bed: &mut Bed) -> Result<()> {
    let t = Instant::now();
    let c = cluster::cluster();
    let ps = cluster::policies();
    let built = t.elapsed();
    let t = Instant::now();
    let compiled = Compiled::new(&c, &ps);
    let compile = t.elapsed();
    let t = Instant::now();
    let rendered = cluster::render_node(&c, &compiled);
    let render = t.elapsed();
    let full = cluster::desired(&rendered);
    plan::validate(&full)?;
    let doc = plan::to_json(&plan::full(&full))?.to_string();
    let open = cluster::desired(&cluster::render_node(
        &c,
        &Compiled::new(&c, &PolicySet::new()),
    ));
    let doc_open = plan::to_json(&plan::full(&open))?.to_string();
    if let Ok(dir) = std::env::var("VBP_DUMP") {
        // Debugging aid: the two documents the benchmark loads.
        std::fs::write(format!("{dir}/open.json"), &doc_open)?;
        std::fs::write(format!("{dir}/full.json"), &doc)?;
    }
    println!(
        "cluster: {PODS} pods, {} policies, {RULES} rules; generated {built:.1?}, compiled {compile:.1?}, rendered {render:.1?}: {} chains, {} nft rules, {} sets, {} KiB of JSON",
        ps.policies().len(),
        rendered.chains.len(),
        rendered.rule_count(),
        rendered.sets.len(),
        doc.len() / 1024
    );

    bed.spawn("srv", &[&bed.exe.clone(), "serve"])?;
    bed.spawn(
        "srv",
        &["iperf3", "-s", "-B", SRV_IP, "-p", &IPERF_PORT.to_string()],
    )?;
    bed.load(None)?;
    bed.wait_reachable(PORT, Duration::from_secs(5))?;
    bed.wait_reachable(IPERF_PORT, Duration::from_secs(5))?;

    let (mut none, mut open_crr, mut pol) = (Vec::new(), Vec::new(), Vec::new());
    let (mut load_open, mut load_full) = (Vec::new(), Vec::new());
    let (mut t_open, mut t_pol) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", r + 1);
        bed.load(None)?;
        none.push(crr(bed)?);
        load_open.push(bed.load(Some(&doc_open))?.as_secs_f64() * 1e3);
        bed.wait_reachable(PORT, Duration::from_secs(2))?;
        open_crr.push(crr(bed)?);
        t_open.push(iperf(bed)?);
        bed.load(None)?;
        load_full.push(bed.load(Some(&doc))?.as_secs_f64() * 1e3);
        bed.wait_reachable(PORT, Duration::from_secs(2))
            .context("the server is not reachable through the 10k-rule table")?;
        pol.push(crr(bed)?);
        t_pol.push(iperf(bed)?);
    }
    let (n, o, p) = (median(none), median(open_crr), median(pol));
    println!("TCP_CRR conn/s (median of {ROUNDS} x {ROUND:?}): no table {n:.0}, veil without policy {o:.0}, veil with {RULES} rules {p:.0}");
    println!(
        "  ratio 10k rules / veil without policy: {:.3}   10k rules / no table: {:.3}   veil without policy / no table: {:.3}",
        p / o,
        p / n,
        o / n
    );
    let (t0, t1) = (median(t_open), median(t_pol));
    println!(
        "one-stream throughput Gbit/s (iperf3, 2 s): veil without policy {t0:.2}, {RULES} rules {t1:.2}, ratio {:.3}",
        t1 / t0
    );
    println!(
        "loading the whole table (one nft -j transaction, into an empty ruleset): without policy median {:.0} ms, with {RULES} rules median {:.0} ms",
        median(load_open),
        median(load_full)
    );
    bed.load(None)?;
    Ok(())
}

fn run_sub(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd.status().with_context(|| format!("starting {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("serve") => return serve(),
        Some("crr") => {
            crr_client();
            return Ok(());
        }
        Some("probe") => {
            let port = args.next().and_then(|p| p.parse().ok()).unwrap_or(PORT);
            return probe(port);
        }
        Some("apply-bench") => return apply::apply_bench(),
        Some("rss") => {
            apply::rss();
            return Ok(());
        }
        Some("dump") => {
            let dir = args.next().context("dump <dir>")?;
            return apply::dump(&dir);
        }
        Some(other) => bail!("unknown sub-command {other:?}"),
        None => {}
    }
    bed::remove_stale();
    let mut bed = Bed::up()?;
    wire(&mut bed)?;
    let mut c = bed.cmd("node", &[&bed.exe, "apply-bench"]);
    run_sub(&mut c, "apply-bench in the node's namespace")?;
    drop(bed);
    run_sub(
        Command::new(std::env::current_exe()?).arg("rss"),
        "rss measurement",
    )?;
    Ok(())
}
