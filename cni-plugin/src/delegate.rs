//! Delegation to an IPAM plugin (SPEC.md section 4): the plugin named by
//! `ipam.type` is looked up in `CNI_PATH` and executed with the same
//! environment and the same configuration on stdin; its stderr goes to ours.
//!
//! Older IPAM plugins (Debian's containernetworking-plugins 1.1.1 speak up to
//! 1.0.0) refuse a 1.1.0 configuration with code 1. Then, and only then, the
//! plugin asks the delegate for its versions and runs it again with `cniVersion`
//! lowered to the newest version both speak; the result is version-neutral
//! ([`CniResult`]) so nothing else changes. STATUS and GC are forwarded only to
//! delegates that speak 1.1.0; for the others GC releases the removed
//! attachments one by one with DEL (see [`crate::plugin`]).

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::env::Command;
use crate::error::CniError;
use crate::result::CniResult;
use crate::version::Version;

/// One IPAM plugin and how to run it.
#[derive(Debug, Clone)]
pub struct Delegate {
    /// `ipam.type`.
    pub plugin: String,
    /// The executable found in CNI_PATH.
    pub exe: PathBuf,
    /// The environment to run it with (the plugin's own).
    pub vars: BTreeMap<String, String>,
    /// Its VERSION answer, once asked.
    versions: OnceCell<Vec<String>>,
}

/// What a delegate's invocation produced.
#[derive(Debug)]
enum Outcome {
    Ok(Vec<u8>),
    CniErr {
        code: u32,
        msg: String,
        details: String,
    },
}

impl Delegate {
    /// Finds `plugin` in `path` (the CNI_PATH directories, in order).
    pub fn find(
        plugin: &str,
        path: &[String],
        vars: &BTreeMap<String, String>,
    ) -> Result<Delegate, CniError> {
        if path.is_empty() {
            return Err(CniError::env(format!(
                "CNI_PATH is missing or empty, but the IPAM plugin {plugin} must be found in it"
            )));
        }
        for dir in path {
            let exe = Path::new(dir).join(plugin);
            if exe.is_file() {
                return Ok(Delegate {
                    plugin: plugin.to_string(),
                    exe,
                    vars: vars.clone(),
                    versions: OnceCell::new(),
                });
            }
        }
        Err(CniError::Delegate {
            plugin: plugin.to_string(),
            msg: format!("not found in CNI_PATH {}", path.join(":")),
        })
    }

    fn exec(&self, vars: &BTreeMap<String, String>, stdin: &[u8]) -> Result<Outcome, CniError> {
        let fail = |msg: String| CniError::Delegate {
            plugin: self.plugin.clone(),
            msg,
        };
        let mut child = Process::new(&self.exe)
            .env_clear()
            .envs(vars)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", self.exe.display())))?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading its stdin is not an error here.
            let _ = input.write_all(stdin);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| fail(format!("waiting for {}: {e}", self.exe.display())))?;
        if out.status.success() {
            return Ok(Outcome::Ok(out.stdout));
        }
        let v: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        match v
            .as_ref()
            .and_then(|v| v.get("code"))
            .and_then(Value::as_u64)
        {
            Some(code) => {
                let text = |k: &str| {
                    v.as_ref()
                        .and_then(|v| v.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                Ok(Outcome::CniErr {
                    code: u32::try_from(code).unwrap_or(u32::MAX),
                    msg: text("msg"),
                    details: text("details"),
                })
            }
            None => Err(fail(format!(
                "{} exited with {} without a CNI error object",
                self.exe.display(),
                out.status
            ))),
        }
    }

    /// The versions the delegate speaks (its VERSION answer, asked once).
    pub fn versions(&self) -> Result<Vec<String>, CniError> {
        if let Some(v) = self.versions.get() {
            return Ok(v.clone());
        }
        let v = self.ask_versions()?;
        Ok(self.versions.get_or_init(|| v).clone())
    }

    fn ask_versions(&self) -> Result<Vec<String>, CniError> {
        let mut vars = self.vars.clone();
        vars.insert("CNI_COMMAND".into(), "VERSION".into());
        let stdin = br#"{"cniVersion":"0.4.0"}"#;
        match self.exec(&vars, stdin)? {
            Outcome::Ok(out) => {
                let v: Value = serde_json::from_slice(&out).map_err(|e| CniError::Delegate {
                    plugin: self.plugin.clone(),
                    msg: format!("VERSION answer is not JSON: {e}"),
                })?;
                Ok(v.get("supportedVersions")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default())
            }
            Outcome::CniErr { code, msg, details } => Err(CniError::DelegateFailed {
                plugin: self.plugin.clone(),
                code,
                msg,
                details,
            }),
        }
    }

    /// Whether the delegate speaks `version`.
    pub fn speaks(&self, version: Version) -> Result<bool, CniError> {
        Ok(self.versions()?.iter().any(|v| v == version.as_str()))
    }

    /// `stdin` with `cniVersion` replaced by the newest version both the
    /// delegate and this plugin speak at or below `asked`.
    fn lowered(&self, stdin: &[u8], asked: Version) -> Result<Option<Vec<u8>>, CniError> {
        let theirs = self.versions()?;
        let Some(best) = Version::ALL
            .into_iter()
            .rev()
            .filter(|v| *v < asked)
            .find(|v| theirs.iter().any(|t| t == v.as_str()))
        else {
            return Ok(None);
        };
        let mut conf: Value =
            serde_json::from_slice(stdin).map_err(|e| CniError::Decode { msg: e.to_string() })?;
        conf["cniVersion"] = Value::String(best.as_str().to_string());
        Ok(Some(
            serde_json::to_vec(&conf).expect("JSON value serializes"),
        ))
    }

    /// Runs the delegate for `command` with the plugin's configuration `stdin`
    /// and `overrides` on top of the plugin's environment. Returns its stdout.
    pub fn call(
        &self,
        command: Command,
        stdin: &[u8],
        asked: Version,
        overrides: &[(&str, &str)],
    ) -> Result<Vec<u8>, CniError> {
        let mut vars = self.vars.clone();
        vars.insert("CNI_COMMAND".into(), command.as_str().into());
        for (k, v) in overrides {
            vars.insert(k.to_string(), v.to_string());
        }
        // When the delegate's versions are already known not to include `asked`,
        // go straight to the lowered configuration.
        let known_lower = match self.versions.get() {
            Some(v) if !v.iter().any(|x| x == asked.as_str()) => self.lowered(stdin, asked)?,
            _ => None,
        };
        let first = self.exec(&vars, known_lower.as_deref().unwrap_or(stdin))?;
        let outcome = match first {
            Outcome::CniErr { code: 1, .. } if known_lower.is_none() => {
                match self.lowered(stdin, asked)? {
                    Some(lower) => {
                        tracing::debug!(plugin = %self.plugin, "IPAM plugin refused cniVersion {asked}; retrying with an older version");
                        self.exec(&vars, &lower)?
                    }
                    None => first,
                }
            }
            other => other,
        };
        match outcome {
            Outcome::Ok(out) => Ok(out),
            Outcome::CniErr { code, msg, details } => Err(CniError::DelegateFailed {
                plugin: self.plugin.clone(),
                code,
                msg,
                details,
            }),
        }
    }

    /// ADD: the delegate's (abbreviated) result.
    pub fn add(&self, stdin: &[u8], asked: Version) -> Result<CniResult, CniError> {
        let out = self.call(Command::Add, stdin, asked, &[])?;
        let v: Value = serde_json::from_slice(&out).map_err(|e| CniError::Delegate {
            plugin: self.plugin.clone(),
            msg: format!("ADD result is not JSON: {e}"),
        })?;
        let r = CniResult::parse(&v).map_err(|e| CniError::Delegate {
            plugin: self.plugin.clone(),
            msg: format!("ADD result: {e}"),
        })?;
        if r.ips.is_empty() {
            return Err(CniError::Delegate {
                plugin: self.plugin.clone(),
                msg: "ADD result has no addresses".into(),
            });
        }
        Ok(r)
    }
}
