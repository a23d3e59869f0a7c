//! One kind's watch, translated into datastore [`Event`]s: kube-rs's
//! [`watcher::Event`]s (initial listing, relists after `410 Gone` or a
//! disconnect, changes) become `Applied` / `Deleted` / `Invalid` per key,
//! with the keys that vanished during a relist deleted at its end.
//!
//! While the API server is unreachable nothing is emitted, so the store
//! (and the dataplane) keep the last known state; the relist on reconnect
//! catches up. It does no IO: the stream comes from the caller (kube-rs's
//! watcher with backoff in production, a synthetic stream in tests).

use std::collections::BTreeSet;

use kube::runtime::watcher;
use tokio::sync::mpsc::UnboundedSender;

use super::convert::Outcome;
use crate::datastore::{Event, Key};

/// The state of one kind's translation: which keys it has emitted.
#[derive(Debug, Default)]
pub struct KindReflector {
    /// Keys whose value (or issue) this kind has emitted and not deleted.
    known: BTreeSet<Key>,
    /// Keys seen since the current relist began, if one is in progress.
    relisting: Option<BTreeSet<Key>>,
}

impl KindReflector {
    /// A reflector that has emitted nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys currently known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    fn emit(&mut self, outcomes: Vec<(Key, Outcome)>, out: &mut Vec<Event>) {
        for (key, outcome) in outcomes {
            if let Some(seen) = &mut self.relisting {
                if outcome.is_some() {
                    seen.insert(key.clone());
                }
            }
            match outcome {
                Some(Ok(value)) => {
                    self.known.insert(key.clone());
                    out.push(Event::Applied(key, value));
                }
                Some(Err(issue)) => {
                    self.known.insert(key.clone());
                    out.push(Event::Invalid(key, issue));
                }
                None => {
                    if self.known.remove(&key) {
                        out.push(Event::Deleted(key));
                    }
                }
            }
        }
    }

    /// Translates one watcher event; `convert` gives the keys an object
    /// maps to. Returns true when the event completes a listing.
    pub fn on_event<K>(
        &mut self,
        event: watcher::Event<K>,
        convert: impl Fn(&K) -> Vec<(Key, Outcome)>,
        out: &mut Vec<Event>,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeSet::new());
                false
            }
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                self.emit(convert(&obj), out);
                false
            }
            watcher::Event::Delete(obj) => {
                let gone = convert(&obj).into_iter().map(|(k, _)| (k, None)).collect();
                self.emit(gone, out);
                false
            }
            watcher::Event::InitDone => {
                let seen = self.relisting.take().unwrap_or_default();
                let stale: Vec<Key> = self.known.difference(&seen).cloned().collect();
                for k in stale {
                    self.known.remove(&k);
                    out.push(Event::Deleted(k));
                }
                true
            }
        }
    }
}

/// Tells the watch's consumer [`Event::Synced`] once every kind has
/// completed its first listing (or was found absent).
#[derive(Debug)]
pub struct SyncGate {
    pending: std::sync::Mutex<BTreeSet<&'static str>>,
    tx: UnboundedSender<Event>,
}

impl SyncGate {
    /// A gate waiting for the kinds named.
    pub fn new(kinds: impl IntoIterator<Item = &'static str>, tx: UnboundedSender<Event>) -> Self {
        SyncGate {
            pending: std::sync::Mutex::new(kinds.into_iter().collect()),
            tx,
        }
    }

    /// `kind` has its first listing in (or is absent); sends `Synced` when
    /// it was the last one.
    pub fn done(&self, kind: &'static str) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.remove(kind) && p.is_empty() {
            let _ = self.tx.send(Event::Synced);
        }
    }
}
