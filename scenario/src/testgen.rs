//! Differential testing support: builds a random cluster, random policies
//! (every rule feature of the model) and random flows from a byte string,
//! and checks that the compiled program's interpreter agrees with the
//! reference evaluator, before and after incremental updates. Used by the
//! property test and the `differential` fuzz target, so both explore the
//! same space.

use std::net::{IpAddr, Ipv4Addr};

use veil_policy::cluster::{Cluster, ExternalHost, Node, Pod, PodPort};
use veil_policy::compile::Compiled;
use veil_policy::eval::{evaluate, Flow};
use veil_policy::kinds::{Object, ObjectBody, ObjectMeta};
use veil_policy::model::{
    Action, DomainPattern, HttpMatch, HttpRequest, Kind, NsScope, ObjectKey, PathMatch, Peer,
    PodSelector, Policy, PortMatch, Protocol, Rule, Tier, TierDefault,
};
use veil_policy::net::Cidr;
use veil_policy::policyset::PolicySet;
use veil_policy::selector::{LabelSelector, LabelSelectorRequirement, Labels, SelectorOperator};

/// Reads choices from bytes; zeros when exhausted.
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    /// Wraps a byte string.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// The next byte (0 when exhausted).
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// A number in `0..n` (n ≥ 1).
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    /// True with probability about `pct`%.
    pub fn chance(&mut self, pct: u8) -> bool {
        (u16::from(self.byte()) * 100 / 256) < u16::from(pct)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

const LABEL_KEYS: [&str; 3] = ["app", "tier", "env"];
const LABEL_VALUES: [&str; 3] = ["a", "b", "c"];

fn labels(b: &mut Bytes<'_>) -> Labels {
    let mut l = Labels::new();
    for k in LABEL_KEYS {
        if b.chance(50) {
            l.insert(k.into(), b.pick(&LABEL_VALUES).into());
        }
    }
    l
}

fn selector(b: &mut Bytes<'_>) -> LabelSelector {
    let mut s = LabelSelector::default();
    if b.chance(40) {
        return s;
    }
    if b.chance(60) {
        s.match_labels
            .insert(b.pick(&LABEL_KEYS).into(), b.pick(&LABEL_VALUES).into());
    }
    if b.chance(40) {
        let op = b.pick(&[
            SelectorOperator::In,
            SelectorOperator::NotIn,
            SelectorOperator::Exists,
            SelectorOperator::DoesNotExist,
        ]);
        let values = match op {
            SelectorOperator::In | SelectorOperator::NotIn => {
                vec![b.pick(&LABEL_VALUES).into(), b.pick(&LABEL_VALUES).into()]
            }
            _ => Vec::new(),
        };
        s.match_expressions.push(LabelSelectorRequirement {
            key: b.pick(&LABEL_KEYS).into(),
            operator: op,
            values,
        });
    }
    s
}

const NAMESPACES: [&str; 3] = ["ns0", "ns1", "ns2"];
const PORTS: [u16; 5] = [53, 80, 443, 8080, 9000];
const PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];
const DOMAINS: [&str; 4] = [
    "ext.example.com",
    "*.example.com",
    "a.b.example.com",
    "other.org",
];
const QUERIES: [&str; 4] = [
    "ext.example.com",
    "a.b.example.com",
    "example.com",
    "x.other.org",
];

fn ns_scope(b: &mut Bytes<'_>, own: Option<&str>) -> NsScope {
    match own {
        Some(ns) if b.chance(50) => NsScope::Named(ns.into()),
        _ if b.chance(30) => NsScope::Named(b.pick(&NAMESPACES).into()),
        _ => NsScope::Selector(selector(b)),
    }
}

fn protocol(b: &mut Bytes<'_>) -> Protocol {
    b.pick(&[Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Sctp])
}

fn cidr(b: &mut Bytes<'_>) -> Cidr {
    let (s, p) = b.pick(&[
        ("10.244.0.0", 16),
        ("10.244.1.0", 24),
        ("10.244.0.10", 31),
        ("203.0.113.0", 24),
        ("203.0.113.0", 25),
        ("198.18.0.0", 15),
        ("0.0.0.0", 0),
    ]);
    Cidr::new(s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), p)
        .unwrap_or_else(|| Cidr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("valid /0"))
}

fn rule(b: &mut Bytes<'_>, egress: bool, own: Option<&str>) -> Rule {
    let action = b.pick(&[
        Action::Allow,
        Action::Allow,
        Action::Deny,
        Action::Pass,
        Action::Log,
    ]);
    let proto = if b.chance(30) {
        Some(protocol(b))
    } else {
        None
    };
    let mut peers = Vec::new();
    for _ in 0..b.below(3) {
        let mut p = Peer::default();
        if egress && action == Action::Allow && b.chance(20) {
            p.domains = vec![DomainPattern::parse(b.pick(&DOMAINS)).expect("valid pattern")];
            peers.push(p);
            continue;
        }
        if b.chance(50) {
            p.pods = Some(PodSelector {
                namespaces: ns_scope(b, own),
                pods: selector(b),
            });
        }
        if b.chance(15) {
            p.nodes = Some(selector(b));
        }
        if b.chance(25) {
            p.nets.push(cidr(b));
        }
        if b.chance(20) {
            p.not_nets.push(cidr(b));
        }
        peers.push(p);
    }
    let mut ports = Vec::new();
    for _ in 0..b.below(3) {
        if b.chance(30) {
            ports.push(PortMatch::Named {
                protocol: if b.chance(50) {
                    Some(protocol(b))
                } else {
                    None
                },
                name: b.pick(&PORT_NAMES).into(),
            });
        } else {
            let from = b.pick(&PORTS);
            let to = if b.chance(30) {
                from.saturating_add(b.pick(&[0, 100, 9000]))
            } else {
                from
            };
            ports.push(PortMatch::Range {
                protocol: if b.chance(50) {
                    Some(protocol(b))
                } else {
                    None
                },
                from,
                to,
            });
        }
    }
    let http = if action == Action::Allow && b.chance(25) {
        let mut h = HttpMatch::default();
        if b.chance(50) {
            h.methods.push(b.pick(&["GET", "POST"]).into());
        }
        if b.chance(50) {
            h.paths.push(if b.chance(50) {
                PathMatch::Prefix("/api".into())
            } else {
                PathMatch::Exact("/".into())
            });
        }
        if b.chance(30) {
            h.hosts.push("svc.example".into());
        }
        Some(h)
    } else {
        None
    };
    Rule {
        name: None,
        action,
        protocol: if http.is_some() {
            Some(Protocol::Tcp)
        } else {
            proto
        },
        peers,
        ports,
        http,
    }
}

/// A generated case.
pub struct Case {
    /// The cluster.
    pub cluster: Cluster,
    /// The policies.
    pub policies: PolicySet,
    /// Flows to check.
    pub flows: Vec<Flow>,
}

/// Builds a random cluster.
pub fn gen_cluster(b: &mut Bytes<'_>) -> Cluster {
    let mut c = Cluster::default();
    let n_nodes = 1 + b.below(3);
    for i in 0..n_nodes {
        let mut l = Labels::new();
        l.insert("pool".into(), b.pick(&["a", "b"]).into());
        c.nodes.push(Node {
            name: format!("node-{i}"),
            labels: l,
            address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10 + i as u8)),
        });
    }
    for ns in NAMESPACES {
        let mut l = labels(b);
        l.insert("kubernetes.io/metadata.name".into(), ns.into());
        c.namespaces.insert(ns.into(), l);
    }
    let n_pods = 2 + b.below(6);
    for i in 0..n_pods {
        let node = b.below(n_nodes);
        let host = b.chance(15);
        let ns = b.pick(&NAMESPACES);
        let mut ports: Vec<PodPort> = Vec::new();
        for _ in 0..b.below(4) {
            let port = b.pick(&PORTS);
            let protocol = protocol(b);
            if ports
                .iter()
                .any(|p| p.port == port && p.protocol == protocol)
            {
                continue;
            }
            let name: Option<String> = if b.chance(60) {
                Some(b.pick(&PORT_NAMES).into())
            } else {
                None
            };
            let name =
                name.filter(|n| !ports.iter().any(|p| p.name.as_deref() == Some(n.as_str())));
            ports.push(PodPort {
                name,
                port,
                protocol,
            });
        }
        let ip = if host {
            c.nodes[node].address
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 244, node as u8, 10 + i as u8))
        };
        c.pods.insert(
            format!("{ns}/p{i}"),
            Pod {
                namespace: ns.into(),
                name: format!("p{i}"),
                labels: labels(b),
                node: c.nodes[node].name.clone(),
                ip,
                host_network: host,
                ports,
            },
        );
    }
    c.external.push(ExternalHost {
        name: "ext.example.com".into(),
        ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
        ports: Vec::new(),
    });
    c
}

/// Builds random policies (and possibly a custom tier).
pub fn gen_policies(b: &mut Bytes<'_>) -> PolicySet {
    let mut objects = Vec::new();
    let custom = b.chance(50);
    if custom {
        objects.push(Object {
            key: ObjectKey {
                kind: Kind::Tier,
                namespace: None,
                name: "t1".into(),
            },
            metadata: ObjectMeta::default(),
            body: ObjectBody::Tier(Tier {
                name: "t1".into(),
                order: b.pick(&[50, 500, 5000]),
                default_action: b.pick(&[TierDefault::Deny, TierDefault::Pass]),
            }),
        });
    }
    for i in 0..b.below(5) {
        let kind = b.pick(&[
            Kind::K8sNetworkPolicy,
            Kind::VeilNetworkPolicy,
            Kind::GlobalNetworkPolicy,
            Kind::AdminNetworkPolicy,
            Kind::BaselineAdminNetworkPolicy,
            Kind::ClusterNetworkPolicy,
        ]);
        let ns: Option<String> = kind.namespaced().then(|| b.pick(&NAMESPACES).into());
        let name = if kind == Kind::BaselineAdminNetworkPolicy {
            "default".to_string()
        } else {
            format!("p{}", i % 3)
        };
        let key = ObjectKey {
            kind,
            namespace: ns.clone(),
            name: name.clone(),
        };
        let tier = match kind {
            Kind::AdminNetworkPolicy => "admin",
            Kind::BaselineAdminNetworkPolicy => "baseline",
            Kind::ClusterNetworkPolicy => b.pick(&["admin", "baseline"]),
            Kind::K8sNetworkPolicy => "default",
            _ if custom && b.chance(50) => "t1",
            _ => "default",
        };
        let order = i64::from(b.pick(&[1u8, 2, 2, 3]));
        let sort_key = match kind {
            Kind::AdminNetworkPolicy => (order, 0, name.clone(), 0),
            Kind::ClusterNetworkPolicy => (order, 1, name.clone(), 0),
            Kind::BaselineAdminNetworkPolicy => (-1, 0, name.clone(), 0),
            Kind::K8sNetworkPolicy => (1000, 0, key.full_name(), 0),
            _ => (b.pick(&[999, 1000, 1001]), 0, key.full_name(), 1),
        };
        let subject = PodSelector {
            namespaces: match &ns {
                Some(n) => NsScope::Named(n.clone()),
                None => NsScope::Selector(selector(b)),
            },
            pods: selector(b),
        };
        let k8s = kind == Kind::K8sNetworkPolicy;
        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        for _ in 0..b.below(3) {
            let mut r = rule(b, false, ns.as_deref());
            if k8s {
                r.action = Action::Allow;
                r.http = None;
            }
            ingress.push(r);
        }
        for _ in 0..b.below(3) {
            let mut r = rule(b, true, ns.as_deref());
            if k8s {
                r.action = Action::Allow;
                r.http = None;
                r.peers.retain(|p| p.domains.is_empty());
            }
            egress.push(r);
        }
        let (ai, ae) = if b.chance(50) {
            (!ingress.is_empty(), !egress.is_empty())
        } else {
            (
                b.chance(70) || !ingress.is_empty(),
                b.chance(50) || !egress.is_empty(),
            )
        };
        objects.push(Object {
            key: key.clone(),
            metadata: ObjectMeta::default(),
            body: ObjectBody::Policy(Policy {
                key,
                tier: tier.into(),
                sort_key,
                subject,
                applies_ingress: ai,
                applies_egress: ae,
                ingress,
                egress,
            }),
        });
    }
    let mut set = PolicySet::new();
    // Generated objects are always consistent; an error would be a bug here.
    let _ = set.apply(objects);
    set
}

fn addresses(c: &Cluster) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = c.pods.values().map(|p| p.ip).collect();
    v.extend(c.nodes.iter().map(|n| n.address));
    v.push(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)));
    v.push(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 200)));
    v
}

/// Builds random flows between the cluster's addresses.
pub fn gen_flows(b: &mut Bytes<'_>, c: &Cluster, n: usize) -> Vec<Flow> {
    let addrs = addresses(c);
    (0..n)
        .map(|_| {
            let protocol = b.pick(&[
                Protocol::Tcp,
                Protocol::Tcp,
                Protocol::Udp,
                Protocol::Sctp,
                Protocol::Icmp,
            ]);
            Flow {
                src: b.pick(&addrs),
                dst: b.pick(&addrs),
                protocol,
                port: if protocol == Protocol::Icmp {
                    0
                } else {
                    b.pick(&PORTS)
                },
                dns_name: if b.chance(30) {
                    Some(b.pick(&QUERIES).into())
                } else {
                    None
                },
                http: if protocol == Protocol::Tcp && b.chance(70) {
                    Some(HttpRequest {
                        method: b.pick(&["GET", "POST"]).into(),
                        path: b.pick(&["/", "/api/x", "/apix?q=1"]).into(),
                        host: b.pick(&["svc.example", "SVC.example:80", "other"]).into(),
                    })
                } else {
                    None
                },
            }
        })
        .collect()
}

fn compare(
    stage: &str,
    c: &Cluster,
    p: &PolicySet,
    compiled: &Compiled,
    flows: &[Flow],
) -> Result<(), String> {
    for f in flows {
        let r = evaluate(c, p, f);
        let v = compiled.program().verdict(f);
        if r.verdict != v {
            return Err(format!(
                "{stage}: reference {} but compiled {} for {f:?}\ntrace:\n{}\ncluster: {c:#?}\npolicies: {p:#?}",
                r.verdict, v, r.trace
            ));
        }
    }
    Ok(())
}

/// Generates a case from bytes and checks the two evaluators agree, from
/// scratch and after incremental pod, namespace and policy updates.
pub fn check(data: &[u8]) -> Result<(), String> {
    let mut b = Bytes::new(data);
    let mut cluster = gen_cluster(&mut b);
    let mut policies = gen_policies(&mut b);
    let flows = gen_flows(&mut b, &cluster, 24);
    let mut compiled = Compiled::new(&cluster, &policies);
    compare("initial", &cluster, &policies, &compiled, &flows)?;

    // Relabel a pod, relabel a namespace, remove a pod.
    let keys: Vec<String> = cluster.pods.keys().cloned().collect();
    let k = b.pick(&keys);
    if let Some(p) = cluster.pods.get_mut(&k) {
        p.labels = labels(&mut b);
    }
    compiled.update_pod(&cluster, &k);
    compare("after pod relabel", &cluster, &policies, &compiled, &flows)?;

    let ns = b.pick(&NAMESPACES);
    let mut l = labels(&mut b);
    l.insert("kubernetes.io/metadata.name".into(), ns.into());
    cluster.namespaces.insert(ns.into(), l);
    compiled.update_namespace(&cluster, ns);
    compare(
        "after namespace relabel",
        &cluster,
        &policies,
        &compiled,
        &flows,
    )?;

    let n = b.below(cluster.nodes.len());
    let pool = b.pick(&["a", "b"]);
    cluster.nodes[n].labels.insert("pool".into(), pool.into());
    compiled.update_nodes(&cluster);
    compare("after node relabel", &cluster, &policies, &compiled, &flows)?;

    if b.chance(50) {
        let k = b.pick(&keys);
        cluster.pods.remove(&k);
        compiled.update_pod(&cluster, &k);
        compare("after pod removal", &cluster, &policies, &compiled, &flows)?;
    }

    // Replace the policies; sets are reused by key.
    let fresh = gen_policies(&mut b);
    let mut merged = policies.clone();
    let objs: Vec<Object> = fresh
        .policies()
        .values()
        .map(|p| Object {
            key: p.key.clone(),
            metadata: ObjectMeta::default(),
            body: ObjectBody::Policy(p.clone()),
        })
        .chain(fresh.custom_tiers().values().map(|t| Object {
            key: ObjectKey {
                kind: Kind::Tier,
                namespace: None,
                name: t.name.clone(),
            },
            metadata: ObjectMeta::default(),
            body: ObjectBody::Tier(t.clone()),
        }))
        .collect();
    if merged.apply(objs).is_ok() {
        policies = merged;
    }
    if let Some(k) = policies.policies().keys().next().cloned() {
        if b.chance(50) {
            let _ = policies.delete(&[k]);
        }
    }
    compiled.update_policies(&cluster, &policies);
    compare(
        "after policy update",
        &cluster,
        &policies,
        &compiled,
        &flows,
    )?;
    let scratch = Compiled::new(&cluster, &policies);
    compare("fresh compile", &cluster, &policies, &scratch, &flows)?;
    Ok(())
}
