//! Wiring a lab pod the way a container runtime does, through
//! [`crate::cni`] (the project's one CNI runtime): the lab's network list
//! ([`conflist`]), run with ADD from inside the runtime's namespace (the
//! node's), and the little the lab reads from a result.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub use crate::cni::CniError;
use crate::cni::{Attachment, Runtime};

/// CNI version the lab's network list uses.
pub const CNI_VERSION: &str = "1.1.0";
/// Network name of the lab's network list.
pub const NETWORK_NAME: &str = "veil";

/// What to pass to the plugins for one pod.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// The runtime's namespace (the node's), where the plugins run.
    pub runtime_netns: &'a str,
    /// Directories searched for plugin binaries (CNI_PATH).
    pub cni_path: &'a [PathBuf],
    /// CNI_CONTAINERID.
    pub container_id: &'a str,
    /// CNI_NETNS (a path).
    pub netns_path: &'a Path,
    /// CNI_IFNAME.
    pub ifname: &'a str,
    /// CNI_ARGS pairs.
    pub args: &'a [(String, String)],
    /// Runtime configuration (capability arguments), e.g. `{"ips": [...]}`.
    pub runtime_config: Value,
}

/// The lab's network list for a node whose daemon listens on `socket`.
pub fn conflist(socket: &Path) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [{
            "type": "veil",
            "socket": socket,
            "capabilities": {"ips": true}
        }]
    })
}

/// Runs ADD through every plugin of `list`, returning the final result.
pub fn add(list: &Value, inv: &Invocation<'_>) -> Result<Value, CniError> {
    let rt = Runtime {
        netns: Some(inv.runtime_netns),
        cni_path: inv.cni_path,
    };
    let att = Attachment {
        container_id: inv.container_id,
        netns: inv.netns_path,
        ifname: inv.ifname,
        args: inv.args,
    };
    crate::cni::add_list(&rt, list, &att, &inv.runtime_config)
}

/// The first IPv4 address of a CNI result (`ips[].address`, `a.b.c.d/len`).
pub fn result_ipv4(result: &Value) -> Option<std::net::Ipv4Addr> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .next()
}

/// A container ID as runtimes make them: 64 hex digits.
pub fn new_container_id() -> String {
    let a: u128 = rand::random();
    let b: u128 = rand::random();
    format!("{a:032x}{b:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_list_has_the_veil_plugin_with_its_socket_and_ips_capability() {
        let list = conflist(Path::new("/run/x.sock"));
        assert_eq!(list["name"], NETWORK_NAME);
        assert_eq!(list["plugins"][0]["type"], "veil");
        assert_eq!(list["plugins"][0]["socket"], "/run/x.sock");
        assert_eq!(list["plugins"][0]["capabilities"]["ips"], true);
    }

    #[test]
    fn result_ipv4_reads_the_first_address() {
        let r = json!({"ips": [{"address": "10.244.0.7/32", "gateway": "169.254.1.1"}]});
        assert_eq!(
            result_ipv4(&r),
            Some(std::net::Ipv4Addr::new(10, 244, 0, 7))
        );
        assert_eq!(result_ipv4(&json!({})), None);
    }

    #[test]
    fn container_ids_are_64_hex_digits_and_differ() {
        let a = new_container_id();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_container_id());
    }
}
