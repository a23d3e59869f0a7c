//! `policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy`: the
//! `protocols` entries of its rules (`tcp`, `udp`, `sctp` with an optional
//! destination port or range, or `destinationNamedPort`) and their
//! conversion into port matches. The rest of its spec is shared with
//! AdminNetworkPolicy (the `anp` module: `tier`, `Accept`).

use serde::{Deserialize, Serialize};

use super::common::{port_name, port_num};
use crate::error::PolicyError;
use crate::model::{PortMatch, Protocol};

/// A v1alpha2 protocol entry: one of `tcp`, `udp`, `sctp`, `destinationNamedPort`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpProtocol {
    /// TCP, optionally one port or range.
    #[serde(default)]
    pub tcp: Option<CnpProtocolPorts>,
    /// UDP.
    #[serde(default)]
    pub udp: Option<CnpProtocolPorts>,
    /// SCTP.
    #[serde(default)]
    pub sctp: Option<CnpProtocolPorts>,
    /// A named port of the destination pod.
    #[serde(default)]
    pub destination_named_port: Option<String>,
}

/// Ports of a v1alpha2 protocol entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpProtocolPorts {
    /// The destination port (omitted: all).
    #[serde(default)]
    pub destination_port: Option<CnpPort>,
}

/// One port number or a range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpPort {
    /// One port.
    #[serde(default)]
    pub number: Option<i64>,
    /// A range.
    #[serde(default)]
    pub range: Option<CnpPortRange>,
}

/// A v1alpha2 port range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpPortRange {
    /// First port.
    pub start: i64,
    /// Last port.
    pub end: i64,
}

/// Appends the port matches of a rule's `protocols` (the rule's field path
/// is `f`) to `ports`.
pub(super) fn protocol_ports(
    obj: &str,
    f: &str,
    protocols: &[CnpProtocol],
    ports: &mut Vec<PortMatch>,
) -> Result<(), PolicyError> {
    for (j, p) in protocols.iter().enumerate() {
        let pf = format!("{f}.protocols[{j}]");
        let entries = [
            (Protocol::Tcp, &p.tcp),
            (Protocol::Udp, &p.udp),
            (Protocol::Sctp, &p.sctp),
        ];
        let n = entries.iter().filter(|(_, x)| x.is_some()).count()
            + usize::from(p.destination_named_port.is_some());
        if n != 1 {
            return Err(PolicyError::invalid(
                obj,
                &pf,
                "needs exactly one of tcp, udp, sctp, destinationNamedPort",
            ));
        }
        if let Some(name) = &p.destination_named_port {
            ports.push(PortMatch::Named {
                protocol: None,
                name: port_name(obj, &format!("{pf}.destinationNamedPort"), name)?,
            });
        }
        for (proto, x) in entries {
            let Some(x) = x else { continue };
            let lower = proto.to_string().to_ascii_lowercase();
            let (from, to) = match &x.destination_port {
                None => (1, 65535),
                Some(CnpPort {
                    number: Some(n),
                    range: None,
                }) => {
                    let n = port_num(obj, &format!("{pf}.{lower}.destinationPort.number"), *n)?;
                    (n, n)
                }
                Some(CnpPort {
                    number: None,
                    range: Some(r),
                }) => {
                    let rf = format!("{pf}.{lower}.destinationPort.range");
                    let a = port_num(obj, &rf, r.start)?;
                    let b = port_num(obj, &rf, r.end)?;
                    if a > b {
                        return Err(PolicyError::invalid(
                            obj,
                            rf,
                            format!("end {b} is below start {a}"),
                        ));
                    }
                    (a, b)
                }
                Some(_) => {
                    return Err(PolicyError::invalid(
                        obj,
                        format!("{pf}.{lower}.destinationPort"),
                        "needs exactly one of number and range",
                    ))
                }
            };
            ports.push(PortMatch::Range {
                protocol: Some(proto),
                from,
                to,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::kinds::tests::err;
    use crate::kinds::{Object, ObjectBody};
    use crate::model::{Action, TIER_ADMIN};

    #[test]
    fn cnp_accept_is_allow_and_needs_a_tier() {
        let o = Object::from_yaml("apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: a}\nspec: {tier: Admin, priority: 3, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{namespaces: {}}]}]}\n").unwrap();
        let ObjectBody::Policy(p) = o.body else {
            panic!()
        };
        assert_eq!(p.ingress[0].action, Action::Allow);
        assert_eq!(p.tier, TIER_ADMIN);
        let e = err("apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: a}\nspec: {priority: 3, subject: {namespaces: {}}}\n");
        assert!(e.contains("spec.tier"), "{e}");
    }
}
