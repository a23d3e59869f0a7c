//! Network namespaces belong to OS threads: [`run_in`] runs a closure on a fresh
//! thread that first joins the namespace, so no tokio worker (nor the caller)
//! ever changes namespace.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// Errors entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("network namespace {path}: {source}")]
    Open {
        /// Path.
        path: String,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// setns failed.
    #[error("entering network namespace {path}: {source}")]
    Enter {
        /// Path.
        path: String,
        /// Error.
        #[source]
        source: nix::Error,
    },
    /// The worker thread panicked.
    #[error("worker thread in network namespace {0} panicked")]
    Panicked(String),
}

/// Runs `f` on a new thread inside the network namespace at `path`.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: shown.clone(),
        source,
    })?;
    let shown2 = shown.clone();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: shown2,
            source,
        })?;
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Panicked(shown))?
}
