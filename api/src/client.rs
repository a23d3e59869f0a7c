//! The one client of the daemon's socket: [`call`] sends one [`Request`] and
//! decodes the [`Reply`], blocking, with a timeout. `veil`, `veilctl` and the
//! end-to-end tests all call the daemon through it. It does not retry: callers
//! that wait for a daemon to come up poll it themselves.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ApiError, Reply, Request};

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The socket could not be reached (daemon down or not yet started).
    #[error("cannot reach veild at {path}: {source}")]
    Unreachable {
        /// Socket path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or timed out mid-call.
    #[error("talking to veild at {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon's answer was not valid JSON of the expected shape.
    #[error("veild at {path} sent an answer that cannot be decoded: {source}")]
    Decode {
        /// Socket path.
        path: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The daemon answered with an error.
    #[error("veild: {0}")]
    Daemon(ApiError),
}

/// Calls `method` on the daemon at `socket` with `params`, blocking, with a timeout.
pub fn call<P: Serialize, R: for<'de> Deserialize<'de>>(
    socket: &Path,
    method: &str,
    params: &P,
    timeout: Duration,
) -> Result<R, CallError> {
    let path = socket.display().to_string();
    let stream = UnixStream::connect(socket).map_err(|source| CallError::Unreachable {
        path: path.clone(),
        source,
    })?;
    let io = |source| CallError::Io {
        path: path.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let req = Request {
        method: method.to_string(),
        params: serde_json::to_value(params).map_err(|source| CallError::Decode {
            path: path.clone(),
            source,
        })?,
    };
    let mut line = serde_json::to_vec(&req).map_err(|source| CallError::Decode {
        path: path.clone(),
        source,
    })?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io)?;
    let reply: Reply = serde_json::from_str(&answer).map_err(|source| CallError::Decode {
        path: path.clone(),
        source,
    })?;
    match reply {
        Reply::Ok(v) => serde_json::from_value(v).map_err(|source| CallError::Decode {
            path: path.clone(),
            source,
        }),
        Reply::Error(e) => Err(CallError::Daemon(e)),
    }
}
