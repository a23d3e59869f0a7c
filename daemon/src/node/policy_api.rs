//! The node's policy program as seen from outside: the `policy.list` socket
//! method (tiers and policies of the compiled program, with the number of
//! rules and of local endpoints each selects) and the Prometheus gauges
//! `veil_policy_generation`, `veil_policy_applied_generation` and
//! `veil_policy_errors`, read at scrape time from the desired state and the
//! applied-generation channel.
//!
//! It does not compile nor apply anything: it reads what the controller
//! published (`ctx.desired`) and what the dataplane reports
//! (`ctx.policy_applied`).

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::sync::watch;
use veil_api::{ApiError, PolicyEntry, PolicyList, TierEntry};
use veil_policy::model::TierDefault;

use crate::context::NodeContext;
use crate::controller::Desired;

/// Registers `policy.list` and the policy gauges on `ctx`.
pub(super) fn register(ctx: &NodeContext) {
    let desired = ctx.desired.clone();
    ctx.api.register(
        veil_api::method::POLICY_LIST,
        move |_: serde_json::Value| {
            let d = desired.borrow().clone();
            async move { Ok::<_, ApiError>(policy_list(&d)) }
        },
    );
    ctx.metrics
        .lock()
        .expect("metrics registry lock")
        .register_collector(Box::new(PolicyMetrics {
            desired: ctx.desired.clone(),
            applied: ctx.policy_applied.clone(),
        }));
}

/// The tiers and policies of `d`'s program, with this node's endpoint counts.
pub(crate) fn policy_list(d: &Desired) -> PolicyList {
    let program = &d.program;
    // Per policy index: how many of this node's endpoints it selects, in
    // either direction (counted once per endpoint).
    let mut selects: BTreeMap<u32, u32> = BTreeMap::new();
    for ep in program.node_endpoints(&d.node) {
        let mut mine: Vec<u32> = ep
            .ingress
            .iter()
            .chain(ep.egress.iter())
            .flat_map(|t| t.policies.iter().copied())
            .collect();
        mine.sort_unstable();
        mine.dedup();
        for p in mine {
            *selects.entry(p).or_default() += 1;
        }
    }
    let tiers = program
        .tiers
        .iter()
        .map(|t| TierEntry {
            name: t.name.clone(),
            order: t.order,
            default_action: match t.default_action {
                TierDefault::Deny => "Deny".into(),
                TierDefault::Pass => "Pass".into(),
            },
        })
        .collect();
    let policies = program
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let tier = program.tiers.get(p.tier as usize);
            let position = u32::try_from(i).unwrap_or(u32::MAX);
            PolicyEntry {
                tier: tier.map(|t| t.name.clone()).unwrap_or_default(),
                tier_order: tier.map(|t| t.order).unwrap_or_default(),
                position,
                kind: p.key.kind.name().to_string(),
                group: p.key.kind.group().to_string(),
                namespace: p.key.namespace.clone(),
                name: p.key.name.clone(),
                ingress_rules: p.ingress.1.saturating_sub(p.ingress.0),
                egress_rules: p.egress.1.saturating_sub(p.egress.0),
                local_endpoints: selects.get(&position).copied().unwrap_or(0),
            }
        })
        .collect();
    PolicyList {
        node: d.node.clone(),
        generation: d.generation,
        tiers,
        policies,
    }
}

/// Policy gauges, read at scrape time.
#[derive(Debug)]
struct PolicyMetrics {
    desired: watch::Receiver<std::sync::Arc<Desired>>,
    applied: watch::Receiver<std::sync::Arc<super::policy_sync::AppliedPolicy>>,
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(m)
}

impl Collector for PolicyMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (generation, errors) = {
            let d = self.desired.borrow();
            (d.generation, d.policy_errors.len() as u64)
        };
        let applied = self.applied.borrow().generation;
        gauge(
            &mut encoder,
            "veil_policy_generation",
            "Generation of the node's compiled policy program (increments when it changes)",
            generation,
        )?;
        gauge(
            &mut encoder,
            "veil_policy_applied_generation",
            "Generation of the policy program the node's dataplane holds",
            applied,
        )?;
        gauge(
            &mut encoder,
            "veil_policy_errors",
            "Policy objects not in force as written (invalid objects)",
            errors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Controller;
    use crate::datastore::store::Store;
    use crate::datastore::{
        EndpointRecord, Event, Key, Kind, NamespaceRecord, NodeRecord, PodRecord, PolicyDocument,
        Resource,
    };
    use prometheus_client::registry::Registry;
    use std::sync::Arc;

    fn pod(name: &str, app: &str, ip: &str) -> [Event; 2] {
        [
            Event::Applied(
                Key::new(Kind::Pod, format!("shop/{name}.yaml")),
                Resource::Pod(PodRecord {
                    namespace: "shop".into(),
                    name: name.into(),
                    labels: [("app".to_string(), app.to_string())].into(),
                    node: Some("n1".into()),
                    host_network: false,
                    service_account: None,
                    ports: vec![],
                }),
            ),
            Event::Applied(
                Key::new(Kind::Endpoint, format!("n1/{name}_eth0.yaml")),
                Resource::Endpoint(EndpointRecord {
                    node: "n1".into(),
                    container_id: name.into(),
                    ifname: "eth0".into(),
                    pod_namespace: Some("shop".into()),
                    pod_name: Some(name.into()),
                    ips: vec![format!("{ip}/32").parse().unwrap()],
                }),
            ),
        ]
    }

    fn policy(file: &str, yaml: &str) -> Event {
        Event::Applied(
            Key::new(Kind::Policy, format!("{file}#0")),
            Resource::Policy(PolicyDocument {
                origin: format!("policies/{file}#0"),
                manifest: serde_yaml::from_str(yaml).unwrap(),
            }),
        )
    }

    /// Two web pods and a client on n1; one policy selecting web with two
    /// ingress rules, one invalid policy.
    fn desired() -> Desired {
        let mut store = Store::new();
        let mut events = vec![
            Event::Applied(
                Key::new(Kind::Node, "n1.yaml"),
                Resource::Node(NodeRecord {
                    name: "n1".into(),
                    address: "198.18.0.1".parse().unwrap(),
                    pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
                    labels: Default::default(),
                    annotations: Default::default(),
                }),
            ),
            Event::Applied(
                Key::new(Kind::Namespace, "shop.yaml"),
                Resource::Namespace(NamespaceRecord {
                    name: "shop".into(),
                    labels: Default::default(),
                }),
            ),
        ];
        events.extend(pod("web-1", "web", "10.244.1.2"));
        events.extend(pod("web-2", "web", "10.244.1.3"));
        events.extend(pod("client", "client", "10.244.1.4"));
        events.push(policy(
            "allow.yaml",
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
  - ports: [{port: 80}]
",
        ));
        events.push(policy(
            "bad.yaml",
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Sideways]
",
        ));
        events.push(Event::Synced);
        let changes = store.apply_all(events);
        let mut ctrl = Controller::new("n1");
        ctrl.on_changes(&store, &changes);
        ctrl.desired(&store, vec![])
    }

    #[test]
    fn policy_list_names_each_policy_with_its_tier_rules_and_local_endpoints() {
        let d = desired();
        let l = policy_list(&d);
        assert_eq!(l.node, "n1");
        assert_eq!(l.generation, d.generation);
        assert!(l.generation > 0);
        assert!(l
            .tiers
            .iter()
            .any(|t| t.name == "default" && t.order == 1000));
        assert_eq!(l.policies.len(), 1, "{l:?}");
        let p = &l.policies[0];
        assert_eq!(p.full_name(), "shop/allow-client");
        assert_eq!(p.kind, "NetworkPolicy");
        assert_eq!(p.group, "networking.k8s.io");
        assert_eq!(p.tier, "default");
        assert_eq!(p.tier_order, 1000);
        assert_eq!((p.ingress_rules, p.egress_rules), (2, 0));
        assert_eq!(p.local_endpoints, 2, "the two web pods");
    }

    #[test]
    fn policy_list_of_an_empty_program_is_empty() {
        let l = policy_list(&Desired::default());
        assert!(l.policies.is_empty());
        assert_eq!(l.generation, 0);
    }

    #[test]
    fn gauges_report_generation_applied_generation_and_errors() {
        let d = desired();
        assert_eq!(d.policy_errors.len(), 1, "{:?}", d.policy_errors);
        let (_dtx, drx) = watch::channel(Arc::new(d.clone()));
        let (atx, arx) =
            watch::channel(Arc::new(super::super::policy_sync::AppliedPolicy::default()));
        let mut reg = Registry::default();
        reg.register_collector(Box::new(PolicyMetrics {
            desired: drx,
            applied: arx,
        }));
        atx.send(Arc::new(super::super::policy_sync::AppliedPolicy {
            generation: d.generation,
            ..Default::default()
        }))
        .unwrap();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains(&format!("veil_policy_generation {}\n", d.generation)),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "veil_policy_applied_generation {}\n",
                d.generation
            )),
            "{out}"
        );
        assert!(out.contains("veil_policy_errors 1\n"), "{out}");
        assert!(out.contains("# TYPE veil_policy_errors gauge"), "{out}");
    }
}
