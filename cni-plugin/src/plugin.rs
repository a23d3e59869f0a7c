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

/// Undoes a half-done ADD when dropped armed: deletes the veth pair, tells the
/// daemon to forget the endpoint, releases a delegated allocation.
struct AddUndo<'a> {
    links: &'a mut dyn Links,
    host_ifname: Option<String>,
    daemon: Option<(PathBuf, DelRequest)>,
    ipam: Option<(Delegate, Vec<u8>, Version)>,
}

impl AddUndo<'_> {
    fn disarm(mut self) {
        self.host_ifname = None;
        self.daemon = None;
        self.ipam = None;
    }
}

impl Drop for AddUndo<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.host_ifname.take() {
            if let Err(e) = self.links.delete_host(&h) {
                warn!(link = %h, error = %e, "rollback: cannot delete the host veth");
            }
        }
        if let Some((socket, req)) = self.daemon.take() {
            if let Err(e) =
                veil_api::call::<_, DelReply>(&socket, method::CNI_DEL, &req, CALL_TIMEOUT)
            {
                warn!(error = %e, "rollback: cannot release the endpoint in veild");
            }
        }
        if let Some((d, stdin, v)) = self.ipam.take() {
            if let Err(e) = d.call(Command::Del, &stdin, v, &[]) {
                warn!(error = %e, "rollback: the IPAM plugin's DEL failed");
            }
        }
    }
}

fn add(
    env: &CniEnv,
    conf: &NetConf,
    stdin: &[u8],
    stdout: &mut dyn Write,
    links: &mut dyn Links,
) -> Result<(), CniError> {
    let netns = env
        .netns
        .clone()
        .expect("CniEnv requires CNI_NETNS for ADD");
    // The spec: an existing interface of that name is an error. This also
    // checks that the namespace can be opened, before anything is allocated.
    if links.pod_iface(&netns, &env.ifname)?.is_some() {
        return Err(CniError::IfaceExists {
            ifname: env.ifname.clone(),
            netns,
        });
    }
    let host = host_ifname(&env.container_id, &env.ifname);
    let mut undo = AddUndo {
        links,
        host_ifname: None,
        daemon: None,
        ipam: None,
    };

    // Addresses: from the delegated IPAM plugin, or from the daemon.
    let mut ipam_dns = None;
    let ipam = match delegate(env, conf)? {
        Some(d) => {
            undo.ipam = Some((d.clone(), stdin.to_vec(), conf.version));
            let r = d.add(stdin, conf.version)?;
            if !r.dns.0.is_empty() {
                ipam_dns = Some(r.dns.clone());
            }
            IpamMode::Delegated {
                ips: r
                    .ips
                    .iter()
                    .map(|ip| host_prefix(ip.address.ip()))
                    .collect(),
            }
        }
        None => IpamMode::Daemon,
    };
    let mut requested_ips: Vec<IpAddr> = Vec::new();
    if ipam == IpamMode::Daemon {
        for ip in conf.runtime_ips.iter().chain(&env.args.ips) {
            if !requested_ips.contains(ip) {
                requested_ips.push(*ip);
            }
        }
    }
    let req = AddRequest {
        container_id: env.container_id.clone(),
        netns: netns.clone(),
        ifname: env.ifname.clone(),
        host_ifname: host.clone(),
        pod_namespace: env.args.pod_namespace.clone(),
        pod_name: env.args.pod_name.clone(),
        network: conf.name.clone(),
        ipam,
        requested_ips,
    };
    // Armed before the call: a call that times out may still have been served.
    undo.daemon = Some((
        conf.socket.clone(),
        DelRequest {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
        },
    ));
    let reply: AddReply = call(&conf.socket, method::CNI_ADD, &req, CALL_TIMEOUT)?;
    if reply.ips.is_empty() {
        return Err(CniError::Internal {
            msg: "veild answered cni.add without addresses".into(),
        });
    }
    let addrs: Vec<IpNetwork> = reply.ips.iter().map(|n| host_prefix(n.ip())).collect();
    let gateways: Vec<IpAddr> = addrs
        .iter()
        .filter_map(|a| {
            reply
                .gateways
                .iter()
                .find(|g| g.is_ipv4() == a.is_ipv4())
                .copied()
        })
        .fold(Vec::new(), |mut acc, g| {
            if !acc.contains(&g) {
                acc.push(g);
            }
            acc
        });
    if gateways.len()
        != addrs
            .iter()
            .map(|a| a.is_ipv4())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    {
        return Err(CniError::Internal {
            msg: format!(
                "veild answered cni.add without a gateway for every address family (ips {:?}, gateways {:?})",
                reply.ips, reply.gateways
            ),
        });
    }
    let mtu = conf.mtu.unwrap_or(reply.mtu);
    let spec = PodLinkSpec {
        host_ifname: host.clone(),
        netns: netns.clone(),
        ifname: env.ifname.clone(),
        mtu,
        addrs: addrs.clone(),
        gateways: gateways.clone(),
    };
    undo.host_ifname = Some(host.clone());
    let wired = undo.links.wire(&spec)?;
    call::<_, serde_json::Value>(
        &conf.socket,
        method::CNI_COMMIT,
        &CommitRequest {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
        },
        CALL_TIMEOUT,
    )?;

    let mut ours = CniResult {
        interfaces: vec![
            Interface {
                name: host.clone(),
                mac: Some(wired.host_mac),
                mtu: Some(mtu),
                sandbox: None,
                extra: Default::default(),
            },
            Interface {
                name: env.ifname.clone(),
                mac: Some(wired.pod_mac),
                mtu: Some(mtu),
                sandbox: Some(netns.clone()),
                extra: Default::default(),
            },
        ],
        ips: addrs
            .iter()
            .map(|a| IpConfig {
                address: *a,
                gateway: gateways
                    .iter()
                    .find(|g| g.is_ipv4() == a.is_ipv4())
                    .copied(),
                interface: Some(1),
            })
            .collect(),
        routes: Vec::new(),
        dns: ipam_dns.unwrap_or_else(|| conf.dns.clone()),
    };
    for gw in &gateways {
        ours.routes.push(Route {
            dst: host_prefix(*gw),
            gw: None,
            scope: Some(253),
            extra: Default::default(),
        });
        let any = if gw.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u8; 16])
        };
        ours.routes.push(Route {
            dst: IpNetwork::new(any, 0).expect("default route"),
            gw: Some(*gw),
            scope: None,
            extra: Default::default(),
        });
    }
    let result = match &conf.prev_result {
        Some(prev) => {
            let mut merged = prev.clone();
            merged.merge(ours);
            merged
        }
        None => ours,
    };
    emit(stdout, &result.to_json(conf.version))?;
    undo.disarm();
    let ips: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    info!(ips = %ips.join(","), host = %host, mtu, "pod added");
    Ok(())
}

fn del(env: &CniEnv, conf: &NetConf, stdin: &[u8], links: &mut dyn Links) -> Result<(), CniError> {
    let host = host_ifname(&env.container_id, &env.ifname);
    let mut link_err: Option<CniError> = None;
    // The links first: no traffic for this pod once its address is released.
    // Deleting the host end deletes the container end with it.
    let host_deleted = match links.delete_host(&host) {
        Ok(true) => {
            info!(link = %host, "deleted host veth");
            true
        }
        Ok(false) => false,
        Err(e) => {
            link_err = Some(e.into());
            false
        }
    };
    if let Some(netns) = env.netns.as_ref().filter(|_| !host_deleted) {
        // Only a veth of that name: never someone else's interface.
        match links.pod_iface(netns, &env.ifname) {
            Ok(Some(st)) if st.veth => {
                if let Err(e) = links.delete_pod(netns, &env.ifname) {
                    link_err.get_or_insert(e.into());
                }
            }
            Ok(_) => {}
            // A namespace that is gone took its interfaces with it.
            Err(e) if e.is_netns_open() => {}
            Err(e) => {
                link_err.get_or_insert(e.into());
            }
        }
    }
    let req = DelRequest {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    let daemon: Result<DelReply, CniError> =
        call(&conf.socket, method::CNI_DEL, &req, CALL_TIMEOUT);
    if let Ok(reply) = &daemon {
        if let Some(recorded) = reply.host_ifname.as_deref().filter(|h| *h != host) {
            if let Err(e) = links.delete_host(recorded) {
                link_err.get_or_insert(e.into());
            }
        }
        info!(existed = reply.existed, "endpoint released");
    }
    let ipam = match delegate(env, conf) {
        Ok(Some(d)) => d.call(Command::Del, stdin, conf.version, &[]).map(|_| ()),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    // Which error to report: the daemon's first (kubelet retries DEL on error,
    // and only the daemon can release the allocation), then the IPAM plugin's,
    // then the links'.
    daemon?;
    ipam?;
    if let Some(e) = link_err {
        return Err(e);
    }
    Ok(())
}

fn check_fail(code: u32, msg: String) -> CniError {
    CniError::CheckFailed { code, msg }
}

fn check(
    env: &CniEnv,
    conf: &NetConf,
    stdin: &[u8],
    links: &mut dyn Links,
) -> Result<(), CniError> {
    if !conf.version.has_check() {
        return Err(CniError::IncompatibleVersion {
            msg: format!(
                "CHECK is not part of CNI {} (it came with 0.4.0)",
                conf.version
            ),
        });
    }
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("CHECK needs prevResult (the result of the ADD)"))?;
    let netns = env
        .netns
        .clone()
        .expect("CniEnv requires CNI_NETNS for CHECK");
    let rec: AddReply = call(
        &conf.socket,
        method::CNI_CHECK,
        &CheckRequest {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
        },
        CALL_TIMEOUT,
    )?;
    if let Some(d) = delegate(env, conf)? {
        d.call(Command::Check, stdin, conf.version, &[])?;
    }
    let want_mtu = conf.mtu.unwrap_or(rec.mtu);
    let rec_addrs: Vec<IpNetwork> = rec.ips.iter().map(|n| host_prefix(n.ip())).collect();

    // What the runtime was told.
    let Some(pod_idx) = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.as_deref() == Some(netns.as_str()))
    else {
        return Err(check_fail(
            code::CHECK_INTERFACE,
            format!("prevResult has no interface {} in {netns}", env.ifname),
        ));
    };
    let prev_addrs: Vec<IpNetwork> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(pod_idx))
        .map(|ip| ip.address)
        .collect();
    for a in &prev_addrs {
        if !rec_addrs.contains(a) {
            return Err(check_fail(
                code::CHECK_RECORD,
                format!("address {a} of prevResult is not veild's record for this pod (veild has {rec_addrs:?})"),
            ));
        }
    }

    // The container end.
    let Some(pod) = links.pod_iface(&netns, &env.ifname)? else {
        return Err(check_fail(
            code::CHECK_INTERFACE,
            format!("interface {} is missing in {netns}", env.ifname),
        ));
    };
    if !pod.up {
        return Err(check_fail(
            code::CHECK_INTERFACE,
            format!("interface {} in {netns} is down", env.ifname),
        ));
    }
    if pod.mtu != want_mtu {
        return Err(check_fail(
            code::CHECK_INTERFACE,
            format!(
                "interface {} in {netns} has MTU {} instead of {want_mtu}",
                env.ifname, pod.mtu
            ),
        ));
    }
    if let Some(mac) = &prev.interfaces[pod_idx].mac {
        if !mac.eq_ignore_ascii_case(&pod.mac) {
            return Err(check_fail(
                code::CHECK_INTERFACE,
                format!(
                    "interface {} in {netns} has MAC {} instead of {mac}",
                    env.ifname, pod.mac
                ),
            ));
        }
    }
    for a in rec_addrs.iter().chain(&prev_addrs) {
        if !pod.addrs.contains(a) {
            return Err(check_fail(
                code::CHECK_ADDRESS,
                format!("address {a} is missing on {} in {netns}", env.ifname),
            ));
        }
    }
    for gw in rec_addrs
        .iter()
        .filter_map(|a| rec.gateways.iter().find(|g| g.is_ipv4() == a.is_ipv4()))
    {
        let link = host_prefix(*gw);
        if !pod.routes.iter().any(|r| r.dst == link && r.gw.is_none()) {
            return Err(check_fail(
                code::CHECK_ROUTE,
                format!("route {link} dev {} is missing in {netns}", env.ifname),
            ));
        }
        if !pod
            .routes
            .iter()
            .any(|r| r.dst.prefix() == 0 && r.gw == Some(*gw))
        {
            return Err(check_fail(
                code::CHECK_ROUTE,
                format!("default route via {gw} is missing in {netns}"),
            ));
        }
    }

    // The host end.
    let Some(host) = links.host_iface(&rec.host_ifname)? else {
        return Err(check_fail(
            code::CHECK_INTERFACE,
            format!("host interface {} is missing", rec.host_ifname),
        ));
    };
    if !host.up {
        return Err(check_fail(
            code::CHECK_INTERFACE,
            format!("host interface {} is down", rec.host_ifname),
        ));
    }
    for a in &rec_addrs {
        if !host.routes.iter().any(|r| r.dst == *a && r.gw.is_none()) {
            return Err(check_fail(
                code::CHECK_ROUTE,
                format!("route {a} dev {} is missing on the node", rec.host_ifname),
            ));
        }
    }
    Ok(())
}

fn status(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    if !conf.version.has_status_and_gc() {
        return Err(CniError::IncompatibleVersion {
            msg: format!(
                "STATUS is not part of CNI {} (it came with 1.1.0)",
                conf.version
            ),
        });
    }
    let reply: Result<StatusReply, CniError> = call(
        &conf.socket,
        method::CNI_STATUS,
        &serde_json::Value::Null,
        STATUS_TIMEOUT,
    );
    match reply {
        Ok(StatusReply { ready: true, .. }) => {}
        Ok(StatusReply { reason, .. }) => {
            return Err(CniError::NotReady {
                reason: if reason.is_empty() {
                    "veild says it is not ready".into()
                } else {
                    reason
                },
            })
        }
        Err(e) => {
            return Err(CniError::NotReady {
                reason: e.to_string(),
            })
        }
    }
    if let Some(d) = delegate(env, conf)? {
        if d.speaks(Version::V1_1_0)? {
            d.call(Command::Status, stdin, conf.version, &[])?;
        }
    }
    Ok(())
}

fn gc(env: &CniEnv, conf: &NetConf, stdin: &[u8], links: &mut dyn Links) -> Result<(), CniError> {
    if !conf.version.has_status_and_gc() {
        return Err(CniError::IncompatibleVersion {
            msg: format!(
                "GC is not part of CNI {} (it came with 1.1.0)",
                conf.version
            ),
        });
    }
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::config("GC needs cni.dev/valid-attachments (refusing to collect everything)")
    })?;
    let reply: GcReply = call(
        &conf.socket,
        method::CNI_GC,
        &GcRequest {
            valid,
            network: conf.name.clone(),
        },
        CALL_TIMEOUT,
    )?;
    let mut failures: Vec<String> = Vec::new();
    for h in &reply.removed_host_ifnames {
        match links.delete_host(h) {
            Ok(_) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    match delegate(env, conf) {
        Ok(Some(d)) => match d.speaks(Version::V1_1_0) {
            Ok(true) => {
                if let Err(e) = d.call(Command::Gc, stdin, conf.version, &[]) {
                    failures.push(e.to_string());
                }
            }
            Ok(false) => {
                // An IPAM plugin without GC: release what the daemon collected.
                for a in &reply.removed {
                    if let Err(e) = d.call(
                        Command::Del,
                        stdin,
                        conf.version,
                        &[
                            ("CNI_CONTAINERID", &a.container_id),
                            ("CNI_IFNAME", &a.ifname),
                        ],
                    ) {
                        failures.push(format!("{}/{}: {e}", a.container_id, a.ifname));
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        },
        Ok(None) => {}
        Err(e) => failures.push(e.to_string()),
    }
    info!(
        removed = reply.removed_host_ifnames.len(),
        failures = failures.len(),
        "garbage collected"
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::GcIncomplete {
            msg: failures.join("; "),
        })
    }
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
