//! The CNI specification versions this plugin speaks, and what each allows.

use std::fmt;

/// A supported CNI specification version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// 0.3.0: rich result type, chaining.
    V0_3_0,
    /// 0.3.1: typo fixes.
    V0_3_1,
    /// 0.4.0: CHECK, prevResult on DEL.
    V0_4_0,
    /// 1.0.0: no `version` in `ips`.
    V1_0_0,
    /// 1.1.0: STATUS, GC, interface `mtu`, route `scope`.
    V1_1_0,
}

impl Version {
    /// Every supported version, oldest first (the VERSION answer).
    pub const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];
    /// The newest supported version.
    pub const LATEST: Version = Version::V1_1_0;

    /// Parses a version string; `None` when it is not a supported version.
    pub fn parse(s: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Whether `ips[]` entries carry `"version": "4"|"6"` (before 1.0.0).
    pub fn ips_have_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// Whether the CHECK command exists (0.4.0 and later).
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// Whether the STATUS and GC commands exist (1.1.0 and later).
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Whether interfaces carry `mtu` and routes `scope` (1.1.0 and later).
    pub fn has_mtu_and_scope(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The supported versions as strings.
pub fn supported() -> Vec<&'static str> {
    Version::ALL.iter().map(|v| v.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_the_supported_versions() {
        for v in Version::ALL {
            assert_eq!(Version::parse(v.as_str()), Some(v));
        }
        for bad in ["0.1.0", "0.2.0", "1.2.0", "1.1", "", "v1.0.0"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn command_availability_follows_the_spec() {
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_status_and_gc());
        assert!(Version::V1_1_0.has_status_and_gc());
        assert!(Version::V0_4_0.ips_have_version());
        assert!(!Version::V1_0_0.ips_have_version());
    }
}
