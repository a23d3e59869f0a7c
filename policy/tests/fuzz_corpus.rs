//! Replays the committed fuzz corpora (policy/fuzz/corpus) so regressions
//! found by fuzzing stay fixed without a nightly toolchain.

use std::path::Path;

use veil_policy::Object;
use veil_scenario::{run, Scenario};

fn entries(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read(e.path()).expect("corpus file"))
        .collect();
    v.sort();
    v
}

#[test]
fn parse_corpus_never_panics() {
    let corpus = entries("parse");
    assert!(!corpus.is_empty());
    for data in corpus {
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = Object::from_yaml(text);
            if let Ok(sc) = Scenario::parse(text) {
                let _ = run(&sc);
            }
        }
    }
}

#[test]
fn differential_corpus_agrees() {
    let corpus = entries("differential");
    assert!(!corpus.is_empty());
    for data in corpus {
        if let Err(e) = veil_scenario::testgen::check(&data) {
            panic!("{e}");
        }
    }
}

#[test]
fn corpus_manifests_are_valid() {
    // The hand-written manifests in the corpus are meant to be valid: they
    // seed the fuzzer with every field.
    for name in ["anp.yaml", "cnp.yaml", "gnp.yaml", "np.yaml", "tier.yaml"] {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/parse")
            .join(name);
        let text = std::fs::read_to_string(&p).expect("corpus manifest");
        if let Err(e) = Object::from_yaml(&text) {
            panic!("{name}: {e}");
        }
    }
}
