//! The `CNI_*` environment variables (SPEC.md section 2, "Parameters"),
//! validated per command.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::error::CniError;

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Add the container to the network.
    Add,
    /// Remove it.
    Del,
    /// Check it.
    Check,
    /// Is the plugin ready?
    Status,
    /// Release everything not in the valid attachments.
    Gc,
    /// Which versions do you speak?
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The command's name as in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// The parsed invocation parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// CNI_COMMAND.
    pub command: Command,
    /// CNI_CONTAINERID (ADD, DEL, CHECK).
    pub container_id: String,
    /// CNI_NETNS (required for ADD and CHECK; optional for DEL).
    pub netns: Option<String>,
    /// CNI_IFNAME (ADD, DEL, CHECK).
    pub ifname: String,
    /// CNI_ARGS, parsed.
    pub args: CniArgs,
    /// CNI_PATH, split on `:`.
    pub path: Vec<String>,
    /// All variables as given, to hand to a delegated plugin unchanged.
    pub vars: BTreeMap<String, String>,
}

/// The `CNI_ARGS` keys the plugin uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniArgs {
    /// K8S_POD_NAMESPACE.
    pub pod_namespace: Option<String>,
    /// K8S_POD_NAME.
    pub pod_name: Option<String>,
    /// IP= (comma-separated addresses, with or without prefix length).
    pub ips: Vec<IpAddr>,
}

fn non_empty(vars: &BTreeMap<String, String>, key: &str) -> Option<String> {
    vars.get(key).filter(|v| !v.is_empty()).cloned()
}

/// Container IDs: `[a-zA-Z0-9][a-zA-Z0-9_.-]*` (SPEC.md, "Parameters").
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Interface names as the kernel accepts them: 1-15 bytes, not `.`/`..`, no
/// `/`, `:` or whitespace.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Parses `CNI_ARGS` (`K1=V1;K2=V2`). Unknown keys are ignored.
pub fn parse_args(s: &str) -> Result<CniArgs, CniError> {
    let mut out = CniArgs::default();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::env(format!(
                "CNI_ARGS: {pair:?} is not a KEY=VALUE pair"
            )));
        };
        match k {
            "K8S_POD_NAMESPACE" if !v.is_empty() => out.pod_namespace = Some(v.to_string()),
            "K8S_POD_NAME" if !v.is_empty() => out.pod_name = Some(v.to_string()),
            "IP" => {
                for a in v.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                    let ip = a
                        .parse::<IpAddr>()
                        .or_else(|_| a.parse::<IpNetwork>().map(|n| n.ip()))
                        .map_err(|_| {
                            CniError::env(format!("CNI_ARGS: IP={a:?} is not an IP address"))
                        })?;
                    out.ips.push(ip);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

impl CniEnv {
    /// Reads and validates the variables `command` needs from `vars`.
    pub fn parse(vars: &BTreeMap<String, String>) -> Result<CniEnv, CniError> {
        let cmd = non_empty(vars, "CNI_COMMAND")
            .ok_or_else(|| CniError::env("CNI_COMMAND is missing"))?;
        let command = Command::parse(&cmd).ok_or_else(|| {
            CniError::env(format!(
                "CNI_COMMAND {cmd:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
            ))
        })?;
        let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut missing = Vec::new();
        let container_id = non_empty(vars, "CNI_CONTAINERID").unwrap_or_default();
        let ifname = non_empty(vars, "CNI_IFNAME").unwrap_or_default();
        let netns = non_empty(vars, "CNI_NETNS");
        if attachment {
            if container_id.is_empty() {
                missing.push("CNI_CONTAINERID");
            }
            if ifname.is_empty() {
                missing.push("CNI_IFNAME");
            }
            if netns.is_none() && command != Command::Del {
                missing.push("CNI_NETNS");
            }
        }
        if !missing.is_empty() {
            return Err(CniError::env(format!(
                "required variables missing for {}: {}",
                command.as_str(),
                missing.join(", ")
            )));
        }
        if attachment {
            if !valid_container_id(&container_id) {
                return Err(CniError::env(format!(
                    "CNI_CONTAINERID {container_id:?} has invalid characters (allowed: alphanumeric first, then alphanumeric, '_', '.', '-')"
                )));
            }
            if !valid_ifname(&ifname) {
                return Err(CniError::env(format!(
                    "CNI_IFNAME {ifname:?} is not a valid interface name (1-15 bytes, no '/', ':' or whitespace)"
                )));
            }
        }
        let args = match vars.get("CNI_ARGS") {
            Some(a) if attachment => parse_args(a)?,
            _ => CniArgs::default(),
        };
        let path = vars
            .get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
            vars: vars.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn add_requires_container_id_ifname_and_netns() {
        let e = CniEnv::parse(&vars(&[("CNI_COMMAND", "ADD")])).unwrap_err();
        assert_eq!(e.code(), 4);
        let msg = e.to_string();
        for v in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
            assert!(msg.contains(v), "{msg}");
        }
    }

    #[test]
    fn del_does_not_require_netns() {
        let env = CniEnv::parse(&vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(env.netns, None);
    }

    #[test]
    fn version_status_gc_need_no_attachment_variables() {
        for c in ["VERSION", "STATUS", "GC"] {
            CniEnv::parse(&vars(&[("CNI_COMMAND", c)])).unwrap();
        }
    }

    #[test]
    fn rejects_unknown_command_bad_container_id_and_ifname() {
        let base = [
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
        ];
        let mut v = vars(&base);
        v.insert("CNI_COMMAND".into(), "FROB".into());
        assert_eq!(CniEnv::parse(&v).unwrap_err().code(), 4);
        v.insert("CNI_COMMAND".into(), "ADD".into());
        v.insert("CNI_CONTAINERID".into(), "-abc".into());
        assert!(CniEnv::parse(&v)
            .unwrap_err()
            .to_string()
            .contains("CNI_CONTAINERID"));
        v.insert("CNI_CONTAINERID".into(), "abc".into());
        for bad in ["a/b", "waytoolonginterface", "..", "a b", "a:b"] {
            v.insert("CNI_IFNAME".into(), bad.into());
            let e = CniEnv::parse(&v).unwrap_err();
            assert!(e.to_string().contains("CNI_IFNAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn cni_args_give_pod_identity_and_fixed_ips() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IP=10.244.1.9,10.244.1.10/24")
            .unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.pod_name.as_deref(), Some("web-0"));
        assert_eq!(
            a.ips,
            vec![
                "10.244.1.9".parse::<IpAddr>().unwrap(),
                "10.244.1.10".parse().unwrap()
            ]
        );
        assert_eq!(parse_args("").unwrap(), CniArgs::default());
        assert_eq!(parse_args("NOEQUALS").unwrap_err().code(), 4);
        assert_eq!(parse_args("IP=banana").unwrap_err().code(), 4);
    }

    #[test]
    fn cni_path_is_split() {
        let env = CniEnv::parse(&vars(&[
            ("CNI_COMMAND", "GC"),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ]))
        .unwrap();
        assert_eq!(env.path, vec!["/opt/cni/bin", "/usr/lib/cni"]);
    }
}
