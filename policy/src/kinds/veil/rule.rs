//! Conversion of a `veil.dev` rule: its peer side (`source` for ingress,
//! `destination` for egress: selectors, nets, notNets, domains), its ports
//! and its L7 HTTP conditions, with the checks on which field may appear
//! where.

use super::{EntityRule, VeilRule};
use crate::error::PolicyError;
use crate::kinds::common::{check_selector, cidr, int_or_string_port, PortValue};
use crate::model::{
    Action, DomainPattern, HttpMatch, NsScope, PathMatch, Peer, PodSelector, PortMatch, Protocol,
    Rule,
};

pub(super) fn veil_rule(
    obj: &str,
    f: &str,
    r: &VeilRule,
    egress: bool,
    own_ns: &NsScope,
) -> Result<Rule, PolicyError> {
    let empty = EntityRule::default();
    let (peer_side, peer_field, ports_side) = if egress {
        if r.source.is_some() {
            return Err(PolicyError::invalid(
                obj,
                format!("{f}.source"),
                "an egress rule takes no source (the pod itself)",
            ));
        }
        let d = r.destination.as_ref().unwrap_or(&empty);
        (d, "destination", d)
    } else {
        let s = r.source.as_ref().unwrap_or(&empty);
        let d = r.destination.as_ref().unwrap_or(&empty);
        if !s.ports.is_empty() {
            return Err(PolicyError::invalid(
                obj,
                format!("{f}.source.ports"),
                "ports belong in destination",
            ));
        }
        if !s.domains.is_empty() {
            return Err(PolicyError::invalid(
                obj,
                format!("{f}.source.domains"),
                "domains are allowed only in egress destinations",
            ));
        }
        if d.selector.is_some()
            || d.namespace_selector.is_some()
            || !d.nets.is_empty()
            || !d.not_nets.is_empty()
            || !d.domains.is_empty()
        {
            return Err(PolicyError::invalid(
                obj,
                format!("{f}.destination"),
                "in an ingress rule the destination may hold only ports",
            ));
        }
        (s, "source", d)
    };
    let pf = format!("{f}.{peer_field}");
    let e = peer_side;
    if let Some(s) = &e.selector {
        check_selector(obj, &format!("{pf}.selector"), s)?;
    }
    if let Some(s) = &e.namespace_selector {
        check_selector(obj, &format!("{pf}.namespaceSelector"), s)?;
    }
    let pods = if e.selector.is_some() || e.namespace_selector.is_some() {
        Some(PodSelector {
            namespaces: match &e.namespace_selector {
                Some(s) => NsScope::Selector(s.clone()),
                None => own_ns.clone(),
            },
            pods: e.selector.clone().unwrap_or_default(),
        })
    } else {
        None
    };
    let mut nets = Vec::new();
    for (k, n) in e.nets.iter().enumerate() {
        nets.push(cidr(obj, &format!("{pf}.nets[{k}]"), n)?);
    }
    let mut not_nets = Vec::new();
    for (k, n) in e.not_nets.iter().enumerate() {
        not_nets.push(cidr(obj, &format!("{pf}.notNets[{k}]"), n)?);
    }
    let mut domains = Vec::new();
    if !e.domains.is_empty() {
        if r.action != Action::Allow {
            return Err(PolicyError::invalid(
                obj,
                format!("{pf}.domains"),
                "domains are allowed only in Allow rules",
            ));
        }
        if pods.is_some() || !nets.is_empty() || !not_nets.is_empty() {
            return Err(PolicyError::invalid(
                obj,
                format!("{pf}.domains"),
                "domains cannot be combined with nets, notNets, selector or namespaceSelector",
            ));
        }
        for (k, d) in e.domains.iter().enumerate() {
            domains.push(
                DomainPattern::parse(d)
                    .map_err(|m| PolicyError::invalid(obj, format!("{pf}.domains[{k}]"), m))?,
            );
        }
    }
    let peer = Peer {
        pods,
        nodes: None,
        nets,
        not_nets,
        domains,
    };
    let peers = if peer == Peer::default() {
        Vec::new()
    } else {
        vec![peer]
    };
    let mut ports = Vec::new();
    let ports_field = format!("{f}.destination.ports");
    if !ports_side.ports.is_empty() {
        if let Some(p) = r.protocol {
            if !p.has_ports() {
                return Err(PolicyError::invalid(
                    obj,
                    &ports_field,
                    format!("protocol {p} has no ports"),
                ));
            }
        }
    }
    for (k, p) in ports_side.ports.iter().enumerate() {
        let pf = format!("{ports_field}[{k}]");
        ports.push(match int_or_string_port(obj, &pf, p)? {
            PortValue::Number(n) => PortMatch::Range {
                protocol: None,
                from: n,
                to: n,
            },
            PortValue::Range(a, b) => PortMatch::Range {
                protocol: None,
                from: a,
                to: b,
            },
            PortValue::Name(name) => PortMatch::Named {
                protocol: None,
                name,
            },
        });
    }
    let http = http_match(obj, f, r)?;
    Ok(Rule {
        name: None,
        action: r.action,
        protocol: r.protocol,
        peers,
        ports,
        http,
    })
}

/// The L7 conditions of a rule (`http`): Allow rules with protocol TCP only.
fn http_match(obj: &str, f: &str, r: &VeilRule) -> Result<Option<HttpMatch>, PolicyError> {
    let Some(h) = &r.http else {
        return Ok(None);
    };
    let hf = format!("{f}.http");
    if r.action != Action::Allow {
        return Err(PolicyError::invalid(
            obj,
            &hf,
            "http is allowed only on Allow rules",
        ));
    }
    if r.protocol != Some(Protocol::Tcp) {
        return Err(PolicyError::invalid(
            obj,
            &hf,
            "http needs protocol: TCP on the rule",
        ));
    }
    let mut m = HttpMatch::default();
    for (k, meth) in h.methods.iter().enumerate() {
        if meth.is_empty() || !meth.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(PolicyError::invalid(
                obj,
                format!("{hf}.methods[{k}]"),
                format!("{meth:?} is not an upper-case method token"),
            ));
        }
        m.methods.push(meth.clone());
    }
    for (k, p) in h.paths.iter().enumerate() {
        let pf = format!("{hf}.paths[{k}]");
        let pm = match (&p.exact, &p.prefix) {
            (Some(e), None) => PathMatch::Exact(e.clone()),
            (None, Some(x)) => PathMatch::Prefix(x.clone()),
            _ => {
                return Err(PolicyError::invalid(
                    obj,
                    pf,
                    "needs exactly one of exact and prefix",
                ))
            }
        };
        let s = match &pm {
            PathMatch::Exact(s) | PathMatch::Prefix(s) => s,
        };
        if !s.starts_with('/') {
            return Err(PolicyError::invalid(
                obj,
                pf,
                format!("path {s:?} must start with /"),
            ));
        }
        m.paths.push(pm);
    }
    for (k, host) in h.hosts.iter().enumerate() {
        let hf2 = format!("{hf}.hosts[{k}]");
        if host.contains('*') {
            return Err(PolicyError::invalid(
                obj,
                hf2,
                "hosts are exact names; `*` is not allowed",
            ));
        }
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(PolicyError::invalid(
                obj,
                hf2,
                format!("{host:?} is not a host name"),
            ));
        }
        m.hosts.push(host.to_ascii_lowercase());
    }
    Ok(Some(m))
}
