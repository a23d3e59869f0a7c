//! Running CNI plugins the way a container runtime does: the one copy of it in
//! the project, used by the lab (to wire its pods with the real `veil` binary)
//! and by the end-to-end tests (to drive `veil` and the reference plugins).
//!
//! A plugin run ([`exec`]) is: the plugin binary started with a cleared
//! environment holding only `PATH` ([`RUNTIME_PATH`]), `CNI_COMMAND`,
//! `CNI_PATH` and the attachment's variables (`CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS`; [`Attachment::vars`]), optionally inside the
//! runtime's network namespace (`ip netns exec`), the configuration written on
//! its stdin, its stdout read as the result or error object ([`PluginRun`]).
//!
//! A network configuration list ([`add_list`]) is run as libcni does for ADD:
//! each plugin in order gets its own object with the list's `name` and
//! `cniVersion` added, `prevResult` set to the previous plugin's result, and
//! `runtimeConfig` holding the runtime arguments it declares in its
//! `capabilities` ([`plugin_config`]).
//!
//! What it does not do: validate results against the spec (the tests do), or
//! DEL/CHECK a whole list (nothing here needs it yet).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use serde_json::{Map, Value};

/// `PATH` given to every plugin (a runtime does not pass its caller's).
pub const RUNTIME_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where and how plugins run.
#[derive(Debug, Clone, Copy)]
pub struct Runtime<'a> {
    /// The runtime's network namespace (a name under /run/netns), where the
    /// plugins run; `None`: the current one.
    pub netns: Option<&'a str>,
    /// Directories searched for plugin binaries (`CNI_PATH`).
    pub cni_path: &'a [PathBuf],
}

/// One attachment of a container to a network: the `CNI_*` variables besides
/// the command and the path.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS` (a path).
    pub netns: &'a Path,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS` pairs.
    pub args: &'a [(String, String)],
}

impl Attachment<'_> {
    /// The variables, as [`exec`] takes them.
    pub fn vars(&self) -> Vec<(String, String)> {
        vec![
            ("CNI_CONTAINERID".into(), self.container_id.into()),
            ("CNI_NETNS".into(), self.netns.display().to_string()),
            ("CNI_IFNAME".into(), self.ifname.into()),
            ("CNI_ARGS".into(), cni_args(self.args)),
        ]
    }
}

/// Why running a plugin failed.
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
        /// Plugin type or path.
        plugin: String,
        /// IO error.
        #[source]
        source: std::io::Error,
    },
    /// The plugin reported an error (a CNI error object).
    #[error("plugin {plugin}: code {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        /// Plugin type or path.
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
        /// Plugin type or path.
        plugin: String,
        /// Exit status.
        status: String,
        /// What it printed.
        output: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// What one run of a plugin produced.
#[derive(Debug, Clone)]
pub struct PluginRun {
    /// The plugin (as named to [`exec`]).
    pub plugin: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Its stdout (the result or error object, or nothing).
    pub stdout: String,
    /// Its stderr (logs).
    pub stderr: String,
}

impl PluginRun {
    /// The exit code (-1 when killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// stdout as one JSON document; `Null` when it is empty (DEL, GC, STATUS).
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        if self.stdout.trim().is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_str(&self.stdout)
        }
    }

    /// The result (`Null` for a command that prints none), or the plugin's
    /// error object as [`CniError::Plugin`], or [`CniError::BadOutput`] when
    /// stdout is neither.
    pub fn result(self) -> Result<Value, CniError> {
        match (self.status.success(), self.json()) {
            (true, Ok(v)) => Ok(v),
            (false, Ok(v)) if v.get("code").is_some() => Err(CniError::Plugin {
                plugin: self.plugin,
                code: v["code"].as_u64().unwrap_or(0),
                msg: v["msg"].as_str().unwrap_or("").to_string(),
                details: v["details"].as_str().unwrap_or("").to_string(),
            }),
            _ => Err(CniError::BadOutput {
                plugin: self.plugin,
                status: self.status.to_string(),
                output: self.stdout,
                stderr: self.stderr.trim().to_string(),
            }),
        }
    }
}

/// Runs the plugin binary `plugin` with `CNI_COMMAND=command`, the runtime's
/// `CNI_PATH`, the variables `vars` (normally [`Attachment::vars`]; a test may
/// leave some out) and `stdin` as its configuration, and waits for it.
pub fn exec<K: AsRef<str>, V: AsRef<str>>(
    rt: &Runtime<'_>,
    plugin: &Path,
    command: &str,
    vars: &[(K, V)],
    stdin: &[u8],
) -> Result<PluginRun, CniError> {
    let name = plugin.display().to_string();
    let exec = |source| CniError::Exec {
        plugin: name.clone(),
        source,
    };
    let mut cmd = match rt.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(plugin);
            c
        }
        None => Command::new(plugin),
    };
    cmd.env_clear()
        .env("PATH", RUNTIME_PATH)
        .env("CNI_COMMAND", command)
        .env(
            "CNI_PATH",
            std::env::join_paths(rt.cni_path).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k.as_ref(), v.as_ref());
    }
    let mut child = cmd.spawn().map_err(exec)?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that fails before reading its configuration closes stdin:
        // what it printed says why, so a broken pipe is not the error.
        match input.write_all(stdin) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(exec(e)),
            _ => {}
        }
    }
    let out = child.wait_with_output().map_err(exec)?;
    Ok(PluginRun {
        plugin: name,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The binary of plugin type `ty` in `cni_path` (types with a `/` are never
/// looked up).
pub fn find_plugin(cni_path: &[PathBuf], ty: &str) -> Option<PathBuf> {
    if ty.contains('/') {
        return None;
    }
    cni_path.iter().map(|d| d.join(ty)).find(|p| p.is_file())
}

/// Formats CNI_ARGS (`K=V;K=V`).
pub fn cni_args(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
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

/// Runs ADD through every plugin of `list` for `att`, passing each the
/// capability arguments of `runtime_config` it declares; returns the last
/// plugin's result.
pub fn add_list(
    rt: &Runtime<'_>,
    list: &Value,
    att: &Attachment<'_>,
    runtime_config: &Value,
) -> Result<Value, CniError> {
    let plugins = list
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or(CniError::BadList("no plugins"))?;
    let vars = att.vars();
    let mut prev: Option<Value> = None;
    for plugin in plugins {
        let ty = plugin
            .get("type")
            .and_then(Value::as_str)
            .ok_or(CniError::BadList("a plugin has no type"))?;
        let conf = plugin_config(list, plugin, prev.as_ref(), runtime_config)?;
        let bin = find_plugin(rt.cni_path, ty).ok_or_else(|| CniError::NotFound(ty.to_string()))?;
        let input = serde_json::to_vec(&conf).unwrap_or_default();
        let mut run = exec(rt, &bin, "ADD", &vars, &input)?;
        run.plugin = ty.to_string();
        let result = run.result()?;
        if result.is_null() {
            return Err(CniError::BadList("a plugin printed no result for ADD"));
        }
        prev = Some(result);
    }
    prev.ok_or(CniError::BadList("no plugins"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list() -> Value {
        json!({"cniVersion": "1.1.0", "name": "veil", "plugins": [
            {"type": "veil", "socket": "/run/x.sock", "capabilities": {"ips": true}}
        ]})
    }

    #[test]
    fn plugin_config_gets_name_version_prev_result_and_declared_capabilities() {
        let list = list();
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
    fn plugin_types_with_slashes_are_never_looked_up() {
        assert!(find_plugin(&[PathBuf::from("/usr/bin")], "../bin/sh").is_none());
    }

    /// Runs `script` with sh as the plugin.
    fn run_script(script: &str, vars: &[(&str, &str)]) -> PluginRun {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("plugin");
        std::fs::write(&plugin, format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cni_path = [dir.path().to_path_buf()];
        let rt = Runtime {
            netns: None,
            cni_path: &cni_path,
        };
        exec(&rt, &plugin, "ADD", vars, b"{\"cniVersion\":\"1.1.0\"}").unwrap()
    }

    #[test]
    fn plugins_see_only_the_runtime_environment_and_their_config_on_stdin() {
        let run = run_script(
            r#"printf '{"env":"%s","stdin":%s}' "$(env | sort | tr '\n' ' ')" "$(cat)""#,
            &[("CNI_IFNAME", "eth0")],
        );
        let v = run.clone().result().unwrap();
        let env = v["env"].as_str().unwrap();
        assert!(env.contains("CNI_COMMAND=ADD "), "{env}");
        assert!(env.contains("CNI_IFNAME=eth0 "), "{env}");
        assert!(env.contains("CNI_PATH=/"), "{env}");
        assert!(!env.contains("HOME="), "{env}");
        assert_eq!(v["stdin"], json!({"cniVersion": "1.1.0"}));
        assert_eq!(run.code(), 0);
    }

    #[test]
    fn an_error_object_on_failure_is_a_plugin_error() {
        let run = run_script(r#"echo '{"code": 7, "msg": "bad"}'; exit 1"#, &[]);
        assert_eq!(run.code(), 1);
        match run.result() {
            Err(CniError::Plugin { code, msg, .. }) => assert_eq!((code, msg.as_str()), (7, "bad")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn output_that_is_not_json_is_bad_output_and_empty_output_is_null() {
        let run = run_script("echo oops; exit 1", &[]);
        assert!(run.json().is_err());
        assert!(matches!(run.result(), Err(CniError::BadOutput { .. })));
        let run = run_script("exit 0", &[]);
        assert_eq!(run.result().unwrap(), Value::Null);
    }
}
