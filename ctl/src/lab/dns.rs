//! The lab's cluster DNS (`kube-system/kube-dns`): answers A queries for the
//! external hosts' names, NXDOMAIN for every other name. Pure: bytes in, bytes
//! out; [`super::serve`] puts it on UDP and TCP port 53.
//!
//! A [`Zone`] adds what the scenario format cannot say (tests start a server
//! with one, `veilctl lab serve --spec '{..., "dnsZone": {...}}'`): CNAME
//! chains (followed in the answer, as a recursive resolver does, at most
//! [`MAX_CHAIN`] links, so a loop gives a bounded chain without addresses),
//! per-name TTLs, and extra addresses (enough of them make a UDP answer
//! truncated, so clients retry over TCP).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use serde::{Deserialize, Serialize};

/// Largest answer over UDP without EDNS (RFC 1035).
pub const UDP_PAYLOAD: usize = 512;
/// TTL of the answers, in seconds (short: labs change).
pub const TTL: u32 = 30;

/// Most CNAME links followed in one answer.
pub const MAX_CHAIN: usize = 24;

/// Records beyond one address per external host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Zone {
    /// `name: target`: the name is an alias (CNAME) of the target.
    #[serde(default)]
    pub cnames: BTreeMap<String, String>,
    /// TTL (seconds) of a name's records (a `numbered` suffix's applies to
    /// its names); [`TTL`] otherwise.
    #[serde(default)]
    pub ttls: BTreeMap<String, u32>,
    /// More A records of a name (after its own address, if it has one).
    #[serde(default)]
    pub addresses: BTreeMap<String, Vec<Ipv4Addr>>,
    /// `suffix: base`: `n<i>.<suffix>` (i < 65536) is `base + i` (benchmarks:
    /// many distinct names, each its own address).
    #[serde(default)]
    pub numbered: BTreeMap<String, Ipv4Addr>,
}

/// The names the DNS server knows: lowercase, without the trailing dot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    names: BTreeMap<String, Ipv4Addr>,
    zone: Zone,
}

impl Records {
    /// Builds the table from (name, address) pairs; names are case-insensitive.
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, Ipv4Addr)>) -> Self {
        Records {
            names: entries
                .into_iter()
                .map(|(n, ip)| (normalize(n), ip))
                .collect(),
            zone: Zone::default(),
        }
    }

    /// Adds `zone`'s aliases, TTLs and addresses (names normalized).
    pub fn with_zone(mut self, zone: Zone) -> Self {
        self.zone = Zone {
            cnames: zone
                .cnames
                .into_iter()
                .map(|(a, b)| (normalize(&a), b))
                .collect(),
            ttls: zone
                .ttls
                .into_iter()
                .map(|(n, t)| (normalize(&n), t))
                .collect(),
            addresses: zone
                .addresses
                .into_iter()
                .map(|(n, v)| (normalize(&n), v))
                .collect(),
            numbered: zone
                .numbered
                .into_iter()
                .map(|(n, b)| (normalize(&n), b))
                .collect(),
        };
        self
    }

    /// The TTL of `name`: its own, else (for a numbered name) its suffix's.
    fn ttl(&self, name: &str) -> u32 {
        let n = normalize(name);
        let suffix = n
            .split_once('.')
            .filter(|(_, s)| self.zone.numbered.contains_key(*s))
            .map(|(_, s)| s);
        self.zone
            .ttls
            .get(&n)
            .or_else(|| self.zone.ttls.get(suffix?))
            .copied()
            .unwrap_or(TTL)
    }

    /// Every address of `name` (not following aliases).
    fn addresses(&self, name: &str) -> Vec<Ipv4Addr> {
        let n = normalize(name);
        let mut v: Vec<Ipv4Addr> = self.names.get(&n).copied().into_iter().collect();
        v.extend(self.zone.addresses.get(&n).into_iter().flatten());
        if let Some((first, suffix)) = n.split_once('.') {
            let i = first.strip_prefix('n').and_then(|d| d.parse::<u16>().ok());
            if let (Some(i), Some(base)) = (i, self.zone.numbered.get(suffix)) {
                v.push(Ipv4Addr::from(u32::from(*base).wrapping_add(u32::from(i))));
            }
        }
        v
    }

    /// The answer records for `name` (`None`: unknown name): the CNAME
    /// chain from it, then the A records of where it ends (with `want_a`).
    fn resolve(&self, name: &Name, want_a: bool) -> Option<Vec<Record>> {
        let mut out = Vec::new();
        let mut cur = name.clone();
        for _ in 0..MAX_CHAIN {
            let text = cur.to_ascii();
            let Some(target) = self.zone.cnames.get(&normalize(&text)) else {
                break;
            };
            let mut t = Name::from_ascii(target).ok()?;
            t.set_fqdn(true);
            out.push(Record::from_rdata(
                cur.clone(),
                self.ttl(&text),
                RData::CNAME(CNAME(t.clone())),
            ));
            cur = t;
        }
        let text = cur.to_ascii();
        let addrs = self.addresses(&text);
        if out.is_empty() && addrs.is_empty() {
            return None;
        }
        if want_a {
            let ttl = self.ttl(&text);
            out.extend(
                addrs
                    .into_iter()
                    .map(|ip| Record::from_rdata(cur.clone(), ttl, RData::A(A(ip)))),
            );
        }
        Some(out)
    }

    /// The address of `name`, if known.
    pub fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        self.names.get(&normalize(name)).copied()
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Answers one DNS query message. `udp_limit` is the largest answer the
/// transport takes (None over TCP); a larger answer is sent truncated (TC set).
/// Returns None for input that is not a DNS query at all (too short to carry an
/// ID, or itself a response), which the server then ignores.
pub fn answer(query: &[u8], records: &Records, udp_limit: Option<usize>) -> Option<Vec<u8>> {
    let request = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.authoritative = true;
    response.add_queries(request.queries.iter().cloned());
    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
    } else if request.queries.len() != 1 {
        response.metadata.response_code = ResponseCode::FormErr;
    } else {
        let q = &request.queries[0];
        let wants_a = matches!(q.query_type(), RecordType::A | RecordType::ANY)
            && q.query_class() == DNSClass::IN;
        // Other types of a known name: NOERROR without addresses (NODATA).
        match records.resolve(q.name(), wants_a) {
            None => response.metadata.response_code = ResponseCode::NXDomain,
            Some(rs) => {
                response.add_answers(rs);
            }
        }
    }
    let limit = udp_limit.map(|l| {
        let edns = request
            .edns
            .as_ref()
            .map(|e| usize::from(e.max_payload()))
            .unwrap_or(0);
        l.max(edns)
    });
    let bytes = response.to_vec().ok()?;
    match limit {
        Some(l) if bytes.len() > l => response.truncate().to_vec().ok(),
        _ => Some(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn records() -> Records {
        Records::new([
            ("pay.example.net", Ipv4Addr::new(203, 0, 113, 50)),
            ("Img.CDN.example.net.", Ipv4Addr::new(203, 0, 113, 51)),
        ])
    }

    fn query(name: &str, ty: RecordType) -> Vec<u8> {
        let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        m.to_vec().unwrap()
    }

    fn decode(bytes: &[u8]) -> Message {
        Message::from_vec(bytes).unwrap()
    }

    #[test]
    fn known_name_gets_its_a_record() {
        let r = decode(
            &answer(
                &query("pay.example.net.", RecordType::A),
                &records(),
                Some(512),
            )
            .unwrap(),
        );
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.recursion_desired);
        assert_eq!(r.queries.len(), 1);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(
            r.answers[0].data,
            RData::A(A(Ipv4Addr::new(203, 0, 113, 50)))
        );
    }

    #[test]
    fn names_match_case_insensitively() {
        let r = decode(
            &answer(
                &query("IMG.cdn.Example.NET", RecordType::A),
                &records(),
                None,
            )
            .unwrap(),
        );
        assert_eq!(
            r.answers[0].data,
            RData::A(A(Ipv4Addr::new(203, 0, 113, 51)))
        );
    }

    #[test]
    fn unknown_name_is_nxdomain() {
        let r = decode(
            &answer(
                &query("tracker.example.org.", RecordType::A),
                &records(),
                Some(512),
            )
            .unwrap(),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn other_types_of_a_known_name_get_no_data() {
        let r = decode(
            &answer(
                &query("pay.example.net.", RecordType::AAAA),
                &records(),
                Some(512),
            )
            .unwrap(),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn garbage_with_an_id_gets_formerr_and_shorter_input_nothing() {
        let r = decode(&answer(&[0x12, 0x34, 0xff], &records(), Some(512)).unwrap());
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert!(answer(&[0x12], &records(), Some(512)).is_none());
    }

    #[test]
    fn responses_are_not_answered() {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("pay.example.net.").unwrap(),
            RecordType::A,
        ));
        assert!(answer(&m.to_vec().unwrap(), &records(), Some(512)).is_none());
    }

    fn zone() -> Records {
        records().with_zone(Zone {
            cnames: BTreeMap::from([
                ("www.example.com".into(), "Edge.example.net.".into()),
                ("edge.example.net".into(), "pay.example.net".into()),
                ("loop1.example.com".into(), "loop2.example.com".into()),
                ("loop2.example.com".into(), "loop1.example.com".into()),
            ]),
            ttls: BTreeMap::from([("pay.example.net".into(), 1)]),
            addresses: BTreeMap::from([(
                "big.example.com".into(),
                (0..60)
                    .map(|i| Ipv4Addr::new(203, 0, 113, 100 + i))
                    .collect(),
            )]),
            numbered: BTreeMap::new(),
        })
    }

    #[test]
    fn aliases_are_followed_to_the_addresses_of_the_chain_end() {
        let r = decode(&answer(&query("WWW.example.com.", RecordType::A), &zone(), None).unwrap());
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let kinds: Vec<RecordType> = r.answers.iter().map(|a| a.record_type()).collect();
        assert_eq!(
            kinds,
            vec![RecordType::CNAME, RecordType::CNAME, RecordType::A]
        );
        assert_eq!(
            r.answers[1].name.to_ascii().to_lowercase(),
            "edge.example.net."
        );
        assert_eq!(r.answers[2].name.to_ascii(), "pay.example.net.");
        assert_eq!(r.answers[2].ttl, 1);
        assert_eq!(r.answers[0].ttl, TTL);
    }

    #[test]
    fn a_cname_loop_gives_a_bounded_chain_without_addresses() {
        let r =
            decode(&answer(&query("loop1.example.com.", RecordType::A), &zone(), None).unwrap());
        assert_eq!(r.answers.len(), MAX_CHAIN);
        assert!(r
            .answers
            .iter()
            .all(|a| a.record_type() == RecordType::CNAME));
    }

    #[test]
    fn many_addresses_truncate_over_udp_and_pass_over_tcp() {
        let q = query("big.example.com.", RecordType::A);
        let udp = decode(&answer(&q, &zone(), Some(UDP_PAYLOAD)).unwrap());
        assert!(udp.metadata.truncation);
        let tcp = decode(&answer(&q, &zone(), None).unwrap());
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 60);
    }

    #[test]
    fn numbered_names_get_consecutive_addresses() {
        let r = records().with_zone(Zone {
            numbered: BTreeMap::from([("bench.example.com".into(), Ipv4Addr::new(198, 19, 0, 0))]),
            ttls: BTreeMap::from([("bench.example.com".into(), 3600)]),
            ..Zone::default()
        });
        let a =
            decode(&answer(&query("n300.bench.example.com.", RecordType::A), &r, None).unwrap());
        assert_eq!(
            a.answers[0].data,
            RData::A(A(Ipv4Addr::new(198, 19, 1, 44)))
        );
        assert_eq!(a.answers[0].ttl, 3600);
        let x = decode(&answer(&query("x1.bench.example.com.", RecordType::A), &r, None).unwrap());
        assert_eq!(x.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn zone_reads_from_the_serve_spec_json() {
        let z: Zone = serde_json::from_str(
            r#"{"cnames": {"a.x": "b.x"}, "ttls": {"b.x": 2}, "addresses": {"b.x": ["203.0.113.1"]}}"#,
        )
        .unwrap();
        assert_eq!(z.ttls["b.x"], 2);
        assert!(serde_json::from_str::<Zone>(r#"{"cname": {}}"#).is_err());
    }

    #[test]
    fn oversized_udp_answers_are_truncated() {
        let r = decode(
            &answer(
                &query("pay.example.net.", RecordType::A),
                &records(),
                Some(20),
            )
            .unwrap(),
        );
        assert!(r.metadata.truncation);
        assert!(r.answers.is_empty());
    }
}
