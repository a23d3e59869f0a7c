//! Benchmarks of the compiler and the compiled program:
//! - full compile of 10,000 policies over 5,000 pods in 500 namespaces
//!   (target < 1 s);
//! - incremental update after one pod's labels change (target < 5 ms);
//! - verdicts per second of the compiled program (target ≥ 1M/s/core).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use veil_policy::cluster::{Cluster, Node, Pod, PodPort};
use veil_policy::compile::Compiled;
use veil_policy::kinds::{Object, ObjectBody, ObjectMeta};
use veil_policy::model::{
    Action, HttpRequest, Kind, NsScope, ObjectKey, Peer, PodSelector, Policy, PortMatch, Protocol,
    Rule,
};
use veil_policy::selector::{LabelSelector, Labels};
use veil_policy::{Flow, PolicySet};

const NAMESPACES: usize = 500;
const PODS_PER_NS: usize = 10;
const NODES: usize = 50;
const NS_POLICIES: usize = 19; // 9,500 namespaced
const GLOBAL_POLICIES: usize = 500; // + 500 cluster-wide = 10,000

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn sel(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: Vec::new(),
    }
}

fn cluster() -> Cluster {
    let mut c = Cluster::default();
    for n in 0..NODES {
        c.nodes.push(Node {
            name: format!("node-{n}"),
            labels: labels(&[("pool", format!("p{}", n % 3))]),
            address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10 + n as u8)),
        });
    }
    let mut i = 0usize;
    for ns in 0..NAMESPACES {
        let name = format!("ns-{ns}");
        c.namespaces.insert(
            name.clone(),
            labels(&[
                ("kubernetes.io/metadata.name", name.clone()),
                ("team", format!("t{}", ns % 10)),
                (
                    "env",
                    if ns % 2 == 0 {
                        "prod".into()
                    } else {
                        "dev".into()
                    },
                ),
            ]),
        );
        for p in 0..PODS_PER_NS {
            let node = i % NODES;
            let host = i / NODES;
            c.pods.insert(
                format!("{name}/pod-{p}"),
                Pod {
                    namespace: name.clone(),
                    name: format!("pod-{p}"),
                    labels: labels(&[
                        ("app", format!("a{}", p % 5)),
                        ("tier", format!("x{}", p % 3)),
                    ]),
                    node: format!("node-{node}"),
                    ip: IpAddr::V4(Ipv4Addr::new(10, 244, node as u8, 2 + host as u8)),
                    host_network: false,
                    ports: vec![
                        PodPort {
                            name: Some("http".into()),
                            port: 8080,
                            protocol: Protocol::Tcp,
                        },
                        PodPort {
                            name: Some("metrics".into()),
                            port: 9100 + (p % 3) as u16,
                            protocol: Protocol::Tcp,
                        },
                    ],
                },
            );
            i += 1;
        }
    }
    c
}

fn allow_rule(peers: Vec<Peer>, ports: Vec<PortMatch>) -> Rule {
    Rule {
        name: None,
        action: Action::Allow,
        protocol: None,
        peers,
        ports,
        http: None,
    }
}

fn policies() -> PolicySet {
    let mut objs = Vec::new();
    for ns in 0..NAMESPACES {
        let name = format!("ns-{ns}");
        for k in 0..NS_POLICIES {
            let veil = k % 4 == 3;
            let kind = if veil {
                Kind::VeilNetworkPolicy
            } else {
                Kind::K8sNetworkPolicy
            };
            let key = ObjectKey {
                kind,
                namespace: Some(name.clone()),
                name: format!("pol-{k}"),
            };
            let from = Peer {
                pods: Some(PodSelector {
                    namespaces: if k % 3 == 0 {
                        NsScope::Selector(sel(&[("team", format!("t{}", k % 10))]))
                    } else {
                        NsScope::Named(name.clone())
                    },
                    pods: sel(&[("app", format!("a{}", (k + 1) % 5))]),
                }),
                ..Default::default()
            };
            let ports = vec![
                PortMatch::Range {
                    protocol: Some(Protocol::Tcp),
                    from: 8080,
                    to: 8080,
                },
                PortMatch::Named {
                    protocol: None,
                    name: "metrics".into(),
                },
            ];
            let mut rule = allow_rule(vec![from], ports);
            if veil {
                rule.action = if k % 8 == 3 {
                    Action::Deny
                } else {
                    Action::Allow
                };
            }
            objs.push(Object {
                key: key.clone(),
                metadata: ObjectMeta::default(),
                body: ObjectBody::Policy(Policy {
                    sort_key: (
                        if veil { 900 } else { 1000 },
                        0,
                        key.full_name(),
                        u8::from(veil),
                    ),
                    key,
                    tier: "default".into(),
                    subject: PodSelector {
                        namespaces: NsScope::Named(name.clone()),
                        pods: sel(&[("app", format!("a{}", k % 5))]),
                    },
                    applies_ingress: true,
                    applies_egress: k % 5 == 0,
                    ingress: vec![rule],
                    egress: if k % 5 == 0 {
                        vec![allow_rule(
                            vec![Peer {
                                nets: vec!["10.244.0.0/16".parse().expect("cidr")],
                                ..Default::default()
                            }],
                            vec![],
                        )]
                    } else {
                        vec![]
                    },
                }),
            });
        }
    }
    for g in 0..GLOBAL_POLICIES {
        let anp = g % 2 == 0;
        let kind = if anp {
            Kind::AdminNetworkPolicy
        } else {
            Kind::GlobalNetworkPolicy
        };
        let key = ObjectKey {
            kind,
            namespace: None,
            name: format!("global-{g}"),
        };
        let rule = Rule {
            name: None,
            action: if g % 3 == 0 {
                Action::Pass
            } else {
                Action::Deny
            },
            protocol: Some(Protocol::Tcp),
            peers: vec![Peer {
                pods: Some(PodSelector {
                    namespaces: NsScope::Selector(sel(&[("env", "dev".into())])),
                    pods: sel(&[("tier", format!("x{}", g % 3))]),
                }),
                ..Default::default()
            }],
            ports: vec![PortMatch::Range {
                protocol: None,
                from: 9000 + g as u16,
                to: 9000 + g as u16,
            }],
            http: None,
        };
        objs.push(Object {
            key: key.clone(),
            metadata: ObjectMeta::default(),
            body: ObjectBody::Policy(Policy {
                sort_key: if anp {
                    (g as i64 % 1000, 0, key.name.clone(), 0)
                } else {
                    (g as i64, 0, key.name.clone(), 1)
                },
                key,
                tier: if anp {
                    "admin".into()
                } else {
                    "default".into()
                },
                subject: PodSelector {
                    namespaces: NsScope::Selector(sel(&[("team", format!("t{}", g % 10))])),
                    pods: sel(&[("app", format!("a{}", g % 5))]),
                },
                applies_ingress: true,
                applies_egress: false,
                ingress: vec![rule],
                egress: vec![],
            }),
        });
    }
    let mut set = PolicySet::new();
    set.apply(objs).expect("consistent generated policies");
    set
}

/// Flows between random pods; with `node`, only towards that node's pods
/// (what one node's dataplane evaluates for ingress).
fn flows(c: &Cluster, n: usize, node: Option<&str>) -> Vec<Flow> {
    let ips: Vec<IpAddr> = c.pods.values().map(|p| p.ip).collect();
    let local: Vec<IpAddr> = c
        .pods
        .values()
        .filter(|p| node.is_none_or(|n| p.node == n))
        .map(|p| p.ip)
        .collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let src = ips[(next() % ips.len() as u64) as usize];
            let dst = local[(next() % local.len() as u64) as usize];
            let port = [8080u16, 9100, 9101, 9102, 9005][(next() % 5) as usize];
            Flow {
                src,
                dst,
                protocol: Protocol::Tcp,
                port,
                dns_name: None,
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/".into(),
                    host: "x".into(),
                }),
            }
        })
        .collect()
}

fn benches(cr: &mut Criterion) {
    let c = cluster();
    let p = policies();
    assert_eq!(
        p.policies().len(),
        NAMESPACES * NS_POLICIES + GLOBAL_POLICIES
    );
    assert_eq!(c.pods.len(), NAMESPACES * PODS_PER_NS);

    let mut g = cr.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("full_10k_policies_5k_pods", |b| {
        b.iter(|| black_box(Compiled::new(black_box(&c), black_box(&p))))
    });
    g.finish();

    let mut compiled = Compiled::new(&c, &p);
    let mut c2 = c.clone();
    let key = "ns-7/pod-3".to_string();
    let mut flip = false;
    cr.bench_function("incremental/one_pod_relabel", |b| {
        b.iter(|| {
            flip = !flip;
            if let Some(pod) = c2.pods.get_mut(&key) {
                pod.labels
                    .insert("app".into(), if flip { "a1".into() } else { "a3".into() });
            }
            compiled.update_pod(&c2, &key);
        })
    });

    let compiled = Compiled::new(&c, &p);
    let fl = flows(&c, 10_000, None);
    let fl_node = flows(&c, 10_000, Some("node-3"));
    let eps = compiled.program().endpoints.values();
    let (mut pi, mut pe, mut n) = (0usize, 0usize, 0usize);
    for e in eps {
        n += 1;
        pi += e.ingress.iter().map(|t| t.policies.len()).sum::<usize>();
        pe += e.egress.iter().map(|t| t.policies.len()).sum::<usize>();
    }
    eprintln!(
        "average policies per endpoint: ingress {:.1}, egress {:.1}",
        pi as f64 / n as f64,
        pe as f64 / n as f64
    );
    let allowed = fl
        .iter()
        .filter(|f| compiled.program().verdict(f) == veil_policy::Verdict::Allow)
        .count();
    assert!(
        allowed > 0 && allowed < fl.len(),
        "the flows mix verdicts ({allowed} allowed)"
    );
    let mut g = cr.benchmark_group("verdicts");
    g.throughput(Throughput::Elements(fl.len() as u64));
    g.bench_function("compiled_program_10k_flows", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for f in &fl {
                if compiled.program().verdict(black_box(f)) == veil_policy::Verdict::Allow {
                    n += 1;
                }
            }
            black_box(n)
        })
    });
    g.bench_function("compiled_program_10k_flows_to_one_node", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for f in &fl_node {
                if compiled.program().verdict(black_box(f)) == veil_policy::Verdict::Allow {
                    n += 1;
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(policy_benches, benches);
criterion_main!(policy_benches);
