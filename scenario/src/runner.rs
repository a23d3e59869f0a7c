//! Running a scenario in memory: the cluster and policies at each step,
//! every probe through the reference evaluator and the compiled program
//! (updated incrementally from step to step), and the outcome with a
//! readable trace.
//!
//! It sends no traffic: the lab (`veilctl lab test`) runs the same
//! scenario for real.

use std::net::IpAddr;

use veil_policy::cluster::{Cluster, Node, Pod};
use veil_policy::compile::Compiled;
use veil_policy::eval::{evaluate, Evaluation, Verdict};
use veil_policy::{PolicyError, PolicySet};

use crate::{probe_flows, LabelChange, Probe, Scenario, ScenarioPod, Step};

impl Scenario {
    /// The cluster before any step.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            nodes: self
                .nodes
                .iter()
                .map(|n| Node {
                    name: n.name.clone(),
                    labels: n.labels.clone(),
                    address: IpAddr::V4(n.address),
                })
                .collect(),
            namespaces: self
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), n.labels.clone()))
                .collect(),
            pods: self
                .pods
                .iter()
                .map(|p| {
                    (
                        p.key(),
                        Pod {
                            namespace: p.namespace.clone(),
                            name: p.name.clone(),
                            labels: p.labels.clone(),
                            node: p.node.clone(),
                            ip: IpAddr::V4(p.ip),
                            host_network: p.host_network,
                            ports: p.ports.clone(),
                        },
                    )
                })
                .collect(),
            external: self.external.clone(),
        }
    }

    /// The state before any step: the cluster and the initial policies.
    pub fn initial_state(&self) -> Result<State, PolicyError> {
        let mut policies = PolicySet::new();
        policies.apply(self.policies.iter().map(|(_, o)| o.clone()))?;
        Ok(State {
            cluster: self.cluster(),
            policies,
        })
    }

    /// The DNS pod (`kube-system/kube-dns`).
    pub fn dns_pod(&self) -> Option<&ScenarioPod> {
        self.pods.iter().find(|p| p.is_dns)
    }

    /// Every probe, with its step index, in file order.
    pub fn probes(&self) -> impl Iterator<Item = (usize, &Probe)> {
        self.steps
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.probes.iter().map(move |p| (i, p)))
    }
}

/// The cluster and policies at some point of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The cluster.
    pub cluster: Cluster,
    /// The policies in force.
    pub policies: PolicySet,
}

impl State {
    /// Applies a step's changes in the documented order: apply, delete, labels.
    pub fn apply_changes(&mut self, step: &Step) -> Result<(), PolicyError> {
        if !step.apply.is_empty() {
            self.policies
                .apply(step.apply.iter().map(|(_, o)| o.clone()))?;
        }
        if !step.delete.is_empty() {
            self.policies.delete(&step.delete)?;
        }
        for l in &step.labels {
            match l {
                LabelChange::Pod { pod, labels } => {
                    if let Some(p) = self.cluster.pods.get_mut(pod) {
                        p.labels = labels.clone();
                    }
                }
                LabelChange::Namespace { namespace, labels } => {
                    self.cluster
                        .namespaces
                        .insert(namespace.clone(), labels.clone());
                }
            }
        }
        Ok(())
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone)]
pub struct ProbeOutcome {
    /// Step index.
    pub step: usize,
    /// Probe index within the step.
    pub index: usize,
    /// The probe.
    pub probe: Probe,
    /// The reference evaluator's DNS lookup evaluation, if the probe resolves a name.
    pub dns: Option<Evaluation>,
    /// The reference evaluator's evaluation of the connection (None when
    /// the lookup was denied).
    pub main: Option<Evaluation>,
    /// The reference verdict.
    pub reference: Verdict,
    /// The compiled program's verdict.
    pub compiled: Verdict,
}

impl ProbeOutcome {
    /// Whether both evaluators gave the expected verdict.
    pub fn passed(&self) -> bool {
        self.reference == self.probe.expect && self.compiled == self.probe.expect
    }

    /// A readable trace.
    pub fn trace(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.dns {
            s.push_str("DNS lookup (UDP 53 to kube-dns):\n");
            s.push_str(&d.trace.to_string());
            if d.verdict == Verdict::Deny {
                s.push_str("DNS lookup denied: the name cannot be resolved\n");
            }
        }
        if let Some(m) = &self.main {
            s.push_str(&m.trace.to_string());
        }
        if self.compiled != self.reference {
            s.push_str(&format!(
                "DISAGREEMENT: the compiled program says {}, the reference evaluator {}\n",
                self.compiled, self.reference
            ));
        }
        s
    }
}

/// Evaluates one probe on a state with both evaluators.
pub fn evaluate_probe(
    sc: &Scenario,
    state: &State,
    compiled: &Compiled,
    step: usize,
    index: usize,
    probe: &Probe,
) -> ProbeOutcome {
    let (dns_flow, flow) = probe_flows(&state.cluster, sc, probe);
    let dns = dns_flow
        .as_ref()
        .map(|f| evaluate(&state.cluster, &state.policies, f));
    let dns_ok = dns.as_ref().is_none_or(|d| d.verdict == Verdict::Allow);
    let main = dns_ok.then(|| evaluate(&state.cluster, &state.policies, &flow));
    let reference = main.as_ref().map_or(Verdict::Deny, |m| m.verdict);
    let c_dns_ok = dns_flow
        .as_ref()
        .is_none_or(|f| compiled.program().verdict(f) == Verdict::Allow);
    let compiled_v = if c_dns_ok {
        compiled.program().verdict(&flow)
    } else {
        Verdict::Deny
    };
    ProbeOutcome {
        step,
        index,
        probe: probe.clone(),
        dns,
        main,
        reference,
        compiled: compiled_v,
    }
}

/// Runs a scenario: each step's changes, then its probes, through the
/// reference evaluator and the compiled program (updated incrementally
/// from step to step, never recompiled from scratch).
pub fn run(sc: &Scenario) -> Result<Vec<ProbeOutcome>, PolicyError> {
    let mut out = Vec::new();
    run_steps(sc, sc.steps.len(), |sc, state, compiled, si| {
        for (pi, probe) in sc.steps[si].probes.iter().enumerate() {
            out.push(evaluate_probe(sc, state, compiled, si, pi, probe));
        }
    })?;
    Ok(out)
}

/// Applies steps `0..count` in order, updating the compiled program
/// incrementally, and calls `at_step` after each step's changes.
pub fn run_steps(
    sc: &Scenario,
    count: usize,
    mut at_step: impl FnMut(&Scenario, &State, &Compiled, usize),
) -> Result<(State, Compiled), PolicyError> {
    let mut state = sc.initial_state()?;
    let mut compiled = Compiled::new(&state.cluster, &state.policies);
    for (si, step) in sc.steps.iter().enumerate().take(count) {
        state.apply_changes(step)?;
        if !step.apply.is_empty() || !step.delete.is_empty() {
            compiled.update_policies(&state.cluster, &state.policies);
        }
        for l in &step.labels {
            match l {
                LabelChange::Pod { pod, .. } => compiled.update_pod(&state.cluster, pod),
                LabelChange::Namespace { namespace, .. } => {
                    compiled.update_namespace(&state.cluster, namespace)
                }
            }
        }
        at_step(sc, &state, &compiled, si);
    }
    Ok((state, compiled))
}
