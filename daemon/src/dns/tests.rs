//! The proxy's release path: a compiled scenario's program, a fake set
//! writer, crafted answers.

use std::sync::Mutex;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use veil_scenario::Scenario;

use super::allow::{Element, WriteError};
use super::*;
use crate::dataplane::nftables::policy::{render, LocalEndpoint};

const SCENARIO: &str = r#"
name: dns-release
cluster: {nodes: [node-a]}
namespaces: [{name: out}]
pods:
  - {name: out/app, labels: {app: app}, node: node-a, ip: 10.244.0.5}
  - {name: out/free, labels: {app: free}, node: node-a, ip: 10.244.0.6}
policies:
  - apiVersion: veil.dev/v1alpha1
    kind: NetworkPolicy
    metadata: {name: app-out, namespace: out}
    spec:
      selector: {matchLabels: {app: app}}
      egress:
        - action: Allow
          protocol: TCP
          destination: {domains: [api.example.com, "*.cdn.example.net"], ports: [443]}
probes: []
"#;

#[derive(Default)]
struct FakeWriter {
    written: Arc<Mutex<Vec<Element>>>,
    fail: bool,
}

impl SetWriter for FakeWriter {
    fn add(&self, elems: &[Element]) -> Result<(), WriteError> {
        if self.fail {
            return Err(WriteError::Refused("no such set".into()));
        }
        self.written.lock().unwrap().extend_from_slice(elems);
        Ok(())
    }
}

fn program() -> Arc<veil_policy::compile::Program> {
    let sc = Scenario::parse(SCENARIO).unwrap();
    let st = sc.initial_state().unwrap();
    let c = veil_policy::compile::Compiled::new(&st.cluster, &st.policies);
    Arc::new(c.program().clone())
}

fn proxy(fail: bool) -> (Proxy, Arc<Mutex<Vec<Element>>>) {
    let desired = Desired {
        program: program(),
        ..Desired::default()
    };
    // The receivers keep the last value once the senders are gone.
    let (_, drx) = watch::channel(Arc::new(desired));
    let (_, arx) = watch::channel(Arc::new(AppliedPolicy::default()));
    let w = FakeWriter {
        fail,
        ..FakeWriter::default()
    };
    let written = w.written.clone();
    (Proxy::new(drx, arx, Box::new(w)), written)
}

fn query(n: &str) -> Vec<u8> {
    let mut m = Message::new(5, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn answer(asked: &str, recs: &[(&str, &str)], ttl: u32) -> Vec<u8> {
    let mut m = Message::response(5, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii(asked).unwrap(),
        RecordType::A,
    ));
    for (o, d) in recs {
        let data = match d.parse() {
            Ok(ip) => RData::A(A(ip)),
            Err(_) => RData::CNAME(CNAME(Name::from_ascii(d).unwrap())),
        };
        m.add_answer(Record::from_rdata(Name::from_ascii(o).unwrap(), ttl, data));
    }
    m.to_vec().unwrap()
}

const APP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);

fn rcode(b: &[u8]) -> ResponseCode {
    Message::from_vec(b).unwrap().metadata.response_code
}

#[tokio::test]
async fn allowed_name_is_in_the_rule_set_before_the_answer_is_released() {
    let (p, written) = proxy(false);
    let a = answer(
        "img.cdn.example.net",
        &[("img.cdn.example.net", "203.0.113.51")],
        5,
    );
    let out = p
        .release(APP, &query("img.cdn.example.net"), &a)
        .await
        .unwrap();
    assert_eq!(out, a, "the answer is released unchanged");
    let w = written.lock().unwrap().clone();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].pod, APP);
    assert_eq!(w[0].addr, Ipv4Addr::new(203, 0, 113, 51));
    assert_eq!(w[0].timeout, 35, "TTL 5 s: 30 s minimum plus grace");
    // The set is the one the renderer makes the rule match.
    let eps = [LocalEndpoint {
        ifname: "veil00000000001".into(),
        ip: IpAddr::V4(APP),
        pod: Some("out/app".into()),
    }];
    let r = render(&program(), &eps);
    assert!(r.dns.sets.contains(&w[0].set), "{:?}", r.dns.sets);
    assert!(r.dns.clients.contains(&APP));
    // Asking again within the allowance writes nothing.
    p.release(APP, &query("img.cdn.example.net"), &a).await;
    assert_eq!(written.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn other_names_other_pods_and_unasked_records_open_nothing() {
    let (p, written) = proxy(false);
    let a = answer(
        "tracker.example.org",
        &[("tracker.example.org", "203.0.113.66")],
        60,
    );
    assert_eq!(
        p.release(APP, &query("tracker.example.org"), &a).await,
        Some(a)
    );
    let a = answer(
        "api.example.com",
        &[("api.example.com", "203.0.113.10")],
        60,
    );
    p.release(Ipv4Addr::new(10, 244, 0, 6), &query("api.example.com"), &a)
        .await;
    let a = answer(
        "api.example.com",
        &[("evil.example.org", "203.0.113.66")],
        60,
    );
    p.release(APP, &query("api.example.com"), &a).await;
    assert!(written.lock().unwrap().is_empty());
}

#[tokio::test]
async fn cname_chain_opens_its_end_and_a_loop_gets_servfail() {
    let (p, written) = proxy(false);
    let a = answer(
        "api.example.com",
        &[
            ("api.example.com", "edge.provider.example"),
            ("edge.provider.example", "203.0.113.70"),
        ],
        300,
    );
    p.release(APP, &query("API.example.com."), &a).await;
    assert_eq!(
        written.lock().unwrap()[0].addr,
        Ipv4Addr::new(203, 0, 113, 70)
    );
    let l = answer(
        "api.example.com",
        &[
            ("api.example.com", "x.example.com"),
            ("x.example.com", "api.example.com"),
        ],
        300,
    );
    let out = p.release(APP, &query("api.example.com"), &l).await.unwrap();
    assert_eq!(rcode(&out), ResponseCode::ServFail);
    assert_eq!(written.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_set_that_cannot_be_written_fails_closed_with_servfail() {
    let (p, _) = proxy(true);
    let a = answer(
        "api.example.com",
        &[("api.example.com", "203.0.113.10")],
        60,
    );
    let out = p.release(APP, &query("api.example.com"), &a).await.unwrap();
    assert_eq!(rcode(&out), ResponseCode::ServFail);
    assert!(p.cache.list().is_empty());
}
