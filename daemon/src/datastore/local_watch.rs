//! The local datastore's watch: inotify (through `notify`) on the directory,
//! re-parsing only the files an event names.
//!
//! A thread owns the inotify watcher and a [`Scanner`], which remembers for
//! every YAML file its fingerprint (inode, size, mtime, ctime) and the keys it
//! produced, so that a changed file becomes [`Event::Applied`] /
//! [`Event::Invalid`] for what it holds now and [`Event::Deleted`] for what it
//! no longer holds. Events are coalesced for a few milliseconds, so that a
//! file written in several system calls is parsed once.
//!
//! A full scan runs at start, when inotify reports lost events (queue
//! overflow), and every [`RESCAN_EVERY`] as a safety net: inotify sees
//! nothing of changes made through another mount of the same files (bind
//! mounts in other namespaces, network filesystems). A scan costs one `stat`
//! per file and re-parses only files whose fingerprint changed.
//!
//! If inotify cannot start (the per-user limit of instances), the thread
//! scans every [`POLL_FALLBACK`] instead, with the same fingerprints.
//!
//! It does not write anything.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::mpsc::UnboundedSender;

use super::{DatastoreError, Event, Issue, Key, Kind, PolicyDocument, Resource};

/// The safety-net rescan period.
pub const RESCAN_EVERY: Duration = Duration::from_secs(30);
/// The scan period when inotify is not available.
pub const POLL_FALLBACK: Duration = Duration::from_millis(500);
/// How long events are collected before files are re-read.
const SETTLE: Duration = Duration::from_millis(15);
/// The longest a burst of events delays re-reading.
const SETTLE_MAX: Duration = Duration::from_millis(100);

/// The kind directories and their kinds.
pub(super) const KIND_DIRS: [(&str, Kind); 7] = [
    ("nodes", Kind::Node),
    ("namespaces", Kind::Namespace),
    ("pods", Kind::Pod),
    ("endpoints", Kind::Endpoint),
    ("services", Kind::Service),
    ("endpointslices", Kind::EndpointSlice),
    ("policies", Kind::Policy),
];

type Fingerprint = (u64, u64, u64, i64, i64, i64, i64);

fn fingerprint(m: &std::fs::Metadata) -> Fingerprint {
    (
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

fn is_yaml(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

#[derive(Debug, Default)]
struct FileState {
    fingerprint: Option<Fingerprint>,
    keys: BTreeSet<Key>,
}

/// What the watch knows of the directory.
#[derive(Debug)]
pub(super) struct Scanner {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

impl Scanner {
    pub(super) fn new(dir: &Path) -> Self {
        Scanner {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        }
    }

    /// The kind and the path relative to the kind's directory, for paths
    /// inside one of the kind directories.
    fn classify(&self, path: &Path) -> Option<(Kind, &'static str, String)> {
        let rel = path.strip_prefix(&self.dir).ok()?;
        let mut comps = rel.components();
        let first = comps.next()?.as_os_str().to_str()?;
        let (dir, kind) = KIND_DIRS.iter().find(|(d, _)| *d == first)?;
        let rest: PathBuf = comps.collect();
        Some((*kind, dir, rest.to_string_lossy().into_owned()))
    }

    /// Re-reads every file; files whose fingerprint did not change are not
    /// parsed again, files gone are deleted.
    pub(super) fn full_scan(&mut self, emit: &mut dyn FnMut(Event)) {
        let mut seen = HashSet::new();
        for (d, _) in KIND_DIRS {
            let root = self.dir.join(d);
            self.scan_dir(&root, &mut seen, emit);
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            self.forget(&p, emit);
        }
    }

    fn scan_dir(&mut self, dir: &Path, seen: &mut HashSet<PathBuf>, emit: &mut dyn FnMut(Event)) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => self.scan_dir(&p, seen, emit),
                Ok(m) if m.is_file() && is_yaml(&p) => {
                    seen.insert(p.clone());
                    self.refresh_file(&p, Some(&m), false, emit);
                }
                _ => {}
            }
        }
    }

    /// Something happened at `path` (a file, a directory, or nothing any
    /// more): brings what the watch knows of it up to date. Files are
    /// re-parsed even when their fingerprint looks unchanged (mtimes are
    /// coarse; the event is the better witness).
    pub(super) fn refresh(&mut self, path: &Path, emit: &mut dyn FnMut(Event)) {
        if path != self.dir && self.classify(path).is_none() {
            return;
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                // A directory appeared or was renamed in: files created in it
                // before inotify watched it have sent no event.
                let mut seen = HashSet::new();
                self.scan_dir(path, &mut seen, emit);
                let gone: Vec<PathBuf> = self
                    .files
                    .keys()
                    .filter(|p| p.starts_with(path) && !seen.contains(*p))
                    .cloned()
                    .collect();
                for p in gone {
                    self.forget(&p, emit);
                }
            }
            Ok(m) if m.is_file() => {
                if is_yaml(path) {
                    self.refresh_file(path, Some(&m), true, emit);
                }
            }
            Ok(_) => {}
            Err(_) => {
                // Gone: the file itself, or a directory and all below it.
                let gone: Vec<PathBuf> = self
                    .files
                    .keys()
                    .filter(|p| p.starts_with(path))
                    .cloned()
                    .collect();
                for p in gone {
                    self.forget(&p, emit);
                }
            }
        }
    }

    fn forget(&mut self, path: &Path, emit: &mut dyn FnMut(Event)) {
        if let Some(state) = self.files.remove(path) {
            for k in state.keys {
                emit(Event::Deleted(k));
            }
        }
    }

    fn refresh_file(
        &mut self,
        path: &Path,
        meta: Option<&std::fs::Metadata>,
        force: bool,
        emit: &mut dyn FnMut(Event),
    ) {
        let Some((kind, dir, rel)) = self.classify(path) else {
            return;
        };
        let fp = meta.map(fingerprint);
        if !force && fp.is_some() {
            if let Some(state) = self.files.get(path) {
                if state.fingerprint == fp {
                    return;
                }
            }
        }
        let object = format!("{dir}/{rel}");
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(path, emit);
                return;
            }
            Err(e) => {
                let key = if kind == Kind::Policy {
                    Key::new(kind, format!("{rel}#0"))
                } else {
                    Key::new(kind, rel)
                };
                let issue = Issue {
                    object,
                    field: "(file)".into(),
                    reason: e.to_string(),
                };
                let state = self.files.entry(path.to_path_buf()).or_default();
                state.fingerprint = None;
                state.keys.insert(key.clone());
                emit(Event::Invalid(key, issue));
                return;
            }
        };
        let parsed = parse(kind, &rel, &object, &text);
        let state = self.files.entry(path.to_path_buf()).or_default();
        state.fingerprint = fp;
        let mut keys = BTreeSet::new();
        for (key, value) in parsed.entries {
            keys.insert(key.clone());
            emit(match value {
                Ok(v) => Event::Applied(key, v),
                Err(issue) => Event::Invalid(key, issue),
            });
        }
        for old in std::mem::take(&mut state.keys) {
            if keys.contains(&old) {
                continue;
            }
            // Documents after one that does not parse are unknown: keep them.
            if parsed
                .unread_from
                .is_some_and(|i| doc_index(&old) > Some(i))
            {
                keys.insert(old);
            } else {
                emit(Event::Deleted(old));
            }
        }
        state.keys = keys;
    }
}

fn doc_index(k: &Key) -> Option<usize> {
    k.name.rsplit_once('#').and_then(|(_, i)| i.parse().ok())
}

/// What one file holds.
struct Parsed {
    entries: Vec<(Key, Result<Resource, Issue>)>,
    /// Index of the document that did not parse, after which nothing was read.
    unread_from: Option<usize>,
}

fn record<T: serde::de::DeserializeOwned>(object: &str, text: &str) -> Result<T, Issue> {
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|e| {
        let path = e.path().to_string();
        Issue {
            object: object.to_string(),
            field: if path == "." {
                "(document)".into()
            } else {
                path
            },
            reason: e.into_inner().to_string(),
        }
    })
}

/// Parses the text of one file of `kind` (path `rel` in the kind's directory).
fn parse(kind: Kind, rel: &str, object: &str, text: &str) -> Parsed {
    let one = |r: Result<Resource, Issue>| Parsed {
        entries: vec![(Key::new(kind, rel), r)],
        unread_from: None,
    };
    match kind {
        Kind::Node => one(record(object, text).map(Resource::Node)),
        Kind::Namespace => one(record(object, text).map(Resource::Namespace)),
        Kind::Pod => one(record(object, text).map(Resource::Pod)),
        Kind::Endpoint => one(record(object, text).map(Resource::Endpoint)),
        Kind::Service => one(record(object, text).map(Resource::Service)),
        Kind::EndpointSlice => one(record(object, text).map(Resource::EndpointSlice)),
        Kind::Policy => {
            let mut entries = Vec::new();
            let mut unread_from = None;
            for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
                let key = Key::new(Kind::Policy, format!("{rel}#{i}"));
                match serde_yaml::Value::deserialize(doc) {
                    Ok(serde_yaml::Value::Null) => {}
                    Ok(manifest) => entries.push((
                        key,
                        Ok(Resource::Policy(PolicyDocument {
                            origin: format!("{object}#{i}"),
                            manifest,
                        })),
                    )),
                    Err(e) => {
                        entries.push((
                            key,
                            Err(Issue {
                                object: object.to_string(),
                                field: format!("(document {})", i + 1),
                                reason: e.to_string(),
                            }),
                        ));
                        unread_from = Some(i);
                        break;
                    }
                }
            }
            Parsed {
                entries,
                unread_from,
            }
        }
    }
}

fn wanted(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// Starts the watch thread on `dir`: the initial listing, [`Event::Synced`],
/// then changes. The thread ends when `tx`'s receiver is dropped.
///
/// Without inotify (`use_inotify` false, or when it cannot start, e.g. the
/// per-user limit of inotify instances is reached) the thread falls back to
/// a scan every [`POLL_FALLBACK`], which still re-parses only changed files.
pub(super) fn start(
    dir: &Path,
    tx: UnboundedSender<Event>,
    use_inotify: bool,
) -> Result<(), DatastoreError> {
    let (ntx, nrx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
    // Keeps the channel open when there is no watcher.
    let keep_open = ntx.clone();
    let watcher = if use_inotify {
        let started = notify::recommended_watcher(move |res| {
            let _ = ntx.send(res);
        })
        .and_then(|mut w| {
            // Watch before the initial scan, so that nothing written in between is missed.
            notify::Watcher::watch(&mut w, dir, notify::RecursiveMode::Recursive).map(|()| w)
        });
        match started {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    path = %dir.display(),
                    error = %DatastoreError::Watch { path: dir.display().to_string(), error: e },
                    every_ms = POLL_FALLBACK.as_millis() as u64,
                    "inotify unavailable; scanning the datastore periodically instead"
                );
                None
            }
        }
    } else {
        None
    };
    let rescan_every = if watcher.is_some() {
        RESCAN_EVERY
    } else {
        POLL_FALLBACK
    };
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("veil-datastore".into())
        .spawn(move || {
            let _watcher = watcher;
            let _keep_open = keep_open;
            let mut scanner = Scanner::new(&dir);
            let mut emit = |e: Event| {
                let _ = tx.send(e);
            };
            scanner.full_scan(&mut emit);
            emit(Event::Synced);
            let mut next_rescan = Instant::now() + rescan_every;
            loop {
                let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
                let mut rescan = false;
                let mut collect = |r: notify::Result<notify::Event>| match r {
                    Ok(ev) => {
                        if ev.need_rescan() {
                            rescan = true;
                        }
                        if wanted(&ev.kind) {
                            paths.extend(ev.paths);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "datastore watch error; rescanning");
                        rescan = true;
                    }
                };
                let wait = next_rescan.saturating_duration_since(Instant::now());
                match nrx.recv_timeout(wait) {
                    Ok(r) => collect(r),
                    // Time for the safety-net rescan (checked below).
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                let started = Instant::now();
                while started.elapsed() < SETTLE_MAX {
                    match nrx.recv_timeout(SETTLE) {
                        Ok(r) => collect(r),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                if tx.is_closed() {
                    return;
                }
                if rescan || Instant::now() >= next_rescan {
                    scanner.full_scan(&mut emit);
                    next_rescan = Instant::now() + rescan_every;
                } else {
                    for p in &paths {
                        scanner.refresh(p, &mut emit);
                    }
                }
            }
        })
        .map_err(|e| DatastoreError::Io {
            path: "datastore watch thread".into(),
            source: e,
        })?;
    Ok(())
}
