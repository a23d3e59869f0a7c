//! Which rules decide a steered connection, `domains` peers included.
//!
//! The kernel matches a `domains` peer by the DNS allowance sets (pod
//! address . destination address) that the DNS proxy fills; the policy
//! program matches it by the name the destination was resolved from. So the
//! proxy asks the DNS proxy's allowances ([`DomainNames`]) which names let
//! the pod reach the destination and evaluates the connection once per
//! name. The kernel's decision is one of those evaluations (the one with a
//! name of its deciding `domains` rule; every other name decides later in
//! the chain or the same). When they disagree the proxy enforces the `http`
//! rules of every allowing evaluation: never less than the kernel's rule.
//! With no name the connection is evaluated without one.
//!
//! It does not resolve names, nor read the kernel's sets.

use std::net::{IpAddr, Ipv4Addr};

use veil_policy::compile::{ConnectionRules, L7Rule, Program};
use veil_policy::eval::Flow;

/// The DNS allowances: which names allowed a pod to reach an address.
pub trait DomainNames: Send + Sync {
    /// The names through which `pod` may reach `addr` now.
    fn names(&self, pod: Ipv4Addr, addr: Ipv4Addr) -> Vec<String>;
}

impl DomainNames for crate::dns::Proxy {
    fn names(&self, pod: Ipv4Addr, addr: Ipv4Addr) -> Vec<String> {
        // A second of slack: the kernel checked the connection's SYN a
        // moment ago, against a set element with the same expiry.
        let now = crate::dns::unix_now().saturating_sub(1);
        self.cache.names_for(pod, addr, now)
    }
}

/// The deciding rules of `flow` (`dns_name` and `http` ignored), with the
/// `domains` peers evaluated by the names `names` gives for its ends.
pub fn connection_rules(
    program: &Program,
    flow: &Flow,
    names: Option<&dyn DomainNames>,
) -> ConnectionRules {
    let candidates = match (names, flow.src, flow.dst) {
        (Some(n), IpAddr::V4(src), IpAddr::V4(dst))
            if program.endpoints.contains_key(&flow.src) =>
        {
            n.names(src, dst)
        }
        _ => Vec::new(),
    };
    let mut flow = flow.clone();
    flow.http = None;
    flow.dns_name = None;
    if candidates.is_empty() {
        return program.connection_rules(&flow);
    }
    let mut allowed: Option<Vec<L7Rule>> = None;
    let mut denied = None;
    for name in candidates {
        flow.dns_name = Some(name);
        match program.connection_rules(&flow) {
            ConnectionRules::Allowed(rules) => {
                let all = allowed.get_or_insert_with(Vec::new);
                for r in rules {
                    if !all.contains(&r) {
                        all.push(r);
                    }
                }
            }
            ConnectionRules::Denied(dir) => {
                denied.get_or_insert(dir);
            }
        }
    }
    match (allowed, denied) {
        (Some(rules), _) => ConnectionRules::Allowed(rules),
        (None, Some(dir)) => ConnectionRules::Denied(dir),
        (None, None) => ConnectionRules::Allowed(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use veil_policy::model::{Direction, Protocol};
    use veil_scenario::Scenario;

    use super::*;

    struct Names(HashMap<(Ipv4Addr, Ipv4Addr), Vec<String>>);

    impl DomainNames for Names {
        fn names(&self, pod: Ipv4Addr, addr: Ipv4Addr) -> Vec<String> {
            self.0.get(&(pod, addr)).cloned().unwrap_or_default()
        }
    }

    const YAML: &str = r#"
name: names
namespaces: [{name: out}]
pods:
  - {name: out/client, labels: {app: client}}
external:
  - {name: partner.example.com, ip: 203.0.113.141, ports: [{port: 80}]}
  - {name: other.example.com, ip: 203.0.113.142, ports: [{port: 80}]}
policies:
  - apiVersion: veil.dev/v1alpha1
    kind: NetworkPolicy
    metadata: {name: client-out, namespace: out}
    spec:
      selector: {matchLabels: {app: client}}
      egress:
        - action: Allow
          protocol: TCP
          destination: {domains: [partner.example.com], ports: [80]}
          http: {methods: [GET]}
        - action: Allow
          protocol: TCP
          destination: {domains: [other.example.com], ports: [80]}
          http: {paths: [{prefix: /v1/}]}
probes: []
"#;

    fn setup() -> (veil_policy::compile::Compiled, Ipv4Addr) {
        let sc = Scenario::parse(YAML).expect("scenario parses");
        let st = sc.initial_state().expect("valid");
        let client = st
            .cluster
            .pods
            .values()
            .find(|p| p.name == "client")
            .map(|p| match p.ip {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!(),
            })
            .expect("client");
        (
            veil_policy::compile::Compiled::new(&st.cluster, &st.policies),
            client,
        )
    }

    fn flow(src: Ipv4Addr, dst: Ipv4Addr) -> Flow {
        Flow {
            src: IpAddr::V4(src),
            dst: IpAddr::V4(dst),
            protocol: Protocol::Tcp,
            port: 80,
            dns_name: None,
            http: None,
        }
    }

    fn policies(r: &ConnectionRules) -> Vec<usize> {
        match r {
            ConnectionRules::Allowed(rs) => rs.iter().map(|r| r.index).collect(),
            ConnectionRules::Denied(_) => panic!("denied: {r:?}"),
        }
    }

    #[test]
    fn a_domains_rule_decides_by_the_name_the_pod_resolved() {
        let (c, client) = setup();
        let partner = Ipv4Addr::new(203, 0, 113, 141);
        let f = flow(client, partner);
        assert_eq!(
            connection_rules(c.program(), &f, None),
            ConnectionRules::Denied(Direction::Egress),
            "without the allowance: denied, as the kernel would"
        );
        let names = Names(HashMap::from([(
            (client, partner),
            vec!["partner.example.com".to_string()],
        )]));
        assert_eq!(
            policies(&connection_rules(c.program(), &f, Some(&names))),
            [0]
        );
        // Another pod's allowance opens nothing.
        let other = Names(HashMap::from([(
            (Ipv4Addr::new(10, 244, 9, 9), partner),
            vec!["partner.example.com".to_string()],
        )]));
        assert!(matches!(
            connection_rules(c.program(), &f, Some(&other)),
            ConnectionRules::Denied(_)
        ));
    }

    #[test]
    fn an_address_reached_by_two_names_enforces_the_http_rules_of_both() {
        let (c, client) = setup();
        let addr = Ipv4Addr::new(203, 0, 113, 141);
        let names = Names(HashMap::from([(
            (client, addr),
            vec![
                "other.example.com".to_string(),
                "partner.example.com".to_string(),
            ],
        )]));
        let mut got = policies(&connection_rules(
            c.program(),
            &flow(client, addr),
            Some(&names),
        ));
        got.sort();
        assert_eq!(got, [0, 1]);
    }
}
