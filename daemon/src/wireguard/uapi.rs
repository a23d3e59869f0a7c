//! The WireGuard cross-platform userspace API (the `wg` tool's protocol) on
//! `<dir>/veil-wg.sock`: `get=1` lists the device and its peers as
//! `wg show veil-wg` expects: one peer per node, whatever its number of
//! lanes (their bytes summed, the latest handshake of the sending lanes).
//! `set=1` is refused: peers come from the datastore and keys are rotated
//! with `veilctl wireguard rotate-key`.

use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::datapath::Shared;
use super::keys::to_hex;

/// The `get=1` answer for the current table.
pub fn get_response(shared: &Shared, listen_port: u16) -> String {
    use std::fmt::Write;
    let table = shared.table();
    let mut s = String::new();
    if let Some(k) = table.keys.first() {
        let _ = writeln!(s, "private_key={}", to_hex(&k.secret.to_bytes()));
    }
    let _ = writeln!(s, "listen_port={listen_port}");
    for slot in &table.slots {
        // One peer per node: its lanes' counters summed, the latest handshake
        // of the lanes that send (lanes are ports of the same endpoint).
        let _ = writeln!(s, "public_key={}", to_hex(&slot.current[0].remote_key));
        let _ = writeln!(s, "endpoint={}", slot.endpoint);
        let hs = slot.last_handshake();
        let (rx, tx) = slot.bytes();
        let d = hs
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(s, "last_handshake_time_sec={}", d.as_secs());
        let _ = writeln!(s, "last_handshake_time_nsec={}", d.subsec_nanos());
        let _ = writeln!(s, "tx_bytes={tx}");
        let _ = writeln!(s, "rx_bytes={rx}");
        let _ = writeln!(s, "persistent_keepalive_interval=0");
        let _ = writeln!(s, "protocol_version=1");
        for a in &slot.allowed {
            let _ = writeln!(s, "allowed_ip={}/{}", a.network(), a.prefix());
        }
    }
    s.push_str("errno=0\n\n");
    s
}

/// Serves the UAPI on `path` until the task is dropped.
pub async fn serve(path: &Path, shared: Arc<Shared>, listen_port: u16) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "wireguard: uapi accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            loop {
                let Ok(Some(op)) = lines.next_line().await else {
                    return;
                };
                let reply = match op.as_str() {
                    "get=1" => {
                        // Consume up to the blank line ending the request.
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l.is_empty() {
                                break;
                            }
                        }
                        get_response(&shared, listen_port)
                    }
                    "set=1" => {
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l.is_empty() {
                                break;
                            }
                        }
                        // EPERM: peers are managed from the datastore.
                        "errno=1\n\n".to_string()
                    }
                    "" => continue,
                    _ => "errno=22\n\n".to_string(),
                };
                if w.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
