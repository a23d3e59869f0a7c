//! Waiting until every lab daemon enforces a change: `lab test` reads each
//! node's policy generation before writing a step's changes, then polls
//! `node.status` until each node reports a newer generation that its
//! dataplane holds (`policyAppliedGeneration >= policyGeneration`). A change
//! that leaves the program as it was (an identical object) bumps nothing:
//! after [`Wait::quiet`] without a new generation, a node whose dataplane
//! holds its current generation counts as done. Once every node is done,
//! the generations must then hold still for [`Wait::stable`]: a step writes
//! one file per object, and a daemon that read the first file before the
//! others were written has applied a part of the step (seen under load, with
//! several labs at once).
//!
//! It does not write anything; the status source is a trait so the logic is
//! tested without daemons.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use veil_api::{call, method, NodeStatus};

/// One node's policy generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generations {
    /// Generation of the node's program.
    pub generation: u64,
    /// Generation its dataplane holds.
    pub applied: u64,
}

/// Where the generations come from.
pub trait StatusSource {
    /// Every node's generations, by node name.
    fn generations(&mut self) -> Result<BTreeMap<String, Generations>, String>;
}

/// The lab's daemons, through `node.status` on their sockets.
pub struct Daemons(pub Vec<(String, PathBuf)>);

impl StatusSource for Daemons {
    fn generations(&mut self) -> Result<BTreeMap<String, Generations>, String> {
        let mut out = BTreeMap::new();
        for (node, socket) in &self.0 {
            let s: NodeStatus = call(socket, method::NODE_STATUS, &(), Duration::from_secs(2))
                .map_err(|e| format!("node {node}: {e}"))?;
            out.insert(
                node.clone(),
                Generations {
                    generation: s.policy_generation,
                    applied: s.policy_applied_generation,
                },
            );
        }
        Ok(out)
    }
}

/// How long to poll.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// Between two polls.
    pub poll: Duration,
    /// Without a new generation after this long, a node whose dataplane holds
    /// its generation is done (the change did not change its program).
    pub quiet: Duration,
    /// Once every node is done, how long its generations must not change.
    pub stable: Duration,
    /// Give up after this long.
    pub timeout: Duration,
}

impl Default for Wait {
    fn default() -> Self {
        Wait {
            poll: Duration::from_millis(50),
            quiet: Duration::from_secs(1),
            stable: Duration::from_millis(250),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Waits until every node of `before` (generations read before the change)
/// holds a newer generation in its dataplane, or holds its unchanged one
/// after `wait.quiet`, and then every node's generations stay as they are for
/// `wait.stable`. The error names the first node not done and what it
/// reported.
pub fn wait_applied(
    source: &mut dyn StatusSource,
    before: &BTreeMap<String, Generations>,
    wait: Wait,
) -> Result<(), String> {
    let start = Instant::now();
    // Since when every node has been done, with these generations.
    let mut done: Option<(Instant, BTreeMap<String, Generations>)> = None;
    loop {
        let elapsed = start.elapsed();
        let now = source.generations();
        let pending = match &now {
            Ok(now) => before.iter().find_map(|(node, b)| match now.get(node) {
                Some(g)
                    if g.applied >= g.generation
                        && (g.generation > b.generation || elapsed >= wait.quiet) =>
                {
                    None
                }
                Some(g) => Some(format!(
                    "node {node}: policy generation {} (was {}), its dataplane holds {}",
                    g.generation, b.generation, g.applied
                )),
                None => Some(format!("node {node}: no status")),
            }),
            Err(e) => Some(e.clone()),
        };
        let why = match (pending, now) {
            (None, Ok(now)) => match &done {
                Some((since, g)) if *g == now => {
                    if since.elapsed() >= wait.stable {
                        return Ok(());
                    }
                    "the generations are still settling".to_string()
                }
                _ => {
                    if wait.stable.is_zero() {
                        return Ok(());
                    }
                    done = Some((Instant::now(), now));
                    "the generations are still settling".to_string()
                }
            },
            (Some(why), _) => {
                done = None;
                why
            }
            (None, Err(e)) => e,
        };
        if elapsed >= wait.timeout {
            return Err(format!(
                "the policy change was not applied within {:?}: {why}",
                wait.timeout
            ));
        }
        std::thread::sleep(wait.poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a script: each poll takes the next answer, the last
    /// one repeats.
    struct Script(Vec<Vec<(&'static str, u64, u64)>>, usize);

    impl StatusSource for Script {
        fn generations(&mut self) -> Result<BTreeMap<String, Generations>, String> {
            let i = self.1.min(self.0.len() - 1);
            self.1 += 1;
            Ok(self.0[i]
                .iter()
                .map(|(n, g, a)| {
                    (
                        n.to_string(),
                        Generations {
                            generation: *g,
                            applied: *a,
                        },
                    )
                })
                .collect())
        }
    }

    fn before(nodes: &[(&str, u64)]) -> BTreeMap<String, Generations> {
        nodes
            .iter()
            .map(|(n, g)| {
                (
                    n.to_string(),
                    Generations {
                        generation: *g,
                        applied: *g,
                    },
                )
            })
            .collect()
    }

    fn fast() -> Wait {
        Wait {
            poll: Duration::from_millis(1),
            quiet: Duration::from_millis(200),
            stable: Duration::from_millis(20),
            timeout: Duration::from_millis(400),
        }
    }

    #[test]
    fn waits_until_every_node_applied_a_newer_generation() {
        let mut s = Script(
            vec![
                vec![("a", 3, 3), ("b", 3, 3)],
                vec![("a", 4, 3), ("b", 4, 3)],
                vec![("a", 4, 4), ("b", 4, 3)],
                vec![("a", 4, 4), ("b", 5, 5)],
            ],
            0,
        );
        let t = Instant::now();
        wait_applied(&mut s, &before(&[("a", 3), ("b", 3)]), fast()).unwrap();
        assert!(
            s.1 > 4,
            "held still for the stable time after both were done"
        );
        assert!(
            t.elapsed() < fast().quiet,
            "did not wait for the quiet time"
        );
    }

    #[test]
    fn a_generation_that_moves_again_after_done_is_waited_for() {
        // The node applies a part of the step (4), then the rest (5).
        let mut s = Script(
            vec![
                vec![("a", 4, 4)],
                vec![("a", 4, 4)],
                vec![("a", 5, 4)],
                vec![("a", 5, 5)],
            ],
            0,
        );
        let mut w = fast();
        w.poll = Duration::from_millis(2);
        w.stable = Duration::from_millis(30);
        wait_applied(&mut s, &before(&[("a", 3)]), w).unwrap();
        assert!(s.1 > 4, "kept polling past the move to 5");
    }

    #[test]
    fn a_node_that_keeps_changing_times_out() {
        let mut s = Counting(3);
        let e = wait_applied(&mut s, &before(&[("a", 3)]), fast()).unwrap_err();
        assert!(e.contains("settling"), "{e}");
    }

    /// A node whose generation moves at every poll.
    struct Counting(u64);

    impl StatusSource for Counting {
        fn generations(&mut self) -> Result<BTreeMap<String, Generations>, String> {
            self.0 += 1;
            Ok([(
                "a".to_string(),
                Generations {
                    generation: self.0,
                    applied: self.0,
                },
            )]
            .into())
        }
    }

    #[test]
    fn a_change_that_bumps_nothing_is_done_after_the_quiet_time() {
        let mut s = Script(vec![vec![("a", 3, 3)]], 0);
        let t = Instant::now();
        wait_applied(&mut s, &before(&[("a", 3)]), fast()).unwrap();
        assert!(t.elapsed() >= fast().quiet);
    }

    #[test]
    fn a_node_that_never_applies_times_out_naming_it() {
        let mut s = Script(vec![vec![("a", 4, 4), ("node-b", 4, 3)]], 0);
        let e = wait_applied(&mut s, &before(&[("a", 3), ("node-b", 3)]), fast()).unwrap_err();
        assert!(
            e.contains("node node-b: policy generation 4 (was 3), its dataplane holds 3"),
            "{e}"
        );
    }

    #[test]
    fn an_unchanged_generation_not_yet_applied_is_not_done() {
        let mut s = Script(vec![vec![("a", 3, 2)]], 0);
        let e = wait_applied(&mut s, &before(&[("a", 3)]), fast()).unwrap_err();
        assert!(e.contains("node a:"), "{e}");
    }
}
