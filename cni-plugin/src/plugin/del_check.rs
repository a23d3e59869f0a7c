//! CNI DEL and CHECK: tearing an attachment down (idempotently) and
//! comparing what the kernel and `veild` hold with the previous result.
//! It does not create anything.

use super::*;

pub(super) fn del(
    env: &CniEnv,
    conf: &NetConf,
    stdin: &[u8],
    links: &mut dyn Links,
) -> Result<(), CniError> {
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

pub(super) fn check(
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
