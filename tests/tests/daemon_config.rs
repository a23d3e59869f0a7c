//! `veild` refuses bad configuration with exit code 64 and a message naming the
//! field, before touching anything (no namespace needed: it exits first).

use std::process::Command;

use veil_tests::{bin, unique_prefix, TempDir};

fn run(args: &[&str], file: Option<&str>) -> (i32, String) {
    let dir = TempDir::new(&unique_prefix(), "config");
    let mut cmd = Command::new(bin("veild"));
    cmd.args(args).env_clear();
    if let Some(text) = file {
        let path = dir.join("veild.yaml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(&path);
    }
    let out = cmd.output().expect("run veild");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_node_name_exits_64_naming_the_flag() {
    let (code, err) = run(
        &[
            "--node-address",
            "198.18.0.10",
            "--pod-cidr",
            "10.244.0.0/24",
        ],
        None,
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("--node-name") && err.contains("VEIL_NODE_NAME"),
        "{err}"
    );
}

#[test]
fn unknown_field_in_the_file_exits_64_naming_it() {
    let (code, err) = run(&[], Some("nodeName: a\nnodeAdress: 198.18.0.10\n"));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("nodeAdress"), "{err}");
}

#[test]
fn pod_cidr_with_host_bits_exits_64() {
    let (code, err) = run(
        &[
            "--node-name",
            "a",
            "--node-address",
            "198.18.0.10",
            "--pod-cidr",
            "10.244.0.5/24",
        ],
        None,
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("podCIDR"), "{err}");
}

#[test]
fn bad_flag_value_exits_with_an_error_naming_the_flag() {
    let out = Command::new(bin("veild"))
        .args(["--node-address", "not-an-ip"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-address"));
}
