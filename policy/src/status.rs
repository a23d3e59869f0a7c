//! `status` of the `veil.dev` kinds: the conditions the elected daemon writes
//! (`Accepted` or `Invalid`, with the reason naming the object and field).
//! Plain data; the CRDs take their `status` schema from these types
//! ([`crate::crd`]). It does not decide which condition applies, nor write it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the object is valid and in force.
pub const CONDITION_ACCEPTED: &str = "Accepted";
/// Condition type: the object is invalid; the last good state stays in force.
pub const CONDITION_INVALID: &str = "Invalid";

/// `status` of a Tier, NetworkPolicy or GlobalNetworkPolicy of veil.dev.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One condition, shaped like Kubernetes' `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted` or `Invalid`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// The generation the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// A CamelCase reason.
    pub reason: String,
    /// What is wrong (object, field, reason), or empty.
    pub message: String,
}

/// The value of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// It holds.
    True,
    /// It does not hold.
    False,
    /// Not known.
    Unknown,
}
