//! Starting the WireGuard datapath: key, device, sockets, datapath threads,
//! peer controller, UAPI, daemon API methods, metrics and timers. It does not
//! compute peers or rotate keys (see `sync` and `rotation`).

use super::*;

/// Starts the datapath for this node: key, device, sockets, threads, peer
/// controller, UAPI, API methods and metrics.
pub async fn start(ctx: NodeContext) -> Result<Handle, WireguardError> {
    let cfg = ctx.config.clone();
    let key = keys::load_or_generate(&cfg.state_dir)?;
    let nl = dp_links::connect().map_err(WireguardError::NetlinkSocket)?;
    let links = RtLinks(nl.clone());
    let underlay_mtu = match cfg.underlay_mtu {
        Some(m) => m,
        None => links
            .get(&cfg.underlay_interface)
            .await?
            .map(|l| l.mtu)
            .ok_or_else(|| WireguardError::NoUnderlay(cfg.underlay_interface.clone()))?,
    };
    let mtu = underlay_mtu.saturating_sub(WG_OVERHEAD);
    if mtu < 1280 {
        return Err(WireguardError::SmallMtu(underlay_mtu));
    }
    let queues = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let offload = if !cfg.wireguard_tuning.no_offload {
        tunnel::TUN_F_CSUM | tunnel::TUN_F_TSO4 | tunnel::TUN_F_TSO6
    } else {
        0
    };
    let dev = LinuxTunnel
        .open(WG_DEVICE, queues, offload)
        .map_err(WireguardError::Tun)?;
    let offloads_on = dev.offloads;
    let tuns: Vec<Arc<OwnedFd>> = dev.queues.into_iter().map(Arc::new).collect();
    let link_index = links
        .get(WG_DEVICE)
        .await?
        .map(|l| l.index)
        .ok_or_else(|| WireguardError::Tun(std::io::Error::other("device vanished")))?;
    let tunnel_addr = crate::ipam::Allocator::new(cfg.pod_cidr).node_address();
    links.setup(link_index, mtu, tunnel_addr).await?;

    let bind = SocketAddr::new(
        sys::unspecified(cfg.node_address.is_ipv6()),
        cfg.wireguard_port,
    );
    // One socket per lane, on consecutive ports (see `lanes`).
    let mut udps = Vec::new();
    for lane in 0..datapath::LANES {
        let port =
            cfg.wireguard_port
                .checked_add(lane as u16)
                .ok_or_else(|| WireguardError::Udp {
                    port: cfg.wireguard_port,
                    source: std::io::Error::other(format!(
                        "no room for {} lanes on consecutive ports",
                        datapath::LANES
                    )),
                })?;
        let s = bind_udp(SocketAddr::new(bind.ip(), port))
            .map_err(|source| WireguardError::Udp { port, source })?;
        udps.push(Arc::new(s));
    }
    // VEIL_WG_NO_GSO / VEIL_WG_NO_GRO / VEIL_WG_NO_OFFLOAD / VEIL_WG_NO_COALESCE
    // turn single optimisations off (benchmarks, kernels that misbehave).
    let gso = !cfg.wireguard_tuning.no_gso && sys::udp_gso_supported(udps[0].as_raw_fd());
    let gro =
        !cfg.wireguard_tuning.no_gro && udps.iter().all(|u| sys::udp_enable_gro(u.as_raw_fd()));
    tracing::info!(
        device = WG_DEVICE,
        mtu,
        queues,
        lanes = datapath::LANES,
        tun.offloads = offloads_on,
        udp.gso = gso,
        udp.gro = gro,
        public_key = %keys::to_base64(&key.public_bytes()),
        "wireguard: datapath up"
    );

    // VEIL_WG_BUSY_POLL_US: busy-poll window after work (0 = off).
    let spin = match spin::SpinConfig::from_env_value(
        std::env::var("VEIL_WG_BUSY_POLL_US").ok().as_deref(),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "wireguard: using the default busy-poll window");
            spin::SpinConfig::default()
        }
    };
    tracing::info!(
        busy_poll_us = spin.window.as_micros() as u64,
        "wireguard: busy-poll window"
    );
    let counters = Counters::default();
    let metrics = Metrics::default();
    register_metrics(&ctx, &counters, &metrics);
    let shared = Arc::new(Shared {
        table: RwLock::new(Arc::new(Table::default())),
        counters,
    });
    let manager = Arc::new(Manager {
        endpoint: SocketAddr::new(cfg.node_address, cfg.wireguard_port),
        ctx: ctx.clone(),
        shared: shared.clone(),
        key: Mutex::new(key),
        tunnel_addr,
        mtu,
        next_index: AtomicU32::new(rand::random::<u32>() & 0x7f_ffff),
        ctl: udps.clone(),
        gso,
        refused: Mutex::new(Vec::new()),
        metrics,
        routes: tokio::sync::Mutex::new(RouteManager::new(
            RtRoutes::new(nl),
            link_index,
            tunnel_addr,
        )),
        wake: tokio::sync::Notify::new(),
    });

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    // VEIL_WG_SPLIT_THREADS=1: one thread per direction and queue, as before
    // busy-polling existed (for comparisons; the default is one per queue).
    let split = std::env::var("VEIL_WG_SPLIT_THREADS").is_ok_and(|v| v == "1");
    let layouts: &[(io::Dirs, &str)] = if split {
        &[
            (
                io::Dirs {
                    tx: true,
                    rx: false,
                },
                "tx",
            ),
            (
                io::Dirs {
                    tx: false,
                    rx: true,
                },
                "rx",
            ),
        ]
    } else {
        &[(io::Dirs::BOTH, "q")]
    };
    let spin_token = Arc::new(AtomicBool::new(false));
    for (i, tun) in tuns.iter().enumerate() {
        for &(dirs, name) in layouts {
            let w = io::WorkerIo {
                shared: shared.clone(),
                tun: tun.clone(),
                udps: udps.clone(),
                rx_lanes: (0..datapath::LANES)
                    .filter(|l| l % tuns.len() == i)
                    .collect(),
                spin_token: spin_token.clone(),
                stop: stop.clone(),
                gso,
                gro,
                coalesce: offloads_on && !cfg.wireguard_tuning.no_coalesce,
                spin,
                dirs,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("wg-{name}{i}"))
                    .spawn(move || io::queue_loop(w))
                    .map_err(WireguardError::Tun)?,
            );
        }
    }
    {
        let m = manager.clone();
        let stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("wg-timers".into())
                .spawn(move || timers_loop(m, stop))
                .map_err(WireguardError::Tun)?,
        );
    }

    // First reconcile before serving anything, so peers exist at once.
    let snap = ctx.snapshots.borrow().clone();
    manager.reconcile(&snap).await;

    let mut tasks = Vec::new();
    {
        let m = manager.clone();
        tasks.push(tokio::spawn(async move { m.controller().await }));
    }
    {
        let path: PathBuf = cfg.wireguard_socket_dir.join(format!("{WG_DEVICE}.sock"));
        let sh = shared.clone();
        let port = cfg.wireguard_port;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = uapi::serve(&path, sh, port).await {
                tracing::error!(path = %path.display(), error = %e, "wireguard: uapi socket");
            }
        }));
    }
    if let Some(every) = cfg.wireguard_rotation {
        let m = manager.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = m.rotate().await {
                    tracing::error!(error = %e, "wireguard: scheduled key rotation");
                }
            }
        }));
    }
    register_api(&ctx, &manager);
    {
        let stop = stop.clone();
        let mut sd = ctx.shutdown.clone();
        let path = cfg.wireguard_socket_dir.join(format!("{WG_DEVICE}.sock"));
        tasks.push(tokio::spawn(async move {
            while !*sd.borrow() {
                if sd.changed().await.is_err() {
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
            let _ = std::fs::remove_file(path);
        }));
    }
    Ok(Handle {
        stop,
        threads,
        tasks,
        manager,
    })
}

fn register_metrics(ctx: &NodeContext, c: &Counters, m: &Metrics) {
    let mut r = ctx.metrics.lock().unwrap_or_else(|e| e.into_inner());
    r.register(
        "veil_wireguard_peers",
        "WireGuard peers configured",
        m.peers.clone(),
    );
    r.register(
        "veil_wireguard_refused_peers",
        "Nodes refused as WireGuard peers (no/invalid/duplicate key)",
        m.refused.clone(),
    );
    r.register(
        "veil_wireguard_peer_handshake_age_seconds",
        "Seconds since the last completed handshake with each peer (-1: never)",
        m.handshake_age.clone(),
    );
    r.register(
        "veil_wireguard_peer_rx_bytes",
        "Bytes received from each peer",
        m.rx_bytes.clone(),
    );
    r.register(
        "veil_wireguard_peer_tx_bytes",
        "Bytes sent to each peer",
        m.tx_bytes.clone(),
    );
    r.register(
        "veil_wireguard_key_rotations",
        "Key rotations done",
        m.rotations.clone(),
    );
    r.register(
        "veil_wireguard_dropped_no_peer",
        "Packets dropped because no peer owns their destination (fail closed)",
        c.dropped_no_peer.clone(),
    );
    r.register(
        "veil_wireguard_no_session",
        "Packets for a peer without a session yet (held until the handshake, never sent in clear)",
        c.no_session.clone(),
    );
    r.register(
        "veil_wireguard_dropped_bad_source",
        "Decrypted packets dropped because their source is outside the peer's pod CIDRs",
        c.dropped_bad_source.clone(),
    );
    r.register(
        "veil_wireguard_dropped_unknown_peer",
        "Datagrams dropped for an unknown session or peer",
        c.dropped_unknown_peer.clone(),
    );
    r.register(
        "veil_wireguard_handshake_failures",
        "Handshake messages that failed",
        c.handshake_failures.clone(),
    );
    r.register(
        "veil_wireguard_decrypt_errors",
        "Data packets that failed to decrypt",
        c.decrypt_errors.clone(),
    );
    r.register(
        "veil_wireguard_io_drops",
        "Packets the kernel refused (UDP send or TUN write)",
        c.io_drops.clone(),
    );
    r.register(
        "veil_wireguard_offload_errors",
        "Offloaded TUN packets that could not be segmented",
        c.offload_errors.clone(),
    );
}

fn register_api(ctx: &NodeContext, m: &Arc<Manager>) {
    let mm = m.clone();
    ctx.api.register(
        veil_api::method::WIREGUARD_STATUS,
        move |_: serde_json::Value| {
            let m = mm.clone();
            async move { Ok::<_, veil_api::ApiError>(m.status()) }
        },
    );
    let mm = m.clone();
    ctx.api.register(
        veil_api::method::WIREGUARD_ROTATE_KEY,
        move |_: serde_json::Value| {
            let m = mm.clone();
            async move {
                m.rotate()
                    .await
                    .map_err(|e| crate::api::api_error(crate::api::CODE_INTERNAL, e.to_string()))
            }
        },
    );
}

fn timers_loop(m: Arc<Manager>, stop: Arc<AtomicBool>) {
    let mut sink = io::BatchSink::new(false, m.ctl.len());
    let fds: Vec<_> = m.ctl.iter().map(|u| u.as_raw_fd()).collect();
    let mut last_bytes: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let table = m.shared.table();
        datapath::tick(&table, &mut sink);
        sink.flush(&fds);
        n += 1;
        if n.is_multiple_of(10) {
            m.update_peer_metrics(&table, &mut last_bytes);
            if table.rotating() {
                m.wake.notify_one();
            }
        }
    }
}
