//! The lab's cluster DNS (`kube-system/kube-dns`): answers A queries for the
//! external hosts' names, NXDOMAIN for every other name. Pure: bytes in, bytes
//! out; [`super::serve`] puts it on UDP and TCP port 53.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

/// Largest answer over UDP without EDNS (RFC 1035).
pub const UDP_PAYLOAD: usize = 512;
/// TTL of the answers, in seconds (short: labs change).
pub const TTL: u32 = 30;

/// The names the DNS server knows: lowercase, without the trailing dot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    names: BTreeMap<String, Ipv4Addr>,
}

impl Records {
    /// Builds the table from (name, address) pairs; names are case-insensitive.
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, Ipv4Addr)>) -> Self {
        Records {
            names: entries
                .into_iter()
                .map(|(n, ip)| (normalize(n), ip))
                .collect(),
        }
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
        let name = q.name().to_ascii();
        match records.lookup(&name) {
            None => response.metadata.response_code = ResponseCode::NXDomain,
            Some(ip) => {
                let wants_a = matches!(q.query_type(), RecordType::A | RecordType::ANY);
                if wants_a && q.query_class() == DNSClass::IN {
                    response.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
                }
                // Other types of a known name: NOERROR without answers (NODATA).
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
