//! Durable file replacement: [`write_atomic`] writes a temporary file next to
//! the target, fsyncs it, renames it over the target and fsyncs the
//! directory, so that a crash at any point leaves either the old or the new
//! content, never a mix or an empty file. Used for every file Veil persists
//! (endpoint state, WireGuard key, local datastore, lab state). It does not
//! create the parent directory nor lock anything.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Replaces `path` with `bytes` atomically and durably. The file gets `mode`
/// (permission bits) when given, otherwise [`STATE_FILE_MODE`] (0600): set at
/// creation and again explicitly, so that the umask neither widens nor
/// narrows it and the content is never readable more widely.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.unwrap_or(STATE_FILE_MODE))
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(
            mode.unwrap_or(STATE_FILE_MODE),
        ))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path)
}

/// Mode of the files Veil persists (state, datastore, lab state): the
/// owner's only.
pub const STATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with `mode` (exactly: the umask does
/// not apply). A directory that already exists keeps its mode and owner: it
/// may be shared (`/tmp`, a test's directory) and is not ours to change.
pub fn create_private_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent, mode)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A temporary name in `path`'s directory, unique to this process and call.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

/// Makes the rename of an entry of `path`'s directory durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn replaces_the_content_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"old", None).unwrap();
        write_atomic(&p, b"new", None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_secret_file_is_created_with_its_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        write_atomic(&p, b"secret", Some(0o600)).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn state_files_are_owner_only_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let mode = with_umask(0, || {
            write_atomic(&p, b"x", None).unwrap();
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777
        });
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn created_directories_get_their_mode_and_existing_ones_are_left_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let deep = d.path().join("a/b");
        with_umask(0, || create_private_dir(&deep, 0o750).unwrap());
        for p in [d.path().join("a"), deep] {
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o750
            );
        }
        assert_eq!(
            std::fs::metadata(d.path()).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    /// Runs `f` with the process umask set to `mask`, restoring it after.
    /// Tests that use it hold a lock so that they do not overlap.
    pub(crate) fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
        let out = f();
        nix::sys::stat::umask(old);
        out
    }

    #[test]
    fn a_failed_write_keeps_the_old_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        write_atomic(&p, b"old", None).unwrap();
        // The target is a directory's entry that cannot be replaced by a file.
        let sub = d.path().join("dir");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("inside"), b"").unwrap();
        assert!(write_atomic(&sub, b"new", None).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
