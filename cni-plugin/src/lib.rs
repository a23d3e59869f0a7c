//! veil-cni: the `veil` CNI plugin, a thin client of the node daemon `veild`.
//!
//! It implements the CNI specification 1.1.0 (ADD, DEL, CHECK, STATUS, GC,
//! VERSION) and answers configurations of versions 0.3.0, 0.3.1, 0.4.0, 1.0.0 and
//! 1.1.0 in their own format, alone or inside a conflist (`prevResult`).
//!
//! - ADD asks `veild` for addresses (`cni.add`), or delegates to the IPAM plugin
//!   named in `ipam.type` and has `veild` record them; creates a veth pair whose
//!   container end gets the pod's /32 (or /128), a link-scope route to the
//!   link-local gateway, a permanent neighbour entry for it and a default route
//!   through it; the host end (named by [`plugin::host_ifname`]) gets proxy ARP
//!   and a /32 route to the pod. Then `cni.commit`. A failure after `cni.add`
//!   undoes everything (a drop guard).
//! - DEL removes the links, then releases the endpoint in `veild` and in the
//!   delegated IPAM plugin. It succeeds when any of them is already gone. When
//!   `veild` cannot be reached it still removes the links, then fails with code
//!   11 (try again later), because only `veild` can release the address: the
//!   runtime retries DEL, and a later retry finds the links gone and only
//!   releases the address.
//! - CHECK compares `prevResult`, `veild`'s record and the kernel (interfaces,
//!   addresses, routes) and names the first difference (codes 110-113).
//! - STATUS fails with 50 when `veild` is not ready or cannot be reached.
//! - GC passes `cni.dev/valid-attachments` to `veild` (`cni.gc`) and deletes the
//!   host links of the endpoints it released.
//!
//! What it does not do: policy, encryption, or anything else of the daemon's;
//! it keeps no state of its own. Errors are CNI error objects (see
//! [`error::code`]); logs go to stderr or the configuration's `logFile`, never
//! to stdout.
//!
//! [`run`] is the whole plugin without a process; `main.rs` only connects it to
//! the real environment, stdin, stdout and kernel ([`netlink::LinuxLinks`]).

pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod links;
pub mod netlink;
pub mod plugin;
pub mod result;
pub mod version;

pub use error::CniError;
pub use plugin::run;

use std::collections::BTreeMap;
use std::io::Write;

/// Runs one invocation and writes the error object on failure: the process's
/// exit code (0 success, 1 failure). A panic inside is caught and reported as an
/// internal error; it never leaves a partial result on `stdout` because results
/// are written in one piece at the very end.
pub fn execute(
    vars: &BTreeMap<String, String>,
    stdin: &[u8],
    stdout: &mut dyn Write,
    links: &mut dyn links::Links,
) -> i32 {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut buf = Vec::new();
        let r = run(vars, stdin, &mut buf, links);
        (r, buf)
    }));
    let err = match outcome {
        Ok((Ok(()), buf)) => match stdout.write_all(&buf).and_then(|()| stdout.flush()) {
            Ok(()) => return 0,
            Err(e) => CniError::Internal {
                msg: format!("writing the result to stdout: {e}"),
            },
        },
        Ok((Err(e), _)) => e,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            CniError::Internal {
                msg: format!("panic: {what}"),
            }
        }
    };
    tracing::error!(code = err.code(), error = %err, details = %err.details(), "failed");
    let obj = err.to_json(&error::error_version(stdin));
    let mut bytes = serde_json::to_vec(&obj).unwrap_or_default();
    bytes.push(b'\n');
    let _ = stdout.write_all(&bytes);
    let _ = stdout.flush();
    1
}
