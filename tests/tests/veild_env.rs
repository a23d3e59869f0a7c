//! Every `VEIL_*` knob of `veild` is a configuration field: a bad value
//! exits 64 naming it, before the daemon touches anything. No node name is
//! given, so that a daemon that accepted the value would still exit at once
//! (with a message that does not name the knob), never run here.

use std::process::Command;

use veil_tests::bin;

fn run(env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(bin("veild"))
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run veild");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flow_and_wireguard_knobs_exit_64_naming_them() {
    for (var, value, named) in [
        ("VEIL_FLOW_MAX_EDGES", "0", "VEIL_FLOW_MAX_EDGES"),
        ("VEIL_FLOW_MAX_EDGES", "many", "flow-max-edges"),
        ("VEIL_FLOW_DUMP_SECONDS", "-3", "VEIL_FLOW_DUMP_SECONDS"),
        ("VEIL_EXTERNAL_NETWORKS", "api", "VEIL_EXTERNAL_NETWORKS"),
        ("VEIL_FLOWS", "sometimes", "flows"),
        ("VEIL_FLOW_HOST_NETNS", "perhaps", "flow-host-netns"),
        ("VEIL_WG_NO_GSO", "perhaps", "wg-no-gso"),
    ] {
        let (code, err) = run(&[(var, value)]);
        assert_eq!(code, 64, "{var}={value}: {err}");
        assert!(err.contains(named), "{var}={value}: {err}");
    }
}
