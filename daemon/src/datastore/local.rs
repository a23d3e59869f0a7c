//! The `local` datastore: a directory shared by every daemon on one machine.
//!
//! Layout (every file YAML):
//! ```text
//! <dir>/nodes/<node>.yaml                       NodeRecord (written by that node's veild)
//! <dir>/namespaces/<ns>.yaml                    NamespaceRecord
//! <dir>/pods/<ns>/<pod>.yaml                    PodRecord (labels, node, ports)
//! <dir>/endpoints/<node>/<container>_<if>.yaml  EndpointRecord (written by veild)
//! <dir>/policies/**/*.yaml                      Kubernetes manifests, several per file with `---`
//! ```
//! Writes go to a temporary file that is renamed into place, so a reader never
//! sees half a file. Watching is by polling (see [`watch`]): the directory is small
//! and polling works on every filesystem.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    Datastore, DatastoreError, EndpointRecord, NamespaceRecord, NodeRecord, PodRecord,
    PolicyDocument, Snapshot,
};

/// A datastore in a directory.
#[derive(Debug, Clone)]
pub struct LocalDatastore {
    dir: PathBuf,
}

fn check_name(name: &str) -> Result<&str, DatastoreError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && name != "."
        && name != "..";
    if ok {
        Ok(name)
    } else {
        Err(DatastoreError::InvalidName(name.to_string()))
    }
}

impl LocalDatastore {
    /// Opens (creating if needed) the datastore at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, DatastoreError> {
        let dir = dir.into();
        for sub in ["nodes", "namespaces", "pods", "endpoints", "policies"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|source| DatastoreError::Io {
                path: p.display().to_string(),
                source,
            })?;
        }
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write<T: Serialize>(&self, path: PathBuf, value: &T) -> Result<(), DatastoreError> {
        let text = serde_yaml::to_string(value).map_err(|source| DatastoreError::Encode {
            path: path.display().to_string(),
            source,
        })?;
        write_atomic(&path, text.as_bytes())
    }

    fn remove(&self, path: PathBuf) -> Result<(), DatastoreError> {
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DatastoreError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes a policy file (one or more manifests) under `policies/`.
    pub fn put_policy_file(&self, file_name: &str, text: &str) -> Result<(), DatastoreError> {
        let name = check_name(file_name)?;
        write_atomic(&self.dir.join("policies").join(name), text.as_bytes())
    }

    /// Removes a policy file under `policies/`.
    pub fn delete_policy_file(&self, file_name: &str) -> Result<(), DatastoreError> {
        let name = check_name(file_name)?;
        self.remove(self.dir.join("policies").join(name))
    }
}

/// Writes `bytes` to `path` atomically ([`crate::fsutil::write_atomic`]),
/// creating its directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DatastoreError> {
    let io = |source| DatastoreError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    crate::fsutil::write_atomic(path, bytes, None).map_err(io)
}

fn yaml_files(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if recursive {
                yaml_files(&p, true, out);
            }
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        ) {
            out.push(p);
        }
    }
}

fn read_records<T: DeserializeOwned>(dir: &Path, errors: &mut Vec<String>) -> Vec<T> {
    let mut files = Vec::new();
    yaml_files(dir, true, &mut files);
    let mut out = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => match serde_yaml::from_str::<T>(&text) {
                Ok(v) => out.push(v),
                Err(e) => errors.push(format!("{}: {e}", f.display())),
            },
            // Removed between listing and reading: not an error.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{}: {e}", f.display())),
        }
    }
    out
}

impl Datastore for LocalDatastore {
    fn snapshot(&self) -> Snapshot {
        let mut errors = Vec::new();
        let nodes: Vec<NodeRecord> = read_records(&self.dir.join("nodes"), &mut errors);
        let namespaces = read_records(&self.dir.join("namespaces"), &mut errors);
        let pods = read_records(&self.dir.join("pods"), &mut errors);
        let endpoints = read_records(&self.dir.join("endpoints"), &mut errors);
        let mut policies = Vec::new();
        let mut files = Vec::new();
        yaml_files(&self.dir.join("policies"), true, &mut files);
        for f in files {
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    errors.push(format!("{}: {e}", f.display()));
                    continue;
                }
            };
            for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                match serde_yaml::Value::deserialize(doc) {
                    Ok(serde_yaml::Value::Null) => {}
                    Ok(manifest) => policies.push(PolicyDocument {
                        origin: format!("{}#{}", f.display(), i),
                        manifest,
                    }),
                    Err(e) => errors.push(format!("{} (document {}): {e}", f.display(), i + 1)),
                }
            }
        }
        Snapshot {
            nodes,
            namespaces,
            pods,
            endpoints,
            policies,
            errors,
        }
    }

    fn put_node(&self, node: &NodeRecord) -> Result<(), DatastoreError> {
        let name = check_name(&node.name)?;
        self.write(self.dir.join("nodes").join(format!("{name}.yaml")), node)
    }

    fn put_endpoint(&self, ep: &EndpointRecord) -> Result<(), DatastoreError> {
        let node = check_name(&ep.node)?;
        let file = format!(
            "{}_{}.yaml",
            check_name(&ep.container_id)?,
            check_name(&ep.ifname)?
        );
        self.write(self.dir.join("endpoints").join(node).join(file), ep)
    }

    fn delete_endpoint(
        &self,
        node: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), DatastoreError> {
        let file = format!("{}_{}.yaml", check_name(container_id)?, check_name(ifname)?);
        self.remove(
            self.dir
                .join("endpoints")
                .join(check_name(node)?)
                .join(file),
        )
    }

    fn put_pod(&self, pod: &PodRecord) -> Result<(), DatastoreError> {
        let path = self
            .dir
            .join("pods")
            .join(check_name(&pod.namespace)?)
            .join(format!("{}.yaml", check_name(&pod.name)?));
        self.write(path, pod)
    }

    fn put_namespace(&self, ns: &NamespaceRecord) -> Result<(), DatastoreError> {
        let path = self
            .dir
            .join("namespaces")
            .join(format!("{}.yaml", check_name(&ns.name)?));
        self.write(path, ns)
    }
}

/// Polls `store` every `interval` and publishes a new snapshot whenever it changes.
/// The task ends when every receiver is gone.
pub fn watch(
    store: Arc<dyn Datastore>,
    interval: Duration,
) -> tokio::sync::watch::Receiver<Arc<Snapshot>> {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(store.snapshot()));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let s2 = store.clone();
            let Ok(snap) = tokio::task::spawn_blocking(move || s2.snapshot()).await else {
                continue;
            };
            if **tx.borrow() != snap {
                if tx.send(Arc::new(snap)).is_err() {
                    return;
                }
            } else if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn records_round_trip_through_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ds = LocalDatastore::open(dir.path()).unwrap();
        let node = NodeRecord {
            name: "node-a".into(),
            address: "198.18.0.10".parse().unwrap(),
            pod_cidrs: vec!["10.244.0.0/24".parse().unwrap()],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        };
        ds.put_node(&node).unwrap();
        ds.put_pod(&PodRecord {
            namespace: "x".into(),
            name: "a".into(),
            labels: [("app".to_string(), "a".to_string())].into(),
            node: Some("node-a".into()),
            host_network: false,
            service_account: None,
            ports: vec![],
        })
        .unwrap();
        ds.put_policy_file(
            "p.yaml",
            "kind: NetworkPolicy\nmetadata: {name: a}\n---\nkind: Tier\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("nodes/broken.yaml"), "name: [").unwrap();
        let snap = ds.snapshot();
        assert_eq!(snap.nodes, vec![node]);
        assert_eq!(snap.pod("x", "a").unwrap().labels["app"], "a");
        assert_eq!(snap.policies.len(), 2);
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert!(snap.errors[0].contains("broken.yaml"));
    }

    #[test]
    fn names_that_escape_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ds = LocalDatastore::open(dir.path()).unwrap();
        assert!(ds.delete_endpoint("..", "x", "eth0").is_err());
        assert!(ds.put_policy_file("../x.yaml", "").is_err());
        // Deleting what is not there is success.
        ds.delete_endpoint("node-a", "abc", "eth0").unwrap();
    }
}
