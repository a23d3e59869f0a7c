use super::*;
use crate::lab::plan::Plan;

#[test]
fn pod_records_carry_labels_node_and_ports() {
    let plan = Plan::sample("t", 1, 1).unwrap();
    let r = pod_record(&plan.pods[0]);
    assert_eq!(r.namespace, "demo");
    assert_eq!(r.node.as_deref(), Some("node-a"));
    assert_eq!(r.labels["app"], "web");
    assert_eq!(r.ports[0].port, 80);
    assert_eq!(r.ports[0].protocol, "TCP");
}

#[test]
fn serve_specs_split_ports_by_protocol() {
    let ports = vec![
        PlanPort {
            port: 80,
            protocol: Proto::Tcp,
            name: None,
        },
        PlanPort {
            port: 53,
            protocol: Proto::Udp,
            name: None,
        },
        PlanPort {
            port: 9,
            protocol: Proto::Sctp,
            name: None,
        },
    ];
    let s = serve_spec("x/a", "vl-t-p-x.a", &ports, None, "/tmp/r".into());
    assert_eq!(s.tcp, vec![80]);
    assert_eq!(s.udp, vec![53]);
    assert_eq!(s.sctp, vec![9]);
    assert_eq!(s.netns.as_deref(), Some("vl-t-p-x.a"));
}
