use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Verdict};
use nftables::schema::{SetFlag, SetType, SetTypeValue};
use nftables::stmt::{JumpTarget, Match, Operator, Statement};

use super::desired::{jump, prefix};
use super::*;

fn base() -> BaseFilter {
    BaseFilter {
        underlay_interface: "eth0".into(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        pod_cidr: "10.244.1.0/24".parse().unwrap(),
    }
}

fn flows() -> Option<FlowLogging> {
    Some(FlowLogging {
        dns_nflog_group: 4242,
    })
}

fn addr(s: &str) -> Expression<'static> {
    prefix(s.parse().unwrap())
}

fn daddr_in(set: &str) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: "ip".into(),
                field: "daddr".into(),
            },
        ))),
        right: Expression::String(format!("@{set}").into()),
        op: Operator::EQ,
    })
}

fn rule(statements: Vec<Statement<'static>>, comment: &str) -> PolicyRule {
    PolicyRule {
        statements,
        comment: Some(comment.into()),
    }
}

/// A small policy as the renderer would produce it: a selector set, an
/// `oifname` dispatch map to a per-endpoint chain, and the forward jump.
fn policy() -> PolicyObjects {
    let mut p = PolicyObjects::default();
    p.sets.insert(
        "sel-frontend".into(),
        NamedSet {
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            flags: vec![SetFlag::Interval],
            timeout: None,
            elements: vec![addr("10.244.1.5/32"), addr("10.244.2.0/24")],
        },
    );
    p.maps.insert(
        "to-endpoint".into(),
        NamedVerdictMap {
            key_type: SetTypeValue::Single(SetType::Ifname),
            flags: vec![],
            elements: vec![(
                Expression::String("veth1".into()),
                Expression::Verdict(Verdict::Jump(JumpTarget {
                    target: "ep-veth1-in".into(),
                })),
            )],
        },
    );
    p.chains.insert(
        "ep-veth1-in".into(),
        vec![
            rule(
                vec![daddr_in("sel-frontend"), Statement::Accept(None)],
                "allow frontend",
            ),
            rule(vec![Statement::Drop(None)], "default deny"),
        ]
        .into(),
    );
    p.hooks.insert(
        PolicyHook::Forward,
        vec![PolicyRule {
            statements: vec![jump("ep-veth1-in")],
            comment: None,
        }],
    );
    p
}

fn desired(policy: PolicyObjects) -> DesiredTable {
    DesiredTable {
        base: base(),
        flow_logging: flows(),
        policy,
        host: None,
    }
}

fn golden(name: &str, got: &serde_json::Value) {
    let got = serde_json::to_string_pretty(got).unwrap() + "\n";
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("VEIL_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("golden file (VEIL_UPDATE_GOLDEN=1)");
    assert_eq!(
        got, want,
        "refresh with VEIL_UPDATE_GOLDEN=1 and review the diff"
    );
}

#[test]
fn base_table_matches_golden_file() {
    let batch = plan::full(&DesiredTable::new(base()));
    golden("nft-base.json", &plan::to_json(&batch).unwrap());
}

#[test]
fn table_with_flow_logging_and_policy_matches_golden_file() {
    let batch = plan::full(&desired(policy()));
    golden("nft-policy.json", &plan::to_json(&batch).unwrap());
}

#[test]
fn ipv6_cluster_uses_ip6_matches() {
    let batch = plan::full(&DesiredTable::new(BaseFilter {
        underlay_interface: "eth0".into(),
        cluster_cidr: "fd00:10:244::/56".parse().unwrap(),
        pod_cidr: "fd00:10:244:1::/64".parse().unwrap(),
    }));
    let got = plan::to_json(&batch).unwrap().to_string();
    assert!(got.contains(r#"{"payload":{"field":"daddr","protocol":"ip6"}},"op":"==","right":{"prefix":{"addr":"fd00:10:244::","len":56}}"#), "{got}");
    assert!(!got.contains(r#""protocol":"ip""#));
}

#[test]
fn first_apply_replaces_the_whole_table() {
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), desired(policy()));
    assert!(m.apply().unwrap());
    let b = &fake.batches()[0]["nftables"];
    assert!(b[0]["add"]["table"].is_object());
    assert!(b[1]["delete"]["table"].is_object());
    assert!(b[2]["add"]["table"].is_object());
    assert_eq!(fake.table(), Some(ActualTable::expected(m.desired())));
}

#[test]
fn unchanged_table_writes_nothing() {
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), desired(policy()));
    m.apply().unwrap();
    m.on_update(desired(policy()));
    assert!(!m.apply().unwrap());
    assert!(!m.resync().unwrap());
    assert_eq!(fake.batches().len(), 1);
}

#[test]
fn on_update_never_touches_the_kernel() {
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), desired(policy()));
    m.on_update(desired(PolicyObjects::default()));
    assert_eq!((fake.batches().len(), fake.reads()), (0, 0));
}

#[test]
fn drift_is_repaired_by_resync() {
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), desired(policy()));
    m.apply().unwrap();
    let want = fake.table();
    fake.tamper(|t| {
        let t = t.as_mut().unwrap();
        t.chains.get_mut("forward").unwrap().remove(0);
        t.sets.get_mut("sel-frontend").unwrap().elements.clear();
    });
    // apply trusts what it wrote; resync reads the kernel back.
    assert!(!m.apply().unwrap());
    assert!(m.resync().unwrap());
    assert_eq!(fake.table(), want);
    let b = &fake.batches()[1]["nftables"];
    let cmds: Vec<String> = b
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert!(cmds
        .iter()
        .any(|c| c.starts_with(r#"{"flush":{"chain""#) && c.contains(r#""name":"forward""#)));
    assert!(
        cmds.iter().all(|c| !c.contains(r#""table":{"#)),
        "no table replace: {cmds:?}"
    );
}

#[test]
fn missing_table_is_replaced_whole() {
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), desired(policy()));
    m.apply().unwrap();
    fake.tamper(|t| *t = None);
    assert!(m.resync().unwrap());
    assert_eq!(fake.table(), Some(ActualTable::expected(m.desired())));
    assert!(fake.batches()[1]["nftables"][1]["delete"]["table"].is_object());
}

#[test]
fn failed_apply_is_retried_and_leaves_the_old_table() {
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), desired(PolicyObjects::default()));
    m.apply().unwrap();
    let old = fake.table();
    m.on_update(desired(policy()));
    fake.fail_next(1);
    assert!(m.apply().is_err());
    assert_eq!(fake.table(), old);
    assert!(m.apply().unwrap());
    assert_eq!(fake.table(), Some(ActualTable::expected(m.desired())));
    assert_eq!(fake.batches().len(), 2);
}

#[test]
fn element_changes_are_element_adds_and_deletes() {
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), desired(policy()));
    m.apply().unwrap();
    let mut p = policy();
    p.sets.get_mut("sel-frontend").unwrap().elements =
        vec![addr("10.244.1.5/32"), addr("10.244.3.7/32")];
    m.on_update(desired(p));
    assert!(m.apply().unwrap());
    let b = fake.batches()[1]["nftables"].clone();
    assert_eq!(
        b,
        serde_json::json!([
            {"add": {"element": {"family": "inet", "table": "veil", "name": "sel-frontend", "elem": [{"prefix": {"addr": "10.244.3.7", "len": 32}}]}}},
            {"delete": {"element": {"family": "inet", "table": "veil", "name": "sel-frontend", "elem": [{"prefix": {"addr": "10.244.2.0", "len": 24}}]}}},
        ])
    );
    assert_eq!(fake.table(), Some(ActualTable::expected(m.desired())));
}

#[test]
fn changed_chain_is_flushed_and_refilled_in_one_batch() {
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), desired(policy()));
    m.apply().unwrap();
    let mut p = policy();
    p.chains.insert(
        "ep-veth1-in".into(),
        vec![
            rule(
                vec![daddr_in("sel-frontend"), Statement::Accept(None)],
                "allow frontend",
            ),
            rule(vec![Statement::Reject(None)], "default deny"),
        ]
        .into(),
    );
    m.on_update(desired(p));
    assert!(m.apply().unwrap());
    let b = fake.batches()[1]["nftables"].clone();
    let cmds = b.as_array().unwrap();
    assert_eq!(cmds.len(), 3, "{b}");
    assert_eq!(cmds[0]["flush"]["chain"]["name"], "ep-veth1-in");
    assert_eq!(cmds[1]["add"]["rule"]["chain"], "ep-veth1-in");
    assert_eq!(
        cmds[2]["add"]["rule"]["expr"][0]["reject"],
        serde_json::Value::Null
    );
    assert_eq!(fake.table(), Some(ActualTable::expected(m.desired())));
}

#[test]
fn chains_and_sets_no_longer_desired_go_after_what_jumps_to_them() {
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), desired(policy()));
    m.apply().unwrap();
    m.on_update(desired(PolicyObjects::default()));
    assert!(m.apply().unwrap());
    let b = fake.batches()[1]["nftables"].clone();
    let pos = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        b.as_array()
            .unwrap()
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("{b}"))
    };
    let refill_forward = pos(&|c| c["flush"]["chain"]["name"] == "forward");
    let drop_map = pos(&|c| c["delete"]["map"]["name"] == "to-endpoint");
    let drop_chain = pos(&|c| c["delete"]["chain"]["name"] == "ep-veth1-in");
    let drop_set = pos(&|c| c["delete"]["set"]["name"] == "sel-frontend");
    assert!(
        refill_forward < drop_chain && drop_map > drop_chain && drop_set > drop_chain,
        "{b}"
    );
    assert_eq!(fake.table(), Some(ActualTable::expected(m.desired())));
}

#[test]
fn changed_set_declaration_replaces_the_whole_table() {
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), desired(policy()));
    m.apply().unwrap();
    let mut p = policy();
    p.sets
        .get_mut("sel-frontend")
        .unwrap()
        .flags
        .push(SetFlag::Timeout);
    m.on_update(desired(p));
    assert!(m.apply().unwrap());
    assert!(fake.batches()[1]["nftables"][1]["delete"]["table"].is_object());
}

#[test]
fn policy_chain_with_a_base_name_is_refused_before_the_kernel() {
    let fake = FakeFilter::default();
    let mut p = PolicyObjects::default();
    p.chains.insert("forward".into(), PolicyChain::default());
    let mut m = TableManager::new(fake.clone(), desired(p));
    assert!(matches!(m.apply(), Err(FilterError::Invalid(_))));
    assert_eq!((fake.batches().len(), fake.reads()), (0, 0));
}

#[test]
fn reading_back_keeps_only_our_table() {
    let json = r#"{"nftables": [
        {"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "inet", "name": "veil", "handle": 1}},
        {"counter": {"family": "inet", "table": "veil", "name": "fail_closed", "packets": 3, "bytes": 9}},
        {"chain": {"family": "inet", "table": "veil", "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "veil", "chain": "forward", "handle": 4, "comment": "a [veil:1]", "expr": [{"accept": null}]}},
        {"rule": {"family": "inet", "table": "veil", "chain": "forward", "handle": 5, "expr": [{"drop": null}]}},
        {"set": {"family": "inet", "table": "veil", "name": "s", "type": "ipv4_addr", "flags": ["timeout", "interval"], "timeout": 30,
                 "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"elem": {"val": "10.1.0.1", "timeout": 30, "expires": 10}}]}},
        {"map": {"family": "inet", "table": "veil", "name": "m", "type": "ifname", "map": "verdict",
                 "elem": [["veth1", {"jump": {"target": "c"}}]]}},
        {"chain": {"family": "inet", "table": "other", "name": "forward"}}
    ]}"#;
    let t = ActualTable::parse(json, "veil").unwrap();
    assert_eq!(t.chains.len(), 1);
    assert_eq!(
        t.chains["forward"],
        vec![Some("a [veil:1]".to_string()), None]
    );
    assert!(t.counters.contains("fail_closed"));
    let s = &t.sets["s"];
    let want = NamedSet {
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        flags: vec![SetFlag::Interval, SetFlag::Timeout],
        timeout: Some(30),
        elements: vec![],
    };
    assert_eq!(s.decl, actual::set_decl(&want));
    assert!(s
        .elements
        .contains(r#"{"prefix":{"addr":"10.0.0.0","len":8}}"#));
    assert!(s.elements.contains(r#""10.1.0.1""#));
    assert!(t.maps["m"]
        .elements
        .contains(r#"["veth1",{"jump":{"target":"c"}}]"#));
    assert!(ActualTable::parse("not json", "veil").is_err());
}

#[test]
fn changes_after_a_write_are_diffed_without_reading_the_table_back() {
    let fake = FakeFilter::default();
    let mut m = TableManager::new(fake.clone(), desired(policy()));
    m.apply().unwrap();
    assert_eq!(fake.reads(), 1, "the first apply reads the kernel");
    let mut p = policy();
    p.sets.get_mut("sel-frontend").unwrap().elements = vec![addr("10.244.3.7/32")];
    p.chains.insert(
        "ep-veth2-in".into(),
        vec![rule(vec![Statement::Drop(None)], "new")].into(),
    );
    m.on_update(desired(p));
    assert!(m.apply().unwrap());
    m.on_update(desired(policy()));
    assert!(m.apply().unwrap());
    assert_eq!(fake.reads(), 1, "later changes trust what was written");
    assert_eq!(fake.table(), Some(ActualTable::expected(m.desired())));
    // A shared chain that did not change is not written again.
    let shared = m.desired().clone();
    m.on_update(shared);
    assert!(!m.apply().unwrap());
    assert_eq!(fake.batches().len(), 3);
}
