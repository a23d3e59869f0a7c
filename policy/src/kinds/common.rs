//! The shared pieces of every manifest kind: object metadata, ports given as
//! a number or a string, the `Ingress`/`Egress` policy types, and the field
//! checks all the conversions use (names, CIDRs, port numbers and names).
//!
//! It does not know any kind: each API family's file uses these helpers.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::net::Cidr;
use crate::selector::{LabelSelector, Labels};

/// Object metadata (the subset a policy may carry).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Name.
    pub name: String,
    /// Namespace (namespaced kinds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A port given as a number or a string (a name, a number, or `"a:b"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A string.
    String(String),
}

impl JsonSchema for IntOrString {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrString".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
    fn inline_schema() -> bool {
        true
    }
}

/// A direction named in `types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyType {
    /// Ingress.
    Ingress,
    /// Egress.
    Egress,
}

/// Checks a DNS-1123 label (names of namespaces, tiers, ...).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a DNS-1123 subdomain (object names).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub(super) fn check_selector(obj: &str, field: &str, s: &LabelSelector) -> Result<(), PolicyError> {
    s.validate()
        .map_err(|r| PolicyError::invalid(obj, field, r))
}

pub(super) fn cidr(obj: &str, field: &str, s: &str) -> Result<Cidr, PolicyError> {
    s.parse::<Cidr>()
        .map_err(|e| PolicyError::invalid(obj, field, e.to_string()))
}

pub(super) fn port_num(obj: &str, field: &str, p: i64) -> Result<u16, PolicyError> {
    if (1..=65535).contains(&p) {
        Ok(p as u16)
    } else {
        Err(PolicyError::invalid(
            obj,
            field,
            format!("port {p} is out of range 1..65535"),
        ))
    }
}

/// Checks a port name: lower-case letters, digits and `-`, at most 15
/// characters, at least one letter.
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

pub(super) fn port_name(obj: &str, field: &str, s: &str) -> Result<String, PolicyError> {
    if is_port_name(s) {
        Ok(s.to_string())
    } else {
        Err(PolicyError::invalid(
            obj,
            field,
            format!("{s:?} is not a port number, range or valid port name"),
        ))
    }
}

pub(super) enum PortValue {
    Number(u16),
    Range(u16, u16),
    Name(String),
}

pub(super) fn int_or_string_port(
    obj: &str,
    f: &str,
    p: &IntOrString,
) -> Result<PortValue, PolicyError> {
    match p {
        IntOrString::Int(n) => Ok(PortValue::Number(port_num(obj, f, *n)?)),
        IntOrString::String(s) => {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                let n: i64 = s.parse().unwrap_or(0);
                return Ok(PortValue::Number(port_num(obj, f, n)?));
            }
            if let Some((a, b)) = s.split_once(':') {
                let parse = |x: &str| -> Result<u16, PolicyError> {
                    if x.is_empty() || x.len() > 5 || !x.bytes().all(|c| c.is_ascii_digit()) {
                        return Err(PolicyError::invalid(
                            obj,
                            f,
                            format!("{s:?} is not a port range \"a:b\""),
                        ));
                    }
                    port_num(obj, f, x.parse().unwrap_or(0))
                };
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    return Err(PolicyError::invalid(
                        obj,
                        f,
                        format!("range {s:?} ends before it starts"),
                    ));
                }
                return Ok(PortValue::Range(a, b));
            }
            Ok(PortValue::Name(port_name(obj, f, s)?))
        }
    }
}
