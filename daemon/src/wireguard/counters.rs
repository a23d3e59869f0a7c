//! The datapath-wide counters (registered on `/metrics`, shown by
//! `wireguard.status`). Counting only: what increments them is the datapath's.

use prometheus_client::metrics::counter::Counter;

/// Datapath-wide counters (registered on `/metrics`).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Packets from the TUN with no peer for their destination.
    pub dropped_no_peer: Counter,
    /// Packets from the TUN handed to a peer without a session (queued by
    /// `Tunn` until the handshake completes, dropped past 256).
    pub no_session: Counter,
    /// Decrypted packets whose source is not in the peer's allowed IPs.
    pub dropped_bad_source: Counter,
    /// Datagrams for no known session or peer.
    pub dropped_unknown_peer: Counter,
    /// Handshake messages that failed (unknown key, bad MAC, replay, ...).
    pub handshake_failures: Counter,
    /// Data packets that failed to decrypt.
    pub decrypt_errors: Counter,
    /// Packets the kernel refused to send or to accept on the TUN.
    pub io_drops: Counter,
    /// Offloaded packets we could not segment.
    pub offload_errors: Counter,
}
