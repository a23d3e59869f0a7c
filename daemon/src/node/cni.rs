//! The CNI methods of the socket API (`cni.add`, `cni.commit`, `cni.del`,
//! `cni.check`, `cni.gc`, `cni.status`): addresses from the endpoint table,
//! endpoint records published to the datastore, CNI metrics.
//!
//! It does not wire pods (the plugin does) nor program the kernel.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use veil_api::{
    AddReply, AddRequest, ApiError, CheckRequest, CommitRequest, DelReply, DelRequest, GcReply,
    GcRequest, IpamMode, StatusReply,
};

use crate::api::{api_error, ApiRegistry};
use crate::config::Config;
use crate::datastore::{EndpointRecord, SharedDatastore, Snapshot};
use crate::endpoints::{Endpoint, EndpointError, EndpointState, EndpointTable};

/// Link-local gateway of every pod (answered by proxy ARP on the host veth).
pub const POD_GATEWAY_V4: &str = "169.254.1.1";

use veil_api::code::{INVALID_CONFIG as CODE_INVALID, TRY_AGAIN_LATER as CODE_TRY_AGAIN};

/// How long `cni.commit` waits for the endpoint's policy to be in the kernel.
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CniLabels {
    method: String,
    result: String,
}

/// Daemon metrics of this module.
#[derive(Clone, Default)]
pub(super) struct NodeMetrics {
    cni_requests: Family<CniLabels, Counter>,
    endpoints: Gauge,
    allocated: Gauge,
}

impl NodeMetrics {
    pub(super) fn register(&self, reg: &mut Registry) {
        reg.register(
            "veil_cni_requests",
            "CNI requests served, by method and result",
            self.cni_requests.clone(),
        );
        reg.register(
            "veil_endpoints",
            "Pod endpoints on this node",
            self.endpoints.clone(),
        );
        reg.register(
            "veil_ipam_allocated_addresses",
            "Addresses allocated from this node's pod CIDR",
            self.allocated.clone(),
        );
    }

    fn count(&self, method: &str, ok: bool) {
        self.cni_requests
            .get_or_create(&CniLabels {
                method: method.to_string(),
                result: if ok { "ok" } else { "error" }.to_string(),
            })
            .inc();
    }

    pub(super) fn refresh(&self, t: &EndpointTable) {
        self.endpoints.set(t.list().len() as i64);
        self.allocated.set(t.allocated().len() as i64);
    }
}

/// The documented code of an endpoint-table failure (README "Error codes").
fn state_err(e: EndpointError) -> ApiError {
    use crate::ipam::IpamError;
    use veil_api::code;
    let c = match &e {
        EndpointError::Ipam(IpamError::Exhausted(_)) => code::IPAM_EXHAUSTED,
        EndpointError::Ipam(IpamError::InUse(_)) => code::IPAM_IN_USE,
        EndpointError::Ipam(IpamError::NotAllocatable { .. }) => code::IPAM_NOT_ALLOCATABLE,
        _ => code::STATE,
    };
    api_error(c, e.to_string())
}

fn valid_id(what: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(api_error(
            CODE_INVALID,
            format!("{what} {s:?} is not a valid identifier"),
        ))
    }
}

/// The CNI methods' state.
pub(super) struct Cni {
    pub(super) config: Arc<Config>,
    pub(super) datastore: SharedDatastore,
    pub(super) endpoints: Arc<EndpointTable>,
    pub(super) snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    pub(super) ready: Arc<AtomicBool>,
    pub(super) metrics: NodeMetrics,
    pub(super) mtu: u32,
    /// Told after every change of the endpoint table (the desired state follows it).
    pub(super) endpoints_changed: Arc<tokio::sync::Notify>,
    /// What the kernel's policy table holds.
    pub(super) applied: tokio::sync::watch::Receiver<Arc<super::policy_sync::AppliedPolicy>>,
}

impl Cni {
    fn reply_for(&self, ep: &Endpoint) -> AddReply {
        let mut gateways = Vec::new();
        if ep.ips.iter().any(|i| i.is_ipv4()) {
            gateways.push(POD_GATEWAY_V4.parse().expect("literal"));
        }
        AddReply {
            ips: ep.ips.clone(),
            gateways,
            mtu: self.mtu,
            host_ifname: ep.host_ifname.clone(),
        }
    }

    fn add(&self, req: AddRequest) -> Result<AddReply, ApiError> {
        valid_id("container ID", &req.container_id)?;
        valid_id("interface name", &req.ifname)?;
        valid_id("host interface name", &req.host_ifname)?;
        if req.host_ifname.len() > 15 {
            return Err(api_error(
                CODE_INVALID,
                format!(
                    "host interface name {:?} is longer than 15 characters",
                    req.host_ifname
                ),
            ));
        }
        let labels = match (&req.pod_namespace, &req.pod_name) {
            (Some(ns), Some(name)) => self
                .snapshots
                .borrow()
                .pod(ns, name)
                .map(|p| p.labels.clone())
                .unwrap_or_default(),
            _ => BTreeMap::new(),
        };
        let ep = Endpoint {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            host_ifname: req.host_ifname.clone(),
            ips: vec![],
            daemon_ipam: true,
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            network: req.network.clone(),
            labels,
            state: EndpointState::Pending,
        };
        let ips = match req.ipam {
            IpamMode::Daemon if req.requested_ips.is_empty() => None,
            IpamMode::Daemon => {
                let mut v = Vec::new();
                for ip in &req.requested_ips {
                    if !self.config.pod_cidr.contains(*ip) {
                        return Err(api_error(
                            veil_api::code::IPAM_NOT_ALLOCATABLE,
                            format!(
                                "requested address {ip} is outside this node's pod CIDR {}",
                                self.config.pod_cidr
                            ),
                        ));
                    }
                    v.push(*ip);
                }
                return self.add_fixed(ep, v);
            }
            IpamMode::Delegated { ips } => {
                if ips.is_empty() {
                    return Err(api_error(
                        CODE_INVALID,
                        "the delegated IPAM plugin returned no address",
                    ));
                }
                Some(ips)
            }
        };
        let added = self.endpoints.add(ep, ips).map_err(state_err)?;
        if !added.new && added.endpoint.netns != req.netns {
            return Err(api_error(
                CODE_INVALID,
                format!(
                    "container {} interface {} is already attached in {}",
                    req.container_id, req.ifname, added.endpoint.netns
                ),
            ));
        }
        tracing::info!(
            pod.namespace = req.pod_namespace.as_deref().unwrap_or(""),
            pod.name = req.pod_name.as_deref().unwrap_or(""),
            container = %req.container_id,
            ips = %added.endpoint.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
            "endpoint reserved"
        );
        Ok(self.reply_for(&added.endpoint))
    }

    fn add_fixed(&self, ep: Endpoint, ips: Vec<std::net::IpAddr>) -> Result<AddReply, ApiError> {
        // A retried ADD of the same attachment returns its record.
        if let Some(existing) = self.endpoints.get(&ep.container_id, &ep.ifname) {
            return Ok(self.reply_for(&existing));
        }
        let added = self.endpoints.add_claimed(ep, &ips).map_err(state_err)?;
        Ok(self.reply_for(&added))
    }

    fn commit(&self, req: CommitRequest) -> Result<(), ApiError> {
        let ep = self
            .endpoints
            .commit(&req.container_id, &req.ifname)
            .map_err(state_err)?
            .ok_or_else(|| {
                api_error(
                    CODE_INVALID,
                    format!(
                        "container {} interface {} was never added",
                        req.container_id, req.ifname
                    ),
                )
            })?;
        let rec = EndpointRecord {
            node: self.config.node_name.clone(),
            container_id: ep.container_id.clone(),
            ifname: ep.ifname.clone(),
            pod_namespace: ep.pod_namespace.clone(),
            pod_name: ep.pod_name.clone(),
            ips: ep.ips.clone(),
        };
        if let Err(e) = self.datastore.put_endpoint(&rec) {
            // The endpoint works locally; the record is republished by the resync.
            tracing::warn!(error = %e, container = %ep.container_id, "publishing endpoint");
        }
        // A pod is never reachable, nor reaches out, before its policy is in
        // place: answer once the kernel dispatches its interface.
        self.endpoints_changed.notify_one();
        if !super::policy_sync::wait_dispatched(&self.applied, &ep.host_ifname, COMMIT_WAIT) {
            return Err(api_error(
                CODE_TRY_AGAIN,
                format!(
                    "container {} interface {}: the dataplane did not take the endpoint's policy within {COMMIT_WAIT:?}",
                    req.container_id, req.ifname
                ),
            ));
        }
        Ok(())
    }

    fn del(&self, req: DelRequest) -> Result<DelReply, ApiError> {
        let removed = self
            .endpoints
            .remove(&req.container_id, &req.ifname)
            .map_err(state_err)?;
        if let Err(e) =
            self.datastore
                .delete_endpoint(&self.config.node_name, &req.container_id, &req.ifname)
        {
            tracing::warn!(error = %e, container = %req.container_id, "removing endpoint record");
        }
        Ok(DelReply {
            existed: removed.is_some(),
            host_ifname: removed.map(|e| e.host_ifname),
        })
    }

    fn check(&self, req: CheckRequest) -> Result<AddReply, ApiError> {
        let ep = self
            .endpoints
            .get(&req.container_id, &req.ifname)
            .ok_or_else(|| {
                api_error(
                    veil_api::code::CHECK_RECORD,
                    format!(
                        "no endpoint recorded for container {} interface {} on node {}",
                        req.container_id, req.ifname, self.config.node_name
                    ),
                )
            })?;
        if ep.state != EndpointState::Ready {
            return Err(api_error(
                veil_api::code::CHECK_RECORD,
                format!("endpoint {} is still pending", ep.display_name()),
            ));
        }
        Ok(self.reply_for(&ep))
    }

    fn gc(&self, req: GcRequest) -> Result<GcReply, ApiError> {
        let keep: std::collections::HashSet<(String, String)> = req
            .valid
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        let mut removed = Vec::new();
        let mut attachments = Vec::new();
        for ep in self.endpoints.list() {
            if keep.contains(&(ep.container_id.clone(), ep.ifname.clone())) {
                continue;
            }
            // Another network's endpoint is not this collection's to release.
            if !req.network.is_empty() && !ep.network.is_empty() && ep.network != req.network {
                continue;
            }
            let r = self.del(DelRequest {
                container_id: ep.container_id.clone(),
                ifname: ep.ifname.clone(),
            })?;
            if let Some(h) = r.host_ifname {
                removed.push(h);
            }
            attachments.push(veil_api::Attachment {
                container_id: ep.container_id.clone(),
                ifname: ep.ifname.clone(),
            });
        }
        Ok(GcReply {
            removed_host_ifnames: removed,
            removed: attachments,
        })
    }

    fn status(&self) -> StatusReply {
        if self.ready.load(Ordering::SeqCst) {
            StatusReply {
                ready: true,
                reason: String::new(),
            }
        } else {
            StatusReply {
                ready: false,
                reason: "veild is starting".into(),
            }
        }
    }
}

pub(super) fn register_cni(api: &ApiRegistry, cni: Arc<Cni>) {
    macro_rules! method {
        ($name:expr, $req:ty, $f:ident) => {{
            let c = cni.clone();
            api.register($name, move |req: $req| {
                let c = c.clone();
                async move {
                    let res = tokio::task::spawn_blocking(move || {
                        let r = c.$f(req);
                        c.metrics.count($name, r.is_ok());
                        c.metrics.refresh(&c.endpoints);
                        c.endpoints_changed.notify_one();
                        r
                    })
                    .await
                    .map_err(|e| api_error(crate::api::CODE_INTERNAL, e.to_string()))?;
                    res
                }
            });
        }};
    }
    method!(veil_api::method::CNI_ADD, AddRequest, add);
    method!(veil_api::method::CNI_COMMIT, CommitRequest, commit);
    method!(veil_api::method::CNI_DEL, DelRequest, del);
    method!(veil_api::method::CNI_CHECK, CheckRequest, check);
    method!(veil_api::method::CNI_GC, GcRequest, gc);
    let c = cni.clone();
    api.register(veil_api::method::CNI_STATUS, move |_: serde_json::Value| {
        let c = c.clone();
        async move { Ok::<_, ApiError>(c.status()) }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::IpamError;

    #[test]
    fn ipam_failures_get_their_own_documented_codes_not_check_codes() {
        let cidr: ipnetwork::IpNetwork = "10.244.0.0/24".parse().unwrap();
        let ip = "10.244.0.9".parse().unwrap();
        let cases = [
            (IpamError::Exhausted(cidr), veil_api::code::IPAM_EXHAUSTED),
            (IpamError::InUse(ip), veil_api::code::IPAM_IN_USE),
            (
                IpamError::NotAllocatable { addr: ip, cidr },
                veil_api::code::IPAM_NOT_ALLOCATABLE,
            ),
        ];
        for (e, want) in cases {
            let got = state_err(EndpointError::Ipam(e)).code;
            assert_eq!(got, want);
            assert!(veil_api::code::meaning(got).unwrap().starts_with("IPAM"));
        }
        let io = EndpointError::Io {
            path: "/x".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(state_err(io).code, veil_api::code::STATE);
    }
}
