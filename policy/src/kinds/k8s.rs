//! Kubernetes `networking.k8s.io/v1 NetworkPolicy`: the manifest's spec and
//! its conversion into a [`Policy`] of the `default` tier (allow rules,
//! isolation by `policyTypes`).
//!
//! It does not parse the manifest envelope (see the parent module).

use serde::{Deserialize, Serialize};

use super::common::{
    check_selector, cidr, int_or_string_port, port_num, IntOrString, PolicyType, PortValue,
};
use crate::error::PolicyError;
use crate::model::{
    Action, NsScope, ObjectKey, Peer, PodSelector, Policy, PortMatch, Protocol, Rule, TIER_DEFAULT,
};
use crate::selector::LabelSelector;

/// `spec` of a Kubernetes NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sNetworkPolicySpec {
    /// Pods of the namespace it applies to.
    pub pod_selector: LabelSelector,
    /// Ingress rules.
    #[serde(default)]
    pub ingress: Option<Vec<K8sIngressRule>>,
    /// Egress rules.
    #[serde(default)]
    pub egress: Option<Vec<K8sEgressRule>>,
    /// Ingress and/or Egress.
    #[serde(default)]
    pub policy_types: Option<Vec<PolicyType>>,
}

/// A Kubernetes NetworkPolicy ingress rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sIngressRule {
    /// Peers (omitted or empty: all).
    #[serde(default)]
    pub from: Option<Vec<K8sPeer>>,
    /// Ports (omitted or empty: all).
    #[serde(default)]
    pub ports: Option<Vec<K8sPort>>,
}

/// A Kubernetes NetworkPolicy egress rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sEgressRule {
    /// Peers (omitted or empty: all).
    #[serde(default)]
    pub to: Option<Vec<K8sPeer>>,
    /// Ports (omitted or empty: all).
    #[serde(default)]
    pub ports: Option<Vec<K8sPort>>,
}

/// A Kubernetes NetworkPolicy peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sPeer {
    /// Pods (of the policy's namespace unless `namespaceSelector` is set).
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses.
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

/// A CIDR with exceptions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpBlock {
    /// The network.
    pub cidr: String,
    /// Sub-networks excluded.
    #[serde(default)]
    pub except: Option<Vec<String>>,
}

/// A Kubernetes NetworkPolicy port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sPort {
    /// TCP (default), UDP or SCTP.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Number or name (omitted: all ports).
    #[serde(default)]
    pub port: Option<IntOrString>,
    /// Last port of a range starting at `port`.
    #[serde(default)]
    pub end_port: Option<i64>,
}

pub(super) fn k8s_policy(
    key: &ObjectKey,
    spec: &K8sNetworkPolicySpec,
) -> Result<Policy, PolicyError> {
    let obj = key.to_string();
    let ns = key.namespace.clone().unwrap_or_default();
    check_selector(&obj, "spec.podSelector", &spec.pod_selector)?;
    let (applies_ingress, applies_egress) = match &spec.policy_types {
        Some(t) => {
            if t.is_empty() {
                return Err(PolicyError::invalid(
                    &obj,
                    "spec.policyTypes",
                    "must list Ingress and/or Egress",
                ));
            }
            (
                t.contains(&PolicyType::Ingress),
                t.contains(&PolicyType::Egress),
            )
        }
        None => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    };
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let f = format!("spec.ingress[{i}]");
        ingress.push(k8s_rule(
            &obj,
            &f,
            &ns,
            r.from.as_deref(),
            "from",
            r.ports.as_deref(),
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let f = format!("spec.egress[{i}]");
        egress.push(k8s_rule(
            &obj,
            &f,
            &ns,
            r.to.as_deref(),
            "to",
            r.ports.as_deref(),
        )?);
    }
    if !applies_ingress && !ingress.is_empty() {
        return Err(PolicyError::invalid(
            &obj,
            "spec.ingress",
            "has rules but policyTypes does not list Ingress",
        ));
    }
    if !applies_egress && !egress.is_empty() {
        return Err(PolicyError::invalid(
            &obj,
            "spec.egress",
            "has rules but policyTypes does not list Egress",
        ));
    }
    Ok(Policy {
        key: key.clone(),
        tier: TIER_DEFAULT.into(),
        sort_key: (1000, 0, key.full_name(), 0),
        subject: PodSelector {
            namespaces: NsScope::Named(ns),
            pods: spec.pod_selector.clone(),
        },
        applies_ingress,
        applies_egress,
        ingress,
        egress,
    })
}

fn k8s_rule(
    obj: &str,
    f: &str,
    ns: &str,
    peers: Option<&[K8sPeer]>,
    peer_field: &str,
    ports: Option<&[K8sPort]>,
) -> Result<Rule, PolicyError> {
    let mut out_peers = Vec::new();
    for (j, p) in peers.unwrap_or_default().iter().enumerate() {
        let pf = format!("{f}.{peer_field}[{j}]");
        let has_sel = p.pod_selector.is_some() || p.namespace_selector.is_some();
        match (&p.ip_block, has_sel) {
            (Some(_), true) => {
                return Err(PolicyError::invalid(
                    obj,
                    &pf,
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                ))
            }
            (None, false) => {
                return Err(PolicyError::invalid(
                    obj,
                    &pf,
                    "a peer needs podSelector, namespaceSelector or ipBlock",
                ))
            }
            (Some(b), false) => {
                let net = cidr(obj, &format!("{pf}.ipBlock.cidr"), &b.cidr)?;
                let mut not_nets = Vec::new();
                for (k, e) in b.except.iter().flatten().enumerate() {
                    let ef = format!("{pf}.ipBlock.except[{k}]");
                    let x = cidr(obj, &ef, e)?;
                    if !net.contains_net(&x) || x.prefix() <= net.prefix() {
                        return Err(PolicyError::invalid(
                            obj,
                            &ef,
                            format!("{x} must lie strictly inside {net}"),
                        ));
                    }
                    not_nets.push(x);
                }
                out_peers.push(Peer {
                    nets: vec![net],
                    not_nets,
                    ..Default::default()
                });
            }
            (None, true) => {
                if let Some(s) = &p.pod_selector {
                    check_selector(obj, &format!("{pf}.podSelector"), s)?;
                }
                if let Some(s) = &p.namespace_selector {
                    check_selector(obj, &format!("{pf}.namespaceSelector"), s)?;
                }
                out_peers.push(Peer {
                    pods: Some(PodSelector {
                        namespaces: match &p.namespace_selector {
                            Some(s) => NsScope::Selector(s.clone()),
                            None => NsScope::Named(ns.to_string()),
                        },
                        pods: p.pod_selector.clone().unwrap_or_default(),
                    }),
                    ..Default::default()
                });
            }
        }
    }
    let mut out_ports = Vec::new();
    for (j, p) in ports.unwrap_or_default().iter().enumerate() {
        let pf = format!("{f}.ports[{j}]");
        let protocol = p.protocol.unwrap_or(Protocol::Tcp);
        if !protocol.has_ports() {
            return Err(PolicyError::invalid(
                obj,
                format!("{pf}.protocol"),
                "must be TCP, UDP or SCTP",
            ));
        }
        let m = match (&p.port, p.end_port) {
            (None, Some(_)) => {
                return Err(PolicyError::invalid(
                    obj,
                    format!("{pf}.endPort"),
                    "endPort needs a numeric port",
                ))
            }
            (None, None) => PortMatch::Range {
                protocol: Some(protocol),
                from: 1,
                to: 65535,
            },
            (Some(port), end) => match int_or_string_port(obj, &format!("{pf}.port"), port)? {
                PortValue::Number(n) => {
                    let to = match end {
                        Some(e) => {
                            let e = port_num(obj, &format!("{pf}.endPort"), e)?;
                            if e < n {
                                return Err(PolicyError::invalid(
                                    obj,
                                    format!("{pf}.endPort"),
                                    format!("endPort {e} is below port {n}"),
                                ));
                            }
                            e
                        }
                        None => n,
                    };
                    PortMatch::Range {
                        protocol: Some(protocol),
                        from: n,
                        to,
                    }
                }
                PortValue::Range(..) => {
                    return Err(PolicyError::invalid(
                        obj,
                        format!("{pf}.port"),
                        "use port and endPort for a range",
                    ))
                }
                PortValue::Name(name) => {
                    if end.is_some() {
                        return Err(PolicyError::invalid(
                            obj,
                            format!("{pf}.endPort"),
                            "endPort needs a numeric port",
                        ));
                    }
                    PortMatch::Named {
                        protocol: Some(protocol),
                        name,
                    }
                }
            },
        };
        out_ports.push(m);
    }
    Ok(Rule {
        name: None,
        action: Action::Allow,
        protocol: None,
        peers: out_peers,
        ports: out_ports,
        http: None,
    })
}

#[cfg(test)]
mod tests {
    use crate::kinds::tests::err;
    use crate::kinds::{Object, ObjectBody};

    #[test]
    fn policy_types_default_to_ingress_plus_egress_when_it_has_rules() {
        let o = Object::from_yaml("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}, egress: [{}]}\n").unwrap();
        let ObjectBody::Policy(p) = o.body else {
            panic!()
        };
        assert!(p.applies_ingress && p.applies_egress);
        let o = Object::from_yaml("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}}\n").unwrap();
        let ObjectBody::Policy(p) = o.body else {
            panic!()
        };
        assert!(p.applies_ingress && !p.applies_egress);
    }

    #[test]
    fn except_outside_cidr_is_rejected() {
        let e = err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}\n");
        assert!(e.contains("spec.egress[0].to[0].ipBlock.except[0]"), "{e}");
    }

    #[test]
    fn port_out_of_range_is_rejected() {
        let e = err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}\n");
        assert!(e.contains("out of range"), "{e}");
    }
}
