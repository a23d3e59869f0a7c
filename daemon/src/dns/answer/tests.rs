use std::net::Ipv4Addr;

use hickory_proto::op::Query;
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::Record;

use super::*;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn query(id: u16, n: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(n), RecordType::A));
    m.to_vec().unwrap()
}

/// An answer to `asked` with `records` as (owner, CNAME target or A address).
fn answer(id: u16, asked: &str, records: &[(&str, &str)]) -> Vec<u8> {
    let mut m = Message::response(id, OpCode::Query);
    m.add_query(Query::query(name(asked), RecordType::A));
    for (owner, data) in records {
        let rdata = match data.parse::<Ipv4Addr>() {
            Ok(ip) => RData::A(A(ip)),
            Err(_) => RData::CNAME(CNAME(name(data))),
        };
        m.add_answer(Record::from_rdata(name(owner), 60, rdata));
    }
    m.to_vec().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn q(n: &str) -> Question {
    parse_query(&query(7, n)).unwrap()
}

#[test]
fn plain_answer_gives_its_addresses() {
    let r = inspect(
        &q("api.example.com"),
        &answer(7, "api.example.com", &[("api.example.com", "203.0.113.10")]),
    )
    .unwrap();
    assert_eq!(r.name, "api.example.com");
    assert_eq!(r.addrs, vec![(ip("203.0.113.10"), 60)]);
}

#[test]
fn cname_chain_is_followed_to_its_end() {
    let r = inspect(
        &q("api.example.com"),
        &answer(
            7,
            "api.example.com",
            &[
                ("api.example.com", "edge.cdn.example.net"),
                ("edge.cdn.example.net", "203.0.113.20"),
            ],
        ),
    )
    .unwrap();
    assert_eq!(r.chain, vec!["edge.cdn.example.net".to_string()]);
    assert_eq!(r.addrs, vec![(ip("203.0.113.20"), 60)]);
}

#[test]
fn cname_loop_is_refused() {
    let e = inspect(
        &q("a.example.com"),
        &answer(
            7,
            "a.example.com",
            &[
                ("a.example.com", "b.example.com"),
                ("b.example.com", "a.example.com"),
                ("a.example.com", "203.0.113.1"),
            ],
        ),
    );
    assert_eq!(e, Err(Refusal::CnameLoop));
}

fn chain(n: usize) -> Vec<u8> {
    let names: Vec<String> = (0..=n).map(|i| format!("c{i}.example.com")).collect();
    let mut recs: Vec<(&str, &str)> = names
        .windows(2)
        .map(|w| (w[0].as_str(), w[1].as_str()))
        .collect();
    recs.push((names[n].as_str(), "203.0.113.30"));
    answer(7, "c0.example.com", &recs)
}

#[test]
fn chain_of_twenty_is_refused_and_sixteen_is_followed() {
    assert_eq!(
        inspect(&q("c0.example.com"), &chain(20)),
        Err(Refusal::ChainTooLong)
    );
    let r = inspect(&q("c0.example.com"), &chain(16)).unwrap();
    assert_eq!(r.chain.len(), 16);
    assert_eq!(r.addrs, vec![(ip("203.0.113.30"), 60)]);
}

#[test]
fn records_for_a_name_not_asked_allow_nothing() {
    let r = inspect(
        &q("api.example.com"),
        &answer(
            7,
            "api.example.com",
            &[("evil.example.org", "203.0.113.66")],
        ),
    )
    .unwrap();
    assert!(r.addrs.is_empty());
    // An answer to another question is refused outright.
    assert_eq!(
        inspect(
            &q("api.example.com"),
            &answer(
                7,
                "evil.example.org",
                &[("evil.example.org", "203.0.113.66")]
            )
        ),
        Err(Refusal::QuestionMismatch)
    );
}

#[test]
fn mixed_case_names_match() {
    let r = inspect(
        &q("Api.Example.COM"),
        &answer(
            7,
            "aPI.example.com",
            &[
                ("API.EXAMPLE.com", "Edge.Example.NET"),
                ("edge.example.net", "203.0.113.40"),
            ],
        ),
    )
    .unwrap();
    assert_eq!(r.name, "api.example.com");
    assert_eq!(r.addrs, vec![(ip("203.0.113.40"), 60)]);
}

#[test]
fn trailing_dot_is_ignored() {
    let r = inspect(
        &q("api.example.com."),
        &answer(
            7,
            "api.example.com",
            &[("api.example.com.", "203.0.113.50")],
        ),
    )
    .unwrap();
    assert_eq!(r.name, "api.example.com");
    assert_eq!(r.addrs.len(), 1);
}

#[test]
fn wrong_id_and_non_responses_are_refused() {
    let a = answer(8, "api.example.com", &[("api.example.com", "203.0.113.10")]);
    assert_eq!(inspect(&q("api.example.com"), &a), Err(Refusal::IdMismatch));
    assert_eq!(
        inspect(&q("api.example.com"), &query(7, "api.example.com")),
        Err(Refusal::NotResponse)
    );
    assert_eq!(
        inspect(&q("api.example.com"), b"\x00\x07garbage"),
        Err(Refusal::Malformed)
    );
}

#[test]
fn servfail_keeps_id_and_question() {
    let m = Message::from_vec(&servfail(&query(99, "x.example.com")).unwrap()).unwrap();
    assert_eq!(m.metadata.id, 99);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.queries.len(), 1);
    assert_eq!(servfail(b"\x01"), None);
    assert!(servfail(b"\x01\x02junk").is_some());
}
