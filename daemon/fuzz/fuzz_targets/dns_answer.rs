//! The DNS proxy's answer handling on arbitrary bytes: the first byte picks
//! how the input is split into a pod's query and a resolver's answer (or the
//! whole input is the answer to a fixed query). Nothing may panic; an
//! accepted answer never follows a chain longer than `MAX_CHAIN`, and every
//! address it yields belongs to the asked name's chain.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/dns/answer.rs"]
#[allow(dead_code)]
mod answer;

/// `api.example.com. IN A`, ID 0x4242, recursion desired.
const QUERY: &[u8] = b"\x42\x42\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03api\x07example\x03com\x00\x00\x01\x00\x01";

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (query, ans) = if split & 0x80 == 0 {
        (QUERY, rest)
    } else {
        let at = usize::from(split & 0x7f).min(rest.len());
        rest.split_at(at)
    };
    let _ = answer::servfail(query);
    let _ = answer::servfail(ans);
    let Ok(q) = answer::parse_query(query) else {
        return;
    };
    if let Ok(r) = answer::inspect(&q, ans) {
        assert!(r.chain.len() <= answer::MAX_CHAIN);
        assert_eq!(r.name, q.name);
    }
});
