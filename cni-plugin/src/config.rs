//! The plugin's network configuration (stdin), as the runtime derives it from
//! the conflist (SPEC.md section 3): Veil's own keys plus the protocol's
//! (`cniVersion`, `name`, `runtimeConfig`, `prevResult`,
//! `cni.dev/valid-attachments`). Unknown keys are tolerated.
//!
//! ```json
//! {"cniVersion": "1.1.0", "name": "veil", "type": "veil",
//!  "socket": "/run/veil/veild.sock", "mtu": 1400, "logFile": "/var/log/veil-cni.log",
//!  "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}}
//! ```

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::error::CniError;
use crate::result::{CniResult, Dns};
use crate::version::Version;
use veil_api::{Attachment, DEFAULT_SOCKET};

/// A parsed configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// The version the runtime asked for; results are answered in it.
    pub version: Version,
    /// Network name.
    pub name: String,
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Delegated IPAM plugin type (`ipam.type`); `None` means the daemon allocates.
    pub ipam: Option<String>,
    /// MTU override.
    pub mtu: Option<u32>,
    /// Where to log (default stderr).
    pub log_file: Option<PathBuf>,
    /// DNS settings to report in the result.
    pub dns: Dns,
    /// The previous plugin's result (chained ADD), or the final ADD result (DEL, CHECK).
    pub prev_result: Option<CniResult>,
    /// Addresses asked for through the `ips` capability (`runtimeConfig.ips`)
    /// or the `args.cni.ips` convention.
    pub runtime_ips: Vec<IpAddr>,
    /// GC: the attachments to keep; `None` when the key is absent.
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    name: Option<String>,
    socket: Option<PathBuf>,
    ipam: Option<RawIpam>,
    mtu: Option<u32>,
    log_file: Option<PathBuf>,
    dns: Option<serde_json::Map<String, Value>>,
    prev_result: Option<Value>,
    runtime_config: Option<RawRuntime>,
    args: Option<RawArgs>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Deserialize)]
struct RawIpam {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RawRuntime {
    #[serde(default)]
    ips: Vec<String>,
}

/// `args` (CONVENTIONS.md): `{"cni": {"ips": [...]}}`; other keys ignored.
#[derive(Deserialize)]
struct RawArgs {
    cni: Option<RawRuntime>,
}

/// Network names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn valid_name(s: &str) -> bool {
    crate::env::valid_container_id(s)
}

/// Plugin types name a file in CNI_PATH: no path separators.
fn valid_plugin_type(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

impl NetConf {
    /// Parses the configuration: 6 for bad JSON, 1 for an unsupported version, 7
    /// for a field of the wrong type or value.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value =
            serde_json::from_slice(stdin).map_err(|e| CniError::Decode { msg: e.to_string() })?;
        if !value.is_object() {
            return Err(CniError::Decode {
                msg: "the configuration must be a JSON object".into(),
            });
        }
        // The version first: the other fields' meaning depends on it.
        let version = match value.get("cniVersion") {
            None | Some(Value::Null) => {
                return Err(CniError::IncompatibleVersion {
                    msg: format!(
                        "cniVersion is missing (which means 0.1.0); supported: {}",
                        crate::version::supported().join(", ")
                    ),
                })
            }
            Some(Value::String(s)) => {
                Version::parse(s).ok_or_else(|| CniError::IncompatibleVersion {
                    msg: format!(
                        "cniVersion {s:?} is not supported; supported: {}",
                        crate::version::supported().join(", ")
                    ),
                })?
            }
            Some(_) => return Err(CniError::config("cniVersion must be a string")),
        };
        let raw: Raw =
            serde_json::from_value(value).map_err(|e| CniError::config(e.to_string()))?;
        let name = raw.name.unwrap_or_default();
        if name.is_empty() {
            return Err(CniError::config("name is missing"));
        }
        if !valid_name(&name) {
            return Err(CniError::config(format!(
                "name {name:?} has invalid characters (allowed: alphanumeric first, then alphanumeric, '_', '.', '-')"
            )));
        }
        let _ = raw.cni_version;
        let ipam = match raw.ipam {
            None => None,
            Some(RawIpam { kind: None }) => {
                return Err(CniError::config("ipam.type is missing"));
            }
            Some(RawIpam { kind: Some(t) }) if !valid_plugin_type(&t) => {
                return Err(CniError::config(format!(
                    "ipam.type {t:?} is not a plugin name"
                )));
            }
            Some(RawIpam { kind: Some(t) }) => Some(t),
        };
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(CniError::config(format!(
                    "mtu {mtu} is out of range (68-65535)"
                )));
            }
        }
        if raw
            .socket
            .as_ref()
            .is_some_and(|s| s.as_os_str().is_empty())
        {
            return Err(CniError::config("socket must not be empty"));
        }
        let prev_result = raw
            .prev_result
            .filter(|p| !p.is_null())
            .map(|p| CniResult::parse(&p))
            .transpose()
            .map_err(|e| CniError::config(format!("prevResult.{e}")))?;
        let mut runtime_ips = Vec::new();
        let from_args = raw
            .args
            .and_then(|a| a.cni)
            .map(|c| c.ips)
            .unwrap_or_default();
        let from_runtime = raw.runtime_config.map(|r| r.ips).unwrap_or_default();
        for (field, list) in [
            ("runtimeConfig.ips", from_runtime),
            ("args.cni.ips", from_args),
        ] {
            for s in list {
                let ip = s
                    .parse::<IpAddr>()
                    .or_else(|_| s.parse::<IpNetwork>().map(|n| n.ip()))
                    .map_err(|_| {
                        CniError::config(format!("{field}: {s:?} is not an IP address"))
                    })?;
                if !runtime_ips.contains(&ip) {
                    runtime_ips.push(ip);
                }
            }
        }
        Ok(NetConf {
            version,
            name,
            socket: raw.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            ipam,
            mtu: raw.mtu,
            log_file: raw.log_file,
            dns: Dns(raw.dns.unwrap_or_default()),
            prev_result,
            runtime_ips,
            valid_attachments: raw.valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_uses_the_default_socket_and_daemon_ipam() {
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"veil"}"#)
            .unwrap();
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.ipam, None);
        assert!(c.prev_result.is_none());
    }

    #[test]
    fn unknown_fields_are_tolerated_and_known_ones_read() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"veil","whatever":{"x":1},
                "socket":"/tmp/s.sock","mtu":1400,"logFile":"/tmp/l",
                "ipam":{"type":"host-local","ranges":[]},
                "runtimeConfig":{"ips":["10.244.0.9/24"],"portMappings":[]},
                "dns":{"nameservers":["10.96.0.10"]}}"#,
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.ipam.as_deref(), Some("host-local"));
        assert_eq!(c.runtime_ips, vec!["10.244.0.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.dns.0["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn error_codes_follow_the_spec() {
        let cases: &[(&[u8], u32)] = &[
            (b"{not json", 6),
            (b"[1,2]", 6),
            (br#"{"name":"n"}"#, 1),
            (br#"{"cniVersion":"0.2.0","name":"n"}"#, 1),
            (br#"{"cniVersion":"2.0.0","name":"n"}"#, 1),
            (br#"{"cniVersion":1,"name":"n"}"#, 7),
            (br#"{"cniVersion":"1.0.0"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"bad name"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","mtu":10}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","ipam":{}}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"../x"}}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"x"}]}}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["nope"]}}"#, 7),
            (br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":1}]}"#, 7),
        ];
        for (input, code) in cases {
            let e = NetConf::parse(input).unwrap_err();
            assert_eq!(e.code(), *code, "{}: {e}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn fixed_ips_also_come_from_args_cni_ips() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"ips":["10.244.0.7"]},"other":1}}"#,
        )
        .unwrap();
        assert_eq!(c.runtime_ips, vec!["10.244.0.7".parse::<IpAddr>().unwrap()]);
        let e =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"ips":["x"]}}}"#)
                .unwrap_err();
        assert!(e.to_string().contains("args.cni.ips"), "{e}");
    }

    #[test]
    fn gc_attachments_are_read() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![Attachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }]
        );
    }
}
