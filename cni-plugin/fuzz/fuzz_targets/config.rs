//! The plugin's inputs a runtime controls: the network configuration on stdin
//! and `CNI_ARGS`. Parsing never panics; a refusal is an error object with a
//! documented code (or a spec code below 100) and a version the plugin speaks;
//! an accepted configuration names its socket and version.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_cni::config::NetConf;
use veil_cni::error::error_version;

fuzz_target!(|data: &[u8]| {
    match NetConf::parse(data) {
        Ok(conf) => {
            assert!(!conf.socket.as_os_str().is_empty());
            let _ = conf.version.as_str();
        }
        Err(e) => {
            let j = e.to_json(&error_version(data));
            let code = j["code"].as_u64().expect("a code") as u32;
            assert!(
                code < 100 || veil_api::code::meaning(code).is_some(),
                "undocumented code {code}: {j}"
            );
            assert!(j["msg"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        }
    }
    let _ = veil_cni::env::parse_args(&String::from_utf8_lossy(data));
});
