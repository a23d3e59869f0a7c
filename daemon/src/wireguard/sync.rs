//! Peer sync: the controller task that makes the node record, the peer table
//! and the routes match each datastore snapshot, and the per-peer metrics.
//! It does not start anything or rotate keys.

use super::*;

impl Manager {
    pub(super) fn key(&self) -> KeyPair {
        self.key.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn update_peer_metrics(&self, table: &Table, last: &mut HashMap<u32, (u64, u64)>) {
        let mut seen = HashMap::new();
        for (slot, p) in table.peers() {
            let labels = vec![("peer".to_string(), slot.node.clone())];
            let rx = p.rx_bytes.load(Ordering::Relaxed);
            let tx = p.tx_bytes.load(Ordering::Relaxed);
            let (lrx, ltx) = last.get(&p.index).copied().unwrap_or((0, 0));
            self.metrics
                .rx_bytes
                .get_or_create(&labels)
                .inc_by(rx.saturating_sub(lrx));
            self.metrics
                .tx_bytes
                .get_or_create(&labels)
                .inc_by(tx.saturating_sub(ltx));
            seen.insert(p.index, (rx, tx));
        }
        *last = seen;
        for slot in &table.slots {
            let labels = vec![("peer".to_string(), slot.node.clone())];
            let age = slot
                .last_handshake()
                .and_then(|t| t.elapsed().ok())
                .map(|d| d.as_secs_f64())
                .unwrap_or(-1.0);
            self.metrics.handshake_age.get_or_create(&labels).set(age);
        }
    }

    pub(super) async fn controller(self: Arc<Self>) {
        let mut snaps = self.ctx.snapshots.clone();
        let mut resync = tokio::time::interval(Duration::from_secs(30));
        resync.tick().await;
        loop {
            tokio::select! {
                r = snaps.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = self.wake.notified() => {}
                _ = resync.tick() => {
                    self.routes.lock().await.invalidate();
                }
            }
            let snap = snaps.borrow_and_update().clone();
            self.reconcile(&snap).await;
        }
    }

    /// Makes the node record, the peer table and the routes match `snap`.
    pub(super) async fn reconcile(&self, snap: &Snapshot) {
        let key = self.key();
        self.publish(snap, &key);
        let (desired, refused) = peers::desired(
            snap,
            &self.ctx.config.node_name,
            &key.public_bytes(),
            self.ctx.config.wireguard_port,
        );
        {
            let texts: Vec<String> = refused.iter().map(|r| r.to_string()).collect();
            let mut prev = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            if *prev != texts {
                for r in &refused {
                    match r.reason {
                        peers::RefusalReason::NoKey => tracing::info!(peer.node = %r.node, "{r}"),
                        _ => tracing::error!(peer.node = %r.node, "{r}"),
                    }
                }
                *prev = texts;
            }
            self.metrics.refused.set(refused.len() as i64);
        }
        let fresh = {
            let mut table = self.shared.table.write().unwrap_or_else(|e| e.into_inner());
            let old = table.clone();
            let mut next = || self.next_index.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
            let (t, fresh) = Table::rebuild(&old, &key, &desired, &mut next, Instant::now());
            for s in &t.slots {
                if !old.slots.iter().any(|o| o.node == s.node) {
                    tracing::info!(peer.node = %s.node, peer.endpoint = %s.endpoint, "wireguard: peer added");
                }
            }
            for o in &old.slots {
                if !t.slots.iter().any(|s| s.node == o.node) {
                    tracing::info!(peer.node = %o.node, "wireguard: peer removed");
                    let labels = vec![("peer".to_string(), o.node.clone())];
                    self.metrics.handshake_age.remove(&labels);
                }
            }
            self.metrics.peers.set(t.slots.len() as i64);
            *table = Arc::new(t);
            fresh
        };
        if !fresh.is_empty() {
            let table = self.shared.table();
            let mut sink = io::BatchSink::new(false, self.ctl.len());
            for p in &fresh {
                datapath::kick(&table, p, &mut sink);
            }
            let fds: Vec<_> = self.ctl.iter().map(|u| u.as_raw_fd()).collect();
            sink.flush(&fds);
        }
        let mut want: BTreeSet<IpNetwork> = desired
            .iter()
            .flat_map(|d| d.allowed.iter().copied())
            .collect();
        want.insert(self.ctx.config.cluster_cidr);
        let mut routes = self.routes.lock().await;
        routes.on_update(want);
        match routes.apply().await {
            Ok(c) => {
                if c.added + c.removed > 0 {
                    tracing::info!(
                        added = c.added,
                        removed = c.removed,
                        "wireguard: routes updated"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "wireguard: routes"),
        }
    }

    /// Writes this node's record with our annotations if it lacks them.
    pub(super) fn publish(&self, snap: &Snapshot, key: &KeyPair) {
        let cfg = &self.ctx.config;
        let want = node_annotations(&key.public_bytes(), self.endpoint);
        let mut rec = snap
            .node(&cfg.node_name)
            .cloned()
            .unwrap_or_else(|| NodeRecord {
                name: cfg.node_name.clone(),
                address: cfg.node_address,
                pod_cidrs: vec![cfg.pod_cidr],
                labels: cfg.node_labels.clone(),
                annotations: BTreeMap::new(),
            });
        if want.iter().all(|(k, v)| rec.annotations.get(k) == Some(v)) {
            return;
        }
        rec.annotations.extend(want);
        if let Err(e) = self.ctx.datastore.put_node(&rec) {
            tracing::error!(error = %e, "wireguard: publishing the node's public key");
        }
    }
}
