//! Probes: resolving a probe of the file (or an ad-hoc one for `veilctl
//! policy trace`) to exactly what is sent (destination address, port,
//! protocol, HTTP request or DNS query), and the flows a probe makes.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use veil_policy::cluster::{Cluster, PodPort};
use veil_policy::eval::{Flow, Verdict};
use veil_policy::kinds::IntOrString;
use veil_policy::model::{HttpRequest, Protocol};

use crate::error::{inv, ScenarioError};
use crate::raw::{RawExpect, RawHttp, RawProbe};
use crate::{Probe, ProbeTarget, Scenario};

impl Scenario {
    pub(crate) fn resolve_probe(
        &self,
        f: &str,
        p: &RawProbe,
        resolved: &mut BTreeSet<String>,
    ) -> Result<Probe, ScenarioError> {
        let from = self
            .pods
            .iter()
            .find(|q| q.key() == p.from)
            .ok_or_else(|| {
                inv(
                    format!("{f}.from"),
                    format!("pod {:?} does not exist", p.from),
                )
            })?;
        let _ = from;
        // The target: its address, its listening ports, its default Host.
        let (to, dst, ports, host, is_dns): (ProbeTarget, IpAddr, Vec<PodPort>, String, bool) = if p
            .to
            .contains('/')
        {
            let q =
                self.pods.iter().find(|q| q.key() == p.to).ok_or_else(|| {
                    inv(format!("{f}.to"), format!("pod {:?} does not exist", p.to))
                })?;
            (
                ProbeTarget::Pod(p.to.clone()),
                IpAddr::V4(q.ip),
                q.ports.clone(),
                format!("{}.{}", q.name, q.namespace),
                q.is_dns,
            )
        } else if let Ok(ip) = p.to.parse::<IpAddr>() {
            if let Some(e) = self.external.iter().find(|e| e.ip == ip) {
                if resolved.contains(&e.name) {
                    return Err(inv(
                            format!("{f}.to"),
                            format!(
                                "a probe to {ip} must come before any probe that resolves {} (DNS caching)",
                                e.name
                            ),
                        ));
                }
                (
                    ProbeTarget::Ip(ip),
                    ip,
                    e.ports.clone(),
                    p.to.clone(),
                    false,
                )
            } else if let Some(q) = self
                .pods
                .iter()
                .find(|q| !q.host_network && IpAddr::V4(q.ip) == ip)
            {
                (
                    ProbeTarget::Ip(ip),
                    ip,
                    q.ports.clone(),
                    p.to.clone(),
                    q.is_dns,
                )
            } else if let Some(n) = self.nodes.iter().find(|n| IpAddr::V4(n.address) == ip) {
                let ports = self
                    .pods
                    .iter()
                    .filter(|q| q.host_network && q.node == n.name)
                    .flat_map(|q| q.ports.iter().cloned())
                    .collect();
                let dns = self
                    .pods
                    .iter()
                    .any(|q| q.host_network && q.node == n.name && q.is_dns);
                (ProbeTarget::Ip(ip), ip, ports, p.to.clone(), dns)
            } else {
                return Err(inv(
                    format!("{f}.to"),
                    format!("{ip} is no pod's, node's or external host's address"),
                ));
            }
        } else if let Some(e) = self.external.iter().find(|e| e.name == p.to) {
            resolved.insert(e.name.clone());
            (
                ProbeTarget::Name(e.name.clone()),
                e.ip,
                e.ports.clone(),
                e.name.clone(),
                false,
            )
        } else {
            return Err(inv(
                format!("{f}.to"),
                format!(
                    "{:?} is no pod (namespace/name), external host name or address",
                    p.to
                ),
            ));
        };
        let (port, port_name, protocol) = match &p.port {
            IntOrString::Int(n) => {
                if !(1..=65535).contains(n) {
                    return Err(inv(
                        format!("{f}.port"),
                        format!("{n} is out of range 1..65535"),
                    ));
                }
                (*n as u16, None, p.protocol.unwrap_or(Protocol::Tcp))
            }
            IntOrString::String(name) => {
                let pp = ports
                    .iter()
                    .find(|x| x.name.as_deref() == Some(name.as_str()))
                    .ok_or_else(|| {
                        inv(
                            format!("{f}.port"),
                            format!("{name:?} is not a named port of {}", p.to),
                        )
                    })?;
                if p.protocol.is_some_and(|x| x != pp.protocol) {
                    return Err(inv(
                        format!("{f}.protocol"),
                        format!("port {name:?} is {}", pp.protocol),
                    ));
                }
                (pp.port, Some(name.clone()), pp.protocol)
            }
        };
        if !protocol.has_ports() {
            return Err(inv(format!("{f}.protocol"), "must be TCP, UDP or SCTP"));
        }
        if !ports
            .iter()
            .any(|x| x.port == port && x.protocol == protocol)
        {
            return Err(inv(
                format!("{f}.port"),
                format!("{} does not listen on {port}/{protocol}", p.to),
            ));
        }
        let dns_query = is_dns && port == 53;
        let http = if protocol != Protocol::Tcp || dns_query {
            if p.http.is_some() {
                return Err(inv(
                    format!("{f}.http"),
                    "http probes need a TCP port that serves HTTP (not UDP/SCTP, not DNS)",
                ));
            }
            None
        } else {
            let h = p.http.as_ref();
            let method = h
                .and_then(|h| h.method.clone())
                .unwrap_or_else(|| "GET".into());
            let path = h.and_then(|h| h.path.clone()).unwrap_or_else(|| "/".into());
            // A probe describes a request: any valid method token is
            // evaluated (methods are case-sensitive; `get` is valid HTTP
            // that a rule listing `GET` does not match).
            if !is_method_token(&method) {
                return Err(inv(
                    format!("{f}.http.method"),
                    format!("{method:?} is not an HTTP method token"),
                ));
            }
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                return Err(inv(
                    format!("{f}.http.path"),
                    format!("{path:?} must start with / and have no spaces"),
                ));
            }
            Some(HttpRequest {
                method,
                path,
                host: h.and_then(|h| h.host.clone()).unwrap_or(host),
            })
        };
        Ok(Probe {
            from: p.from.clone(),
            to,
            dst,
            port,
            port_name,
            protocol,
            http,
            explicit_http: p.http.is_some(),
            dns_query,
            expect: match p.expect {
                RawExpect::Allow => Verdict::Allow,
                RawExpect::Deny => Verdict::Deny,
            },
        })
    }

    /// Builds an ad-hoc probe (for `veilctl policy trace`), validated like
    /// a probe of the file. `port` is a number or a port name of the target.
    pub fn probe(
        &self,
        from: &str,
        to: &str,
        port: &str,
        protocol: Option<Protocol>,
        http: Option<(String, String, Option<String>)>,
    ) -> Result<Probe, ScenarioError> {
        let raw = RawProbe {
            from: from.to_string(),
            to: to.to_string(),
            port: match port.parse::<i64>() {
                Ok(n) => IntOrString::Int(n),
                Err(_) => IntOrString::String(port.to_string()),
            },
            protocol,
            http: http.map(|(m, p, h)| RawHttp {
                method: Some(m),
                path: Some(p),
                host: h,
            }),
            expect: RawExpect::Allow,
        };
        self.resolve_probe("probe", &raw, &mut BTreeSet::new())
    }
}

/// The flows a probe makes: an optional DNS lookup, then the connection.
pub fn probe_flows(cluster: &Cluster, sc: &Scenario, probe: &Probe) -> (Option<Flow>, Flow) {
    let src = cluster
        .pods
        .get(&probe.from)
        .map(|p| p.ip)
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let dns = match (&probe.to, sc.dns_pod()) {
        (ProbeTarget::Name(_), Some(d)) => Some(Flow {
            src,
            dst: IpAddr::V4(d.ip),
            protocol: Protocol::Udp,
            port: 53,
            dns_name: None,
            http: None,
        }),
        _ => None,
    };
    let main = Flow {
        src,
        dst: probe.dst,
        protocol: probe.protocol,
        port: probe.port,
        dns_name: match &probe.to {
            ProbeTarget::Name(n) => Some(n.clone()),
            _ => None,
        },
        http: probe.http.clone(),
    };
    (dns, main)
}

/// Whether `m` is an HTTP method: a non-empty token (RFC 9110 `tchar`s).
fn is_method_token(m: &str) -> bool {
    !m.is_empty()
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
