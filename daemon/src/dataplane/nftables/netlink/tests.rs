//! The writer against a real kernel, in a network namespace of its own
//! (a thread that unshares its network namespace: `nft` runs as its child,
//! the socket opens there, and the namespace ends with the thread).

use std::process::Command;

use super::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn nft(args: &[&str]) -> String {
    let o = Command::new("nft").args(args).output().expect("nft runs");
    assert!(
        o.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f()
    })
    .join()
    .expect("the namespace thread")
}

fn key(pod: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    concat_key(&[&pod, &dst])
}

/// `(pod . dst, timeout seconds)` of each element of `inet veil <set>`.
fn elements(set: &str) -> Vec<(String, u64)> {
    let j: serde_json::Value =
        serde_json::from_str(&nft(&["-j", "list", "set", "inet", "veil", set])).unwrap();
    let mut out = Vec::new();
    for o in j["nftables"].as_array().unwrap() {
        let Some(elems) = o["set"]["elem"].as_array() else {
            continue;
        };
        for e in elems {
            let (val, timeout) = match e.get("elem") {
                Some(inner) => (&inner["val"], inner["timeout"].as_u64().unwrap_or(0)),
                None => (e, 0),
            };
            let parts: Vec<String> = val["concat"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect();
            out.push((parts.join(" . "), timeout));
        }
    }
    out.sort();
    out
}

#[test]
fn writer_adds_and_deletes_concatenated_elements_with_timeouts_in_a_real_kernel() {
    if !is_root() {
        eprintln!("skipping: needs root (a network namespace)");
        return;
    }
    in_new_netns(|| {
        nft(&["add", "table", "inet", "veil"]);
        for s in ["d1", "d2"] {
            nft(&[
                "add",
                "set",
                "inet",
                "veil",
                s,
                "{ type ipv4_addr . ipv4_addr; flags timeout; }",
            ]);
        }
        let w = SetWriter::new();
        let a = [
            Elem {
                key: key([10, 244, 0, 5], [203, 0, 113, 1]),
                timeout_ms: Some(35_000),
            },
            Elem {
                key: key([10, 244, 0, 5], [203, 0, 113, 2]),
                timeout_ms: Some(305_000),
            },
        ];
        let b = [Elem {
            key: key([10, 244, 0, 6], [203, 0, 113, 9]),
            timeout_ms: Some(60_000),
        }];
        w.apply(&[
            SetOp {
                op: Op::Add,
                table: "veil",
                set: "d1",
                elems: &a,
            },
            SetOp {
                op: Op::Add,
                table: "veil",
                set: "d2",
                elems: &b,
            },
        ])
        .unwrap();
        assert_eq!(
            elements("d1"),
            vec![
                ("10.244.0.5 . 203.0.113.1".to_string(), 35),
                ("10.244.0.5 . 203.0.113.2".to_string(), 305),
            ]
        );
        assert_eq!(
            elements("d2"),
            vec![("10.244.0.6 . 203.0.113.9".to_string(), 60)]
        );
        // Adding one again is no error, and a longer timeout replaces its own.
        let longer = [Elem {
            key: a[0].key.clone(),
            timeout_ms: Some(600_000),
        }];
        w.apply(&[SetOp {
            op: Op::Add,
            table: "veil",
            set: "d1",
            elems: &longer,
        }])
        .unwrap();
        assert_eq!(
            elements("d1")[0],
            ("10.244.0.5 . 203.0.113.1".to_string(), 600)
        );
        // Delete one.
        let del = [Elem {
            key: a[0].key.clone(),
            timeout_ms: None,
        }];
        w.apply(&[SetOp {
            op: Op::Delete,
            table: "veil",
            set: "d1",
            elems: &del,
        }])
        .unwrap();
        assert_eq!(
            elements("d1"),
            vec![("10.244.0.5 . 203.0.113.2".to_string(), 305)]
        );
    });
}

#[test]
fn a_missing_set_fails_the_whole_batch_with_set_missing() {
    if !is_root() {
        eprintln!("skipping: needs root (a network namespace)");
        return;
    }
    in_new_netns(|| {
        nft(&["add", "table", "inet", "veil"]);
        nft(&[
            "add",
            "set",
            "inet",
            "veil",
            "d1",
            "{ type ipv4_addr . ipv4_addr; flags timeout; }",
        ]);
        let w = SetWriter::new();
        let e = [Elem {
            key: key([10, 244, 0, 5], [203, 0, 113, 1]),
            timeout_ms: Some(35_000),
        }];
        let err = w
            .apply(&[
                SetOp {
                    op: Op::Add,
                    table: "veil",
                    set: "d1",
                    elems: &e,
                },
                SetOp {
                    op: Op::Add,
                    table: "veil",
                    set: "gone",
                    elems: &e,
                },
            ])
            .unwrap_err();
        assert!(
            matches!(&err, NetlinkError::SetMissing { set, .. } if set == "gone"),
            "{err}"
        );
        // All or none: d1 got nothing.
        assert!(elements("d1").is_empty());
        // A key of the wrong length is refused, named, and the socket still works.
        let short = [Elem {
            key: vec![10, 244, 0, 5],
            timeout_ms: None,
        }];
        let err = w
            .apply(&[SetOp {
                op: Op::Add,
                table: "veil",
                set: "d1",
                elems: &short,
            }])
            .unwrap_err();
        assert!(matches!(err, NetlinkError::Refused { .. }), "{err}");
        w.apply(&[SetOp {
            op: Op::Add,
            table: "veil",
            set: "d1",
            elems: &e,
        }])
        .unwrap();
        assert_eq!(elements("d1").len(), 1);
        // No table at all.
        nft(&["delete", "table", "inet", "veil"]);
        let err = w
            .apply(&[SetOp {
                op: Op::Add,
                table: "veil",
                set: "d1",
                elems: &e,
            }])
            .unwrap_err();
        assert!(matches!(err, NetlinkError::SetMissing { .. }), "{err}");
    });
}
