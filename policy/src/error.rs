//! Errors of parsing and validating policy objects.

/// Why an object (or a set of objects) was rejected. Every message names
/// the object, the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A field has an invalid value or the object is not allowed.
    #[error("{object}: {field}: {reason}")]
    Invalid {
        /// The object, e.g. `networkpolicy shop/deny`.
        object: String,
        /// The field path, e.g. `spec.ingress[0].ports[1]`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The manifest names an apiVersion/kind this crate does not know.
    #[error("{object}: unknown kind {kind:?} of apiVersion {api_version:?}")]
    UnknownKind {
        /// The object's name as far as known.
        object: String,
        /// The apiVersion given.
        api_version: String,
        /// The kind given.
        kind: String,
    },
}

impl PolicyError {
    /// An [`PolicyError::Invalid`] error.
    pub fn invalid(
        object: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        PolicyError::Invalid {
            object: object.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}
