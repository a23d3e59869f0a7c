//! Wiring a lab pod the way a container runtime does: executing the CNI plugins
//! of a network configuration list (libcni's ADD sequence) with the `CNI_*`
//! variables and each plugin's configuration on stdin, from inside the runtime's
//! namespace (the node's).
//!
//! For each plugin of the list, in order, the configuration passed is the plugin's
//! object with the list's `name` and `cniVersion` added, `prevResult` set to the
//! previous plugin's result, and `runtimeConfig` holding the runtime arguments the
//! plugin declares in its `capabilities` (here `ips`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Map, Value};

/// CNI version the lab's network list uses.
pub const CNI_VERSION: &str = "1.1.0";
/// Network name of the lab's network list.
pub const NETWORK_NAME: &str = "veil";

/// What to pass to the plugins for one pod.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// The runtime's namespace (the node's), where the plugins run.
    pub runtime_netns: &'a str,
    /// Directories searched for plugin binaries (CNI_PATH).
    pub cni_path: &'a [PathBuf],
    /// CNI_CONTAINERID.
    pub container_id: &'a str,
    /// CNI_NETNS (a path).
    pub netns_path: &'a Path,
    /// CNI_IFNAME.
    pub ifname: &'a str,
    /// CNI_ARGS pairs.
    pub args: &'a [(String, String)],
    /// Runtime configuration (capability arguments), e.g. `{"ips": [...]}`.
    pub runtime_config: Value,
}

/// Why a CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration list is malformed.
    #[error("network list: {0}")]
    BadList(&'static str),
    /// No binary for a plugin type in CNI_PATH.
    #[error("plugin {0:?} not found in CNI_PATH")]
    NotFound(String),
    /// The plugin could not be run.
    #[error("plugin {plugin}: cannot run: {source}")]
    Exec {
        /// Plugin type.
        plugin: String,
        /// IO error.
        #[source]
        source: std::io::Error,
    },
    /// The plugin reported an error (a CNI error object).
    #[error("plugin {plugin}: code {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        /// Plugin type.
        plugin: String,
        /// CNI error code.
        code: u64,
        /// Message.
        msg: String,
        /// Details.
        details: String,
    },
    /// The plugin's output was not a result.
    #[error("plugin {plugin}: exited {status} with output that is not a CNI result: {output:?} (stderr: {stderr})")]
    BadOutput {
        /// Plugin type.
        plugin: String,
        /// Exit status.
        status: String,
        /// What it printed.
        output: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// The lab's network list for a node whose daemon listens on `socket`.
pub fn conflist(socket: &Path) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [{
            "type": "veil",
            "socket": socket,
            "capabilities": {"ips": true}
        }]
    })
}

/// The configuration libcni passes to one plugin of `list`.
pub fn plugin_config(
    list: &Value,
    plugin: &Value,
    prev_result: Option<&Value>,
    runtime_config: &Value,
) -> Result<Value, CniError> {
    let mut conf: Map<String, Value> = plugin
        .as_object()
        .ok_or(CniError::BadList("a plugin is not an object"))?
        .clone();
    conf.insert(
        "name".into(),
        list.get("name")
            .cloned()
            .ok_or(CniError::BadList("no name"))?,
    );
    conf.insert(
        "cniVersion".into(),
        list.get("cniVersion")
            .cloned()
            .ok_or(CniError::BadList("no cniVersion"))?,
    );
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let mut rc = Map::new();
    if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
        for (cap, enabled) in caps {
            if enabled.as_bool() == Some(true) {
                if let Some(v) = runtime_config.get(cap) {
                    rc.insert(cap.clone(), v.clone());
                }
            }
        }
    }
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Ok(Value::Object(conf))
}

/// Formats CNI_ARGS (`K=V;K=V`).
pub fn cni_args(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn find_plugin(cni_path: &[PathBuf], ty: &str) -> Option<PathBuf> {
    if ty.contains('/') {
        return None;
    }
    cni_path.iter().map(|d| d.join(ty)).find(|p| p.is_file())
}

fn exec_plugin(
    command: &str,
    inv: &Invocation<'_>,
    ty: &str,
    conf: &Value,
) -> Result<Value, CniError> {
    let bin = find_plugin(inv.cni_path, ty).ok_or_else(|| CniError::NotFound(ty.to_string()))?;
    let cni_path = std::env::join_paths(inv.cni_path).unwrap_or_default();
    let exec = |source| CniError::Exec {
        plugin: ty.to_string(),
        source,
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", inv.runtime_netns])
        .arg(&bin)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns_path)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", cni_args(inv.args))
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(exec)?;
    let input = serde_json::to_vec(conf).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&input).map_err(exec)?;
    }
    let out = child.wait_with_output().map_err(exec)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let parsed: Option<Value> = serde_json::from_str(&stdout).ok();
    match (out.status.success(), parsed) {
        (true, Some(v)) => Ok(v),
        (false, Some(v)) if v.get("code").is_some() => Err(CniError::Plugin {
            plugin: ty.to_string(),
            code: v["code"].as_u64().unwrap_or(0),
            msg: v["msg"].as_str().unwrap_or("").to_string(),
            details: v["details"].as_str().unwrap_or("").to_string(),
        }),
        _ => Err(CniError::BadOutput {
            plugin: ty.to_string(),
            status: out.status.to_string(),
            output: stdout,
            stderr,
        }),
    }
}

/// Runs ADD through every plugin of `list`, returning the final result.
pub fn add(list: &Value, inv: &Invocation<'_>) -> Result<Value, CniError> {
    let plugins = list
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or(CniError::BadList("no plugins"))?;
    let mut prev: Option<Value> = None;
    for plugin in plugins {
        let ty = plugin
            .get("type")
            .and_then(Value::as_str)
            .ok_or(CniError::BadList("a plugin has no type"))?;
        let conf = plugin_config(list, plugin, prev.as_ref(), &inv.runtime_config)?;
        prev = Some(exec_plugin("ADD", inv, ty, &conf)?);
    }
    prev.ok_or(CniError::BadList("no plugins"))
}

/// The first IPv4 address of a CNI result (`ips[].address`, `a.b.c.d/len`).
pub fn result_ipv4(result: &Value) -> Option<std::net::Ipv4Addr> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .next()
}

/// A container ID as runtimes make them: 64 hex digits.
pub fn new_container_id() -> String {
    let a: u128 = rand::random();
    let b: u128 = rand::random();
    format!("{a:032x}{b:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_config_gets_name_version_prev_result_and_declared_capabilities() {
        let list = conflist(Path::new("/run/x.sock"));
        let plugin = &list["plugins"][0];
        let rc = json!({"ips": ["10.244.0.10/32"], "portMappings": []});
        let prev = json!({"cniVersion": "1.1.0", "ips": []});
        let conf = plugin_config(&list, plugin, Some(&prev), &rc).unwrap();
        assert_eq!(conf["name"], "veil");
        assert_eq!(conf["cniVersion"], "1.1.0");
        assert_eq!(conf["type"], "veil");
        assert_eq!(conf["socket"], "/run/x.sock");
        assert_eq!(conf["prevResult"], prev);
        assert_eq!(conf["runtimeConfig"], json!({"ips": ["10.244.0.10/32"]}));
    }

    #[test]
    fn no_runtime_config_without_capabilities() {
        let list = json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x"}]});
        let conf = plugin_config(
            &list,
            &list["plugins"][0],
            None,
            &json!({"ips": ["1.2.3.4"]}),
        )
        .unwrap();
        assert!(conf.get("runtimeConfig").is_none());
        assert!(conf.get("prevResult").is_none());
    }

    #[test]
    fn cni_args_are_semicolon_separated() {
        let args = vec![
            ("K8S_POD_NAMESPACE".to_string(), "x".to_string()),
            ("K8S_POD_NAME".to_string(), "a".to_string()),
        ];
        assert_eq!(cni_args(&args), "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a");
    }

    #[test]
    fn result_ipv4_reads_the_first_address() {
        let r = json!({"ips": [{"address": "10.244.0.7/32", "gateway": "169.254.1.1"}]});
        assert_eq!(
            result_ipv4(&r),
            Some(std::net::Ipv4Addr::new(10, 244, 0, 7))
        );
        assert_eq!(result_ipv4(&json!({})), None);
    }

    #[test]
    fn container_ids_are_64_hex_digits_and_differ() {
        let a = new_container_id();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_container_id());
    }

    #[test]
    fn plugin_types_with_slashes_are_never_looked_up() {
        assert!(find_plugin(&[PathBuf::from("/usr/bin")], "../bin/sh").is_none());
    }
}
