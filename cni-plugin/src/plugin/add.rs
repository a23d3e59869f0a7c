//! CNI ADD: asks `veild` for addresses (or a delegated IPAM plugin), wires
//! the veth pair through [`Links`], commits the endpoint and prints the result;
//! a failure part-way undoes what was done. It does not handle DEL or CHECK.

use super::*;

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

pub(super) fn add(
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
