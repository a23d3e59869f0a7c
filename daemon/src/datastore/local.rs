//! The `local` datastore: a directory shared by every daemon on one machine.
//!
//! Layout (every file YAML):
//! ```text
//! <dir>/nodes/<node>.yaml                       NodeRecord (written by that node's veild)
//! <dir>/namespaces/<ns>.yaml                    NamespaceRecord
//! <dir>/pods/<ns>/<pod>.yaml                    PodRecord (labels, node, ports)
//! <dir>/endpoints/<node>/<container>_<if>.yaml  EndpointRecord (written by veild)
//! <dir>/services/<ns>/<service>.yaml            ServiceRecord (cluster IPs, selector, ports)
//! <dir>/endpointslices/<ns>/<slice>.yaml        EndpointSliceRecord (selector-less Services)
//! <dir>/policies/**/*.yaml                      Kubernetes manifests, several per file with `---`
//! ```
//! Keys are the paths relative to the kind's directory (`shop/web.yaml`;
//! `lab-test/0001-x.yaml#0` for the first document of a policy file).
//! Writes go to a temporary file that is renamed into place, so a reader never
//! sees half a file; the lab and the tests also write these files themselves,
//! with any editor-like method (in place, or a temporary file renamed over).
//! Changes are noticed with inotify (see `local_watch`), re-parsing only the
//! files that changed.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::local_watch;
use super::store::{Changes, Store};
use super::{
    Datastore, DatastoreError, DatastoreWriter, EndpointRecord, Event, EventStream,
    NamespaceRecord, NodeRecord, PodRecord, ServiceRecord,
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
        for sub in [
            "nodes",
            "namespaces",
            "pods",
            "endpoints",
            "services",
            "endpointslices",
            "policies",
        ] {
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

    /// `policies/<name>`, where `name` may have sub-directories (`lab-test/x.yaml`).
    fn policy_path(&self, name: &str) -> Result<PathBuf, DatastoreError> {
        let mut path = self.dir.join("policies");
        for part in name.split('/') {
            check_name(part).map_err(|_| DatastoreError::InvalidName(name.to_string()))?;
            path.push(part);
        }
        Ok(path)
    }

    /// Reads the whole directory once (no watch): the store after the
    /// initial listing.
    pub fn load(&self) -> Store {
        let mut store = Store::new();
        let mut changes = Changes::default();
        local_watch::Scanner::new(&self.dir).full_scan(&mut |e| store.apply(e, &mut changes));
        store.apply(Event::Synced, &mut changes);
        store
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

impl Datastore for LocalDatastore {
    fn watch(&self) -> Result<EventStream, DatastoreError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        local_watch::start(&self.dir, tx, true)?;
        Ok(rx)
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
}

impl DatastoreWriter for LocalDatastore {
    fn put_pod(&self, pod: &PodRecord) -> Result<(), DatastoreError> {
        let path = self
            .dir
            .join("pods")
            .join(check_name(&pod.namespace)?)
            .join(format!("{}.yaml", check_name(&pod.name)?));
        self.write(path, pod)
    }

    fn delete_pod(&self, namespace: &str, name: &str) -> Result<(), DatastoreError> {
        self.remove(
            self.dir
                .join("pods")
                .join(check_name(namespace)?)
                .join(format!("{}.yaml", check_name(name)?)),
        )
    }

    fn put_service(&self, svc: &ServiceRecord) -> Result<(), DatastoreError> {
        let path = self
            .dir
            .join("services")
            .join(check_name(&svc.namespace)?)
            .join(format!("{}.yaml", check_name(&svc.name)?));
        self.write(path, svc)
    }

    fn delete_service(&self, namespace: &str, name: &str) -> Result<(), DatastoreError> {
        self.remove(
            self.dir
                .join("services")
                .join(check_name(namespace)?)
                .join(format!("{}.yaml", check_name(name)?)),
        )
    }

    fn put_namespace(&self, ns: &NamespaceRecord) -> Result<(), DatastoreError> {
        let path = self
            .dir
            .join("namespaces")
            .join(format!("{}.yaml", check_name(&ns.name)?));
        self.write(path, ns)
    }

    fn put_policies(&self, name: &str, text: &str) -> Result<(), DatastoreError> {
        write_atomic(&self.policy_path(name)?, text.as_bytes())
    }

    fn delete_policies(&self, name: &str) -> Result<(), DatastoreError> {
        self.remove(self.policy_path(name)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Key, Kind};
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
        ds.put_policies(
            "p.yaml",
            "kind: NetworkPolicy\nmetadata: {name: a}\n---\nkind: Tier\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("nodes/broken.yaml"), "name: [").unwrap();
        // A Service as a user writes it (defaults filled in).
        std::fs::create_dir_all(dir.path().join("services/x")).unwrap();
        std::fs::write(
            dir.path().join("services/x/api.yaml"),
            "namespace: x\nname: api\nclusterIPs: [10.96.0.10]\nselector: {app: a}\nports: [{port: 80, targetPort: 8080}]\n",
        )
        .unwrap();
        let snap = ds.load().snapshot();
        assert_eq!(snap.services.len(), 1);
        assert_eq!(snap.services[0].ports[0].protocol, "TCP");
        assert_eq!(snap.services[0].ports[0].target_port, Some(8080));
        ds.delete_service("x", "api").unwrap();
        assert!(ds.load().snapshot().services.is_empty());
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
        assert!(ds.put_policies("../x.yaml", "").is_err());
        assert!(ds.put_policies("a//x.yaml", "").is_err());
        ds.put_policies("sub/x.yaml", "").unwrap();
        // Deleting what is not there is success.
        ds.delete_endpoint("node-a", "abc", "eth0").unwrap();
        ds.delete_pod("x", "nope").unwrap();
    }

    /// Receives events until the store built from them satisfies `done`.
    async fn until(
        rx: &mut EventStream,
        store: &mut Store,
        what: &str,
        done: impl Fn(&Store) -> bool,
    ) -> Changes {
        let mut changes = Changes::default();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done(store) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => store.apply(e, &mut changes),
                Ok(None) => panic!("watch ended while waiting for {what}"),
                Err(_) => panic!("no event for {what} within 5 s; store: {store:?}"),
            }
        }
        changes
    }

    fn pod_yaml(app: &str) -> String {
        format!("namespace: shop\nname: web\nnode: n1\nlabels: {{app: {app}}}\n")
    }

    fn app(s: &Store) -> Option<String> {
        s.snapshot()
            .pod("shop", "web")
            .map(|p| p.labels["app"].clone())
    }

    #[tokio::test]
    async fn watch_lists_then_follows_files_written_changed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ds = LocalDatastore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("namespaces/shop.yaml"), "name: shop\n").unwrap();
        let mut rx = ds.watch().unwrap();
        let mut store = Store::new();
        until(&mut rx, &mut store, "initial sync", |s| s.synced).await;
        assert_eq!(store.namespaces.len(), 1);

        // Written in place, in a directory that did not exist yet.
        let pods = dir.path().join("pods/shop");
        std::fs::create_dir_all(&pods).unwrap();
        std::fs::write(pods.join("web.yaml"), pod_yaml("a")).unwrap();
        let c = until(&mut rx, &mut store, "pod written", |s| {
            app(s).as_deref() == Some("a")
        })
        .await;
        assert!(
            c.keys.contains(&Key::new(Kind::Pod, "shop/web.yaml")),
            "{c:?}"
        );

        // Changed.
        std::fs::write(pods.join("web.yaml"), pod_yaml("b")).unwrap();
        until(&mut rx, &mut store, "pod changed", |s| {
            app(s).as_deref() == Some("b")
        })
        .await;

        // Removed.
        std::fs::remove_file(pods.join("web.yaml")).unwrap();
        until(&mut rx, &mut store, "pod removed", |s| s.pods.is_empty()).await;
        assert_eq!(store.namespaces.len(), 1, "other files untouched");
    }

    #[tokio::test]
    async fn watch_sees_an_editor_style_rename_over() {
        let dir = tempfile::tempdir().unwrap();
        let ds = LocalDatastore::open(dir.path()).unwrap();
        ds.put_pod(&serde_yaml::from_str(&pod_yaml("a")).unwrap())
            .unwrap();
        let mut rx = ds.watch().unwrap();
        let mut store = Store::new();
        until(&mut rx, &mut store, "initial sync", |s| s.synced).await;
        assert_eq!(app(&store).as_deref(), Some("a"));
        // vim-like: write a swap file, rename it over the original.
        let pods = dir.path().join("pods/shop");
        std::fs::write(pods.join(".web.yaml.swp"), pod_yaml("c")).unwrap();
        std::fs::rename(pods.join(".web.yaml.swp"), pods.join("web.yaml")).unwrap();
        until(&mut rx, &mut store, "renamed over", |s| {
            app(s).as_deref() == Some("c")
        })
        .await;
        assert_eq!(store.pods.len(), 1, "the swap file is not an object");
    }

    #[tokio::test]
    async fn watch_reports_a_file_that_does_not_parse_and_its_fix() {
        let dir = tempfile::tempdir().unwrap();
        let ds = LocalDatastore::open(dir.path()).unwrap();
        ds.put_pod(&serde_yaml::from_str(&pod_yaml("a")).unwrap())
            .unwrap();
        let mut rx = ds.watch().unwrap();
        let mut store = Store::new();
        until(&mut rx, &mut store, "initial sync", |s| s.synced).await;
        let file = dir.path().join("pods/shop/web.yaml");
        std::fs::write(&file, "namespace: shop\nname: web\nlabels: {app: [x]}\n").unwrap();
        until(&mut rx, &mut store, "parse error", |s| !s.issues.is_empty()).await;
        let issue = &store.issues[&Key::new(Kind::Pod, "shop/web.yaml")];
        assert_eq!(issue.object, "pods/shop/web.yaml");
        assert!(issue.field.starts_with("labels"), "{issue}");
        assert_eq!(app(&store).as_deref(), Some("a"), "last good value kept");
        std::fs::write(&file, pod_yaml("d")).unwrap();
        until(&mut rx, &mut store, "fix", |s| s.issues.is_empty()).await;
        assert_eq!(app(&store).as_deref(), Some("d"));
    }

    #[tokio::test]
    async fn watch_follows_documents_of_a_policy_file() {
        let dir = tempfile::tempdir().unwrap();
        let ds = LocalDatastore::open(dir.path()).unwrap();
        let mut rx = ds.watch().unwrap();
        let mut store = Store::new();
        until(&mut rx, &mut store, "initial sync", |s| s.synced).await;
        ds.put_policies("p.yaml", "kind: A\n---\nkind: B\n")
            .unwrap();
        until(&mut rx, &mut store, "two documents", |s| {
            s.policies.len() == 2
        })
        .await;
        ds.put_policies("p.yaml", "kind: A\n").unwrap();
        until(&mut rx, &mut store, "one document", |s| {
            s.policies.len() == 1
        })
        .await;
        ds.delete_policies("p.yaml").unwrap();
        until(&mut rx, &mut store, "no document", |s| {
            s.policies.is_empty()
        })
        .await;
    }

    #[tokio::test]
    async fn watch_without_inotify_falls_back_to_periodic_scans() {
        let dir = tempfile::tempdir().unwrap();
        let ds = LocalDatastore::open(dir.path()).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        local_watch::start(dir.path(), tx, false).unwrap();
        let mut store = Store::new();
        until(&mut rx, &mut store, "initial sync", |s| s.synced).await;
        ds.put_pod(&serde_yaml::from_str(&pod_yaml("a")).unwrap())
            .unwrap();
        until(&mut rx, &mut store, "pod seen by a scan", |s| {
            app(s).as_deref() == Some("a")
        })
        .await;
    }

    #[test]
    fn rescan_reparses_only_files_whose_fingerprint_changed() {
        let dir = tempfile::tempdir().unwrap();
        let ds = LocalDatastore::open(dir.path()).unwrap();
        ds.put_pod(&serde_yaml::from_str(&pod_yaml("a")).unwrap())
            .unwrap();
        let mut scanner = local_watch::Scanner::new(dir.path());
        let mut events = Vec::new();
        scanner.full_scan(&mut |e| events.push(e));
        assert_eq!(events.len(), 1);
        events.clear();
        scanner.full_scan(&mut |e| events.push(e));
        assert!(events.is_empty(), "unchanged file re-parsed: {events:?}");
        std::fs::remove_file(dir.path().join("pods/shop/web.yaml")).unwrap();
        scanner.full_scan(&mut |e| events.push(e));
        assert_eq!(
            events,
            vec![Event::Deleted(Key::new(Kind::Pod, "shop/web.yaml"))]
        );
    }
}
