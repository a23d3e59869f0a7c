use super::*;

fn flags() -> Flags {
    Flags {
        node_name: Some("node-a".into()),
        node_address: Some("198.18.0.10".parse().unwrap()),
        pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        ..Flags::default()
    }
}

#[test]
fn flags_override_the_file_and_defaults_fill_the_rest() {
    let file: FileConfig =
        serde_yaml::from_str("nodeName: from-file\nwireguardPort: 5000\n").unwrap();
    let c = Config::merge(flags(), file).unwrap();
    assert_eq!(c.node_name, "node-a");
    assert_eq!(c.wireguard_port, 5000);
    assert_eq!(c.http_listen.port(), 9590);
    assert_eq!(c.node_labels["kubernetes.io/hostname"], "node-a");
}

#[test]
fn cni_conf_dir_and_uninstall_are_off_unless_asked() {
    let c = Config::merge(flags(), FileConfig::default()).unwrap();
    assert_eq!(c.cni_conf_dir, None);
    assert!(!c.uninstall_on_exit);
    let file: FileConfig =
        serde_yaml::from_str("cniConfDir: /etc/cni/net.d\nuninstallOnExit: true\n").unwrap();
    let c = Config::merge(flags(), file).unwrap();
    assert_eq!(c.cni_conf_dir, Some(PathBuf::from("/etc/cni/net.d")));
    assert!(c.uninstall_on_exit);
}

#[test]
fn unknown_file_field_is_named() {
    let e = serde_yaml::from_str::<FileConfig>("nodeNmae: x\n").unwrap_err();
    assert!(e.to_string().contains("nodeNmae"), "{e}");
}

#[test]
fn pod_cidr_outside_the_cluster_is_refused() {
    let mut f = flags();
    f.pod_cidr = Some("10.9.0.0/24".parse().unwrap());
    let e = Config::merge(f, FileConfig::default()).unwrap_err();
    assert!(e.to_string().contains("podCIDR"), "{e}");
}

#[test]
fn flow_and_wireguard_knobs_come_from_flags_and_file() {
    let mut f = flags();
    f.external_networks = vec!["api=203.0.113.0/24".into()];
    f.flow_dump_seconds = Some(1.5);
    f.wg_no_gso = Some(true);
    let file: FileConfig =
        serde_yaml::from_str("flowMaxEdges: 500\nflows: false\nwgNoGro: true\n").unwrap();
    let c = Config::merge(f, file).unwrap();
    assert!(!c.flows.enabled);
    assert_eq!(c.flows.dump_interval, Duration::from_millis(1500));
    assert_eq!(c.flows.max_edges, Some(500));
    assert_eq!(c.flows.external_networks[0].name, "api");
    assert!(c.wireguard_tuning.no_gso && c.wireguard_tuning.no_gro);
    assert!(!c.wireguard_tuning.no_offload);
}

#[test]
fn bad_flow_knobs_name_their_variable() {
    let mut f = flags();
    f.flow_max_edges = Some(0);
    let e = Config::merge(f, FileConfig::default()).unwrap_err();
    assert!(e.to_string().contains("VEIL_FLOW_MAX_EDGES"), "{e}");
    let mut f = flags();
    f.external_networks = vec!["nonsense".into()];
    let e = Config::merge(f, FileConfig::default()).unwrap_err();
    assert!(e.to_string().contains("VEIL_EXTERNAL_NETWORKS"), "{e}");
    let mut f = flags();
    f.flow_dump_seconds = Some(-1.0);
    let e = Config::merge(f, FileConfig::default()).unwrap_err();
    assert!(e.to_string().contains("VEIL_FLOW_DUMP_SECONDS"), "{e}");
}

#[test]
fn boolean_knobs_read_from_the_environment_the_way_they_always_did() {
    let f = Flags::try_parse_from([
        "veild",
        "--flows",
        "off",
        "--wg-no-gso",
        "--flow-host-netns",
        "1",
    ])
    .unwrap();
    assert_eq!(
        (f.flows, f.wg_no_gso, f.flow_host_netns),
        (Some(false), Some(true), Some(true))
    );
    assert!(Flags::try_parse_from(["veild", "--flows", "sometimes"]).is_err());
}

#[test]
fn missing_node_name_names_flag_and_variable() {
    let mut f = flags();
    f.node_name = None;
    let e = Config::merge(f, FileConfig::default()).unwrap_err();
    assert!(e.to_string().contains("VEIL_NODE_NAME"), "{e}");
}
