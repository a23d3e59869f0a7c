//! Key rotation (make-before-break) and the `wireguard.status` answer.
//! It does not start the datapath or reconcile peers.

use super::*;

impl Manager {
    pub(super) async fn rotate(&self) -> Result<Rotated, WireguardError> {
        let new = KeyPair::generate();
        keys::save(&self.ctx.config.state_dir, &new)?;
        let old = {
            let mut k = self.key.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *k, new.clone())
        };
        self.metrics.rotations.inc();
        tracing::info!(
            old_public_key = %keys::to_base64(&old.public_bytes()),
            new_public_key = %keys::to_base64(&new.public_bytes()),
            "wireguard: key rotated"
        );
        let snap = self.ctx.snapshots.borrow().clone();
        self.reconcile(&snap).await;
        Ok(Rotated {
            old_public_key: keys::to_base64(&old.public_bytes()),
            new_public_key: keys::to_base64(&new.public_bytes()),
        })
    }

    pub(super) fn status(&self) -> Status {
        let table = self.shared.table();
        let key = self.key();
        let now = SystemTime::now();
        let peers = table
            .slots
            .iter()
            .map(|s| {
                let hs = s.last_handshake();
                let (rx, tx) = s.bytes();
                PeerStatus {
                    node: s.node.clone(),
                    public_key: keys::to_base64(&s.current[0].remote_key),
                    endpoint: s.endpoint.to_string(),
                    allowed_ips: s.allowed.iter().map(|a| a.to_string()).collect(),
                    established: s.reached(),
                    lanes: s.current.len() as u32,
                    lanes_established: s.lanes_sending() as u32,
                    last_handshake: hs
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    handshake_age_seconds: hs
                        .and_then(|t| now.duration_since(t).ok())
                        .map(|d| d.as_secs_f64()),
                    rx_bytes: rx,
                    tx_bytes: tx,
                    rotating: s.retiring.is_some(),
                }
            })
            .collect();
        let c = &self.shared.counters;
        let counters = BTreeMap::from([
            ("droppedNoPeer".to_string(), c.dropped_no_peer.get()),
            ("noSession".to_string(), c.no_session.get()),
            ("droppedBadSource".to_string(), c.dropped_bad_source.get()),
            (
                "droppedUnknownPeer".to_string(),
                c.dropped_unknown_peer.get(),
            ),
            ("handshakeFailures".to_string(), c.handshake_failures.get()),
            ("decryptErrors".to_string(), c.decrypt_errors.get()),
            ("ioDrops".to_string(), c.io_drops.get()),
            ("offloadErrors".to_string(), c.offload_errors.get()),
        ]);
        let _ = self.gso;
        Status {
            device: WG_DEVICE.to_string(),
            public_key: keys::to_base64(&key.public_bytes()),
            endpoint: self.endpoint.to_string(),
            tunnel_address: self.tunnel_addr.to_string(),
            mtu: self.mtu,
            peers,
            refused: self
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            counters,
        }
    }
}
