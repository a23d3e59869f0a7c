//! The scenario file as written (shared/scenarios/FORMAT.md): serde types
//! that reject unknown fields. Nothing here is validated or resolved; the
//! `parse` module does that.

use serde::Deserialize;
use veil_policy::kinds::IntOrString;
use veil_policy::model::Protocol;
use veil_policy::selector::Labels;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScenario {
    pub(crate) name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) cluster: Option<RawCluster>,
    #[serde(default)]
    pub(crate) namespaces: Vec<RawNamespace>,
    #[serde(default)]
    pub(crate) pods: Vec<RawPod>,
    #[serde(default)]
    pub(crate) external: Vec<RawExternal>,
    #[serde(default)]
    pub(crate) policies: Vec<serde_yaml::Value>,
    pub(crate) probes: Option<Vec<RawProbe>>,
    pub(crate) steps: Option<Vec<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    #[serde(rename = "podCIDR")]
    pub(crate) pod_cidr: Option<String>,
    pub(crate) nodes: Option<Vec<RawNode>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawNode {
    Name(String),
    Full(RawNodeFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNodeFull {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNamespace {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawPod {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) labels: Labels,
    pub(crate) node: Option<String>,
    pub(crate) ip: Option<String>,
    #[serde(default)]
    pub(crate) host_network: bool,
    pub(crate) service_account: Option<String>,
    #[serde(default)]
    pub(crate) ports: Vec<RawPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPort {
    pub(crate) port: i64,
    pub(crate) protocol: Option<Protocol>,
    pub(crate) name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExternal {
    pub(crate) name: String,
    pub(crate) ip: String,
    #[serde(default)]
    pub(crate) ports: Vec<RawPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProbe {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) port: IntOrString,
    pub(crate) protocol: Option<Protocol>,
    pub(crate) http: Option<RawHttp>,
    pub(crate) expect: RawExpect,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawExpect {
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub(crate) method: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) host: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    #[serde(default)]
    pub(crate) apply: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub(crate) delete: Vec<RawRef>,
    #[serde(default)]
    pub(crate) labels: Vec<RawLabels>,
    #[serde(default)]
    pub(crate) probes: Vec<RawProbe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawRef {
    pub(crate) api_version: String,
    pub(crate) kind: String,
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLabels {
    pub(crate) pod: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) labels: Labels,
}
