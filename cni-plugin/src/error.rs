//! The plugin's errors and their CNI error codes.
//!
//! Every failure of the plugin is a [`CniError`]; [`CniError::code`] gives the
//! code of the CNI error object written on stdout (SPEC.md, "Error"): the spec's
//! well-known codes where one fits, 100 and above for Veil's own.

use serde_json::json;

use crate::version::Version;
use veil_api::{ApiError, CallError};

/// The codes, one table for the plugin and `veild` (the README's "Error
/// codes" section is checked against it).
pub use veil_api::code;

/// A failure of one plugin invocation.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration asks for a CNI version this plugin does not speak, or
    /// a command that version does not have.
    #[error("{msg}")]
    IncompatibleVersion {
        /// What is incompatible.
        msg: String,
    },
    /// A required `CNI_*` environment variable is missing or invalid.
    #[error("{msg}")]
    InvalidEnv {
        /// Names the variable and the reason.
        msg: String,
    },
    /// stdin could not be read.
    #[error("reading the network configuration from stdin: {0}")]
    Io(#[source] std::io::Error),
    /// The configuration is not valid JSON (or not a JSON object).
    #[error("network configuration is not valid JSON: {msg}")]
    Decode {
        /// The decoder's message.
        msg: String,
    },
    /// The configuration is JSON but not a valid configuration.
    #[error("invalid network configuration: {msg}")]
    InvalidConfig {
        /// Names the field and the reason.
        msg: String,
    },
    /// The daemon cannot be reached (or broke off the call): try again later.
    #[error(transparent)]
    Unreachable(CallError),
    /// The daemon answered with an error; its code is passed through.
    #[error("veild: {}", .0.msg)]
    Daemon(ApiError),
    /// The daemon's answer could not be decoded.
    #[error(transparent)]
    DaemonProtocol(CallError),
    /// STATUS: the daemon says it is not ready (or cannot be reached).
    #[error("veil is not ready: {reason}")]
    NotReady {
        /// Why.
        reason: String,
    },
    /// `CNI_IFNAME` already exists in the container.
    #[error("interface {ifname} already exists in {netns}")]
    IfaceExists {
        /// CNI_IFNAME.
        ifname: String,
        /// CNI_NETNS.
        netns: String,
    },
    /// A kernel operation failed.
    #[error(transparent)]
    Kernel(#[from] crate::links::LinkError),
    /// The delegated plugin failed with a CNI error of its own (code passed through).
    #[error("IPAM plugin {plugin}: {msg}")]
    DelegateFailed {
        /// Plugin type, e.g. `host-local`.
        plugin: String,
        /// Its error code.
        code: u32,
        /// Its message.
        msg: String,
        /// Its details.
        details: String,
    },
    /// The delegated plugin could not be found, run, or understood.
    #[error("IPAM plugin {plugin}: {msg}")]
    Delegate {
        /// Plugin type.
        plugin: String,
        /// What went wrong.
        msg: String,
    },
    /// CHECK found a difference between the attachment and the system.
    #[error("{msg}")]
    CheckFailed {
        /// One of the `code::CHECK_*` codes.
        code: u32,
        /// What is wrong.
        msg: String,
    },
    /// GC could not remove everything (it removed what it could).
    #[error("garbage collection incomplete: {msg}")]
    GcIncomplete {
        /// The failures, one per line.
        msg: String,
    },
    /// A bug: an unexpected state (also a caught panic).
    #[error("internal error: {msg}")]
    Internal {
        /// What happened.
        msg: String,
    },
}

impl CniError {
    /// The CNI error code of this error.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            CniError::InvalidEnv { .. } => code::INVALID_ENV,
            CniError::Io(_) => code::IO_FAILURE,
            CniError::Decode { .. } => code::DECODE,
            CniError::InvalidConfig { .. } => code::INVALID_CONFIG,
            CniError::Unreachable(_) => code::TRY_AGAIN_LATER,
            CniError::Daemon(e) if e.code == 0 => code::INTERNAL,
            CniError::Daemon(e) => e.code,
            CniError::DaemonProtocol(_) => code::DAEMON_PROTOCOL,
            CniError::NotReady { .. } => code::NOT_AVAILABLE,
            CniError::IfaceExists { .. } => code::IFACE_EXISTS,
            CniError::Kernel(e) if e.is_netns_open() => code::INVALID_ENV,
            CniError::Kernel(_) => code::KERNEL,
            CniError::DelegateFailed { code, .. } if *code != 0 => *code,
            CniError::DelegateFailed { .. } | CniError::Delegate { .. } => code::DELEGATE,
            CniError::CheckFailed { code, .. } => *code,
            CniError::GcIncomplete { .. } => code::GC_INCOMPLETE,
            CniError::Internal { .. } => code::INTERNAL,
        }
    }

    /// Longer details for the error object (the cause chain, or the
    /// daemon's/delegate's own details).
    pub fn details(&self) -> String {
        match self {
            CniError::Daemon(e) => e.details.clone(),
            CniError::DelegateFailed { details, .. } => details.clone(),
            _ => {
                // The cause chain, without what the message already says.
                let msg = self.to_string();
                let mut out = String::new();
                let mut cur = std::error::Error::source(self);
                while let Some(e) = cur {
                    let text = e.to_string();
                    if !msg.contains(&text) {
                        if !out.is_empty() {
                            out.push_str(": ");
                        }
                        out.push_str(&text);
                    }
                    cur = e.source();
                }
                out
            }
        }
    }

    /// The CNI error object for this error, in `version`'s format.
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        json!({
            "cniVersion": version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": self.details(),
        })
    }

    /// Maps a failed daemon call: unreachable or broken off is "try again later",
    /// an error answer passes the daemon's code through.
    pub fn from_call(e: CallError) -> Self {
        match e {
            CallError::Daemon(api) => CniError::Daemon(api),
            e @ (CallError::Unreachable { .. } | CallError::Io { .. }) => CniError::Unreachable(e),
            e @ CallError::Decode { .. } => CniError::DaemonProtocol(e),
        }
    }

    /// Shorthand for an invalid configuration.
    pub fn config(msg: impl Into<String>) -> Self {
        CniError::InvalidConfig { msg: msg.into() }
    }

    /// Shorthand for an invalid environment variable.
    pub fn env(msg: impl Into<String>) -> Self {
        CniError::InvalidEnv { msg: msg.into() }
    }
}

/// The version to put in an error object for a configuration that may not parse:
/// the configuration's own `cniVersion` when it has a supported one, else the
/// newest version this plugin speaks.
pub fn error_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .filter(|v| Version::parse(v).is_some())
        .unwrap_or_else(|| Version::LATEST.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_codes_pass_through_and_zero_becomes_internal() {
        let e = CniError::Daemon(ApiError {
            code: 7,
            msg: "bad".into(),
            details: "d".into(),
        });
        assert_eq!(e.code(), 7);
        assert_eq!(e.details(), "d");
        let e = CniError::Daemon(ApiError {
            code: 0,
            msg: "bad".into(),
            details: String::new(),
        });
        assert_eq!(e.code(), code::INTERNAL);
    }

    #[test]
    fn unreachable_daemon_is_try_again_later() {
        let e = CniError::from_call(CallError::Unreachable {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(e.code(), 11);
        let j = e.to_json("1.0.0");
        assert_eq!(j["cniVersion"], "1.0.0");
        assert_eq!(j["code"], 11);
        assert!(j["msg"].as_str().unwrap().contains("/x"), "{j}");
    }

    #[test]
    fn error_version_falls_back_to_latest_for_unknown_or_garbage() {
        assert_eq!(error_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(error_version(br#"{"cniVersion":"9.9.9"}"#), "1.1.0");
        assert_eq!(error_version(b"{nope"), "1.1.0");
    }
}
