//! The CNI result type (SPEC.md section 5), version-neutral, with its JSON
//! encoding per version and a lenient decoder for `prevResult` and delegated
//! IPAM results.
//!
//! Encoding follows the reference library (`pkg/types/040`, `pkg/types/100`):
//! before 1.0.0 every `ips[]` entry carries `"version": "4"|"6"`; `interfaces[].mtu`
//! and `routes[].scope` exist from 1.1.0 on. Decoding accepts any of these forms.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use crate::version::Version;

/// An interface created by an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// MTU (encoded from 1.1.0 on).
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; `None` on the host.
    pub sandbox: Option<String>,
    /// Other fields (`socketPath`, `pciID`, ...) passed through from a prevResult.
    pub extra: Map<String, Value>,
}

/// An address assigned by an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: IpNetwork,
    /// The default gateway for this address, if any.
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// A route created by an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: IpNetwork,
    /// Next hop.
    pub gw: Option<IpAddr>,
    /// Route scope (253 link), encoded from 1.1.0 on.
    pub scope: Option<u8>,
    /// Other fields (`mtu`, `advmss`, `priority`, `table`) passed through.
    pub extra: Map<String, Value>,
}

/// DNS settings, passed through as given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns(pub Map<String, Value>);

/// A CNI ADD result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS.
    pub dns: Dns,
}

/// A result that cannot be decoded, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ResultError {
    /// The field, e.g. `ips[0].address`.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ResultError {
    ResultError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, ResultError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(bad(format!("{field}.{key}"), "must be a string")),
    }
}

fn parse_ip(s: &str, field: &str) -> Result<IpAddr, ResultError> {
    s.parse()
        .map_err(|_| bad(field, format!("{s:?} is not an IP address")))
}

fn parse_net(s: &str, field: &str) -> Result<IpNetwork, ResultError> {
    if !s.contains('/') {
        return Err(bad(field, format!("{s:?} is not in CIDR notation")));
    }
    s.parse()
        .map_err(|_| bad(field, format!("{s:?} is not in CIDR notation")))
}

fn array<'a>(v: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], ResultError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a.as_slice()),
        Some(_) => Err(bad(key, "must be an array")),
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, ResultError> {
    v.as_object().ok_or_else(|| bad(field, "must be an object"))
}

impl CniResult {
    /// Decodes a result of any supported version (a `prevResult`, or an IPAM
    /// plugin's abbreviated result without `interfaces`).
    pub fn parse(v: &Value) -> Result<CniResult, ResultError> {
        let obj = object(v, "result")?;
        let mut out = CniResult::default();
        for (i, iv) in array(obj, "interfaces")?.iter().enumerate() {
            let field = format!("interfaces[{i}]");
            let o = object(iv, &field)?;
            let name = opt_str(o, "name", &field)?
                .ok_or_else(|| bad(format!("{field}.name"), "missing"))?
                .to_string();
            let mtu =
                match o.get("mtu") {
                    None | Some(Value::Null) => None,
                    Some(m) => Some(m.as_u64().and_then(|m| u32::try_from(m).ok()).ok_or_else(
                        || bad(format!("{field}.mtu"), "must be an unsigned integer"),
                    )?),
                };
            let mut extra = o.clone();
            for k in ["name", "mac", "mtu", "sandbox"] {
                extra.remove(k);
            }
            out.interfaces.push(Interface {
                name,
                mac: opt_str(o, "mac", &field)?.map(str::to_string),
                mtu,
                sandbox: opt_str(o, "sandbox", &field)?
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                extra,
            });
        }
        for (i, iv) in array(obj, "ips")?.iter().enumerate() {
            let field = format!("ips[{i}]");
            let o = object(iv, &field)?;
            let address = opt_str(o, "address", &field)?
                .ok_or_else(|| bad(format!("{field}.address"), "missing"))?;
            let address = parse_net(address, &format!("{field}.address"))?;
            let gateway = opt_str(o, "gateway", &field)?
                .map(|g| parse_ip(g, &format!("{field}.gateway")))
                .transpose()?;
            let interface = match o.get("interface") {
                None | Some(Value::Null) => None,
                Some(x) => Some(x.as_u64().map(|x| x as usize).ok_or_else(|| {
                    bad(format!("{field}.interface"), "must be an unsigned integer")
                })?),
            };
            out.ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        for (i, rv) in array(obj, "routes")?.iter().enumerate() {
            let field = format!("routes[{i}]");
            let o = object(rv, &field)?;
            let dst =
                opt_str(o, "dst", &field)?.ok_or_else(|| bad(format!("{field}.dst"), "missing"))?;
            let dst = parse_net(dst, &format!("{field}.dst"))?;
            let gw = opt_str(o, "gw", &field)?
                .map(|g| parse_ip(g, &format!("{field}.gw")))
                .transpose()?;
            let scope =
                match o.get("scope") {
                    None | Some(Value::Null) => None,
                    Some(s) => Some(s.as_u64().and_then(|s| u8::try_from(s).ok()).ok_or_else(
                        || bad(format!("{field}.scope"), "must be an integer 0-255"),
                    )?),
                };
            let mut extra = o.clone();
            for k in ["dst", "gw", "scope"] {
                extra.remove(k);
            }
            out.routes.push(Route {
                dst,
                gw,
                scope,
                extra,
            });
        }
        match obj.get("dns") {
            None | Some(Value::Null) => {}
            Some(Value::Object(d)) => out.dns = Dns(d.clone()),
            Some(_) => return Err(bad("dns", "must be an object")),
        }
        Ok(out)
    }

    /// Encodes the result in `version`'s format.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if let Some(mac) = &i.mac {
                    o.insert("mac".into(), json!(mac));
                }
                if version.has_mtu_and_scope() {
                    if let Some(mtu) = i.mtu {
                        o.insert("mtu".into(), json!(mtu));
                    }
                }
                if let Some(sb) = &i.sandbox {
                    o.insert("sandbox".into(), json!(sb));
                }
                if version.has_mtu_and_scope() {
                    for (k, v) in &i.extra {
                        o.insert(k.clone(), v.clone());
                    }
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_have_version() {
                    o.insert(
                        "version".into(),
                        json!(if ip.address.is_ipv4() { "4" } else { "6" }),
                    );
                }
                if let Some(idx) = ip.interface {
                    o.insert("interface".into(), json!(idx));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .filter(|r| version.has_mtu_and_scope() || r.scope.is_none())
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                for (k, v) in &r.extra {
                    o.insert(k.clone(), v.clone());
                }
                if version.has_mtu_and_scope() {
                    if let Some(s) = r.scope {
                        o.insert("scope".into(), json!(s));
                    }
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": Value::Object(self.dns.0.clone()),
        })
    }

    /// Appends `ours` (interfaces, addresses, routes) to this result, shifting
    /// `ours`' interface indexes past the existing interfaces; DNS settings of
    /// `ours` fill in only what this result does not have.
    pub fn merge(&mut self, ours: CniResult) {
        let base = self.interfaces.len();
        self.interfaces.extend(ours.interfaces);
        self.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        self.routes.extend(ours.routes);
        for (k, v) in ours.dns.0 {
            self.dns.0.entry(k).or_insert(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "veil0123456789a".into(),
                    mac: Some("aa:bb:cc:dd:ee:01".into()),
                    mtu: Some(1420),
                    sandbox: None,
                    extra: Map::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:dd:ee:02".into()),
                    mtu: Some(1420),
                    sandbox: Some("/run/netns/p".into()),
                    extra: Map::new(),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.5/32".parse().unwrap(),
                gateway: Some("169.254.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![
                Route {
                    dst: "169.254.1.1/32".parse().unwrap(),
                    gw: None,
                    scope: Some(253),
                    extra: Map::new(),
                },
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: Some("169.254.1.1".parse().unwrap()),
                    scope: None,
                    extra: Map::new(),
                },
            ],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_no_mtu_or_scope() {
        for v in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            let j = sample().to_json(v);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][0]["interface"], 1);
            assert!(j["interfaces"][1].get("mtu").is_none());
            assert_eq!(j["routes"].as_array().unwrap().len(), 1, "{j}");
            assert_eq!(j["routes"][0]["gw"], "169.254.1.1");
        }
    }

    #[test]
    fn v1_has_no_ip_version_and_1_1_has_mtu_and_scope() {
        let j = sample().to_json(Version::V1_0_0);
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["interfaces"][1].get("mtu").is_none());
        let j = sample().to_json(Version::V1_1_0);
        assert_eq!(j["interfaces"][1]["mtu"], 1420);
        assert_eq!(j["interfaces"][1]["sandbox"], "/run/netns/p");
        assert!(j["interfaces"][0].get("sandbox").is_none());
        assert_eq!(j["routes"][0]["scope"], 253);
        assert_eq!(j["dns"], json!({}));
    }

    #[test]
    fn round_trips_through_every_version() {
        for v in Version::ALL {
            let back = CniResult::parse(&sample().to_json(v)).unwrap();
            assert_eq!(back.ips, sample().ips);
            assert_eq!(back.interfaces.len(), 2);
        }
        let back = CniResult::parse(&sample().to_json(Version::V1_1_0)).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn merge_shifts_interface_indexes_and_keeps_prev_dns() {
        let mut prev = CniResult::parse(&json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "dummy0"}],
            "ips": [{"address": "10.1.0.5/24", "interface": 0}],
            "dns": {"nameservers": ["10.1.0.1"]}
        }))
        .unwrap();
        let mut ours = sample();
        ours.dns.0.insert("nameservers".into(), json!(["9.9.9.9"]));
        ours.dns.0.insert("domain".into(), json!("cluster.local"));
        prev.merge(ours);
        assert_eq!(prev.interfaces.len(), 3);
        assert_eq!(prev.ips[0].interface, Some(0));
        assert_eq!(prev.ips[1].interface, Some(2));
        assert_eq!(prev.dns.0["nameservers"], json!(["10.1.0.1"]));
        assert_eq!(prev.dns.0["domain"], json!("cluster.local"));
    }

    #[test]
    fn parse_accepts_ipam_results_and_names_bad_fields() {
        let r = CniResult::parse(&json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.244.3.7/24", "gateway": "10.244.3.1"}],
            "routes": [{"dst": "0.0.0.0/0"}]
        }))
        .unwrap();
        assert_eq!(
            r.ips[0].address,
            "10.244.3.7/24".parse::<IpNetwork>().unwrap()
        );
        assert_eq!(r.ips[0].interface, None);
        let e = CniResult::parse(&json!({"ips": [{"address": "10.0.0.1"}]})).unwrap_err();
        assert_eq!(e.field, "ips[0].address");
        let e = CniResult::parse(&json!({"routes": [{"dst": "0.0.0.0/0", "gw": 3}]})).unwrap_err();
        assert_eq!(e.field, "routes[0].gw");
        assert!(CniResult::parse(&json!([])).is_err());
    }
}
