//! The CNI commands: ADD, DEL, CHECK, STATUS, GC, VERSION.
//!
//! Each command is a thin client of `veild` (over `veil-api`) plus the
//! kernel work behind [`Links`]. Everything here is testable without a process:
//! [`run`] takes the environment, stdin and stdout as values.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

use crate::config::NetConf;
use crate::delegate::Delegate;
use crate::env::{CniEnv, Command};
use crate::error::{code, CniError};
use crate::links::{Links, PodLinkSpec};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::version::{self, Version};
use veil_api::{
    self, method, AddReply, AddRequest, CheckRequest, CommitRequest, DelReply, DelRequest, GcReply,
    GcRequest, IpamMode, StatusReply,
};

mod add;
mod del_check;
mod status_gc;

use add::add;
use del_check::{check, del};
use status_gc::{gc, status};

/// Time allowed for one call to the daemon that changes state (it persists
/// before answering; a node starting many pods at once queues them).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for a STATUS call.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// The host end's name for an attachment: `veil` + 11 hex digits of a stable
/// hash (FNV-1a 64) of container ID and interface name: 15 bytes, the kernel's
/// limit, and the same on every run so that DEL finds it without any state.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain(std::iter::once(0u8))
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veil{:011x}", h >> 20)
}

fn call<P: Serialize, R: DeserializeOwned>(
    socket: &Path,
    m: &str,
    params: &P,
    timeout: Duration,
) -> Result<R, CniError> {
    veil_api::call(socket, m, params, timeout).map_err(CniError::from_call)
}

/// Runs one plugin invocation: `vars` are the process's environment, `stdin`
/// the configuration; the result (if any) is written to `stdout` in one piece.
/// On error nothing has been written to `stdout`; the caller prints the error
/// object ([`CniError::to_json`]).
pub fn run(
    vars: &BTreeMap<String, String>,
    stdin: &[u8],
    stdout: &mut dyn Write,
    links: &mut dyn Links,
) -> Result<(), CniError> {
    let env = CniEnv::parse(vars)?;
    if env.command == Command::Version {
        return emit(stdout, &version_answer(stdin));
    }
    let conf = NetConf::parse(stdin)?;
    let span = tracing::info_span!(
        "cni",
        cmd = env.command.as_str(),
        container = %env.container_id,
        ifname = %env.ifname,
        network = %conf.name,
    );
    let _enter = span.enter();
    match env.command {
        Command::Add => add(&env, &conf, stdin, stdout, links),
        Command::Del => del(&env, &conf, stdin, links),
        Command::Check => check(&env, &conf, stdin, links),
        Command::Status => status(&env, &conf, stdin),
        Command::Gc => gc(&env, &conf, stdin, links),
        Command::Version => unreachable!("handled above"),
    }
}

fn emit(stdout: &mut dyn Write, v: &serde_json::Value) -> Result<(), CniError> {
    let mut bytes = serde_json::to_vec(v).map_err(|e| CniError::Internal {
        msg: format!("encoding the result: {e}"),
    })?;
    bytes.push(b'\n');
    stdout
        .write_all(&bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| CniError::Internal {
            msg: format!("writing the result to stdout: {e}"),
        })
}

/// The VERSION answer: the configuration's `cniVersion` (when it sent one)
/// and every supported version.
pub fn version_answer(stdin: &[u8]) -> serde_json::Value {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| Version::LATEST.as_str().to_string());
    json!({"cniVersion": asked, "supportedVersions": version::supported()})
}

fn delegate(env: &CniEnv, conf: &NetConf) -> Result<Option<Delegate>, CniError> {
    conf.ipam
        .as_deref()
        .map(|p| Delegate::find(p, &env.path, &env.vars))
        .transpose()
}

fn host_prefix(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_short_and_distinct() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veil"));
        assert!(a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(a, host_ifname("abd", "eth0"));
        // The separator keeps ("ab", "ceth0") and ("abc", "eth0") apart.
        assert_ne!(host_ifname("ab", "ceth0"), a);
    }

    #[test]
    fn host_ifnames_of_many_containers_do_not_collide() {
        let names: std::collections::BTreeSet<String> = (0..20000)
            .map(|i| host_ifname(&format!("{i:064x}"), "eth0"))
            .collect();
        assert_eq!(names.len(), 20000);
    }

    #[test]
    fn version_answer_echoes_the_asked_version() {
        let v = version_answer(br#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(version_answer(b"")["cniVersion"], "1.1.0");
    }
}
