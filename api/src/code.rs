//! Every error code Veil answers, in one table: the CNI spec's well-known
//! codes where one fits, 100 and above for Veil's own. The plugin's errors and
//! the daemon's socket answers both use these constants, so that a code means
//! one thing wherever it comes from; the README's "Error codes" table is
//! checked against [`TABLE`] by a test.
//!
//! It does not decide which error gets which code: the plugin's `CniError`
//! and the daemon's methods do, with these names.

/// Unsupported `cniVersion`, or a command that version does not have (spec).
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// Missing or invalid `CNI_*` variable, or `CNI_NETNS` cannot be opened (spec).
pub const INVALID_ENV: u32 = 4;
/// stdin cannot be read (spec).
pub const IO_FAILURE: u32 = 5;
/// The configuration, or a request to veild, is not valid JSON (spec).
pub const DECODE: u32 = 6;
/// Invalid configuration or request field (spec).
pub const INVALID_CONFIG: u32 = 7;
/// veild is unreachable, broke off the call, or could not finish in time (spec).
pub const TRY_AGAIN_LATER: u32 = 11;
/// STATUS: not ready (spec).
pub const NOT_AVAILABLE: u32 = 50;
/// An internal error (a bug), in the plugin or in veild.
pub const INTERNAL: u32 = 100;
/// A kernel operation of the plugin failed (netlink, sysctl).
pub const KERNEL: u32 = 101;
/// `CNI_IFNAME` already exists in the pod.
pub const IFACE_EXISTS: u32 = 102;
/// The delegated IPAM plugin cannot be found or run, or answered nonsense.
pub const DELEGATE: u32 = 103;
/// veild's answer cannot be decoded.
pub const DAEMON_PROTOCOL: u32 = 104;
/// veild does not know the method (plugin and daemon versions differ).
pub const UNKNOWN_METHOD: u32 = 105;
/// veild could not persist its state (disk full, read-only).
pub const STATE: u32 = 106;
/// IPAM: the node's pod CIDR has no free address.
pub const IPAM_EXHAUSTED: u32 = 107;
/// IPAM: a requested fixed address is already in use.
pub const IPAM_IN_USE: u32 = 108;
/// IPAM: a requested fixed address is outside the node's pod CIDR or reserved.
pub const IPAM_NOT_ALLOCATABLE: u32 = 109;
/// CHECK: an interface is missing or differs.
pub const CHECK_INTERFACE: u32 = 110;
/// CHECK: an address is missing.
pub const CHECK_ADDRESS: u32 = 111;
/// CHECK: a route is missing.
pub const CHECK_ROUTE: u32 = 112;
/// CHECK: veild has no record of the attachment, or its record differs.
pub const CHECK_RECORD: u32 = 113;
/// GC: some stale resources could not be removed (details list them).
pub const GC_INCOMPLETE: u32 = 120;

/// Every code and its meaning, as the README's table says it.
pub const TABLE: &[(u32, &str)] = &[
    (INCOMPATIBLE_VERSION, "unsupported `cniVersion`, or a command that version does not have"),
    (INVALID_ENV, "missing or invalid `CNI_*` variable (also: `CNI_NETNS` cannot be opened)"),
    (IO_FAILURE, "stdin cannot be read"),
    (DECODE, "the configuration, or a request to `veild`, is not JSON (or not an object)"),
    (INVALID_CONFIG, "invalid configuration or request (a field of the wrong type or value, missing `name`)"),
    (TRY_AGAIN_LATER, "`veild` unreachable, or it broke off the call (restart, crash) or could not finish in time: try again later"),
    (NOT_AVAILABLE, "STATUS: not ready"),
    (INTERNAL, "internal error (a bug), in the plugin or in `veild`"),
    (KERNEL, "a kernel operation failed (netlink, sysctl)"),
    (IFACE_EXISTS, "`CNI_IFNAME` already exists in the pod"),
    (DELEGATE, "the IPAM plugin cannot be found or run, or answered nonsense"),
    (DAEMON_PROTOCOL, "`veild`'s answer cannot be decoded"),
    (UNKNOWN_METHOD, "`veild` does not know the method (plugin and daemon versions differ)"),
    (STATE, "`veild` could not persist its state (disk full, read-only)"),
    (IPAM_EXHAUSTED, "IPAM: the node's pod CIDR has no free address"),
    (IPAM_IN_USE, "IPAM: a requested fixed address is already in use"),
    (IPAM_NOT_ALLOCATABLE, "IPAM: a requested fixed address is outside the node's pod CIDR or reserved"),
    (CHECK_INTERFACE, "CHECK: an interface is missing or differs"),
    (CHECK_ADDRESS, "CHECK: an address is missing"),
    (CHECK_ROUTE, "CHECK: a route is missing"),
    (CHECK_RECORD, "CHECK: `veild` has no record of the attachment, or its record differs"),
    (GC_INCOMPLETE, "GC: some stale resources could not be removed (details list them)"),
];

/// The meaning of `code`, when it is one of Veil's.
pub fn meaning(code: u32) -> Option<&'static str> {
    TABLE.iter().find(|(c, _)| *c == code).map(|(_, m)| *m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows `| code | meaning |` of the README's "Error codes" section.
    fn readme_rows() -> Vec<(String, String)> {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## ")
            .find(|s| s.starts_with("Error codes"))
            .expect("README has a section \"## Error codes\"");
        section
            .lines()
            .filter(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                (
                    cells[0].to_string(),
                    cells.get(1).unwrap_or(&"").to_string(),
                )
            })
            .filter(|(c, _)| c.bytes().all(|b| b.is_ascii_digit()) && !c.is_empty())
            .collect()
    }

    #[test]
    fn the_readme_table_is_the_code_table() {
        let readme: Vec<(u32, String)> = readme_rows()
            .into_iter()
            .map(|(c, m)| (c.parse().unwrap(), m))
            .collect();
        let code: Vec<(u32, String)> = TABLE.iter().map(|(c, m)| (*c, m.to_string())).collect();
        assert_eq!(
            readme, code,
            "README.md's Error codes table and veil_api::code::TABLE differ"
        );
    }

    #[test]
    fn codes_are_unique_and_sorted() {
        for w in TABLE.windows(2) {
            assert!(w[0].0 < w[1].0, "{} then {}", w[0].0, w[1].0);
        }
        assert_eq!(meaning(IPAM_IN_USE), Some(TABLE[15].1));
        assert_eq!(meaning(99), None);
    }
}
