//! Crash recovery of the endpoint table: the previous good copy of the state
//! file (`endpoints.json.prev`, a hard link to the content being replaced,
//! made before every write), the fallback to it when the current file does not
//! parse, and the consistency of the allocator with the endpoints.
//!
//! It does not decide which pending endpoints to reap (the table does, given
//! what the kernel holds) nor touch any link.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{EndpointError, Persisted};

/// The previous good copy of `path`.
pub(super) fn previous_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".prev");
    PathBuf::from(p)
}

/// Makes `path.prev` the content `path` holds now (when it exists), before
/// `path` is replaced: a hard link made under a temporary name and renamed
/// over the old copy, so the copy is always a whole file.
pub(super) fn keep_previous(path: &Path) -> io::Result<()> {
    let prev = previous_path(path);
    let mut tmp = prev.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    match std::fs::hard_link(path, &tmp) {
        Ok(()) => std::fs::rename(&tmp, &prev),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What [`load`] found.
#[derive(Debug)]
pub(super) enum Loaded {
    /// No state yet.
    Fresh,
    /// The current file.
    Current(Persisted),
    /// The current file does not parse (or is gone); the previous good copy
    /// does. The bad file was kept aside under `kept_as`.
    Previous {
        state: Persisted,
        reason: String,
        kept_as: Option<PathBuf>,
    },
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Persisted, EndpointError> {
    serde_json::from_slice(bytes).map_err(|source| EndpointError::Corrupt {
        path: path.display().to_string(),
        source,
    })
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, EndpointError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EndpointError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Reads the state at `path`, falling back to `path.prev` when `path` does
/// not parse. Fails when neither parses (the operator must look: nothing is
/// guessed), keeping both files as they are.
pub(super) fn load(path: &Path) -> Result<Loaded, EndpointError> {
    let prev = previous_path(path);
    let current_err = match read(path)? {
        Some(bytes) => match parse(path, &bytes) {
            Ok(p) => return Ok(Loaded::Current(p)),
            Err(e) => e,
        },
        None => match read(&prev)? {
            None => return Ok(Loaded::Fresh),
            Some(_) => EndpointError::Io {
                path: path.display().to_string(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "missing, but a previous copy exists",
                ),
            },
        },
    };
    let Some(bytes) = read(&prev)? else {
        return Err(current_err);
    };
    let state = parse(&prev, &bytes).map_err(|_| current_err_with_prev(&current_err, &prev))?;
    let kept_as = if path.exists() {
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(
            ".corrupt-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        ));
        let aside = PathBuf::from(aside);
        std::fs::rename(path, &aside).ok().map(|()| aside)
    } else {
        None
    };
    Ok(Loaded::Previous {
        state,
        reason: current_err.to_string(),
        kept_as,
    })
}

fn current_err_with_prev(current: &EndpointError, prev: &Path) -> EndpointError {
    EndpointError::Unrecoverable {
        reason: format!(
            "{current}; its previous copy {} does not parse either",
            prev.display()
        ),
    }
}

/// The addresses the endpoints hold from the daemon's allocator.
pub(super) fn held_addresses<'a>(
    endpoints: impl Iterator<Item = &'a super::Endpoint>,
) -> BTreeSet<IpAddr> {
    endpoints
        .filter(|e| e.daemon_ipam)
        .flat_map(|e| e.ips.iter().map(|n| n.ip()))
        .collect()
}
