//! Differential fuzzing: the compiled program's interpreter must agree
//! with the reference evaluator on generated clusters, policies and flows.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = veil_scenario::testgen::check(data) {
        panic!("{e}");
    }
});
