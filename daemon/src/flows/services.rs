//! Service names for flows: which Service a connection's destination was
//! reached through, so that flow records, graph edges and `veilctl` name
//! Services and not only workloads.
//!
//! A [`ServiceBook`] is built from the datastore snapshot with the address
//! book. A connection names Service `namespace/name` when
//! - its original destination (the conntrack original tuple, before
//!   kube-proxy's DNAT) is one of the Service's cluster IPs; or else
//! - the address that answered is a backend of the Service on the port it
//!   answered on: an address of one of the Service's EndpointSlices (on a
//!   port the slice lists, any port when it lists none), or of a pod that the
//!   Service's selector picks in its namespace (on a numeric target port,
//!   which defaults to the Service's port; named target ports are left to the
//!   slices, which the Kubernetes API resolves).
//!
//! When several Services match, the first in (namespace, name) order wins:
//! the name is a label for the graph, never something policy reads. The
//! destination's identity stays its workload (the graph's vertex); the
//! Service rides along on it ([`veil_graph::Identity::with_service`]).
//! Pure: no IO.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use veil_graph::Protocol;

use super::resolve::{Resolved, Resolver};
use crate::datastore::Snapshot;
use crate::endpoints::Endpoint;

/// A Service an address backs, and on which ports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Backing {
    service: Arc<str>,
    /// (port, protocol) on the backend; empty: any.
    ports: Vec<(u16, Protocol)>,
}

impl Backing {
    fn serves(&self, port: u16, protocol: Protocol) -> bool {
        self.ports.is_empty() || self.ports.contains(&(port, protocol))
    }
}

/// Cluster IPs and backends of every Service.
#[derive(Debug, Clone, Default)]
pub struct ServiceBook {
    cluster_ips: HashMap<IpAddr, Arc<str>>,
    backends: HashMap<IpAddr, Vec<Backing>>,
}

fn protocol(name: &str) -> Protocol {
    name.parse().unwrap_or(Protocol::Tcp)
}

type Labels = BTreeMap<String, String>;

fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl ServiceBook {
    /// The Services of `snapshot`, with the pods of `snapshot` and of this
    /// node's endpoint table (`local`) as the selectors' candidates.
    pub fn new(snapshot: &Snapshot, local: &[Endpoint]) -> Self {
        let mut book = ServiceBook::default();
        if snapshot.services.is_empty() && snapshot.endpoint_slices.is_empty() {
            return book;
        }
        let mut services: Vec<_> = snapshot.services.iter().collect();
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        // Pod addresses with their labels, by namespace.
        let mut pods: HashMap<&str, Vec<(&Labels, IpAddr)>> = HashMap::new();
        let labels_of = |ns: &str, name: &str| snapshot.pod(ns, name).map(|p| &p.labels);
        for e in &snapshot.endpoints {
            let (Some(ns), Some(name)) = (&e.pod_namespace, &e.pod_name) else {
                continue;
            };
            if let Some(labels) = labels_of(ns, name) {
                for ip in &e.ips {
                    pods.entry(ns).or_default().push((labels, ip.ip()));
                }
            }
        }
        for e in local {
            let (Some(ns), Some(name)) = (&e.pod_namespace, &e.pod_name) else {
                continue;
            };
            let labels = labels_of(ns, name).unwrap_or(&e.labels);
            for ip in &e.ips {
                pods.entry(ns).or_default().push((labels, ip.ip()));
            }
        }
        let mut names: HashMap<(&str, &str), Arc<str>> = HashMap::new();
        for s in &services {
            let name: Arc<str> = Arc::from(format!("{}/{}", s.namespace, s.name));
            names.insert((&s.namespace, &s.name), name.clone());
            for ip in &s.cluster_ips {
                book.cluster_ips.entry(*ip).or_insert_with(|| name.clone());
            }
            let Some(selector) = &s.selector else {
                continue;
            };
            let ports: Vec<(u16, Protocol)> = s
                .ports
                .iter()
                .map(|p| (p.target_port.unwrap_or(p.port), protocol(&p.protocol)))
                .collect();
            for (labels, ip) in pods.get(s.namespace.as_str()).into_iter().flatten() {
                if selects(selector, labels) {
                    book.add(*ip, name.clone(), ports.clone());
                }
            }
        }
        let mut slices: Vec<_> = snapshot.endpoint_slices.iter().collect();
        slices.sort_by(|a, b| (&a.namespace, &a.service).cmp(&(&b.namespace, &b.service)));
        for sl in slices {
            let name = names
                .get(&(sl.namespace.as_str(), sl.service.as_str()))
                .cloned()
                .unwrap_or_else(|| Arc::from(format!("{}/{}", sl.namespace, sl.service)));
            let ports: Vec<(u16, Protocol)> = sl
                .ports
                .iter()
                .map(|p| (p.port, protocol(&p.protocol)))
                .collect();
            for ip in &sl.addresses {
                book.add(*ip, name.clone(), ports.clone());
            }
        }
        book
    }

    fn add(&mut self, ip: IpAddr, service: Arc<str>, ports: Vec<(u16, Protocol)>) {
        let list = self.backends.entry(ip).or_default();
        match list.iter_mut().find(|b| b.service == service) {
            Some(b) if b.ports.is_empty() => {}
            Some(b) if ports.is_empty() => b.ports.clear(),
            Some(b) => {
                for p in ports {
                    if !b.ports.contains(&p) {
                        b.ports.push(p);
                    }
                }
            }
            None => list.push(Backing { service, ports }),
        }
    }

    /// Whether no Service is known.
    pub fn is_empty(&self) -> bool {
        self.cluster_ips.is_empty() && self.backends.is_empty()
    }

    /// The Service of a connection first sent to `original` and answered by
    /// `backend` on `port`/`protocol`.
    pub fn service_of(
        &self,
        original: IpAddr,
        backend: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Option<&Arc<str>> {
        if let Some(s) = self.cluster_ips.get(&original) {
            return Some(s);
        }
        self.backends
            .get(&backend)?
            .iter()
            .find(|b| b.serves(port, protocol))
            .map(|b| &b.service)
    }
}

impl Resolver {
    /// The responder of a connection first sent to `original` and answered
    /// by `backend` on `port`: its identity, with the Service it was reached
    /// through when there is one.
    pub fn resolve_destination(
        &self,
        original: IpAddr,
        backend: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Resolved {
        let r = self.resolve(backend);
        let Some(book) = self.services() else {
            return r;
        };
        match book.service_of(original, backend, port, protocol) {
            Some(svc) => Resolved {
                identity: Arc::new((*r.identity).clone().with_service(&**svc)),
                local: r.local,
            },
            None => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{
        EndpointRecord, EndpointSliceRecord, PodPort, PodRecord, ServicePort, ServiceRecord,
    };

    fn pod(name: &str, app: &str, ip: &str) -> (PodRecord, EndpointRecord) {
        (
            PodRecord {
                namespace: "shop".into(),
                name: name.into(),
                labels: [("app".to_string(), app.to_string())].into(),
                node: Some("n2".into()),
                host_network: false,
                service_account: None,
                ports: vec![],
            },
            EndpointRecord {
                node: "n2".into(),
                container_id: name.into(),
                ifname: "eth0".into(),
                pod_namespace: Some("shop".into()),
                pod_name: Some(name.into()),
                ips: vec![ip.parse().unwrap()],
            },
        )
    }

    fn service(name: &str, app: Option<&str>, ip: &str, port: u16, target: u16) -> ServiceRecord {
        ServiceRecord {
            namespace: "shop".into(),
            name: name.into(),
            cluster_ips: vec![ip.parse().unwrap()],
            selector: app.map(|a| [("app".to_string(), a.to_string())].into()),
            ports: vec![ServicePort {
                port,
                protocol: "TCP".into(),
                name: None,
                target_port: Some(target),
            }],
        }
    }

    fn snapshot() -> Snapshot {
        let (p1, e1) = pod("backend-1", "backend", "10.244.2.5/32");
        let (p2, e2) = pod("db-1", "db", "10.244.2.6/32");
        Snapshot {
            pods: vec![p1, p2],
            endpoints: vec![e1, e2],
            services: vec![
                service("backend", Some("backend"), "10.96.0.10", 80, 8080),
                service("external-db", None, "10.96.0.20", 5432, 5432),
            ],
            endpoint_slices: vec![EndpointSliceRecord {
                namespace: "shop".into(),
                name: "external-db-x1".into(),
                service: "external-db".into(),
                addresses: vec!["10.244.2.6".parse().unwrap()],
                ports: vec![PodPort {
                    port: 5432,
                    protocol: "TCP".into(),
                    name: None,
                }],
            }],
            ..Default::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_pod_picked_by_a_selector_names_its_service_on_the_target_port_only() {
        let b = ServiceBook::new(&snapshot(), &[]);
        let backend = ip("10.244.2.5");
        assert_eq!(
            b.service_of(backend, backend, 8080, Protocol::Tcp)
                .map(|s| &**s),
            Some("shop/backend")
        );
        assert_eq!(b.service_of(backend, backend, 9090, Protocol::Tcp), None);
        assert_eq!(b.service_of(backend, backend, 8080, Protocol::Udp), None);
    }

    #[test]
    fn an_endpoint_slice_address_names_a_selectorless_service() {
        let b = ServiceBook::new(&snapshot(), &[]);
        let db = ip("10.244.2.6");
        assert_eq!(
            b.service_of(db, db, 5432, Protocol::Tcp).map(|s| &**s),
            Some("shop/external-db")
        );
    }

    #[test]
    fn the_original_destination_cluster_ip_names_the_service_whatever_answered() {
        let b = ServiceBook::new(&snapshot(), &[]);
        // kube-proxy sent 10.96.0.10:80 to some address the book does not know.
        assert_eq!(
            b.service_of(ip("10.96.0.10"), ip("10.244.9.9"), 8080, Protocol::Tcp)
                .map(|s| &**s),
            Some("shop/backend")
        );
    }

    #[test]
    fn a_destination_backing_no_service_keeps_a_plain_identity() {
        let snap = snapshot();
        let mut r = Resolver::new("n1", ip("198.18.0.1"), &snap, &[], &[]);
        r.set_services(ServiceBook::new(&snap, &[]));
        let backend = ip("10.244.2.5");
        let named = r.resolve_destination(backend, backend, 8080, Protocol::Tcp);
        assert_eq!(
            named.identity.id(),
            "shop/backend",
            "the vertex stays the workload"
        );
        assert_eq!(named.identity.service(), Some("shop/backend"));
        let plain = r.resolve_destination(backend, backend, 22, Protocol::Tcp);
        assert_eq!(plain.identity.service(), None);
        let empty = ServiceBook::new(&Snapshot::default(), &[]);
        assert!(empty.is_empty());
    }

    #[test]
    fn a_connection_to_a_cluster_ip_names_the_service_in_the_record_the_edge_and_the_text() {
        use crate::flows::testutil::{entry, ep, flows};
        use veil_graph::{FlowEvent, FlowFilter};
        let f = flows();
        let local = vec![
            ep("shop", "frontend-7d4b9c8f6d-x2x9z", "10.244.1.2"),
            ep("shop", "backend-a-0", "10.244.1.3"),
        ];
        let snap = Snapshot {
            services: vec![service("backend", None, "10.96.0.10", 80, 8080)],
            ..Default::default()
        };
        let mut r = Resolver::new("n1", ip("198.18.0.1"), &snap, &local, &[]);
        r.set_services(ServiceBook::new(&snap, &local));
        f.set_resolver(r);
        let mut e = entry(FlowEvent::New, "10.244.1.2", 40000, "10.96.0.10", 80, 1, 0);
        e.reply.src = ip("10.244.1.3");
        e.reply.src_port = 8080;
        f.ingest(&[e], 1);
        let v = f.view(1);
        assert_eq!(v.edges[0].target, "shop/backend-a");
        assert_eq!(v.edges[0].service.as_deref(), Some("shop/backend"));
        assert!(
            v.to_text().contains("service=shop/backend"),
            "{}",
            v.to_text()
        );
        let page = f.flows(&FlowFilter::default());
        assert_eq!(
            page.flows[0].destination.service.as_deref(),
            Some("shop/backend")
        );
        // `veilctl flows --to shop/backend` finds it.
        let by_service = f.flows(&FlowFilter {
            to: Some("shop/backend".into()),
            ..Default::default()
        });
        assert_eq!(by_service.flows.len(), 1);
        // The edge's series carry the Service as a label.
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(crate::flows::metrics::FlowMetrics(f.clone())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("destination_workload=\"backend-a\"")
                && out.contains("destination_service=\"shop/backend\""),
            "{out}"
        );
    }
}
