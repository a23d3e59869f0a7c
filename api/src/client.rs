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
    if answer.is_empty() {
        // The daemon closed the connection without answering (it was
        // killed or restarted mid-call): like a reset, try again later.
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed before an answer",
        )));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A daemon that answers one connection with `answer` and returns the
    /// request line it got.
    fn one_shot(
        answer: &'static str,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::thread::JoinHandle<String>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("veild.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(answer.as_bytes()).unwrap();
            line
        });
        (dir, sock, t)
    }

    #[test]
    fn a_call_sends_one_request_line_and_decodes_the_ok_value() {
        let (_d, sock, t) = one_shot("{\"ok\": {\"ready\": true}}\n");
        let r: crate::StatusReply = call(
            &sock,
            crate::method::CNI_STATUS,
            &serde_json::Value::Null,
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(r.ready);
        let req: Request = serde_json::from_str(&t.join().unwrap()).unwrap();
        assert_eq!(req.method, crate::method::CNI_STATUS);
    }

    #[test]
    fn an_error_answer_is_a_daemon_error_with_its_code() {
        let (_d, sock, _t) = one_shot("{\"error\": {\"code\": 101, \"msg\": \"unknown\"}}\n");
        let e =
            call::<_, serde_json::Value>(&sock, "x.y", &(), Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(e, CallError::Daemon(ApiError { code: 101, .. })),
            "{e}"
        );
    }

    #[test]
    fn a_connection_closed_before_the_answer_is_an_io_error_not_a_decode_error() {
        let (_d, sock, _t) = one_shot("");
        let e = call::<_, serde_json::Value>(
            &sock,
            crate::method::CNI_ADD,
            &(),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(e, CallError::Io { .. }), "{e}");
    }

    #[test]
    fn a_missing_socket_is_unreachable_and_garbage_cannot_be_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let e = call::<_, serde_json::Value>(
            &dir.path().join("none.sock"),
            crate::method::NODE_STATUS,
            &(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, CallError::Unreachable { .. }), "{e}");
        let (_d, sock, _t) = one_shot("not json\n");
        let e = call::<_, serde_json::Value>(
            &sock,
            crate::method::NODE_STATUS,
            &(),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(e, CallError::Decode { .. }), "{e}");
    }
}
