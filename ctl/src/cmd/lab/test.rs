//! `veilctl lab test`: scenario files run as real packets, each in a lab of
//! its own, up to `--jobs` labs at once. Output is the same whatever the
//! number of jobs: every scenario's lines together, in file order (the
//! scenario in front streams as it runs; those behind it are held until it
//! is done). It does not judge probes itself: `lab::test` does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::need_root;
use crate::lab::up::Binaries;
use crate::lab::{self, LabError};

#[derive(Debug, clap::Args)]
pub(super) struct TestArgs {
    /// Scenario files, or folders of them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Keep each lab afterwards (named after its scenario's position: lt0, lt1, ...).
    #[arg(long)]
    keep: bool,
    /// Extra time after every daemon reports a change applied, before its
    /// probes run (ms).
    #[arg(long, default_value_t = 0)]
    settle_ms: u64,
    /// Labs run at once (default: the number of CPUs, at most 4). Each lab
    /// lives in namespaces of its own, so scenarios never see each other.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: Option<u16>,
    /// The veild binary (default: next to veilctl).
    #[arg(long)]
    veild: Option<PathBuf>,
    /// Directory of the veil CNI plugin (default: next to veilctl).
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
}

/// The scenario files named on the command line (folders: their `.yaml`
/// and `.yml` files, sorted).
fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LabError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| LabError::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(veil_scenario::is_scenario_file)
                })
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// One line of a scenario's output.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Out(String),
    Err(String),
}

/// What one scenario counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    passed: usize,
    failed: usize,
    invalid: usize,
}

/// What a worker tells the printer about scenario `.0`.
#[derive(Debug)]
enum Event {
    Line(usize, Line),
    Done(usize, Tally),
}

/// Prints scenarios' lines in file order whatever order they come in: the
/// lines of the first unfinished scenario go out at once, the others wait.
#[derive(Debug, Default)]
struct Printer {
    next: usize,
    held: BTreeMap<usize, Vec<Line>>,
    done: BTreeMap<usize, Tally>,
    total: Tally,
}

impl Printer {
    /// Takes one event; returns the lines to print now, in order.
    fn take(&mut self, e: Event) -> Vec<Line> {
        let mut out = Vec::new();
        match e {
            Event::Line(i, l) if i == self.next => out.push(l),
            Event::Line(i, l) => self.held.entry(i).or_default().push(l),
            Event::Done(i, t) => {
                self.done.insert(i, t);
            }
        }
        while let Some(t) = self.done.remove(&self.next) {
            self.total.passed += t.passed;
            self.total.failed += t.failed;
            self.total.invalid += t.invalid;
            self.next += 1;
            out.extend(self.held.remove(&self.next).unwrap_or_default());
        }
        out
    }
}

fn print(l: Line) {
    match l {
        Line::Out(s) => println!("{s}"),
        Line::Err(s) => eprintln!("{s}"),
    }
}

pub(super) fn test(a: TestArgs) -> Result<i32, LabError> {
    need_root()?;
    let files = scenario_files(&a.paths)?;
    let binaries = Binaries::locate(a.veild.clone(), a.cni_bin_dir.clone())?;
    if !a.keep {
        super::interrupt::install();
    }
    let jobs = a.jobs.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4)
    });
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<Event>();
    let mut printer = Printer::default();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(files.len()) {
            let tx = tx.clone();
            let (files, binaries, next, a) = (&files, &binaries, &next, &a);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(f) = files.get(i) else { break };
                let send = |l: Line| {
                    let _ = tx.send(Event::Line(i, l));
                };
                let tally = run_one(i, f, a, binaries, &send);
                let _ = tx.send(Event::Done(i, tally));
            });
        }
        drop(tx);
        for e in rx {
            printer.take(e).into_iter().for_each(print);
        }
    });
    let t = printer.total;
    println!("{} passed, {} failed", t.passed, t.failed);
    Ok(if t.invalid > 0 {
        2
    } else if t.failed > 0 {
        1
    } else {
        0
    })
}

/// Runs scenario file `f` (position `i`) in a lab of its own.
fn run_one(
    i: usize,
    f: &std::path::Path,
    a: &TestArgs,
    binaries: &Binaries,
    send: &dyn Fn(Line),
) -> Tally {
    let mut tally = Tally::default();
    let sc = match lab::load_scenario(f) {
        Ok(s) => s,
        Err(e) => {
            send(Line::Err(format!("error: {e}")));
            tally.invalid += 1;
            return tally;
        }
    };
    let name = if a.keep {
        format!("lt{i}")
    } else {
        format!(
            "lt{:08x}",
            std::process::id().wrapping_mul(31).wrapping_add(i as u32)
        )
    };
    let opts = lab::test::TestOptions {
        lab: name.clone(),
        binaries: binaries.clone(),
        settle: Duration::from_millis(a.settle_ms),
        keep: a.keep,
    };
    let mut report = |o: &lab::test::Outcome| {
        let step = if sc.has_steps {
            format!(" step {}", o.step)
        } else {
            String::new()
        };
        let detail = match (&o.result.error, &o.result.status) {
            (Some(e), _) => format!(" ({e})"),
            (None, Some(st)) => format!(" (HTTP {st})"),
            _ => String::new(),
        };
        send(Line::Out(format!(
            "{} {}{} #{}: {} -> {} port {}/{}: {} (expected {}){detail}",
            if o.passed() { "PASS" } else { "FAIL" },
            sc.name,
            step,
            o.index,
            o.probe.from,
            o.probe.to,
            o.probe.port,
            o.probe.protocol,
            o.verdict(),
            o.probe.expect
        )));
    };
    if !a.keep {
        super::interrupt::add(&name);
    }
    let run = lab::test::run(&sc, f, &opts, &mut report);
    super::interrupt::remove(&name);
    match run {
        Ok(outcomes) => {
            for o in &outcomes {
                if o.passed() {
                    tally.passed += 1;
                } else {
                    tally.failed += 1;
                }
            }
            if a.keep {
                send(Line::Out(format!(
                    "(lab {name} kept: veilctl lab down --name {name})"
                )));
            }
        }
        Err(e) => {
            send(Line::Err(format!("error: {}: {e}", f.display())));
            tally.invalid += 1;
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(s: &str) -> Line {
        Line::Out(s.into())
    }

    #[test]
    fn lines_come_out_in_file_order_whatever_order_scenarios_finish_in() {
        let mut p = Printer::default();
        let one = Tally {
            passed: 1,
            ..Tally::default()
        };
        // Scenario 1 runs and finishes before scenario 0 says anything.
        assert!(p.take(Event::Line(1, out("b1"))).is_empty());
        assert!(p.take(Event::Line(2, out("c1"))).is_empty());
        assert!(p.take(Event::Done(1, one)).is_empty());
        // Scenario 0 streams, then its end releases 1's lines and 2's so far.
        assert_eq!(p.take(Event::Line(0, out("a1"))), vec![out("a1")]);
        assert_eq!(
            p.take(Event::Done(0, one)),
            vec![out("b1"), out("c1")],
            "0 done: 1 (done) and what 2 said so far"
        );
        // Scenario 2 is now in front: it streams.
        assert_eq!(p.take(Event::Line(2, out("c2"))), vec![out("c2")]);
        assert!(p
            .take(Event::Done(
                2,
                Tally {
                    failed: 1,
                    invalid: 1,
                    ..Tally::default()
                }
            ))
            .is_empty());
        assert_eq!(
            p.total,
            Tally {
                passed: 2,
                failed: 1,
                invalid: 1
            }
        );
        assert!(p.held.is_empty() && p.done.is_empty());
    }
}
