//! The manifests of every supported kind, as serde types that reject
//! unknown fields, and their validation and conversion into the
//! normalised [`crate::model`]. The `veil.dev` types are also the source of
//! the CustomResourceDefinitions (see [`crate::crd`]).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::model::{
    Action, DomainPattern, HttpMatch, Kind, NsScope, ObjectKey, PathMatch, Peer, PodSelector,
    Policy, PortMatch, Protocol, Rule, Tier, TierDefault, TIER_ADMIN, TIER_BASELINE, TIER_DEFAULT,
};
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

// ---------------------------------------------------------------- veil.dev

/// `spec` of a `veil.dev/v1alpha1 Tier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TierSpec {
    /// Position among tiers, 1..65535, unique; 100, 1000 and 10000 are taken.
    #[schemars(range(min = 1, max = 65535))]
    pub order: u32,
    /// What applies when no rule of the tier decides (default Deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<TierDefault>,
}

/// A direction named in `types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyType {
    /// Ingress.
    Ingress,
    /// Egress.
    Egress,
}

/// `spec` of a `veil.dev/v1alpha1 NetworkPolicy` (namespaced).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Tier name (default `default`; `admin` and `baseline` are not allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Order inside the tier (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
    /// Which pods of the namespace it applies to (omitted: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Directions it applies to (default: those that have rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<PolicyType>>,
    /// Ingress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<VeilRule>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<VeilRule>,
}

/// `spec` of a `veil.dev/v1alpha1 GlobalNetworkPolicy` (cluster-scoped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GlobalNetworkPolicySpec {
    /// Tier name (default `default`; `admin` and `baseline` are not allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Order inside the tier (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
    /// Which namespaces' pods it applies to (omitted: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Which of their pods (omitted: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Directions it applies to (default: those that have rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<PolicyType>>,
    /// Ingress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<VeilRule>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<VeilRule>,
}

/// A rule of a veil policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VeilRule {
    /// Allow, Deny, Pass or Log.
    pub action: Action,
    /// TCP, UDP, SCTP or ICMP; omitted: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The peer of an ingress rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRule>,
    /// The peer and ports of an egress rule; only `ports` in an ingress rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRule>,
    /// L7 conditions (Allow rules with protocol TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRule>,
}

/// One side of a veil rule; fields are ANDed, list entries ORed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntityRule {
    /// Pods whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Pods of namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses inside one of these CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    /// Addresses outside all of these CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<String>,
    /// Ports: numbers, `"a:b"` ranges or port names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<IntOrString>,
    /// DNS names (egress Allow destinations only); `*.x.y` wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

/// L7 HTTP conditions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    /// Upper-case methods (omitted: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path conditions (omitted: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<HttpPath>,
    /// Exact host names (omitted: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// A path condition: exactly one of `exact` and `prefix`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPath {
    /// The path equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

// ------------------------------------------------------- networking.k8s.io

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

// ------------------------------------------------ policy.networking.k8s.io

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

// ---------------------------------------------------------------- objects

/// A manifest: apiVersion, kind, metadata, spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Manifest<S> {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: S,
}

/// A parsed, validated object of a supported kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Kind and identity.
    pub key: ObjectKey,
    /// Metadata as given.
    pub metadata: ObjectMeta,
    /// The content.
    pub body: ObjectBody,
}

/// The spec of an [`Object`], by kind.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // few objects, never in hot paths
pub enum ObjectBody {
    /// A Tier (already validated).
    Tier(Tier),
    /// Any policy kind, normalised.
    Policy(Policy),
}

impl Object {
    /// Parses one YAML document.
    pub fn from_yaml(text: &str) -> Result<Object, PolicyError> {
        let v: serde_yaml::Value = serde_yaml::from_str(text)
            .map_err(|e| PolicyError::invalid("manifest", "(document)", e.to_string()))?;
        Object::from_value(&v)
    }

    /// Parses and validates a manifest given as a YAML value.
    pub fn from_value(v: &serde_yaml::Value) -> Result<Object, PolicyError> {
        let str_field = |f: &str| v.get(f).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let api_version = str_field("apiVersion");
        let kind_s = str_field("kind");
        let meta_name = v
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        let kind = match (api_version.as_str(), kind_s.as_str()) {
            ("networking.k8s.io/v1", "NetworkPolicy") => Kind::K8sNetworkPolicy,
            ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy") => Kind::AdminNetworkPolicy,
            ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy") => {
                Kind::BaselineAdminNetworkPolicy
            }
            ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => {
                Kind::ClusterNetworkPolicy
            }
            ("veil.dev/v1alpha1", "Tier") => Kind::Tier,
            ("veil.dev/v1alpha1", "NetworkPolicy") => Kind::VeilNetworkPolicy,
            ("veil.dev/v1alpha1", "GlobalNetworkPolicy") => Kind::GlobalNetworkPolicy,
            _ => {
                return Err(PolicyError::UnknownKind {
                    object: meta_name,
                    api_version,
                    kind: kind_s,
                })
            }
        };
        let label = format!("{} {}", kind.short(), meta_name);
        match kind {
            Kind::K8sNetworkPolicy => {
                let m: Manifest<K8sNetworkPolicySpec> = decode(v, &label)?;
                let key = key_of(kind, &m.metadata, &label)?;
                let p = k8s_policy(&key, &m.spec)?;
                Ok(Object {
                    key,
                    metadata: m.metadata,
                    body: ObjectBody::Policy(p),
                })
            }
            Kind::AdminNetworkPolicy
            | Kind::BaselineAdminNetworkPolicy
            | Kind::ClusterNetworkPolicy => {
                let m: Manifest<AnpSpec> = decode(v, &label)?;
                let key = key_of(kind, &m.metadata, &label)?;
                let p = anp_policy(&key, &m.spec)?;
                Ok(Object {
                    key,
                    metadata: m.metadata,
                    body: ObjectBody::Policy(p),
                })
            }
            Kind::Tier => {
                let m: Manifest<TierSpec> = decode(v, &label)?;
                let key = key_of(kind, &m.metadata, &label)?;
                let t = tier_of(&key, &m.spec)?;
                Ok(Object {
                    key,
                    metadata: m.metadata,
                    body: ObjectBody::Tier(t),
                })
            }
            Kind::VeilNetworkPolicy => {
                let m: Manifest<NetworkPolicySpec> = decode(v, &label)?;
                let key = key_of(kind, &m.metadata, &label)?;
                let s = &m.spec;
                let p = veil_policy(
                    &key,
                    VeilCommon {
                        tier: &s.tier,
                        order: s.order,
                        subject: PodSelector {
                            namespaces: NsScope::Named(key.namespace.clone().unwrap_or_default()),
                            pods: s.selector.clone().unwrap_or_default(),
                        },
                        types: &s.types,
                        ingress: &s.ingress,
                        egress: &s.egress,
                    },
                )?;
                Ok(Object {
                    key,
                    metadata: m.metadata,
                    body: ObjectBody::Policy(p),
                })
            }
            Kind::GlobalNetworkPolicy => {
                let m: Manifest<GlobalNetworkPolicySpec> = decode(v, &label)?;
                let key = key_of(kind, &m.metadata, &label)?;
                let s = &m.spec;
                let ns = s.namespace_selector.clone().unwrap_or_default();
                check_selector(&key.to_string(), "spec.namespaceSelector", &ns)?;
                let p = veil_policy(
                    &key,
                    VeilCommon {
                        tier: &s.tier,
                        order: s.order,
                        subject: PodSelector {
                            namespaces: NsScope::Selector(ns),
                            pods: s.selector.clone().unwrap_or_default(),
                        },
                        types: &s.types,
                        ingress: &s.ingress,
                        egress: &s.egress,
                    },
                )?;
                Ok(Object {
                    key,
                    metadata: m.metadata,
                    body: ObjectBody::Policy(p),
                })
            }
        }
    }
}

fn decode<T: DeserializeOwned>(v: &serde_yaml::Value, label: &str) -> Result<T, PolicyError> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "(object)".to_string()
        } else {
            path
        };
        PolicyError::invalid(label, path, e.into_inner().to_string())
    })
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

fn key_of(kind: Kind, meta: &ObjectMeta, label: &str) -> Result<ObjectKey, PolicyError> {
    if !is_dns_subdomain(&meta.name) {
        return Err(PolicyError::invalid(
            label,
            "metadata.name",
            format!(
                "{:?} is not a valid name (lower-case DNS subdomain)",
                meta.name
            ),
        ));
    }
    if kind.namespaced() {
        let ns = meta.namespace.clone().unwrap_or_default();
        if !is_dns_label(&ns) {
            return Err(PolicyError::invalid(
                label,
                "metadata.namespace",
                "a namespaced object needs a valid namespace",
            ));
        }
        Ok(ObjectKey {
            kind,
            namespace: Some(ns),
            name: meta.name.clone(),
        })
    } else {
        if meta.namespace.is_some() {
            return Err(PolicyError::invalid(
                label,
                "metadata.namespace",
                format!("{} is cluster-scoped and takes no namespace", kind.name()),
            ));
        }
        Ok(ObjectKey {
            kind,
            namespace: None,
            name: meta.name.clone(),
        })
    }
}

fn check_selector(obj: &str, field: &str, s: &LabelSelector) -> Result<(), PolicyError> {
    s.validate()
        .map_err(|r| PolicyError::invalid(obj, field, r))
}

fn cidr(obj: &str, field: &str, s: &str) -> Result<Cidr, PolicyError> {
    s.parse::<Cidr>()
        .map_err(|e| PolicyError::invalid(obj, field, e.to_string()))
}

fn port_num(obj: &str, field: &str, p: i64) -> Result<u16, PolicyError> {
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

fn port_name(obj: &str, field: &str, s: &str) -> Result<String, PolicyError> {
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

// ------------------------------------------------------------ conversions

fn tier_of(key: &ObjectKey, spec: &TierSpec) -> Result<Tier, PolicyError> {
    let obj = key.to_string();
    if [TIER_ADMIN, TIER_DEFAULT, TIER_BASELINE].contains(&key.name.as_str()) {
        return Err(PolicyError::invalid(
            &obj,
            "metadata.name",
            format!("{:?} is a reserved tier name", key.name),
        ));
    }
    if !is_dns_label(&key.name) {
        return Err(PolicyError::invalid(
            &obj,
            "metadata.name",
            "a tier name must be a DNS label",
        ));
    }
    if !(1..=65535).contains(&spec.order) {
        return Err(PolicyError::invalid(
            &obj,
            "spec.order",
            format!("{} is out of range 1..65535", spec.order),
        ));
    }
    if [100, 1000, 10000].contains(&spec.order) {
        return Err(PolicyError::invalid(
            &obj,
            "spec.order",
            format!(
                "order {} is taken by a built-in tier (admin 100, default 1000, baseline 10000)",
                spec.order
            ),
        ));
    }
    Ok(Tier {
        name: key.name.clone(),
        order: spec.order,
        default_action: spec.default_action.unwrap_or(TierDefault::Deny),
    })
}

fn k8s_policy(key: &ObjectKey, spec: &K8sNetworkPolicySpec) -> Result<Policy, PolicyError> {
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

enum PortValue {
    Number(u16),
    Range(u16, u16),
    Name(String),
}

fn int_or_string_port(obj: &str, f: &str, p: &IntOrString) -> Result<PortValue, PolicyError> {
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

fn anp_policy(key: &ObjectKey, spec: &AnpSpec) -> Result<Policy, PolicyError> {
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
    for (j, p) in r.protocols.iter().flatten().enumerate() {
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

struct VeilCommon<'a> {
    tier: &'a Option<String>,
    order: Option<u32>,
    subject: PodSelector,
    types: &'a Option<Vec<PolicyType>>,
    ingress: &'a [VeilRule],
    egress: &'a [VeilRule],
}

fn veil_policy(key: &ObjectKey, c: VeilCommon<'_>) -> Result<Policy, PolicyError> {
    let obj = key.to_string();
    let tier = c.tier.clone().unwrap_or_else(|| TIER_DEFAULT.to_string());
    if tier == TIER_ADMIN || tier == TIER_BASELINE {
        return Err(PolicyError::invalid(
            &obj,
            "spec.tier",
            format!("veil policies cannot be placed in tier {tier:?}"),
        ));
    }
    if !is_dns_label(&tier) {
        return Err(PolicyError::invalid(
            &obj,
            "spec.tier",
            format!("{tier:?} is not a valid tier name"),
        ));
    }
    check_selector(&obj, "spec.selector", &c.subject.pods)?;
    let (applies_ingress, applies_egress) = match c.types {
        Some(t) => {
            if t.is_empty() {
                return Err(PolicyError::invalid(
                    &obj,
                    "spec.types",
                    "must list Ingress and/or Egress",
                ));
            }
            (
                t.contains(&PolicyType::Ingress),
                t.contains(&PolicyType::Egress),
            )
        }
        None => (!c.ingress.is_empty(), !c.egress.is_empty()),
    };
    if !applies_ingress && !c.ingress.is_empty() {
        return Err(PolicyError::invalid(
            &obj,
            "spec.ingress",
            "has rules but types does not list Ingress",
        ));
    }
    if !applies_egress && !c.egress.is_empty() {
        return Err(PolicyError::invalid(
            &obj,
            "spec.egress",
            "has rules but types does not list Egress",
        ));
    }
    let own_ns = match &key.namespace {
        Some(ns) => NsScope::Named(ns.clone()),
        None => NsScope::Selector(LabelSelector::all()),
    };
    let mut ingress = Vec::new();
    for (i, r) in c.ingress.iter().enumerate() {
        ingress.push(veil_rule(
            &obj,
            &format!("spec.ingress[{i}]"),
            r,
            false,
            &own_ns,
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in c.egress.iter().enumerate() {
        egress.push(veil_rule(
            &obj,
            &format!("spec.egress[{i}]"),
            r,
            true,
            &own_ns,
        )?);
    }
    Ok(Policy {
        key: key.clone(),
        tier,
        sort_key: (i64::from(c.order.unwrap_or(1000)), 0, key.full_name(), 1),
        subject: c.subject,
        applies_ingress,
        applies_egress,
        ingress,
        egress,
    })
}

fn veil_rule(
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
    let http = match &r.http {
        None => None,
        Some(h) => {
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
            Some(m)
        }
    };
    Ok(Rule {
        name: None,
        action: r.action,
        protocol: r.protocol,
        peers,
        ports,
        http,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(y: &str) -> String {
        Object::from_yaml(y).unwrap_err().to_string()
    }

    #[test]
    fn unknown_field_is_rejected_with_its_path() {
        let e = err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}, ingress: [{fromm: []}]}\n");
        assert!(e.contains("networkpolicy a"), "{e}");
        assert!(e.contains("spec.ingress[0]"), "{e}");
        assert!(e.contains("fromm"), "{e}");
    }

    #[test]
    fn unknown_kind_is_rejected() {
        let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {}\n");
        assert!(e.contains("unknown kind"), "{e}");
    }

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

    #[test]
    fn http_on_deny_rule_is_rejected() {
        let e = err("apiVersion: veil.dev/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {ingress: [{action: Deny, protocol: TCP, http: {methods: [GET]}}]}\n");
        assert!(e.contains("spec.ingress[0].http"), "{e}");
    }

    #[test]
    fn http_needs_tcp() {
        let e = err("apiVersion: veil.dev/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {ingress: [{action: Allow, http: {methods: [GET]}}]}\n");
        assert!(e.contains("protocol: TCP"), "{e}");
    }

    #[test]
    fn reserved_tier_names_are_rejected() {
        let e = err("apiVersion: veil.dev/v1alpha1\nkind: Tier\nmetadata: {name: admin}\nspec: {order: 5}\n");
        assert!(e.contains("reserved"), "{e}");
        let e = err(
            "apiVersion: veil.dev/v1alpha1\nkind: Tier\nmetadata: {name: t}\nspec: {order: 1000}\n",
        );
        assert!(e.contains("built-in"), "{e}");
    }

    #[test]
    fn domains_with_selector_are_rejected() {
        let e = err("apiVersion: veil.dev/v1alpha1\nkind: GlobalNetworkPolicy\nmetadata: {name: a}\nspec: {egress: [{action: Allow, destination: {domains: [a.b], selector: {}}}]}\n");
        assert!(e.contains("domains"), "{e}");
    }

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

    #[test]
    fn veil_ports_accept_ranges_and_names() {
        let o = Object::from_yaml("apiVersion: veil.dev/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {ingress: [{action: Allow, destination: {ports: [80, \"8000:8080\", http]}}]}\n").unwrap();
        let ObjectBody::Policy(p) = o.body else {
            panic!()
        };
        assert_eq!(p.ingress[0].ports.len(), 3);
        let e = err("apiVersion: veil.dev/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {ingress: [{action: Allow, destination: {ports: [\"9:8\"]}}]}\n");
        assert!(e.contains("ends before"), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        for y in [
            "",
            "[]",
            "42",
            "apiVersion: 3",
            "kind: {}",
            "apiVersion: veil.dev/v1alpha1\nkind: Tier\n",
            "apiVersion: veil.dev/v1alpha1\nkind: Tier\nmetadata: {name: x}\nspec: {order: -1}",
        ] {
            let _ = Object::from_yaml(y);
        }
    }
}
