//! Parser fuzzing: manifests and scenario files must never panic, and a
//! scenario that parses must run (both evaluators) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_scenario::{run, Scenario};
use veil_policy::Object;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Object::from_yaml(text);
        if let Ok(sc) = Scenario::parse(text) {
            let _ = run(&sc);
        }
    }
});
