//! Differential property test: random clusters, policies and flows; the
//! compiled program's interpreter must agree with the reference evaluator,
//! from scratch and after incremental updates.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn compiled_program_agrees_with_reference(data in proptest::collection::vec(any::<u8>(), 64..1024)) {
        if let Err(e) = veil_scenario::testgen::check(&data) {
            prop_assert!(false, "{}", e);
        }
    }
}
