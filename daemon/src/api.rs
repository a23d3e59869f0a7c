//! The daemon's unix-socket API: a registry of named methods and the server loop.
//! Modules register their methods on the [`ApiRegistry`] at start-up, under the
//! names of [`veil_api::method`] (the one place a method name is written) and
//! with the parameter and answer types veil-api defines for them. The wire
//! format and the client are veil-api's; this module only serves.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use veil_api::{ApiError, Reply, Request};

/// Result of a method.
pub type MethodResult = Result<serde_json::Value, ApiError>;
type BoxFut = Pin<Box<dyn Future<Output = MethodResult> + Send>>;
type Method = Arc<dyn Fn(serde_json::Value) -> BoxFut + Send + Sync>;

/// Error code for a request the daemon cannot decode (CNI "decoding failure").
pub const CODE_DECODE: u32 = veil_api::code::DECODE;
/// Error code for an unknown method.
pub const CODE_UNKNOWN_METHOD: u32 = veil_api::code::UNKNOWN_METHOD;
/// Error code for an internal failure.
pub const CODE_INTERNAL: u32 = veil_api::code::INTERNAL;

/// Builds an [`ApiError`].
pub fn api_error(code: u32, msg: impl Into<String>) -> ApiError {
    ApiError {
        code,
        msg: msg.into(),
        details: String::new(),
    }
}

/// Named methods served on the socket.
#[derive(Default, Clone)]
pub struct ApiRegistry {
    methods: Arc<RwLock<HashMap<String, Method>>>,
}

impl ApiRegistry {
    /// Registers `name` (one of [`veil_api::method`]), replacing any earlier
    /// method of that name. `f` receives the decoded parameters; a decoding
    /// failure answers code 6 naming the method.
    pub fn register<P, R, F, Fut>(&self, name: &'static str, f: F)
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ApiError>> + Send + 'static,
    {
        debug_assert!(
            veil_api::method::ALL.contains(&name),
            "method {name:?} is not defined in veil_api::method"
        );
        let f = Arc::new(f);
        let method_name = name.to_string();
        let m: Method = Arc::new(move |params: serde_json::Value| {
            let f = f.clone();
            let method_name = method_name.clone();
            Box::pin(async move {
                let p: P = serde_json::from_value(params).map_err(|e| {
                    api_error(CODE_DECODE, format!("{method_name}: bad parameters: {e}"))
                })?;
                let r = f(p).await?;
                serde_json::to_value(r)
                    .map_err(|e| api_error(CODE_INTERNAL, format!("{method_name}: {e}")))
            })
        });
        self.methods
            .write()
            .expect("api registry lock")
            .insert(name.to_string(), m);
    }

    /// Calls a method in-process.
    pub async fn call(&self, name: &str, params: serde_json::Value) -> MethodResult {
        let m = self
            .methods
            .read()
            .expect("api registry lock")
            .get(name)
            .cloned();
        match m {
            Some(m) => m(params).await,
            None => Err(api_error(
                CODE_UNKNOWN_METHOD,
                format!("unknown method {name:?}"),
            )),
        }
    }

    /// Serves the registry on a unix socket at `path` with the default
    /// [`SocketOptions`], until the task is dropped.
    pub async fn serve(self, path: &Path) -> std::io::Result<()> {
        self.serve_with(path, SocketOptions::default()).await
    }

    /// Serves the registry on a unix socket at `path` until the task is
    /// dropped. See [`bind_socket`] for the file's mode and owner; at most
    /// `opts.max_connections` connections are served at once (the next ones
    /// wait in the kernel's backlog: backpressure, never an unbounded
    /// number of tasks), and a connection that sends nothing for
    /// `opts.idle_timeout`, or whose answer cannot be written in that time,
    /// is closed.
    pub async fn serve_with(self, path: &Path, opts: SocketOptions) -> std::io::Result<()> {
        let listener = bind_socket(path, &opts)?;
        self.serve_listener(listener, opts).await
    }

    /// Serves the registry on a socket bound by [`bind_socket`].
    pub async fn serve_listener(
        self,
        listener: UnixListener,
        opts: SocketOptions,
    ) -> std::io::Result<()> {
        let permits = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
        loop {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on api socket");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            let idle = opts.idle_timeout;
            tokio::spawn(async move {
                this.answer(stream, idle).await;
                drop(permit);
            });
        }
    }

    /// Answers one connection: one request line, one reply line.
    async fn answer(&self, stream: tokio::net::UnixStream, idle: Duration) {
        let (r, mut w) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(r).take(MAX_REQUEST_BYTES);
        match tokio::time::timeout(idle, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => {
                tracing::debug!(timeout = ?idle, "api connection idle: closed");
                return;
            }
        }
        let out = self.answer_line(&line).await;
        let write = async {
            w.write_all(&out).await?;
            w.shutdown().await
        };
        let _ = tokio::time::timeout(idle, write).await;
    }

    /// The reply line (with its newline) to one request line: what the
    /// socket answers, without the socket.
    pub async fn answer_line(&self, line: &str) -> Vec<u8> {
        let reply = match serde_json::from_str::<Request>(line) {
            Ok(req) => match self.call(&req.method, req.params).await {
                Ok(v) => Reply::Ok(v),
                Err(e) => Reply::Error(e),
            },
            Err(e) => Reply::Error(api_error(
                CODE_DECODE,
                format!("request is not a valid JSON request line: {e}"),
            )),
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_else(|e| {
            serde_json::to_vec(&Reply::Error(api_error(
                CODE_INTERNAL,
                format!("encoding the answer: {e}"),
            )))
            .unwrap_or_default()
        });
        out.push(b'\n');
        out
    }
}

/// Largest request line read (a GC's list of valid attachments included).
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;

/// Mode of the daemon's socket: root and its group may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// Mode of a socket directory veild creates (`/run/veil`).
pub const SOCKET_DIR_MODE: u32 = 0o750;

/// Limits and ownership of the socket.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Permission bits of the socket file.
    pub mode: u32,
    /// Group owning the socket (`None`: the daemon's own group).
    pub group: Option<u32>,
    /// Most connections served at once.
    pub max_connections: usize,
    /// A connection silent this long (or not taking its answer) is closed.
    pub idle_timeout: Duration,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            mode: SOCKET_MODE,
            group: None,
            max_connections: 128,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Binds the socket at `path` with `opts.mode` and `opts.group`, whatever the
/// umask: it is bound under a temporary name, its mode and group set, then
/// renamed into place, so that it is never connectable with a wider mode. A
/// missing parent directory is created with mode 0750; an existing one is
/// left as it is. A stale socket file is replaced.
pub fn bind_socket(path: &Path, opts: &SocketOptions) -> std::io::Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::fsutil::create_private_dir(parent, SOCKET_DIR_MODE)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".bind.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(opts.mode))?;
        if let Some(gid) = opts.group {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_api::method;

    fn registry() -> ApiRegistry {
        let r = ApiRegistry::default();
        r.register(method::CNI_STATUS, |p: Option<u32>| async move {
            Ok::<_, ApiError>(p.unwrap_or(0) + 1)
        });
        r
    }

    #[tokio::test]
    async fn registered_methods_get_their_decoded_parameters() {
        let v = registry()
            .call(method::CNI_STATUS, serde_json::json!(41))
            .await
            .unwrap();
        assert_eq!(v, serde_json::json!(42));
    }

    #[tokio::test]
    async fn bad_parameters_answer_code_6_naming_the_method() {
        let e = registry()
            .call(method::CNI_STATUS, serde_json::json!("x"))
            .await
            .unwrap_err();
        assert_eq!(e.code, CODE_DECODE);
        assert!(e.msg.starts_with(method::CNI_STATUS), "{}", e.msg);
    }

    #[tokio::test]
    async fn unknown_methods_answer_their_own_code_not_a_plugin_code() {
        let e = registry()
            .call(method::GRAPH_GET, serde_json::Value::Null)
            .await
            .unwrap_err();
        assert_eq!(e.code, CODE_UNKNOWN_METHOD);
        assert_eq!(
            veil_api::code::meaning(e.code),
            veil_api::code::meaning(105)
        );
    }

    #[tokio::test]
    async fn the_socket_answers_one_line_per_connection() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let s1 = sock.clone();
        let server = tokio::spawn(async move { registry().serve(&s1).await });
        let s2 = sock.clone();
        let got = tokio::task::spawn_blocking(move || {
            for _ in 0..100 {
                if s2.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            veil_api::call::<_, u32>(
                &s2,
                method::CNI_STATUS,
                &1u32,
                std::time::Duration::from_secs(5),
            )
        })
        .await
        .unwrap();
        server.abort();
        assert_eq!(got.unwrap(), 2);
    }

    fn wait_for(path: &Path) {
        for _ in 0..200 {
            if path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} never appeared", path.display());
    }

    #[tokio::test]
    async fn the_socket_and_its_new_directory_get_their_modes_under_umask_000() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/veil/veild.sock");
        let listener = crate::fsutil::tests::with_umask(0, || {
            bind_socket(&sock, &SocketOptions::default()).unwrap()
        });
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sock), 0o660, "socket");
        assert_eq!(mode(sock.parent().unwrap()), 0o750, "/run/veil");
        assert_eq!(mode(&dir.path().join("run")), 0o750, "created parents too");
        // The temporary name is gone; the socket answers under its own name.
        let names: Vec<_> = std::fs::read_dir(sock.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("veild.sock")]);
        let server = tokio::spawn(registry().serve_listener(listener, SocketOptions::default()));
        let s2 = sock.clone();
        let got = tokio::task::spawn_blocking(move || {
            veil_api::call::<_, u32>(&s2, method::CNI_STATUS, &1u32, Duration::from_secs(5))
        })
        .await
        .unwrap();
        server.abort();
        assert_eq!(got.unwrap(), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_frees_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let opts = SocketOptions {
            max_connections: 1,
            idle_timeout: Duration::from_millis(300),
            ..SocketOptions::default()
        };
        let s1 = sock.clone();
        let server = tokio::spawn(async move { registry().serve_with(&s1, opts).await });
        let s2 = sock.clone();
        let (closed_after, answered) = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            wait_for(&s2);
            // An idle client holds the only slot...
            let mut idle = std::os::unix::net::UnixStream::connect(&s2).unwrap();
            idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let t0 = std::time::Instant::now();
            // ...a second call waits for it (backpressure), and is answered
            // once the idle one is closed.
            let s3 = s2.clone();
            let caller = std::thread::spawn(move || {
                veil_api::call::<_, u32>(&s3, method::CNI_STATUS, &1u32, Duration::from_secs(5))
            });
            let mut buf = [0u8; 16];
            let n = idle.read(&mut buf).unwrap();
            assert_eq!(n, 0, "the idle connection is closed without an answer");
            (t0.elapsed(), caller.join().unwrap())
        })
        .await
        .unwrap();
        server.abort();
        assert!(
            closed_after >= Duration::from_millis(250),
            "{closed_after:?}"
        );
        assert!(closed_after < Duration::from_secs(4), "{closed_after:?}");
        assert_eq!(answered.unwrap(), 2);
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_instead_of_being_served() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let opts = SocketOptions {
            max_connections: 4,
            idle_timeout: Duration::from_secs(30),
            ..SocketOptions::default()
        };
        let s1 = sock.clone();
        let server = tokio::spawn(async move { registry().serve_with(&s1, opts).await });
        let s2 = sock.clone();
        let blocked = tokio::task::spawn_blocking(move || {
            wait_for(&s2);
            let _held: Vec<_> = (0..4)
                .map(|_| std::os::unix::net::UnixStream::connect(&s2).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            // The fifth is accepted by the kernel (backlog) but not served.
            veil_api::call::<_, u32>(&s2, method::CNI_STATUS, &1u32, Duration::from_millis(500))
        })
        .await
        .unwrap();
        server.abort();
        assert!(
            matches!(blocked, Err(veil_api::CallError::Io { .. })),
            "{blocked:?}"
        );
    }

    #[tokio::test]
    async fn a_request_line_gets_one_answer_line_whatever_it_holds() {
        let r = registry();
        for line in [
            "",
            "{",
            "null",
            "{\"method\": 3}",
            "{\"method\":\"cni.status\",\"params\":1}",
        ] {
            let out = r.answer_line(line).await;
            assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "{line}");
            let _: Reply = serde_json::from_slice(&out).unwrap();
        }
    }
}
