//! `veilctl`'s exit codes and messages as a user meets them (issue 14): 2
//! for bad usage or something named that does not exist, clap value enums for
//! every `--output`, and messages in words (no Rust type names, no `0..=65535`).
//! Needs no daemon nor lab.

use std::process::{Command, Output};

fn veilctl(args: &[&str]) -> Output {
    Command::new(veil_tests::bin("veilctl"))
        .args(args)
        .output()
        .expect("run veilctl")
}

fn expect(args: &[&str], code: i32, stderr_has: &str) {
    let o = veilctl(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "veilctl {args:?}: {err}");
    assert!(err.contains(stderr_has), "veilctl {args:?}: {err}");
    for rust in ["Raw", "..=", "struct ", "Connection refused"] {
        assert!(
            !err.contains(rust),
            "veilctl {args:?} shows {rust:?}: {err}"
        );
    }
}

#[test]
fn usage_errors_and_missing_things_exit_2_in_words() {
    expect(
        &["status", "--output", "yaml"],
        2,
        "possible values: text, json",
    );
    expect(
        &["wireguard", "status", "--output", "yaml"],
        2,
        "possible values",
    );
    expect(
        &["policy", "status", "--output", "yaml"],
        2,
        "possible values",
    );
    expect(&["status", "--socket", "/etc/passwd"], 2, "is not a socket");
    expect(
        &["graph", "--socket", "/nonexistent/veild.sock"],
        2,
        "no veild socket",
    );
    expect(&["flows", "--socket", "/etc"], 2, "directory");
    expect(&["status", "--lab", "tnolab9"], 2, "does not exist");
    expect(&["graph", "--lab", "tnolab9"], 2, "does not exist");
    expect(
        &["wireguard", "rotate-key", "--lab", "tnolab9"],
        2,
        "does not exist",
    );
    expect(&["policy", "test", "/etc/hostname"], 2, "not a scenario");
    expect(
        &[
            "lab", "probe", "--from", "a/b", "--to", "c/d", "--port", "0",
        ],
        2,
        "from 1 to 65535",
    );
    expect(
        &[
            "lab", "probe", "--from", "a/b", "--to", "c/d", "--port", "70000",
        ],
        2,
        "from 1 to 65535",
    );
}

#[test]
fn wireguard_help_lists_status_and_rotate_key() {
    let o = veilctl(&["wireguard", "--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("status") && out.contains("rotate-key"),
        "{out}"
    );
    let o = veilctl(&["--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("wireguard"))
        .unwrap();
    assert!(line.contains("status"), "{line}");
}
