//! The daemon's unix-socket API: a registry of named methods and the server loop.
//! Modules register their methods on the [`ApiRegistry`] at start-up, under the
//! names of [`veil_api::method`] (the one place a method name is written) and
//! with the parameter and answer types veil-api defines for them. The wire
//! format and the client are veil-api's; this module only serves.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

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
pub const CODE_DECODE: u32 = 6;
/// Error code for an unknown method.
pub const CODE_UNKNOWN_METHOD: u32 = 101;
/// Error code for an internal failure.
pub const CODE_INTERNAL: u32 = 102;

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

    /// Serves the registry on a unix socket at `path` until the task is dropped.
    /// A stale socket file is replaced; the parent directory is created.
    pub async fn serve(self, path: &Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on api socket");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(r).take(16 << 20);
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let reply = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => match this.call(&req.method, req.params).await {
                        Ok(v) => Reply::Ok(v),
                        Err(e) => Reply::Error(e),
                    },
                    Err(e) => Reply::Error(api_error(
                        CODE_DECODE,
                        format!("request is not valid JSON: {e}"),
                    )),
                };
                let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{}".to_vec());
                out.push(b'\n');
                let _ = w.write_all(&out).await;
                let _ = w.shutdown().await;
            });
        }
    }
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
    async fn unknown_methods_answer_code_101() {
        let e = registry()
            .call(method::GRAPH_GET, serde_json::Value::Null)
            .await
            .unwrap_err();
        assert_eq!(e.code, CODE_UNKNOWN_METHOD);
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
}
