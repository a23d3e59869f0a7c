//! Status of the veil.dev policies: conditions `Accepted` / `Invalid` (with
//! the reason naming the object and field) and an Event for every invalid
//! one, written only by the daemon holding the Lease ([`super::lease`]), so
//! that a cluster of many nodes writes each status once.
//!
//! The watchers report every veil.dev object they see ([`StatusMsg`]); the
//! holder patches the status subresource when the object's current status
//! differs from what it should be (so a new holder rewrites nothing that is
//! already right, and its own writes, seen again through the watch, cause
//! no further write). The enforced state is not decided here: an invalid
//! object's last good version stays in force (the store keeps it).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::{Timestamp, Unit};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use veil_policy::status::{
    Condition, ConditionStatus, PolicyStatus, CONDITION_ACCEPTED, CONDITION_INVALID,
};

use super::lease::{LeaseElector, RENEW_INTERVAL};
use super::PolicyKind;
use crate::datastore::{Event, Issue};

/// Name of the Lease electing the status writer.
pub const LEASE_NAME: &str = "veil-status-writer";
/// Field manager of the status patches.
pub const FIELD_MANAGER: &str = "veild";

/// One veil.dev object as last seen, and whether it parses.
#[derive(Debug, Clone)]
pub struct StatusItem {
    /// Its kind.
    pub kind: PolicyKind,
    /// Its datastore origin (`plural.group/namespace/name`).
    pub origin: String,
    /// Namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// UID (for the Event's reference).
    pub uid: Option<String>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Accepted, or why not.
    pub verdict: Result<(), Issue>,
    /// The object's current `status`, if any.
    pub current: Option<serde_json::Value>,
}

/// What the watchers tell the status writer.
#[derive(Debug, Clone)]
pub enum StatusMsg {
    /// An object was seen (listed, created, changed).
    Set(Box<StatusItem>),
    /// The object with this origin was deleted.
    Gone(String),
}

/// The status an item should have (`now` stamps the transition).
pub fn desired_status(item: &StatusItem, now: &str) -> PolicyStatus {
    let (accepted, invalid, reason, message) = match &item.verdict {
        Ok(()) => (
            ConditionStatus::True,
            ConditionStatus::False,
            "Valid",
            String::new(),
        ),
        Err(issue) => (
            ConditionStatus::False,
            ConditionStatus::True,
            "InvalidSpec",
            issue.to_string(),
        ),
    };
    let cond = |t: &str, status| Condition {
        type_: t.to_string(),
        status,
        observed_generation: item.generation,
        last_transition_time: now.to_string(),
        reason: reason.to_string(),
        message: message.clone(),
    };
    PolicyStatus {
        observed_generation: item.generation,
        conditions: vec![
            cond(CONDITION_ACCEPTED, accepted),
            cond(CONDITION_INVALID, invalid),
        ],
    }
}

/// Whether the object's current status already says what `want` says
/// (transition times aside).
pub fn status_matches(current: Option<&serde_json::Value>, want: &PolicyStatus) -> bool {
    let Some(cur) = current.and_then(|v| serde_json::from_value::<PolicyStatus>(v.clone()).ok())
    else {
        return false;
    };
    let strip = |s: &PolicyStatus| -> BTreeSet<(String, String, Option<i64>, String, String)> {
        s.conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    format!("{:?}", c.status),
                    c.observed_generation,
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect()
    };
    cur.observed_generation == want.observed_generation && strip(&cur) == strip(want)
}

fn now_rfc3339() -> String {
    Timestamp::now()
        .round(Unit::Second)
        .unwrap_or_else(|_| Timestamp::now())
        .to_string()
}

/// Patches one object's status subresource; `Ok(false)` if the object is gone.
pub async fn write_status(
    client: &Client,
    item: &StatusItem,
    status: &PolicyStatus,
) -> Result<bool, kube::Error> {
    let ar = item.kind.api_resource();
    let api: Api<DynamicObject> = match &item.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let patch = serde_json::json!({ "status": status });
    match api
        .patch_status(
            &item.name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

fn reference(item: &StatusItem) -> ObjectReference {
    ObjectReference {
        api_version: Some(item.kind.api_version()),
        kind: Some(item.kind.kind.to_string()),
        name: Some(item.name.clone()),
        namespace: item.namespace.clone(),
        uid: item.uid.clone(),
        ..ObjectReference::default()
    }
}

type Evented = BTreeSet<(String, Option<i64>, String)>;

fn take(
    m: StatusMsg,
    items: &mut BTreeMap<String, StatusItem>,
    dirty: &mut BTreeSet<String>,
    evented: &mut Evented,
) {
    match m {
        StatusMsg::Set(item) => {
            dirty.insert(item.origin.clone());
            items.insert(item.origin.clone(), *item);
        }
        StatusMsg::Gone(origin) => {
            items.remove(&origin);
            dirty.remove(&origin);
            evented.retain(|(o, _, _)| *o != origin);
        }
    }
}

/// The status writer: renews (or waits for) the Lease, and while holding
/// it brings every reported object's status in line. Runs until the
/// watchers are gone (`watch_tx`: the watch's sender, closed when the
/// watch's receiver is dropped).
pub async fn run(
    client: Client,
    elector: LeaseElector,
    node: String,
    mut rx: UnboundedReceiver<StatusMsg>,
    watch_tx: UnboundedSender<Event>,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "veild".into(),
            instance: Some(node.clone()),
        },
    );
    let mut items: BTreeMap<String, StatusItem> = BTreeMap::new();
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    // (origin, generation, message) already reported by an Event.
    let mut evented = Evented::new();
    let mut leader = false;
    let mut tick = tokio::time::interval(RENEW_INTERVAL);
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    take(m, &mut items, &mut dirty, &mut evented);
                    while let Ok(m) = rx.try_recv() {
                        take(m, &mut items, &mut dirty, &mut evented);
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                if watch_tx.is_closed() {
                    return;
                }
                let was = leader;
                leader = match elector.try_acquire_or_renew(Timestamp::now()).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "kubernetes: status Lease not renewed");
                        false
                    }
                };
                if leader && !was {
                    tracing::info!(node = %node, lease = LEASE_NAME, "kubernetes: this node now writes policy status");
                    dirty.extend(items.keys().cloned());
                } else if was && !leader {
                    tracing::info!(node = %node, "kubernetes: no longer the policy status writer");
                }
            }
        }
        if !leader {
            continue;
        }
        for origin in std::mem::take(&mut dirty) {
            let Some(item) = items.get(&origin) else {
                continue;
            };
            let want = desired_status(item, &now_rfc3339());
            if !status_matches(item.current.as_ref(), &want) {
                match write_status(&client, item, &want).await {
                    Ok(true) => {
                        tracing::info!(object = %origin, accepted = item.verdict.is_ok(), "kubernetes: policy status written")
                    }
                    Ok(false) => {
                        items.remove(&origin);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(object = %origin, error = %e, "kubernetes: writing policy status");
                        dirty.insert(origin.clone());
                        continue;
                    }
                }
            }
            if let Err(issue) = &item.verdict {
                let once = (origin.clone(), item.generation, issue.to_string());
                if !evented.contains(&once) {
                    let ev = KubeEvent {
                        type_: EventType::Warning,
                        reason: "InvalidPolicy".into(),
                        note: Some(issue.to_string()),
                        action: "Validate".into(),
                        secondary: None,
                    };
                    match recorder.publish(&ev, &reference(item)).await {
                        Ok(()) => {
                            evented.insert(once);
                        }
                        Err(e) => {
                            tracing::warn!(object = %origin, error = %e, "kubernetes: raising the invalid-policy Event")
                        }
                    }
                }
            }
        }
    }
}
