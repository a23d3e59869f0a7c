//! The kube datastore against a mocked API server (tower-test `mock::pair`):
//! the whole watch (lists, absent CRDs, a watch event, 410 and relist),
//! the Node annotation patch, the status Lease and the status patch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower_test::mock;

use super::*;
use crate::datastore::store::Store;
use crate::datastore::Resource;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (Client, Handle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), handle)
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

/// A request as the fake server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    body: Value,
}

async fn seen(req: Request<Body>) -> Seen {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Seen {
        method,
        path,
        query,
        body,
    }
}

/// A fake API server speaking enough of list and watch: `lists` answers
/// list requests by path (404 for a path it does not know), `watches`
/// answers watch requests by path, one queued batch of lines per request
/// (a request with nothing queued waits until a batch is queued), and
/// every other request is answered by `other`.
#[derive(Clone, Default)]
struct Fake {
    lists: Arc<Mutex<BTreeMap<String, Value>>>,
    watches: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn list(&self, path: &str, kind: &str, rv: &str, items: Vec<Value>) {
        self.lists.lock().unwrap().insert(
            path.into(),
            json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items}),
        );
    }

    fn queue_watch(&self, path: &str, lines: Vec<Value>) {
        let body = lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect::<String>();
        self.watches
            .lock()
            .unwrap()
            .entry(path.into())
            .or_default()
            .push(body);
    }

    fn requests(&self, method: &str, path_part: &str) -> Vec<Seen> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == method && s.path.contains(path_part))
            .cloned()
            .collect()
    }

    fn serve(self, mut handle: Handle, other: impl Fn(&Seen) -> Response<Body> + Send + 'static) {
        tokio::spawn(async move {
            let mut parked: Vec<(String, mock::SendResponse<Response<Body>>)> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    r = handle.next_request() => {
                        let Some((req, send)) = r else { return };
                        let s = seen(req).await;
                        self.log.lock().unwrap().push(s.clone());
                        if s.method == "GET" && s.query.contains("watch=true") {
                            parked.push((s.path.clone(), send));
                        } else if s.method == "GET" && self.lists.lock().unwrap().contains_key(&s.path) {
                            let l = self.lists.lock().unwrap()[&s.path].clone();
                            send.send_response(respond(200, &l));
                        } else if s.method == "GET" && (s.path.starts_with("/apis/veil.dev") || s.path.starts_with("/apis/policy.networking.k8s.io")) {
                            send.send_response(respond(404, &status(404, "NotFound")));
                        } else {
                            send.send_response(other(&s));
                        }
                    }
                    _ = tick.tick() => {}
                }
                // Answer parked watches that have a batch queued.
                let mut still = Vec::new();
                for (path, send) in parked.drain(..) {
                    let batch = {
                        let mut w = self.watches.lock().unwrap();
                        w.get_mut(&path)
                            .filter(|q| !q.is_empty())
                            .map(|q| q.remove(0))
                    };
                    match batch {
                        Some(b) => send.send_response(
                            Response::builder()
                                .status(200)
                                .body(Body::from(b.into_bytes()))
                                .unwrap(),
                        ),
                        None => still.push((path, send)),
                    }
                }
                parked = still;
            }
        });
    }
}

fn node_json(name: &str, key: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": "5", "annotations": {"veil.dev/wireguard-public-key": key}},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.2"}]}})
}

fn pod_json(name: &str, app: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": "u", "resourceVersion": rv, "labels": {"app": app}},
        "spec": {"nodeName": "n2", "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.7"}]}})
}

async fn next_until(
    rx: &mut crate::datastore::EventStream,
    store: &mut Store,
    done: impl Fn(&Store) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !done(store) {
            let e = rx.recv().await.expect("watch ended");
            store.apply_all([e]);
        }
    })
    .await
    .expect("timed out waiting for the store");
}

#[tokio::test]
async fn whole_watch_lists_skips_absent_crds_follows_changes_and_relists_after_410() {
    let (client, handle) = mock_client();
    let fake = Fake::default();
    fake.list(
        "/api/v1/nodes",
        "NodeList",
        "10",
        vec![node_json("n2", "a2V5")],
    );
    fake.list(
        "/api/v1/namespaces",
        "NamespaceList",
        "10",
        vec![json!({"metadata": {"name": "shop", "labels": {"team": "a"}}})],
    );
    fake.list(
        "/api/v1/pods",
        "PodList",
        "10",
        vec![pod_json("web", "a", "10")],
    );
    fake.list("/api/v1/services", "ServiceList", "10", vec![]);
    fake.list(
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSliceList",
        "10",
        vec![],
    );
    fake.list(
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicyList",
        "10",
        vec![
            json!({"metadata": {"name": "deny", "namespace": "shop", "managedFields": []},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        ],
    );
    fake.clone().serve(handle, |s| {
        respond(404, &status(404, &format!("no {}", s.path)))
    });
    let ds = KubeDatastore::new(client, "n1", "kube-system");
    let mut rx = ds.watch().unwrap();
    let mut store = Store::new();
    next_until(&mut rx, &mut store, |s| s.synced).await;
    assert_eq!(store.nodes.len(), 1);
    assert_eq!(store.pods.len(), 1);
    assert_eq!(store.endpoints.len(), 1);
    assert_eq!(store.namespaces.len(), 1);
    assert_eq!(
        store.policies.len(),
        1,
        "the k8s NetworkPolicy; CRD kinds absent"
    );
    assert!(store.issues.is_empty(), "{:?}", store.issues);

    // A watch event: the pod's labels change.
    fake.queue_watch(
        "/api/v1/pods",
        vec![json!({"type": "MODIFIED", "object": pod_json("web", "b", "11")})],
    );
    next_until(&mut rx, &mut store, |s| {
        s.pods
            .values()
            .next()
            .is_some_and(|p| p.labels["app"] == "b")
    })
    .await;

    // 410 Gone: the watcher relists; the pod has vanished meanwhile.
    fake.list("/api/v1/pods", "PodList", "20", vec![]);
    fake.queue_watch(
        "/api/v1/pods",
        vec![json!({"type": "ERROR", "object": status(410, "Expired")})],
    );
    next_until(&mut rx, &mut store, |s| {
        s.pods.is_empty() && s.endpoints.is_empty()
    })
    .await;
    assert_eq!(
        store.nodes.len(),
        1,
        "other kinds untouched by the pods' relist"
    );
    assert!(!fake
        .requests("GET", "/apis/veil.dev/v1alpha1/tiers")
        .is_empty());
}

#[tokio::test]
async fn local_endpoints_go_straight_into_the_watch() {
    let (client, handle) = mock_client();
    let fake = Fake::default();
    fake.clone()
        .serve(handle, |_| respond(404, &status(404, "NotFound")));
    let ds = KubeDatastore::new(client, "n1", "kube-system");
    let rec = crate::datastore::EndpointRecord {
        node: "n1".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
        pod_namespace: Some("shop".into()),
        pod_name: Some("web".into()),
        ips: vec!["10.244.0.5/32".parse().unwrap()],
    };
    ds.put_endpoint(&rec).unwrap();
    let mut rx = ds.watch().unwrap();
    assert!(matches!(rx.recv().await, Some(Event::Applied(_, Resource::Endpoint(e))) if e == rec));
    ds.delete_endpoint("n1", "c1", "eth0").unwrap();
    assert!(matches!(rx.recv().await, Some(Event::Deleted(k)) if k.name == "local/n1/c1/eth0"));
}

#[tokio::test]
async fn put_node_merge_patches_only_the_veil_annotations() {
    let (client, handle) = mock_client();
    let fake = Fake::default();
    fake.clone().serve(handle, |s| {
        respond(200, &node_json("n1", "x")).map(|b| {
            let _ = s;
            b
        })
    });
    let ds = KubeDatastore::new(client, "n1", "kube-system");
    let rec = crate::datastore::NodeRecord {
        name: "n1".into(),
        address: "198.18.0.1".parse().unwrap(),
        pod_cidrs: vec![],
        labels: [("team".to_string(), "x".to_string())].into(),
        annotations: [
            (
                crate::datastore::ANNOTATION_WG_PUBLIC_KEY.to_string(),
                "NEWKEY".to_string(),
            ),
            ("other.example/a".to_string(), "b".to_string()),
        ]
        .into(),
    };
    ds.put_node(&rec).unwrap();
    let patches = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let p = fake.requests("PATCH", "/api/v1/nodes/n1");
            if !p.is_empty() {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        patches[0].body,
        json!({"metadata": {"annotations": {"veil.dev/wireguard-public-key": "NEWKEY"}}}),
        "labels, addresses and foreign annotations are never written"
    );
    let other = crate::datastore::NodeRecord {
        name: "n9".into(),
        ..rec
    };
    assert!(ds.put_node(&other).is_err(), "only its own Node");
}

fn lease_json(holder: &str, renewed: Timestamp) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": status::LEASE_NAME, "namespace": "kube-system", "resourceVersion": "3"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": renewed.to_string(), "leaseTransitions": 1}})
}

async fn elect(existing: Option<Value>) -> (bool, Fake) {
    let (client, handle) = mock_client();
    let fake = Fake::default();
    let existing2 = existing.clone();
    fake.clone()
        .serve(handle, move |s| match (s.method.as_str(), &existing2) {
            ("GET", Some(l)) => respond(200, l),
            ("GET", None) => respond(404, &status(404, "NotFound")),
            ("POST" | "PUT", _) => respond(200, &s.body),
            _ => respond(405, &status(405, "MethodNotAllowed")),
        });
    let e = lease::LeaseElector::new(client, "kube-system", status::LEASE_NAME, "n1");
    (
        e.try_acquire_or_renew(Timestamp::now()).await.unwrap(),
        fake,
    )
}

#[tokio::test]
async fn lease_is_created_when_absent() {
    let (leader, fake) = elect(None).await;
    assert!(leader);
    let post = fake.requests(
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
    );
    assert_eq!(post[0].body["spec"]["holderIdentity"], "n1");
}

#[tokio::test]
async fn lease_held_by_a_live_node_is_left_alone() {
    let (leader, fake) = elect(Some(lease_json("n2", Timestamp::now()))).await;
    assert!(!leader);
    assert!(fake.requests("PUT", "leases").is_empty());
}

#[tokio::test]
async fn expired_lease_is_taken_over_and_own_lease_renewed() {
    let old = Timestamp::now() - SignedDuration::from_secs(60);
    let (leader, fake) = elect(Some(lease_json("n2", old))).await;
    assert!(leader);
    let put = fake.requests("PUT", "leases");
    assert_eq!(put[0].body["spec"]["holderIdentity"], "n1");
    assert_eq!(put[0].body["spec"]["leaseTransitions"], 2);
    let (leader, fake) = elect(Some(lease_json("n1", Timestamp::now()))).await;
    assert!(leader);
    assert_eq!(
        fake.requests("PUT", "leases")[0].body["spec"]["leaseTransitions"],
        1
    );
}

#[tokio::test]
async fn lease_conflict_means_not_the_holder() {
    let (client, handle) = mock_client();
    let fake = Fake::default();
    fake.clone().serve(handle, |s| match s.method.as_str() {
        "GET" => respond(404, &status(404, "NotFound")),
        _ => respond(409, &status(409, "AlreadyExists")),
    });
    let e = lease::LeaseElector::new(client, "kube-system", status::LEASE_NAME, "n1");
    assert!(!e.try_acquire_or_renew(Timestamp::now()).await.unwrap());
}

#[tokio::test]
async fn invalid_policy_status_is_patched_on_the_status_subresource() {
    let (client, handle) = mock_client();
    let fake = Fake::default();
    fake.clone().serve(handle, |s| respond(200, &json!({"apiVersion": "veil.dev/v1alpha1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "shop"}, "status": s.body["status"]})));
    let item = status::StatusItem {
        kind: POLICY_KINDS[5],
        origin: "networkpolicies.veil.dev/shop/p".into(),
        namespace: Some("shop".into()),
        name: "p".into(),
        uid: None,
        generation: Some(4),
        verdict: Err(crate::datastore::Issue {
            object: "networkpolicies.veil.dev/shop/p".into(),
            field: "spec.ingress[0].action".into(),
            reason: "unknown action".into(),
        }),
        current: None,
    };
    let want = status::desired_status(&item, "2026-01-01T00:00:00Z");
    assert!(status::write_status(&client, &item, &want).await.unwrap());
    let p = fake.requests(
        "PATCH",
        "/apis/veil.dev/v1alpha1/namespaces/shop/networkpolicies/p/status",
    );
    assert_eq!(p.len(), 1);
    let conds = p[0].body["status"]["conditions"].as_array().unwrap();
    let invalid = conds.iter().find(|c| c["type"] == "Invalid").unwrap();
    assert_eq!(invalid["status"], "True");
    assert!(invalid["message"]
        .as_str()
        .unwrap()
        .contains("spec.ingress[0].action"));
    assert_eq!(p[0].body["status"]["observedGeneration"], 4);
}

#[tokio::test]
async fn node_facts_are_read_from_the_api() {
    let (client, handle) = mock_client();
    let fake = Fake::default();
    fake.clone()
        .serve(handle, |_| respond(200, &node_json("n1", "k")));
    let f = node::fetch_facts(&kube::Api::<Node>::all(client), "n1")
        .await
        .unwrap();
    assert_eq!(f.address.to_string(), "198.18.0.2");
    assert_eq!(fake.requests("GET", "/api/v1/nodes/n1").len(), 1);
}

fn invalid_item(name: &str) -> status::StatusItem {
    status::StatusItem {
        kind: POLICY_KINDS[5],
        origin: format!("networkpolicies.veil.dev/shop/{name}"),
        namespace: Some("shop".into()),
        name: name.into(),
        uid: Some("u-1".into()),
        generation: Some(1),
        verdict: Err(crate::datastore::Issue {
            object: format!("networkpolicies.veil.dev/shop/{name}"),
            field: "spec.ingress[0].action".into(),
            reason: "unknown action".into(),
        }),
        current: None,
    }
}

/// Runs the status writer against a fake API whose Lease is `lease`
/// (`None`: absent, so it is created) and reports the requests it made.
async fn run_writer(lease: Option<Value>) -> Fake {
    let (client, handle) = mock_client();
    let fake = Fake::default();
    fake.clone().serve(handle, move |s| match (s.method.as_str(), &lease) {
        ("GET", Some(l)) if s.path.contains("leases") => respond(200, l),
        ("GET", None) if s.path.contains("leases") => respond(404, &status(404, "NotFound")),
        ("PATCH", _) if s.path.ends_with("/status") => respond(200, &json!({"apiVersion": "veil.dev/v1alpha1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "shop"}})),
        _ => respond(201, &s.body),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let (watch_tx, _watch_rx) = mpsc::unbounded_channel();
    let elector = lease::LeaseElector::new(client.clone(), "kube-system", status::LEASE_NAME, "n1");
    let task = tokio::spawn(status::run(client, elector, "n1".into(), rx, watch_tx));
    tx.send(StatusMsg::Set(Box::new(invalid_item("p"))))
        .unwrap();
    // Seen again after its own write: already right, not written twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut again = invalid_item("p");
    again.current = Some(serde_json::to_value(status::desired_status(&again, "t")).unwrap());
    tx.send(StatusMsg::Set(Box::new(again))).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    fake
}

#[tokio::test]
async fn the_lease_holder_writes_status_once_and_raises_one_event() {
    let fake = run_writer(None).await;
    let patches = fake.requests("PATCH", "/networkpolicies/p/status");
    assert_eq!(patches.len(), 1, "{:?}", fake.log.lock().unwrap());
    let events = fake.requests("POST", "/apis/events.k8s.io/v1/namespaces/shop/events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].body["reason"], "InvalidPolicy");
    assert!(events[0].body["note"]
        .as_str()
        .unwrap()
        .contains("spec.ingress[0].action"));
}

#[tokio::test]
async fn a_daemon_without_the_lease_writes_no_status_and_no_event() {
    let fake = run_writer(Some(lease_json("n2", Timestamp::now()))).await;
    assert!(fake.requests("PATCH", "/status").is_empty());
    assert!(fake.requests("POST", "events").is_empty());
}

fn service_json(name: &str, rv: &str, cluster_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
}

fn slice_json(name: &str, service: &str, rv: &str, ips: &[&str]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn slice_ips(store: &Store, key: &Key) -> Vec<String> {
    store
        .endpoint_slices
        .get(key)
        .map(|s| s.addresses.iter().map(|a| a.to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn services_and_endpoint_slices_are_listed_followed_and_relisted_after_410() {
    let (client, handle) = mock_client();
    let fake = Fake::default();
    fake.list("/api/v1/nodes", "NodeList", "10", vec![]);
    fake.list("/api/v1/namespaces", "NamespaceList", "10", vec![]);
    fake.list("/api/v1/pods", "PodList", "10", vec![]);
    fake.list(
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicyList",
        "10",
        vec![],
    );
    fake.list(
        "/api/v1/services",
        "ServiceList",
        "10",
        vec![service_json("backend", "10", "10.96.0.10")],
    );
    fake.list(
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSliceList",
        "10",
        vec![
            slice_json("backend-abc", "backend", "10", &["10.244.1.5"]),
            // No service-name label: belongs to no Service, gives nothing.
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "orphan", "namespace": "shop", "resourceVersion": "10"},
                   "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.1.9"]}]}),
        ],
    );
    fake.clone().serve(handle, |s| {
        respond(404, &status(404, &format!("no {}", s.path)))
    });
    let ds = KubeDatastore::new(client, "n1", "kube-system");
    let mut rx = ds.watch().unwrap();
    let mut store = Store::new();
    next_until(&mut rx, &mut store, |s| s.synced).await;
    let svc_key = services::service_key("shop", "backend");
    let slice_key = services::slice_key("shop", "backend-abc");
    let svc = &store.services[&svc_key];
    assert_eq!(
        svc.cluster_ips,
        vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(svc.selector.as_ref().unwrap()["app"], "backend");
    assert_eq!(
        (svc.ports[0].port, svc.ports[0].target_port),
        (80, Some(8080))
    );
    assert_eq!(
        store.endpoint_slices.len(),
        1,
        "the orphan slice gives nothing"
    );
    assert_eq!(store.endpoint_slices[&slice_key].service, "backend");
    assert_eq!(slice_ips(&store, &slice_key), vec!["10.244.1.5"]);

    // Added and modified.
    fake.queue_watch(
        "/api/v1/services",
        vec![
            json!({"type": "ADDED", "object": service_json("web", "11", "10.96.0.20")}),
            json!({"type": "MODIFIED", "object": service_json("backend", "12", "10.96.0.11")}),
        ],
    );
    fake.queue_watch(
        "/apis/discovery.k8s.io/v1/endpointslices",
        vec![json!({"type": "MODIFIED",
                    "object": slice_json("backend-abc", "backend", "11", &["10.244.1.5", "10.244.2.6"])})],
    );
    next_until(&mut rx, &mut store, |s| {
        s.services.len() == 2
            && s.services[&svc_key].cluster_ips[0].to_string() == "10.96.0.11"
            && slice_ips(s, &slice_key).len() == 2
    })
    .await;

    // Deleted.
    fake.queue_watch(
        "/api/v1/services",
        vec![json!({"type": "DELETED", "object": service_json("web", "13", "10.96.0.20")})],
    );
    next_until(&mut rx, &mut store, |s| s.services.len() == 1).await;

    // 410 Gone on the slices: the relist no longer has backend-abc but a new one.
    fake.list(
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSliceList",
        "20",
        vec![slice_json("backend-xyz", "backend", "20", &["10.244.3.7"])],
    );
    fake.queue_watch(
        "/apis/discovery.k8s.io/v1/endpointslices",
        vec![json!({"type": "ERROR", "object": status(410, "Expired")})],
    );
    let new_key = services::slice_key("shop", "backend-xyz");
    next_until(&mut rx, &mut store, |s| {
        !s.endpoint_slices.contains_key(&slice_key) && s.endpoint_slices.contains_key(&new_key)
    })
    .await;
    assert_eq!(slice_ips(&store, &new_key), vec!["10.244.3.7"]);
    assert_eq!(
        store.services.len(),
        1,
        "services untouched by the slices' relist"
    );
}
