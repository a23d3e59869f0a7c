//! The node's base packet filter: the nftables table `inet veil` in the node's
//! network namespace.
//!
//! It makes the node fail closed: a packet whose source or destination is in the
//! cluster pod CIDR never crosses the underlay interface in the clear (only the
//! WireGuard device `veil-wg` may carry it), whether `veild` runs or not, because
//! the table lives in the kernel. It also masquerades pod traffic to destinations
//! outside the cluster. The ruleset is rendered by a pure function
//! ([`render_base`]) and applied atomically by `nft -f -` (one transaction that
//! replaces the whole table), behind the [`PacketFilter`] trait.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnetwork::IpNetwork;

/// Name of Veil's nftables table (family `inet`).
pub const TABLE: &str = "veil";

/// Inputs of the base ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseFilter {
    /// The underlay interface.
    pub underlay_interface: String,
    /// The cluster pod CIDR.
    pub cluster_cidr: IpNetwork,
    /// This node's pod CIDR.
    pub pod_cidr: IpNetwork,
}

fn family_kw(n: &IpNetwork) -> &'static str {
    if n.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// Renders the base table as an nftables script that replaces the table in one
/// transaction.
pub fn render_base(f: &BaseFilter) -> String {
    let ip = family_kw(&f.cluster_cidr);
    let under = &f.underlay_interface;
    let cluster = f.cluster_cidr;
    let pods = f.pod_cidr;
    format!(
        "table inet {TABLE}\n\
delete table inet {TABLE}\n\
table inet {TABLE} {{\n\
\tcounter fail_closed {{ comment \"pod packets refused on the underlay\" }}\n\
\n\
\tchain forward {{\n\
\t\ttype filter hook forward priority filter; policy accept;\n\
\t\toifname \"{under}\" {ip} daddr {cluster} counter name fail_closed drop comment \"pod traffic between nodes only through veil-wg\"\n\
\t\tiifname \"{under}\" ct direction reply ct status snat accept comment \"replies to pods' masqueraded connections\"\n\
\t\tiifname \"{under}\" {ip} daddr {cluster} counter name fail_closed drop comment \"no clear pod traffic from the underlay\"\n\
\t}}\n\
\n\
\tchain output {{\n\
\t\ttype filter hook output priority filter; policy accept;\n\
\t\toifname \"{under}\" {ip} daddr {cluster} counter name fail_closed drop comment \"node to remote pods only through veil-wg\"\n\
\t}}\n\
\n\
\tchain input {{\n\
\t\ttype filter hook input priority filter; policy accept;\n\
\t\tiifname \"{under}\" {ip} saddr {cluster} counter name fail_closed drop comment \"no clear pod traffic from the underlay\"\n\
\t}}\n\
\n\
\tchain postrouting {{\n\
\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
\t\toifname \"{under}\" {ip} saddr {pods} {ip} daddr != {cluster} masquerade comment \"pods to the outside\"\n\
\t}}\n\
}}\n"
    )
}

/// Errors applying a ruleset.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// `nft` could not be run.
    #[error("cannot run nft: {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the ruleset (nothing was changed: it is one transaction).
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
}

/// Something that applies nftables scripts atomically in this network namespace.
pub trait PacketFilter: Send + Sync {
    /// Applies `script` as one transaction.
    fn apply(&self, script: &str) -> Result<(), FilterError>;
}

/// Applies scripts with the `nft` binary.
#[derive(Debug, Default, Clone)]
pub struct Nft;

impl PacketFilter for Nft {
    fn apply(&self, script: &str) -> Result<(), FilterError> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(FilterError::Spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(FilterError::Spawn)?;
        }
        let out = child.wait_with_output().map_err(FilterError::Spawn)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(FilterError::Refused(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_ruleset_matches_golden_file() {
        let got = render_base(&BaseFilter {
            underlay_interface: "eth0".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
        });
        let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/base-ruleset.nft");
        if std::env::var_os("VEIL_UPDATE_GOLDEN").is_some() {
            std::fs::write(golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(golden).expect("golden file (VEIL_UPDATE_GOLDEN=1)");
        assert_eq!(
            got, want,
            "refresh with VEIL_UPDATE_GOLDEN=1 and review the diff"
        );
    }

    #[test]
    fn ipv6_cluster_uses_ip6_matches() {
        let got = render_base(&BaseFilter {
            underlay_interface: "eth0".into(),
            cluster_cidr: "fd00:10:244::/56".parse().unwrap(),
            pod_cidr: "fd00:10:244:1::/64".parse().unwrap(),
        });
        assert!(got.contains("ip6 daddr fd00:10:244::/56"));
        assert!(!got.contains(" ip daddr"));
    }
}
