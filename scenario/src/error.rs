//! Why a scenario file is invalid.

use veil_policy::PolicyError;

/// Why a scenario file is invalid: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// A field of the scenario itself.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field, e.g. `pods[2].ip`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A policy object in the scenario.
    #[error("{field}: {error}")]
    Policy {
        /// Where in the file, e.g. `policies[1]`.
        field: String,
        /// The policy error.
        error: PolicyError,
    },
}

pub(crate) fn inv(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}
