//! Pure handling of one DNS exchange: the pod's query and the resolver's
//! answer, as bytes, to the name asked and the addresses that answer it.
//!
//! Parsing is hickory-proto's. The answer must be a response to exactly the
//! query (same ID, same single question, compared case-insensitively without
//! the trailing dot). The CNAME chain is followed from the asked name; the
//! addresses are the A/AAAA records of the name at its end, each with the
//! smallest TTL along the chain. Records for any other name are ignored: an
//! answer never allows what was not asked. A loop, a chain longer than
//! [`MAX_CHAIN`], or more than [`MAX_RECORDS`] records is refused.
//!
//! It does no IO and never panics on any input (a fuzz target checks it).

use std::collections::HashSet;
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// Longest CNAME chain followed.
pub const MAX_CHAIN: usize = 16;
/// Most records an answer may carry (all sections).
pub const MAX_RECORDS: usize = 512;

/// Why an exchange is refused (answered SERVFAIL and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// The bytes are not a DNS message.
    #[error("malformed DNS message")]
    Malformed,
    /// A query that is not one standard query with one question.
    #[error("not a single-question standard query")]
    NotAQuery,
    /// The answer is not a response.
    #[error("the answer is not a response")]
    NotResponse,
    /// The answer's ID is not the query's.
    #[error("the answer's ID is not the query's")]
    IdMismatch,
    /// The answer's question is not the query's.
    #[error("the answer is for another question")]
    QuestionMismatch,
    /// The CNAME chain loops.
    #[error("CNAME loop")]
    CnameLoop,
    /// The CNAME chain is longer than [`MAX_CHAIN`].
    #[error("CNAME chain longer than {MAX_CHAIN}")]
    ChainTooLong,
    /// More than [`MAX_RECORDS`] records.
    #[error("more than {MAX_RECORDS} records")]
    Oversized,
}

impl Refusal {
    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::NotAQuery => "not_a_query",
            Refusal::NotResponse => "not_response",
            Refusal::IdMismatch => "id_mismatch",
            Refusal::QuestionMismatch => "question_mismatch",
            Refusal::CnameLoop => "cname_loop",
            Refusal::ChainTooLong => "chain_too_long",
            Refusal::Oversized => "oversized",
        }
    }
}

/// A pod's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Message ID.
    pub id: u16,
    /// The asked name: lower case, no trailing dot.
    pub name: String,
    /// The asked type.
    pub qtype: RecordType,
}

/// What an accepted answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The asked name (lower case, no trailing dot).
    pub name: String,
    /// The CNAME targets followed, in order.
    pub chain: Vec<String>,
    /// Addresses of the name at the end of the chain, with their TTL
    /// (the smallest along the chain).
    pub addrs: Vec<(IpAddr, u32)>,
    /// The response code.
    pub rcode: ResponseCode,
    /// The TC bit (the pod retries over TCP).
    pub truncated: bool,
}

/// `name` in lower case without the trailing dot.
pub fn normalize(name: &Name) -> String {
    let s = name.to_ascii();
    s.strip_suffix('.').unwrap_or(&s).to_ascii_lowercase()
}

/// Parses a pod's query.
pub fn parse_query(bytes: &[u8]) -> Result<Question, Refusal> {
    let m = Message::from_vec(bytes).map_err(|_| Refusal::Malformed)?;
    if m.metadata.message_type != MessageType::Query
        || m.metadata.op_code != OpCode::Query
        || m.queries.len() != 1
    {
        return Err(Refusal::NotAQuery);
    }
    let q = &m.queries[0];
    Ok(Question {
        id: m.metadata.id,
        name: normalize(q.name()),
        qtype: q.query_type(),
    })
}

/// Checks `answer` against `q` and extracts what it resolves.
pub fn inspect(q: &Question, answer: &[u8]) -> Result<Resolved, Refusal> {
    let m = Message::from_vec(answer).map_err(|_| Refusal::Malformed)?;
    if m.metadata.message_type != MessageType::Response {
        return Err(Refusal::NotResponse);
    }
    if m.metadata.id != q.id {
        return Err(Refusal::IdMismatch);
    }
    let asked = match m.queries.as_slice() {
        [one] => one,
        _ => return Err(Refusal::QuestionMismatch),
    };
    if normalize(asked.name()) != q.name || asked.query_type() != q.qtype {
        return Err(Refusal::QuestionMismatch);
    }
    if m.answers.len() + m.authorities.len() + m.additionals.len() > MAX_RECORDS {
        return Err(Refusal::Oversized);
    }
    let mut cur = q.name.clone();
    let mut ttl = u32::MAX;
    let mut chain = Vec::new();
    let mut seen: HashSet<String> = HashSet::from([cur.clone()]);
    loop {
        let next = m.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if normalize(&r.name) == cur => Some((normalize(&c.0), r.ttl)),
            _ => None,
        });
        let Some((target, t)) = next else { break };
        if !seen.insert(target.clone()) {
            return Err(Refusal::CnameLoop);
        }
        if chain.len() == MAX_CHAIN {
            return Err(Refusal::ChainTooLong);
        }
        ttl = ttl.min(t);
        chain.push(target.clone());
        cur = target;
    }
    let mut addrs: Vec<(IpAddr, u32)> = Vec::new();
    for r in &m.answers {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if normalize(&r.name) != cur {
            continue;
        }
        let t = ttl.min(r.ttl);
        match addrs.iter_mut().find(|(a, _)| *a == ip) {
            Some(e) => e.1 = e.1.max(t),
            None => addrs.push((ip, t)),
        }
    }
    Ok(Resolved {
        name: q.name.clone(),
        chain,
        addrs,
        rcode: m.metadata.response_code,
        truncated: m.metadata.truncation,
    })
}

/// A SERVFAIL answer to `query` (same ID and question), or None when the
/// query has no readable ID.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
    match Message::from_vec(query) {
        Ok(q) => {
            let mut m = Message::error_msg(id, q.metadata.op_code, ResponseCode::ServFail);
            m.metadata.recursion_desired = q.metadata.recursion_desired;
            m.metadata.recursion_available = true;
            m.add_queries(q.queries.iter().cloned());
            m.to_vec().ok()
        }
        Err(_) => Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)
            .to_vec()
            .ok(),
    }
}

#[cfg(test)]
mod tests;
