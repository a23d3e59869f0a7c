//! CNI STATUS and GC: asking `veild` whether it is ready, and removing
//! attachments the runtime no longer knows. It does not handle ADD/DEL/CHECK.

use super::*;

pub(super) fn status(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
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

pub(super) fn gc(
    env: &CniEnv,
    conf: &NetConf,
    stdin: &[u8],
    links: &mut dyn Links,
) -> Result<(), CniError> {
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
