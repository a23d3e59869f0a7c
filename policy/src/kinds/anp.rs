//! `policy.networking.k8s.io` AdminNetworkPolicy, BaselineAdminNetworkPolicy
//! and ClusterNetworkPolicy (which shares their spec): subjects, peers,
//! `ports`, and the conversion into a [`Policy`] of the `admin` or
//! `baseline` tier.
//!
//! The v1alpha2-only `protocols` field is in the `cnp` module.

use serde::{Deserialize, Serialize};

use super::cnp::{protocol_ports, CnpProtocol};
use super::common::{check_selector, cidr, port_name, port_num};
use crate::error::PolicyError;
use crate::model::{
    Action, DomainPattern, Kind, NsScope, ObjectKey, Peer, PodSelector, Policy, PortMatch,
    Protocol, Rule, TIER_ADMIN, TIER_BASELINE,
};
use crate::selector::LabelSelector;

/// `spec` of an AdminNetworkPolicy, BaselineAdminNetworkPolicy or
/// ClusterNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpSpec {
    /// `Admin` or `Baseline` (ClusterNetworkPolicy only).
    #[serde(default)]
    pub tier: Option<String>,
    /// 0..1000, lower first (not for BaselineAdminNetworkPolicy).
    #[serde(default)]
    pub priority: Option<i64>,
    /// The pods it applies to.
    pub subject: AnpSubject,
    /// Ingress rules.
    #[serde(default)]
    pub ingress: Option<Vec<AnpRule>>,
    /// Egress rules.
    #[serde(default)]
    pub egress: Option<Vec<AnpRule>>,
}

/// Subject of an ANP: exactly one of `namespaces` and `pods`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpSubject {
    /// All pods of these namespaces.
    #[serde(default)]
    pub namespaces: Option<LabelSelector>,
    /// Pods by namespace and pod labels.
    #[serde(default)]
    pub pods: Option<NamespacedPods>,
}

/// Pods selected by namespace and pod labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespacedPods {
    /// Namespaces.
    pub namespace_selector: LabelSelector,
    /// Pods there.
    pub pod_selector: LabelSelector,
}

/// A rule of an ANP/BANP/CNP (ingress uses `from`, egress `to`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpRule {
    /// Rule name.
    #[serde(default)]
    pub name: Option<String>,
    /// Allow/Deny/Pass (ANP), Allow/Deny (BANP), Accept/Deny/Pass (CNP).
    pub action: String,
    /// Ingress peers.
    #[serde(default)]
    pub from: Option<Vec<AnpPeer>>,
    /// Egress peers.
    #[serde(default)]
    pub to: Option<Vec<AnpPeer>>,
    /// Ports (v1alpha1 style).
    #[serde(default)]
    pub ports: Option<Vec<AnpPort>>,
    /// Protocols and ports (v1alpha2 style).
    #[serde(default)]
    pub protocols: Option<Vec<CnpProtocol>>,
}

/// A peer of an ANP rule: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpPeer {
    /// All pods of these namespaces.
    #[serde(default)]
    pub namespaces: Option<LabelSelector>,
    /// Pods by namespace and pod labels.
    #[serde(default)]
    pub pods: Option<NamespacedPods>,
    /// Nodes by label (egress).
    #[serde(default)]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (egress).
    #[serde(default)]
    pub networks: Option<Vec<String>>,
    /// DNS names (egress Allow/Accept).
    #[serde(default)]
    pub domain_names: Option<Vec<String>>,
}

/// A port of an ANP rule: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpPort {
    /// One port.
    #[serde(default)]
    pub port_number: Option<AnpPortNumber>,
    /// A named port of the destination pod.
    #[serde(default)]
    pub named_port: Option<String>,
    /// A range.
    #[serde(default)]
    pub port_range: Option<AnpPortRange>,
}

/// `portNumber`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpPortNumber {
    /// Protocol (default TCP).
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Port.
    pub port: i64,
}

/// `portRange`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpPortRange {
    /// Protocol (default TCP).
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// First port.
    pub start: i64,
    /// Last port.
    pub end: i64,
}

pub(super) fn anp_policy(key: &ObjectKey, spec: &AnpSpec) -> Result<Policy, PolicyError> {
    let obj = key.to_string();
    let (tier, sort_key) = match key.kind {
        Kind::AdminNetworkPolicy => {
            if spec.tier.is_some() {
                return Err(PolicyError::invalid(
                    &obj,
                    "spec.tier",
                    "only ClusterNetworkPolicy has a tier",
                ));
            }
            let p = priority(&obj, spec.priority)?;
            (TIER_ADMIN, (p, 0, key.name.clone(), 0))
        }
        Kind::BaselineAdminNetworkPolicy => {
            if key.name != "default" {
                return Err(PolicyError::invalid(
                    &obj,
                    "metadata.name",
                    "the BaselineAdminNetworkPolicy is a singleton named \"default\"",
                ));
            }
            if spec.tier.is_some() {
                return Err(PolicyError::invalid(
                    &obj,
                    "spec.tier",
                    "only ClusterNetworkPolicy has a tier",
                ));
            }
            if spec.priority.is_some() {
                return Err(PolicyError::invalid(
                    &obj,
                    "spec.priority",
                    "a BaselineAdminNetworkPolicy has no priority",
                ));
            }
            (TIER_BASELINE, (-1, 0, key.name.clone(), 0))
        }
        _ => {
            let p = priority(&obj, spec.priority)?;
            match spec.tier.as_deref() {
                Some("Admin") => (TIER_ADMIN, (p, 1, key.name.clone(), 0)),
                Some("Baseline") => (TIER_BASELINE, (p, 1, key.name.clone(), 0)),
                Some(t) => {
                    return Err(PolicyError::invalid(
                        &obj,
                        "spec.tier",
                        format!("{t:?} is not Admin or Baseline"),
                    ))
                }
                None => {
                    return Err(PolicyError::invalid(
                        &obj,
                        "spec.tier",
                        "required: Admin or Baseline",
                    ))
                }
            }
        }
    };
    let subject = match (&spec.subject.namespaces, &spec.subject.pods) {
        (Some(ns), None) => {
            check_selector(&obj, "spec.subject.namespaces", ns)?;
            PodSelector {
                namespaces: NsScope::Selector(ns.clone()),
                pods: LabelSelector::all(),
            }
        }
        (None, Some(p)) => {
            check_selector(
                &obj,
                "spec.subject.pods.namespaceSelector",
                &p.namespace_selector,
            )?;
            check_selector(&obj, "spec.subject.pods.podSelector", &p.pod_selector)?;
            PodSelector {
                namespaces: NsScope::Selector(p.namespace_selector.clone()),
                pods: p.pod_selector.clone(),
            }
        }
        _ => {
            return Err(PolicyError::invalid(
                &obj,
                "spec.subject",
                "needs exactly one of namespaces and pods",
            ))
        }
    };
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        ingress.push(anp_rule(
            &obj,
            key.kind,
            &format!("spec.ingress[{i}]"),
            r,
            false,
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        egress.push(anp_rule(
            &obj,
            key.kind,
            &format!("spec.egress[{i}]"),
            r,
            true,
        )?);
    }
    if ingress.len() > 100 || egress.len() > 100 {
        return Err(PolicyError::invalid(
            &obj,
            "spec",
            "at most 100 rules per direction",
        ));
    }
    Ok(Policy {
        key: key.clone(),
        tier: tier.into(),
        sort_key,
        subject,
        applies_ingress: !ingress.is_empty(),
        applies_egress: !egress.is_empty(),
        ingress,
        egress,
    })
}

fn priority(obj: &str, p: Option<i64>) -> Result<i64, PolicyError> {
    match p {
        Some(p) if (0..=1000).contains(&p) => Ok(p),
        Some(p) => Err(PolicyError::invalid(
            obj,
            "spec.priority",
            format!("{p} is out of range 0..1000"),
        )),
        None => Err(PolicyError::invalid(obj, "spec.priority", "required")),
    }
}

fn anp_rule(
    obj: &str,
    kind: Kind,
    f: &str,
    r: &AnpRule,
    egress: bool,
) -> Result<Rule, PolicyError> {
    let action = match (kind, r.action.as_str()) {
        (Kind::AdminNetworkPolicy, "Allow") | (Kind::BaselineAdminNetworkPolicy, "Allow") => {
            Action::Allow
        }
        (Kind::ClusterNetworkPolicy, "Accept") => Action::Allow,
        (_, "Deny") => Action::Deny,
        (Kind::AdminNetworkPolicy, "Pass") | (Kind::ClusterNetworkPolicy, "Pass") => Action::Pass,
        (_, a) => {
            let allowed = match kind {
                Kind::AdminNetworkPolicy => "Allow, Deny or Pass",
                Kind::BaselineAdminNetworkPolicy => "Allow or Deny",
                _ => "Accept, Deny or Pass",
            };
            return Err(PolicyError::invalid(
                obj,
                format!("{f}.action"),
                format!("{a:?} is not {allowed}"),
            ));
        }
    };
    if let Some(n) = &r.name {
        if n.len() > 100 {
            return Err(PolicyError::invalid(
                obj,
                format!("{f}.name"),
                "longer than 100 characters",
            ));
        }
    }
    let (peers_field, peers, wrong) = if egress {
        ("to", &r.to, r.from.is_some())
    } else {
        ("from", &r.from, r.to.is_some())
    };
    if wrong {
        return Err(PolicyError::invalid(
            obj,
            f,
            format!(
                "an {} rule takes `{peers_field}`",
                if egress { "egress" } else { "ingress" }
            ),
        ));
    }
    let peers = match peers {
        Some(p) if !p.is_empty() => p,
        _ => {
            return Err(PolicyError::invalid(
                obj,
                format!("{f}.{peers_field}"),
                "needs at least one peer",
            ))
        }
    };
    let mut out_peers = Vec::new();
    for (j, p) in peers.iter().enumerate() {
        let pf = format!("{f}.{peers_field}[{j}]");
        let n = [
            p.namespaces.is_some(),
            p.pods.is_some(),
            p.nodes.is_some(),
            p.networks.is_some(),
            p.domain_names.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            return Err(PolicyError::invalid(
                obj,
                &pf,
                "a peer needs exactly one of namespaces, pods, nodes, networks, domainNames",
            ));
        }
        let peer =
            if let Some(ns) = &p.namespaces {
                check_selector(obj, &format!("{pf}.namespaces"), ns)?;
                Peer {
                    pods: Some(PodSelector {
                        namespaces: NsScope::Selector(ns.clone()),
                        pods: LabelSelector::all(),
                    }),
                    ..Default::default()
                }
            } else if let Some(pp) = &p.pods {
                check_selector(
                    obj,
                    &format!("{pf}.pods.namespaceSelector"),
                    &pp.namespace_selector,
                )?;
                check_selector(obj, &format!("{pf}.pods.podSelector"), &pp.pod_selector)?;
                Peer {
                    pods: Some(PodSelector {
                        namespaces: NsScope::Selector(pp.namespace_selector.clone()),
                        pods: pp.pod_selector.clone(),
                    }),
                    ..Default::default()
                }
            } else if let Some(nodes) = &p.nodes {
                check_selector(obj, &format!("{pf}.nodes"), nodes)?;
                Peer {
                    nodes: Some(nodes.clone()),
                    ..Default::default()
                }
            } else if let Some(nets) = &p.networks {
                if nets.is_empty() {
                    return Err(PolicyError::invalid(
                        obj,
                        format!("{pf}.networks"),
                        "must not be empty",
                    ));
                }
                let mut v = Vec::new();
                for (k, n) in nets.iter().enumerate() {
                    v.push(cidr(obj, &format!("{pf}.networks[{k}]"), n)?);
                }
                Peer {
                    nets: v,
                    ..Default::default()
                }
            } else {
                let names = p.domain_names.as_deref().unwrap_or_default();
                if !egress || action != Action::Allow {
                    return Err(PolicyError::invalid(
                        obj,
                        format!("{pf}.domainNames"),
                        "domainNames is allowed only in egress Allow/Accept rules",
                    ));
                }
                if names.is_empty() {
                    return Err(PolicyError::invalid(
                        obj,
                        format!("{pf}.domainNames"),
                        "must not be empty",
                    ));
                }
                let mut v = Vec::new();
                for (k, n) in names.iter().enumerate() {
                    v.push(DomainPattern::parse(n).map_err(|e| {
                        PolicyError::invalid(obj, format!("{pf}.domainNames[{k}]"), e)
                    })?);
                }
                Peer {
                    domains: v,
                    ..Default::default()
                }
            };
        out_peers.push(peer);
    }
    let mut ports = Vec::new();
    if r.ports.is_some() && r.protocols.is_some() {
        return Err(PolicyError::invalid(
            obj,
            f,
            "use either ports or protocols, not both",
        ));
    }
    for (j, p) in r.ports.iter().flatten().enumerate() {
        let pf = format!("{f}.ports[{j}]");
        let n = [
            p.port_number.is_some(),
            p.named_port.is_some(),
            p.port_range.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            return Err(PolicyError::invalid(
                obj,
                &pf,
                "needs exactly one of portNumber, namedPort, portRange",
            ));
        }
        if let Some(pn) = &p.port_number {
            let proto = anp_proto(obj, &format!("{pf}.portNumber.protocol"), pn.protocol)?;
            let n = port_num(obj, &format!("{pf}.portNumber.port"), pn.port)?;
            ports.push(PortMatch::Range {
                protocol: Some(proto),
                from: n,
                to: n,
            });
        } else if let Some(name) = &p.named_port {
            ports.push(PortMatch::Named {
                protocol: None,
                name: port_name(obj, &format!("{pf}.namedPort"), name)?,
            });
        } else if let Some(pr) = &p.port_range {
            let proto = anp_proto(obj, &format!("{pf}.portRange.protocol"), pr.protocol)?;
            let a = port_num(obj, &format!("{pf}.portRange.start"), pr.start)?;
            let b = port_num(obj, &format!("{pf}.portRange.end"), pr.end)?;
            if a > b {
                return Err(PolicyError::invalid(
                    obj,
                    format!("{pf}.portRange"),
                    format!("end {b} is below start {a}"),
                ));
            }
            ports.push(PortMatch::Range {
                protocol: Some(proto),
                from: a,
                to: b,
            });
        }
    }
    if let Some(protocols) = &r.protocols {
        protocol_ports(obj, f, protocols, &mut ports)?;
    }
    Ok(Rule {
        name: r.name.clone(),
        action,
        protocol: None,
        peers: out_peers,
        ports,
        http: None,
    })
}

fn anp_proto(obj: &str, f: &str, p: Option<Protocol>) -> Result<Protocol, PolicyError> {
    let p = p.unwrap_or(Protocol::Tcp);
    if p.has_ports() {
        Ok(p)
    } else {
        Err(PolicyError::invalid(obj, f, "must be TCP, UDP or SCTP"))
    }
}
