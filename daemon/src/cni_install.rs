//! Installing Veil into a node's CNI directories, the way the DaemonSet does it.
//!
//! - `veild install-cni --from SRC --to DIR` (the init container) copies the
//!   `veil` plugin binary into the host's `/opt/cni/bin` through a temporary
//!   file in the same directory and a rename, so that a runtime executing the
//!   plugin never sees a half-written file.
//! - [`CniConf`] is the conflist `10-veil.conflist` in the host's
//!   `/etc/cni/net.d`: veild writes it (temp file, fsync, rename, fsync of the
//!   directory) only once it is ready, and removes it when it stops, so that the
//!   kubelet never schedules pods onto a node whose daemon is not serving. Only
//!   Veil's own file name is ever written or removed: other CNIs' files are left
//!   alone. A file left behind by a crash is removed at start-up, before ready.
//! - [`uninstall_kernel_state`] removes the `veil-wg` device and the nftables
//!   table `inet veil`, for `--uninstall-on-exit` only: normally both outlive
//!   veild on purpose (the node stays fail-closed while the daemon restarts).
//!
//! It does not install the conflist of another plugin chain, nor touch the
//! binary when veild stops (a running pod's DEL still needs it).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::json;

use crate::config::{Config, WG_DEVICE};
use crate::dataplane::nftables::{FilterError, Nft, PacketFilter, TABLE};

/// File name of Veil's conflist (sorted before most other CNIs' files).
pub const CONFLIST_NAME: &str = "10-veil.conflist";
/// File name of the plugin binary in the CNI binary directory.
pub const PLUGIN_NAME: &str = "veil";
/// The CNI network name.
pub const NETWORK_NAME: &str = "veil";

/// Why an install step failed, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum CniInstallError {
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The source is not a regular file.
    #[error("{0}: not a regular file")]
    NotAFile(PathBuf),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CniInstallError {
    let path = path.to_path_buf();
    move |source| CniInstallError::Io { what, path, source }
}

/// Writes `bytes` as `dir/name` with `mode`: a temporary file in `dir`,
/// fsync, rename over the target, fsync of `dir`. A reader sees either the old
/// file or the whole new one; a failure leaves no temporary file behind.
pub fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<PathBuf, CniInstallError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let target = dir.join(name);
    // A dot name: the runtime ignores it (conflists) and never executes it.
    let tmp = dir.join(format!(".{name}.veil-tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(bytes).map_err(io("writing", &tmp))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("setting the mode of", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, &target).map_err(io("renaming into place", &target))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))?;
    Ok(target)
}

/// Copies the plugin binary `src` into `dest_dir` as [`PLUGIN_NAME`], mode
/// 0755, atomically.
pub fn install_binary(src: &Path, dest_dir: &Path) -> Result<PathBuf, CniInstallError> {
    let meta = std::fs::metadata(src).map_err(io("reading", src))?;
    if !meta.is_file() {
        return Err(CniInstallError::NotAFile(src.to_path_buf()));
    }
    let bytes = std::fs::read(src).map_err(io("reading", src))?;
    write_atomic(dest_dir, PLUGIN_NAME, &bytes, 0o755)
}

/// The conflist veild installs: one `veil` plugin talking to this daemon's
/// socket. The MTU and addresses come from the daemon at ADD time.
pub fn conflist(socket: &Path) -> String {
    let v = json!({
        "cniVersion": "1.1.0",
        "name": NETWORK_NAME,
        "plugins": [{
            "type": PLUGIN_NAME,
            "socket": socket,
        }],
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// Veil's conflist in one CNI configuration directory.
#[derive(Debug, Clone)]
pub struct CniConf {
    dir: PathBuf,
    content: String,
}

impl CniConf {
    /// The conflist for `config`, if `--cni-conf-dir` is set. A file left by an
    /// earlier run is removed now: it is written again once veild is ready.
    pub fn prepare(config: &Config) -> Option<CniConf> {
        let dir = config.cni_conf_dir.clone()?;
        let c = CniConf::new(dir, conflist(&config.socket));
        c.remove();
        Some(c)
    }

    /// The conflist `content` in `dir`.
    pub fn new(dir: PathBuf, content: String) -> CniConf {
        CniConf { dir, content }
    }

    /// The conflist's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(CONFLIST_NAME)
    }

    /// Writes the conflist atomically (mode 0644).
    pub fn install(&self) -> Result<PathBuf, CniInstallError> {
        let p = write_atomic(&self.dir, CONFLIST_NAME, self.content.as_bytes(), 0o644)?;
        tracing::info!(path = %p.display(), "CNI configuration installed");
        Ok(p)
    }

    /// Removes the conflist (absent is fine); other files stay. Logs a failure.
    pub fn remove(&self) {
        let p = self.path();
        match std::fs::remove_file(&p) {
            Ok(()) => tracing::info!(path = %p.display(), "CNI configuration removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "removing CNI configuration"),
        }
    }
}

/// Why removing Veil's kernel state failed.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    /// The nftables table could not be removed.
    #[error("removing nftables table inet {TABLE}: {0}")]
    Table(#[source] FilterError),
    /// The WireGuard device could not be removed.
    #[error("removing link {WG_DEVICE}: {0}")]
    Link(String),
}

/// Removes the nftables table `inet veil` and the link `veil-wg` from this
/// network namespace (each absent is success). Only for `--uninstall-on-exit`.
pub async fn uninstall_kernel_state() -> Result<(), UninstallError> {
    // Declaring the table first makes the delete succeed when it is absent.
    let batch: nftables::schema::Nftables<'static> = serde_json::from_value(json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": TABLE}}},
        {"delete": {"table": {"family": "inet", "name": TABLE}}},
    ]}))
    .map_err(|e| UninstallError::Link(format!("nftables batch: {e}")))?;
    Nft.apply(&batch).map_err(UninstallError::Table)?;
    let handle = crate::dataplane::links::connect()
        .map_err(|e| UninstallError::Link(format!("netlink: {e}")))?;
    use crate::dataplane::links::Links;
    if let Some(index) = crate::dataplane::links::RtLinks(handle.clone())
        .get(WG_DEVICE)
        .await
        .map_err(|e| UninstallError::Link(e.to_string()))?
        .map(|l| l.index)
    {
        handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| UninstallError::Link(e.to_string()))?;
    }
    tracing::info!(table = TABLE, link = WG_DEVICE, "kernel state removed");
    Ok(())
}

/// Flags of `veild install-cni`.
#[derive(Debug, Parser)]
#[command(
    name = "veild install-cni",
    about = "Copy the veil CNI plugin into the CNI binary directory (temp file + rename)"
)]
pub struct InstallCniFlags {
    /// The plugin binary to copy (default: `veil` beside this executable).
    #[arg(long, env = "VEIL_INSTALL_CNI_FROM")]
    pub from: Option<PathBuf>,
    /// The CNI binary directory (the host's /opt/cni/bin, as mounted).
    #[arg(long, env = "VEIL_INSTALL_CNI_TO", default_value = "/host/opt/cni/bin")]
    pub to: PathBuf,
}

/// Runs `veild install-cni ARGS`; the process exit code (0, 1 on failure, 64
/// on bad arguments).
pub fn install_cni_command(args: impl IntoIterator<Item = OsString>) -> i32 {
    let flags = match InstallCniFlags::try_parse_from(
        std::iter::once(OsString::from("veild install-cni")).chain(args),
    ) {
        Ok(f) => f,
        Err(e) if e.use_stderr() => {
            eprintln!("veild install-cni: {e}");
            return 64;
        }
        Err(e) => {
            let _ = e.print();
            return 0;
        }
    };
    let from = match flags.from {
        Some(p) => p,
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name(PLUGIN_NAME),
            Err(e) => {
                eprintln!("veild install-cni: cannot find this executable: {e}");
                return 1;
            }
        },
    };
    match install_binary(&from, &flags.to) {
        Ok(p) => {
            eprintln!(
                "veild install-cni: installed {} from {}",
                p.display(),
                from.display()
            );
            0
        }
        Err(e) => {
            eprintln!("veild install-cni: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn conflist_names_the_plugin_and_the_socket() {
        let v: serde_json::Value =
            serde_json::from_str(&conflist(Path::new("/run/veil/veild.sock"))).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["name"], "veil");
        assert_eq!(v["plugins"][0]["type"], "veil");
        assert_eq!(v["plugins"][0]["socket"], "/run/veil/veild.sock");
    }

    #[test]
    fn install_and_remove_leave_other_cnis_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("05-other.conflist"), "{}").unwrap();
        std::fs::write(dir.path().join("99-loopback.conf"), "{}").unwrap();
        let c = CniConf::new(dir.path().to_path_buf(), "{\"x\":1}\n".into());
        let p = c.install().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"x\":1}\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(
            names(dir.path()),
            ["05-other.conflist", "10-veil.conflist", "99-loopback.conf"]
        );
        c.remove();
        c.remove(); // absent is fine
        assert_eq!(names(dir.path()), ["05-other.conflist", "99-loopback.conf"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("05-other.conflist")).unwrap(),
            "{}"
        );
    }

    #[test]
    fn install_replaces_an_old_conflist_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFLIST_NAME), "old").unwrap();
        CniConf::new(dir.path().to_path_buf(), "new".into())
            .install()
            .unwrap();
        assert_eq!(names(dir.path()), [CONFLIST_NAME]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CONFLIST_NAME)).unwrap(),
            "new"
        );
    }

    #[test]
    fn install_creates_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("etc/cni/net.d");
        CniConf::new(sub.clone(), "x".into()).install().unwrap();
        assert!(sub.join(CONFLIST_NAME).is_file());
    }

    #[test]
    fn binary_is_copied_executable_under_its_plugin_name() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("build-output");
        std::fs::write(&src, b"\x7fELF fake").unwrap();
        let bin = dir.path().join("opt/cni/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("bridge"), b"other plugin").unwrap();
        let p = install_binary(&src, &bin).unwrap();
        assert_eq!(p, bin.join("veil"));
        assert_eq!(std::fs::read(&p).unwrap(), b"\x7fELF fake");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert_eq!(names(&bin), ["bridge", "veil"]);
    }

    #[test]
    fn missing_source_is_named_and_installs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let e = install_binary(&dir.path().join("nope"), dir.path()).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = install_binary(dir.path(), &dir.path().join("bin")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(!dir.path().join("bin").exists());
    }

    #[test]
    fn install_cni_command_reports_bad_arguments_with_64() {
        assert_eq!(install_cni_command([OsString::from("--bogus")]), 64);
        let dir = tempfile::tempdir().unwrap();
        let code = install_cni_command([
            OsString::from("--from"),
            dir.path().join("absent").into_os_string(),
            OsString::from("--to"),
            dir.path().as_os_str().to_owned(),
        ]);
        assert_eq!(code, 1);
    }
}
