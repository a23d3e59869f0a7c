//! `veilctl lab test`: runs a scenario as real traffic. Builds the scenario's
//! cluster in a lab of its own, writes its policies into the lab's datastore
//! (where every node's `veild` reads them), then for each step applies its
//! changes (policies created, replaced or deleted; pod and namespace labels),
//! waits until every daemon reports it applied ([`super::applied`]), and sends each probe from its source pod
//! ([`super::probe`]), the probes of one step concurrently. The lab is
//! removed at the end unless kept.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use veil_policy::eval::Verdict;
use veil_policy::model::ObjectKey;
use veil_scenario::{LabelChange, Probe, ProbeTarget, Scenario, NS_NAME_LABEL};

use super::applied::{StatusSource, Wait};
use super::plan::Plan;
use super::probe::{HttpRequest, ProbeResult, ProbeSpec, Target};
use super::state::LabState;
use super::up::{pod_record, Binaries, UpOptions};
use super::LabError;
use veil_daemon::datastore::local::LocalDatastore;
use veil_daemon::datastore::{DatastoreWriter, NamespaceRecord};

/// How one probe went.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Step number (0-based).
    pub step: usize,
    /// Probe number within the step (0-based).
    pub index: usize,
    /// The probe.
    pub probe: Probe,
    /// What the traffic did.
    pub result: ProbeResult,
}

impl Outcome {
    /// The verdict the traffic got.
    pub fn verdict(&self) -> Verdict {
        if self.result.allowed() {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// Whether it is the expected one.
    pub fn passed(&self) -> bool {
        self.verdict() == self.probe.expect
    }
}

/// Options of one scenario run.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Lab name.
    pub lab: String,
    /// Programs.
    pub binaries: Binaries,
    /// Extra time after the daemons report a change applied, before probes run.
    pub settle: Duration,
    /// Keep the lab afterwards.
    pub keep: bool,
}

/// The policy files of a lab's datastore, one per object, under `lab-test/`.
struct PolicyFiles<'a> {
    store: &'a dyn DatastoreWriter,
    files: BTreeMap<String, String>,
    next: usize,
}

fn key_string(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{group}/{kind}/{}/{name}", namespace.unwrap_or(""))
}

fn object_key(k: &ObjectKey) -> String {
    key_string(
        k.kind.group(),
        k.kind.name(),
        k.namespace.as_deref(),
        &k.name,
    )
}

fn file_stem(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl<'a> PolicyFiles<'a> {
    fn new(store: &'a dyn DatastoreWriter) -> Self {
        PolicyFiles {
            store,
            files: BTreeMap::new(),
            next: 0,
        }
    }

    /// Creates or replaces the object `key` with `manifest`.
    fn apply(&mut self, key: String, manifest: &serde_yaml::Value) -> Result<(), LabError> {
        let name = match self.files.get(&key) {
            Some(n) => n.clone(),
            None => {
                let n = format!("lab-test/{:04}-{}.yaml", self.next, file_stem(&key));
                self.next += 1;
                self.files.insert(key, n.clone());
                n
            }
        };
        let text = serde_yaml::to_string(manifest).map_err(|e| {
            LabError::io(
                Path::new(&name),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        Ok(self.store.put_policies(&name, &text)?)
    }

    fn delete(&mut self, key: &str) -> Result<(), LabError> {
        if let Some(n) = self.files.remove(key) {
            self.store.delete_policies(&n)?;
        }
        Ok(())
    }
}

/// The probe the lab sends for a scenario probe.
pub fn probe_spec(state: &LabState, probe: &Probe) -> ProbeSpec {
    let dns_server = state
        .pods
        .iter()
        .find(|p| p.namespace == "kube-system" && p.name == "kube-dns")
        .and_then(|p| p.ip);
    let target = match &probe.to {
        ProbeTarget::Pod(_) => Target::Ip(probe.dst),
        ProbeTarget::Name(n) => Target::Name(n.clone()),
        ProbeTarget::Ip(ip) => Target::Ip(*ip),
    };
    ProbeSpec {
        target,
        port: probe.port,
        protocol: probe.protocol.to_string(),
        http: probe.http.as_ref().map(|h| HttpRequest {
            method: h.method.clone(),
            path: h.path.clone(),
        }),
        host: probe.http.as_ref().map(|h| h.host.clone()),
        dns_query: probe
            .dns_query
            .then(|| "kube-dns.kube-system.svc.cluster.local".to_string()),
        dns_server,
        timeout_ms: None,
    }
}

/// Runs scenario `sc` in a new lab; `report` gets each outcome as it comes.
pub fn run(
    sc: &Scenario,
    scenario_path: &Path,
    opts: &TestOptions,
    report: &mut dyn FnMut(&Outcome),
) -> Result<Vec<Outcome>, LabError> {
    let plan = Plan::from_scenario(&opts.lab, sc)?;
    let up = UpOptions {
        plan: plan.clone(),
        binaries: opts.binaries.clone(),
        scenario: Some(scenario_path.to_path_buf()),
        keep_on_error: opts.keep,
    };
    let state = super::up::up(&up, &mut |w| eprintln!("warning: {w}"))?;
    let result = run_steps(sc, &plan, &state, opts, report);
    if !opts.keep {
        super::down::down(&opts.lab)?;
    }
    result
}

fn run_steps(
    sc: &Scenario,
    plan: &Plan,
    state: &LabState,
    opts: &TestOptions,
    report: &mut dyn FnMut(&Outcome),
) -> Result<Vec<Outcome>, LabError> {
    let store = LocalDatastore::open(state.datastore_dir())?;
    let mut daemons = super::applied::Daemons(
        state
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.socket.clone()))
            .collect(),
    );
    let mut before = daemons.generations().map_err(LabError::NotApplied)?;
    let mut files = PolicyFiles::new(&store);
    for (manifest, object) in &sc.policies {
        files.apply(object_key(&object.key), manifest)?;
    }
    let mut pods: BTreeMap<String, veil_daemon::datastore::PodRecord> = plan
        .pods
        .iter()
        .map(|p| (p.full_name(), pod_record(p)))
        .collect();
    let ordered = sc
        .policies
        .iter()
        .chain(sc.steps.iter().flat_map(|s| s.apply.iter()))
        .any(|(_, o)| has_domains(o));
    let mut outcomes = Vec::new();
    for (si, step) in sc.steps.iter().enumerate() {
        let changed =
            si == 0 || !step.apply.is_empty() || !step.delete.is_empty() || !step.labels.is_empty();
        for (manifest, object) in &step.apply {
            files.apply(object_key(&object.key), manifest)?;
        }
        for key in &step.delete {
            files.delete(&object_key(key))?;
        }
        for change in &step.labels {
            match change {
                LabelChange::Pod { pod, labels } => {
                    if let Some(rec) = pods.get_mut(pod) {
                        rec.labels = labels.clone();
                        store.put_pod(rec)?;
                    }
                }
                LabelChange::Namespace { namespace, labels } => {
                    let mut labels = labels.clone();
                    labels.remove(NS_NAME_LABEL);
                    store.put_namespace(&NamespaceRecord {
                        name: namespace.clone(),
                        labels,
                    })?;
                }
            }
        }
        if changed {
            super::applied::wait_applied(&mut daemons, &before, Wait::default())
                .map_err(|e| LabError::NotApplied(format!("step {si}: {e}")))?;
            std::thread::sleep(opts.settle);
            before = daemons.generations().map_err(LabError::NotApplied)?;
        }
        // The step's probes run concurrently (a denied probe waits for its
        // timeout), and are reported in order; but in order, one by one,
        // when a policy has `domains` peers: a probe resolving a name
        // allows the addresses it resolved to for the probes after it.
        let specs = step
            .probes
            .iter()
            .map(|probe| {
                let from = state
                    .pod(&probe.from)
                    .ok_or_else(|| state.no_such("pod", &probe.from))?;
                Ok((from.netns.clone(), probe_spec(state, probe)))
            })
            .collect::<Result<Vec<_>, LabError>>()?;
        let run = |(netns, spec): &(String, ProbeSpec), probe: &Probe| {
            super::probe::run_in(netns, &opts.binaries.veilctl, spec, &probe.from)
        };
        let results: Vec<Result<ProbeResult, LabError>> = if ordered {
            specs
                .iter()
                .zip(&step.probes)
                .map(|(s, p)| run(s, p))
                .collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = specs
                    .iter()
                    .zip(&step.probes)
                    .map(|(s, p)| scope.spawn(move || run(s, p)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        for (pi, (probe, result)) in step.probes.iter().zip(results).enumerate() {
            let o = Outcome {
                step: si,
                index: pi,
                probe: probe.clone(),
                result: result?,
            };
            report(&o);
            outcomes.push(o);
        }
    }
    Ok(outcomes)
}

/// Whether a rule of the object has a `domains` peer.
fn has_domains(o: &veil_policy::Object) -> bool {
    let veil_policy::kinds::ObjectBody::Policy(p) = &o.body else {
        return false;
    };
    p.ingress
        .iter()
        .chain(&p.egress)
        .flat_map(|r| &r.peers)
        .any(|peer| !peer.domains.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_files_are_replaced_by_key_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDatastore::open(dir.path()).unwrap();
        let mut f = PolicyFiles::new(&store);
        let a: serde_yaml::Value =
            serde_yaml::from_str("kind: Tier\nmetadata: {name: a}\nspec: {order: 1}").unwrap();
        let b: serde_yaml::Value =
            serde_yaml::from_str("kind: Tier\nmetadata: {name: a}\nspec: {order: 2}").unwrap();
        let key = key_string("veil.dev", "Tier", None, "a");
        f.apply(key.clone(), &a).unwrap();
        f.apply(key.clone(), &b).unwrap();
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("policies/lab-test"))
            .unwrap()
            .collect();
        assert_eq!(entries.len(), 1, "one file per object");
        let path = dir.path().join("policies").join(&f.files[&key]);
        assert!(std::fs::read_to_string(&path).unwrap().contains("order: 2"));
        f.delete(&key).unwrap();
        assert!(!path.exists());
        f.delete(&key).unwrap();
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(
            file_stem("networking.k8s.io/NetworkPolicy/x/deny-all"),
            "networking.k8s.io_NetworkPolicy_x_deny-all"
        );
        assert!(!file_stem("../../etc/passwd").contains('/'));
    }

    #[test]
    fn probes_to_pods_go_to_their_address_with_the_scenario_host() {
        let sc = Scenario::parse(
            "name: s\nnamespaces: [{name: x}]\npods:\n  - {name: x/a, ports: [{port: 80}]}\n  - {name: x/b, ports: [{port: 80}]}\nprobes:\n  - {from: x/a, to: x/b, port: 80, expect: allow}\n  - {from: x/a, to: kube-system/kube-dns, port: 53, protocol: UDP, expect: allow}\n",
        )
        .unwrap();
        let state = LabState::new("t");
        let p = &sc.steps[0].probes[0];
        let spec = probe_spec(&state, p);
        assert_eq!(spec.target, Target::Ip(p.dst));
        assert_eq!(spec.protocol, "TCP");
        assert_eq!(spec.host.as_deref(), Some("b.x"));
        assert_eq!(spec.http.as_ref().unwrap().method, "GET");
        let dns = probe_spec(&state, &sc.steps[0].probes[1]);
        assert!(dns.dns_query.is_some());
        assert_eq!(dns.protocol, "UDP");
    }
}
