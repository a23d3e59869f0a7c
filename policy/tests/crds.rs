//! Golden test: the CRDs checked in under deploy/crds/ must equal what the
//! Rust types generate. Refresh with `VEIL_UPDATE_GOLDEN=1`.

use std::path::Path;

#[test]
fn checked_in_crds_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let update = std::env::var("VEIL_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (name, text) in veil_policy::crd::crds() {
        let path = dir.join(&name);
        if update {
            std::fs::create_dir_all(&dir).expect("create deploy/crds");
            std::fs::write(&path, &text).expect("write CRD");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(old) if old == text => {}
            _ => stale.push(name),
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRDs in deploy/crds: {stale:?}; refresh with VEIL_UPDATE_GOLDEN=1 cargo test -p veil-policy --test crds and review the diff"
    );
}
