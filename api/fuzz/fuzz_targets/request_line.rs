//! The daemon's socket protocol: one request line in, one answer line out.
//! Every method of `veil_api::method::ALL` is registered with its real
//! parameter type (the handler echoes a fixed value), so the decoding of every
//! method's parameters is exercised. Checks: exactly one line comes back, it
//! is a `Reply`, and an error answer carries a documented code.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use veil_api::{method, ApiError, Reply};
use veil_daemon::api::ApiRegistry;

fn registry() -> &'static ApiRegistry {
    static R: OnceLock<ApiRegistry> = OnceLock::new();
    R.get_or_init(|| {
        let r = ApiRegistry::default();
        macro_rules! reg {
            ($name:expr, $t:ty) => {
                r.register($name, |_p: $t| async { Ok::<_, ApiError>(serde_json::json!({"ok": 1})) })
            };
        }
        reg!(method::CNI_ADD, veil_api::AddRequest);
        reg!(method::CNI_COMMIT, veil_api::CommitRequest);
        reg!(method::CNI_DEL, veil_api::DelRequest);
        reg!(method::CNI_CHECK, veil_api::CheckRequest);
        reg!(method::CNI_STATUS, serde_json::Value);
        reg!(method::CNI_GC, veil_api::GcRequest);
        reg!(method::NODE_STATUS, serde_json::Value);
        reg!(method::WIREGUARD_STATUS, serde_json::Value);
        reg!(method::GRAPH_GET, Option<veil_api::GraphParams>);
        reg!(method::FLOWS_LIST, Option<veil_api::FlowFilter>);
        reg!(method::FLOWS_HEALTH, Option<veil_api::GraphParams>);
        reg!(method::POLICY_LIST, serde_json::Value);
        r
    })
}

fuzz_target!(|data: &[u8]| {
    // The server reads one line of text: what a client sends up to '\n'.
    let line = String::from_utf8_lossy(data);
    let line = line.split_inclusive('\n').next().unwrap_or("");
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let out = rt.block_on(registry().answer_line(line));
    assert_eq!(out.last(), Some(&b'\n'), "an answer ends its line");
    assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
    let reply: Reply = serde_json::from_slice(&out).expect("the answer is a Reply");
    if let Reply::Error(e) = reply {
        assert!(veil_api::code::meaning(e.code).is_some(), "undocumented code {}", e.code);
        assert!(!e.msg.is_empty());
    }
});
