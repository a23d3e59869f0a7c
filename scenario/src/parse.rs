//! Reading a scenario file: the raw YAML is deserialized (unknown fields
//! rejected, with the path of the offending field), then every part is
//! validated and resolved in file order: name, cluster (pod CIDR, nodes),
//! namespaces, pods (the `pods` module), external hosts, policies, and the
//! steps, each applied once on a scratch state so that an invalid later step
//! is reported here.
//!
//! It does not evaluate probes (see the `run` module).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use veil_policy::cluster::{ExternalHost, PodPort};
use veil_policy::kinds::{is_dns_label, is_dns_subdomain, is_port_name, Object};
use veil_policy::model::{Kind, ObjectKey, Protocol};
use veil_policy::net::Cidr;
use veil_policy::selector::{validate_labels, Labels};

use crate::error::{inv, ScenarioError};
use crate::pods::place_pods;
use crate::raw::{
    RawCluster, RawExternal, RawNamespace, RawNode, RawNodeFull, RawPort, RawProbe, RawScenario,
    RawStep,
};
use crate::{
    LabelChange, Scenario, ScenarioNamespace, ScenarioNode, Step, DNS_NAMESPACE, NS_NAME_LABEL,
};

impl Scenario {
    /// Parses and validates a scenario file's text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = serde_path_to_error::deserialize(
            serde_yaml::Deserializer::from_str(text),
        )
        .map_err(|e| {
            let p = e.path().to_string();
            let p = if p == "." { "(file)".to_string() } else { p };
            let msg = e.into_inner().to_string();
            // serde_yaml may already prefix the path.
            let msg = msg
                .strip_prefix(&format!("{p}: "))
                .map(str::to_string)
                .unwrap_or(msg);
            inv(p, msg)
        })?;
        let name = raw.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(inv("name", "required"));
        }
        if name.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(inv(
                "name",
                format!("{name:?} must not contain spaces or `/`"),
            ));
        }

        // Cluster: podCIDR and nodes.
        let (pod_cidr, nodes) = parse_nodes(raw.cluster.as_ref())?;

        // Namespaces.
        let namespaces = parse_namespaces(&raw.namespaces)?;

        // Pods: placement first, then addresses.
        let pods = place_pods(&raw.pods, &nodes, &namespaces)?;

        // External hosts.
        let external = parse_external(&raw.external)?;

        // Policies.
        let mut policies = Vec::new();
        for (i, v) in raw.policies.iter().enumerate() {
            policies.push((v.clone(), parse_object(&format!("policies[{i}]"), v)?));
        }

        let mut sc = Scenario {
            name,
            description: raw.description.clone(),
            pod_cidr,
            nodes,
            namespaces,
            pods,
            external,
            policies,
            steps: Vec::new(),
            has_steps: raw.steps.is_some(),
        };
        // Steps, validated against the evolving state.
        add_steps(&mut sc, raw.probes, raw.steps)?;
        Ok(sc)
    }
}

/// The pod CIDR and the nodes: the i-th node gets the address
/// 198.18.0.(10+i) and the i-th /24 of the pod CIDR; the hostname and os
/// labels are implied.
fn parse_nodes(cluster: Option<&RawCluster>) -> Result<(Cidr, Vec<ScenarioNode>), ScenarioError> {
    let pod_cidr_s = cluster
        .and_then(|c| c.pod_cidr.clone())
        .unwrap_or_else(|| "10.244.0.0/16".into());
    let pod_cidr: Cidr = pod_cidr_s
        .parse()
        .map_err(|e: veil_policy::net::CidrError| inv("cluster.podCIDR", e.to_string()))?;
    let IpAddr::V4(base) = pod_cidr.addr() else {
        return Err(inv("cluster.podCIDR", "must be an IPv4 network"));
    };
    if pod_cidr.prefix() > 24 {
        return Err(inv("cluster.podCIDR", "must be /24 or larger"));
    }
    let raw_nodes: Vec<RawNodeFull> = match cluster.and_then(|c| c.nodes.as_ref()) {
        None => vec![RawNodeFull {
            name: "node-a".into(),
            labels: Labels::new(),
        }],
        Some(v) => v
            .iter()
            .map(|n| match n {
                RawNode::Name(s) => RawNodeFull {
                    name: s.clone(),
                    labels: Labels::new(),
                },
                RawNode::Full(f) => RawNodeFull {
                    name: f.name.clone(),
                    labels: f.labels.clone(),
                },
            })
            .collect(),
    };
    if raw_nodes.is_empty() {
        return Err(inv("cluster.nodes", "needs at least one node"));
    }
    let max_nodes = (1u64 << (24 - pod_cidr.prefix())).min(245);
    if raw_nodes.len() as u64 > max_nodes {
        return Err(inv(
            "cluster.nodes",
            format!("at most {max_nodes} nodes fit (podCIDR /24s, node addresses)"),
        ));
    }
    let mut nodes: Vec<ScenarioNode> = Vec::new();
    for (i, n) in raw_nodes.iter().enumerate() {
        let f = format!("cluster.nodes[{i}]");
        if !is_dns_subdomain(&n.name) {
            return Err(inv(
                format!("{f}.name"),
                format!("{:?} is not a valid node name", n.name),
            ));
        }
        if nodes.iter().any(|m| m.name == n.name) {
            return Err(inv(
                format!("{f}.name"),
                format!("node {:?} is listed twice", n.name),
            ));
        }
        validate_labels(&n.labels).map_err(|e| inv(format!("{f}.labels"), e))?;
        let mut labels = n.labels.clone();
        for (k, v) in [
            ("kubernetes.io/hostname", n.name.as_str()),
            ("kubernetes.io/os", "linux"),
        ] {
            if labels.get(k).is_some_and(|x| x != v) {
                return Err(inv(
                    format!("{f}.labels"),
                    format!("{k} is implied as {v:?}"),
                ));
            }
            labels.insert(k.into(), v.into());
        }
        let net = u32::from(base) + ((i as u32) << 8);
        nodes.push(ScenarioNode {
            name: n.name.clone(),
            labels,
            address: Ipv4Addr::new(198, 18, 0, 10 + i as u8),
            pod_cidr: Cidr::new(IpAddr::V4(Ipv4Addr::from(net)), 24)
                .ok_or_else(|| inv("cluster.podCIDR", "bad network"))?,
        });
    }
    Ok((pod_cidr, nodes))
}

/// The namespaces, with `kube-system` added when not listed.
fn parse_namespaces(raw: &[RawNamespace]) -> Result<Vec<ScenarioNamespace>, ScenarioError> {
    let mut namespaces: Vec<ScenarioNamespace> = Vec::new();
    for (i, n) in raw.iter().enumerate() {
        let f = format!("namespaces[{i}]");
        if !is_dns_label(&n.name) {
            return Err(inv(
                format!("{f}.name"),
                format!("{:?} is not a valid namespace name", n.name),
            ));
        }
        if namespaces.iter().any(|m| m.name == n.name) {
            return Err(inv(
                format!("{f}.name"),
                format!("namespace {:?} is listed twice", n.name),
            ));
        }
        let labels = ns_labels(&format!("{f}.labels"), &n.name, &n.labels)?;
        namespaces.push(ScenarioNamespace {
            name: n.name.clone(),
            labels,
        });
    }
    if !namespaces.iter().any(|n| n.name == DNS_NAMESPACE) {
        namespaces.insert(
            0,
            ScenarioNamespace {
                name: DNS_NAMESPACE.into(),
                labels: ns_labels("namespaces", DNS_NAMESPACE, &Labels::new())?,
            },
        );
    }
    Ok(namespaces)
}

/// The external hosts: lower-case DNS names with a dot, host addresses
/// inside 203.0.113.0/24, each name and address once.
fn parse_external(raw: &[RawExternal]) -> Result<Vec<ExternalHost>, ScenarioError> {
    let ext_range: Cidr = "203.0.113.0/24"
        .parse()
        .map_err(|_| inv("external", "range"))?;
    let mut external: Vec<ExternalHost> = Vec::new();
    for (i, e) in raw.iter().enumerate() {
        let f = format!("external[{i}]");
        let lower = e.name.to_ascii_lowercase();
        if lower != e.name || !is_dns_subdomain(&e.name) || !e.name.contains('.') {
            return Err(inv(
                format!("{f}.name"),
                format!("{:?} is not a lower-case DNS name with a dot", e.name),
            ));
        }
        if external.iter().any(|x| x.name == e.name) {
            return Err(inv(
                format!("{f}.name"),
                format!("{:?} is listed twice", e.name),
            ));
        }
        let ip: IpAddr =
            e.ip.parse()
                .map_err(|_| inv(format!("{f}.ip"), format!("{:?} is not an address", e.ip)))?;
        if !ext_range.contains(ip)
            || [0, 255].contains(&match ip {
                IpAddr::V4(a) => a.octets()[3],
                IpAddr::V6(_) => 0,
            })
        {
            return Err(inv(
                format!("{f}.ip"),
                format!("{ip} is not a host address inside 203.0.113.0/24"),
            ));
        }
        if external.iter().any(|x| x.ip == ip) {
            return Err(inv(
                format!("{f}.ip"),
                format!("{ip} is used by another external host"),
            ));
        }
        external.push(ExternalHost {
            name: e.name.clone(),
            ip,
            ports: parse_ports(&format!("{f}.ports"), &e.ports)?,
        });
    }
    Ok(external)
}

/// The steps (top-level `probes` become one step), each validated against
/// the state the previous ones leave.
fn add_steps(
    sc: &mut Scenario,
    probes: Option<Vec<RawProbe>>,
    steps: Option<Vec<RawStep>>,
) -> Result<(), ScenarioError> {
    let mut state = sc.initial_state().map_err(|error| ScenarioError::Policy {
        field: "policies".into(),
        error,
    })?;
    let raw_steps: Vec<(String, RawStep)> = match (probes, steps) {
        (Some(_), Some(_)) => return Err(inv("steps", "use either probes or steps, not both")),
        (None, None) => return Err(inv("probes", "a scenario needs probes or steps")),
        (Some(p), None) => vec![(
            String::new(),
            RawStep {
                apply: Vec::new(),
                delete: Vec::new(),
                labels: Vec::new(),
                probes: p,
            },
        )],
        (None, Some(s)) => {
            if s.is_empty() {
                return Err(inv("steps", "must not be empty"));
            }
            s.into_iter()
                .enumerate()
                .map(|(i, s)| (format!("steps[{i}]"), s))
                .collect()
        }
    };
    let mut resolved_names: BTreeSet<String> = BTreeSet::new();
    for (sf, rs) in raw_steps {
        let mut step = Step {
            apply: Vec::new(),
            delete: Vec::new(),
            labels: Vec::new(),
            probes: Vec::new(),
        };
        for (i, v) in rs.apply.iter().enumerate() {
            step.apply
                .push((v.clone(), parse_object(&format!("{sf}.apply[{i}]"), v)?));
        }
        for (i, r) in rs.delete.iter().enumerate() {
            let f = format!("{sf}.delete[{i}]");
            let kind = kind_of(&r.api_version, &r.kind).ok_or_else(|| {
                inv(
                    &f,
                    format!(
                        "unknown kind {:?} of apiVersion {:?}",
                        r.kind, r.api_version
                    ),
                )
            })?;
            if kind.namespaced() != r.namespace.is_some() {
                return Err(inv(
                    format!("{f}.namespace"),
                    if kind.namespaced() {
                        "required for a namespaced kind"
                    } else {
                        "a cluster-scoped kind takes no namespace"
                    },
                ));
            }
            step.delete.push(ObjectKey {
                kind,
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            });
        }
        for (i, l) in rs.labels.iter().enumerate() {
            let f = format!("{sf}.labels[{i}]");
            validate_labels(&l.labels).map_err(|e| inv(format!("{f}.labels"), e))?;
            match (&l.pod, &l.namespace) {
                (Some(p), None) => {
                    if !sc.pods.iter().any(|q| q.key() == *p) {
                        return Err(inv(format!("{f}.pod"), format!("pod {p:?} does not exist")));
                    }
                    step.labels.push(LabelChange::Pod {
                        pod: p.clone(),
                        labels: l.labels.clone(),
                    });
                }
                (None, Some(n)) => {
                    if !sc.namespaces.iter().any(|q| q.name == *n) {
                        return Err(inv(
                            format!("{f}.namespace"),
                            format!("namespace {n:?} does not exist"),
                        ));
                    }
                    step.labels.push(LabelChange::Namespace {
                        namespace: n.clone(),
                        labels: ns_labels(&format!("{f}.labels"), n, &l.labels)?,
                    });
                }
                _ => return Err(inv(&f, "needs exactly one of pod and namespace")),
            }
        }
        state
            .apply_changes(&step)
            .map_err(|error| ScenarioError::Policy {
                field: if sf.is_empty() {
                    "policies".into()
                } else {
                    sf.clone()
                },
                error,
            })?;
        for (i, p) in rs.probes.iter().enumerate() {
            let f = if sf.is_empty() {
                format!("probes[{i}]")
            } else {
                format!("{sf}.probes[{i}]")
            };
            step.probes
                .push(sc.resolve_probe(&f, p, &mut resolved_names)?);
        }
        sc.steps.push(step);
    }
    Ok(())
}

/// Maps an apiVersion and kind to a [`Kind`].
pub fn kind_of(api_version: &str, kind: &str) -> Option<Kind> {
    Some(match (api_version, kind) {
        ("networking.k8s.io/v1", "NetworkPolicy") => Kind::K8sNetworkPolicy,
        ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy") => Kind::AdminNetworkPolicy,
        ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy") => {
            Kind::BaselineAdminNetworkPolicy
        }
        ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => Kind::ClusterNetworkPolicy,
        ("veil.dev/v1alpha1", "Tier") => Kind::Tier,
        ("veil.dev/v1alpha1", "NetworkPolicy") => Kind::VeilNetworkPolicy,
        ("veil.dev/v1alpha1", "GlobalNetworkPolicy") => Kind::GlobalNetworkPolicy,
        _ => return None,
    })
}

pub(crate) fn parse_ports(field: &str, raw: &[RawPort]) -> Result<Vec<PodPort>, ScenarioError> {
    let mut out: Vec<PodPort> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if !(1..=65535).contains(&p.port) {
            return Err(inv(
                format!("{f}.port"),
                format!("{} is out of range 1..65535", p.port),
            ));
        }
        let protocol = p.protocol.unwrap_or(Protocol::Tcp);
        if !protocol.has_ports() {
            return Err(inv(format!("{f}.protocol"), "must be TCP, UDP or SCTP"));
        }
        if let Some(n) = &p.name {
            if !is_port_name(n) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("{n:?} is not a port name (lower-case, at most 15 characters)"),
                ));
            }
            if out.iter().any(|o| o.name.as_deref() == Some(n.as_str())) {
                return Err(inv(
                    format!("{f}.name"),
                    format!("port name {n:?} is used twice"),
                ));
            }
        }
        let port = p.port as u16;
        if out.iter().any(|o| o.port == port && o.protocol == protocol) {
            return Err(inv(f, format!("port {port}/{protocol} is listed twice")));
        }
        out.push(PodPort {
            name: p.name.clone(),
            port,
            protocol,
        });
    }
    Ok(out)
}

pub(crate) fn dns_ports() -> Vec<PodPort> {
    vec![
        PodPort {
            name: Some("dns".into()),
            port: 53,
            protocol: Protocol::Udp,
        },
        PodPort {
            name: Some("dns-tcp".into()),
            port: 53,
            protocol: Protocol::Tcp,
        },
    ]
}

fn parse_object(field: &str, v: &serde_yaml::Value) -> Result<Object, ScenarioError> {
    Object::from_value(v).map_err(|error| ScenarioError::Policy {
        field: field.to_string(),
        error,
    })
}

fn ns_labels(field: &str, name: &str, given: &Labels) -> Result<Labels, ScenarioError> {
    validate_labels(given).map_err(|e| inv(field, e))?;
    if given.get(NS_NAME_LABEL).is_some_and(|v| v != name) {
        return Err(inv(field, format!("{NS_NAME_LABEL} is fixed to {name:?}")));
    }
    let mut l = given.clone();
    l.insert(NS_NAME_LABEL.into(), name.into());
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        Scenario::parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn a_probe_with_a_lower_case_method_is_evaluated_and_a_non_token_is_not() {
        let base = "name: n\nnamespaces: [{name: x}]\npods: [{name: x/a, ports: [{port: 80}]}, {name: x/b}]\n";
        let sc = Scenario::parse(&format!(
            "{base}probes: [{{from: x/b, to: x/a, port: 80, http: {{method: get, path: /}}, expect: deny}}]\n"
        ))
        .unwrap();
        let http = sc.steps[0].probes[0].http.as_ref().unwrap();
        assert_eq!(http.method, "get");
        let e = err(&format!(
            "{base}probes: [{{from: x/b, to: x/a, port: 80, http: {{method: \"G T\", path: /}}, expect: deny}}]\n"
        ));
        assert!(e.contains("not an HTTP method token"), "{e}");
    }

    #[test]
    fn nodes_get_addresses_and_slash_24s_of_the_pod_cidr_in_order() {
        let sc = Scenario::parse(
            "name: n\ncluster: {podCIDR: 10.244.0.0/16, nodes: [a, {name: b, labels: {zone: z}}]}\nprobes: []\n",
        )
        .unwrap();
        let got: Vec<(String, String, String)> = sc
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    n.address.to_string(),
                    n.pod_cidr.to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), "198.18.0.10".into(), "10.244.0.0/24".into()),
                ("b".into(), "198.18.0.11".into(), "10.244.1.0/24".into()),
            ]
        );
        assert_eq!(
            sc.nodes[1]
                .labels
                .get("kubernetes.io/hostname")
                .map(String::as_str),
            Some("b")
        );
        assert_eq!(
            sc.nodes[1].labels.get("zone").map(String::as_str),
            Some("z")
        );
    }

    #[test]
    fn kube_system_is_added_and_namespaces_carry_their_name_label() {
        let sc = Scenario::parse("name: n\nnamespaces: [{name: app}]\nprobes: []\n").unwrap();
        let names: Vec<&str> = sc.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, [DNS_NAMESPACE, "app"]);
        assert_eq!(
            sc.namespaces[1]
                .labels
                .get(NS_NAME_LABEL)
                .map(String::as_str),
            Some("app")
        );
    }

    #[test]
    fn top_level_probes_become_one_step_and_both_forms_are_rejected() {
        let sc = Scenario::parse("name: n\nprobes: []\n").unwrap();
        assert_eq!(sc.steps.len(), 1);
        assert!(!sc.has_steps);
        let e = err("name: n\nprobes: []\nsteps: [{}]\n");
        assert!(e.contains("use either probes or steps"), "{e}");
        let e = err("name: n\n");
        assert!(e.contains("needs probes or steps"), "{e}");
    }

    #[test]
    fn an_invalid_later_step_is_reported_at_parse_time_with_its_field() {
        let e = err("name: n\nsteps:\n- {}\n- labels: [{pod: app/missing, labels: {}}]\n");
        assert!(e.starts_with("steps[1].labels[0].pod:"), "{e}");
    }

    #[test]
    fn external_hosts_must_be_inside_the_documentation_range() {
        let e = err("name: n\nexternal: [{name: a.example, ip: 192.0.2.1}]\nprobes: []\n");
        assert!(e.starts_with("external[0].ip:"), "{e}");
    }
}
