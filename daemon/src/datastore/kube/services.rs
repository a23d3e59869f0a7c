//! Services and EndpointSlices to datastore [`Resource`]s, so that flows to
//! a Service's pods (or to its cluster IP) name the Service.
//!
//! - A Service gives a [`ServiceRecord`]: its cluster IPs (`spec.clusterIPs`,
//!   else `spec.clusterIP`; `None` of a headless Service is no address), its
//!   selector (absent or empty: `None`, endpoints come from slices only) and
//!   its ports (a numeric `targetPort` kept; a named one left to the slices).
//! - An EndpointSlice gives an [`EndpointSliceRecord`] under the Service of
//!   its `kubernetes.io/service-name` label, with every endpoint's addresses
//!   (ready or not: a terminating endpoint still answers its connections).
//!   A slice without that label belongs to no Service and gives nothing.
//!
//! Unparseable addresses are skipped, never an error: a Service is a name for
//! the graph, not something policy depends on. Pure: no client, no IO.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::convert::Outcome;
use crate::datastore::{
    EndpointSliceRecord, Key, Kind, PodPort, Resource, ServicePort, ServiceRecord,
};

/// The label naming an EndpointSlice's Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The key of a Service.
pub fn service_key(namespace: &str, name: &str) -> Key {
    Key::new(Kind::Service, format!("{namespace}/{name}"))
}

/// The key of an EndpointSlice.
pub fn slice_key(namespace: &str, name: &str) -> Key {
    Key::new(Kind::EndpointSlice, format!("{namespace}/{name}"))
}

/// The key and value a Service gives.
pub fn service(s: &Service) -> Vec<(Key, Outcome)> {
    let namespace = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let spec = s.spec.as_ref();
    let texts: Vec<&String> = match spec.and_then(|s| s.cluster_ips.as_ref()) {
        Some(v) if !v.is_empty() => v.iter().collect(),
        _ => spec
            .and_then(|s| s.cluster_ip.as_ref())
            .into_iter()
            .collect(),
    };
    let cluster_ips = texts
        .into_iter()
        .filter_map(|t| t.parse::<IpAddr>().ok())
        .collect();
    let selector = spec
        .and_then(|s| s.selector.clone())
        .filter(|m| !m.is_empty());
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            Some(ServicePort {
                port: u16::try_from(p.port).ok()?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                name: p.name.clone(),
                target_port: match &p.target_port {
                    Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                    _ => None,
                },
            })
        })
        .collect();
    let rec = ServiceRecord {
        namespace: namespace.clone(),
        name: name.clone(),
        cluster_ips,
        selector,
        ports,
    };
    vec![(
        service_key(&namespace, &name),
        Some(Ok(Resource::Service(rec))),
    )]
}

/// The key and value an EndpointSlice gives (nothing without a Service).
pub fn endpoint_slice(e: &EndpointSlice) -> Vec<(Key, Outcome)> {
    let namespace = e.namespace().unwrap_or_default();
    let name = e.name_any();
    let key = slice_key(&namespace, &name);
    let Some(service) = e.labels().get(LABEL_SERVICE_NAME).cloned() else {
        return vec![(key, None)];
    };
    let addresses = e
        .endpoints
        .iter()
        .flat_map(|ep| ep.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .collect();
    let ports = e
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            Some(PodPort {
                port: u16::try_from(p.port?).ok()?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                name: p.name.clone(),
            })
        })
        .collect();
    let rec = EndpointSliceRecord {
        namespace,
        name,
        service,
        addresses,
        ports,
    };
    vec![(key, Some(Ok(Resource::EndpointSlice(rec))))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn value(out: Vec<(Key, Outcome)>) -> Option<Resource> {
        out.into_iter()
            .next()
            .and_then(|(_, o)| o)
            .and_then(Result::ok)
    }

    #[test]
    fn headless_selectorless_service_has_no_address_and_no_selector() {
        let s: Service = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "selector": {},
                     "ports": [{"port": 5432, "targetPort": "pg"}]}
        }))
        .unwrap();
        let Some(Resource::Service(r)) = value(service(&s)) else {
            panic!("no service record")
        };
        assert!(r.cluster_ips.is_empty() && r.selector.is_none());
        assert_eq!(
            r.ports[0].target_port, None,
            "a named target port is left to the slices"
        );
    }

    #[test]
    fn slice_addresses_of_every_endpoint_are_kept_and_bad_ones_skipped() {
        let e: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "shop", "labels": {LABEL_SERVICE_NAME: "db"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": false}},
                          {"addresses": ["not-an-ip", "10.244.2.5"]}]
        }))
        .unwrap();
        let Some(Resource::EndpointSlice(r)) = value(endpoint_slice(&e)) else {
            panic!("no slice record")
        };
        assert_eq!(r.service, "db");
        assert_eq!(r.addresses.len(), 2);
        assert!(r.ports.is_empty());
    }
}
