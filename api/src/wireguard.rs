//! The answers of `wireguard.status` and `wireguard.rotate-key`. Field names
//! are camelCase on the wire. Keys are public keys in base64; the private key
//! never crosses the socket.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One peer in `wireguard.status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// Node name.
    pub node: String,
    /// Its public key (base64).
    pub public_key: String,
    /// Its endpoint.
    pub endpoint: String,
    /// Its pod CIDRs.
    pub allowed_ips: Vec<String>,
    /// The node has been reached: a session is up on some lane, or a
    /// handshake with the current keys completed (a lane idle for minutes
    /// loses its session until its next packet; that is not a fault).
    pub established: bool,
    /// Sessions (lanes) used with this node.
    #[serde(default)]
    pub lanes: u32,
    /// Lanes that can send now.
    #[serde(default)]
    pub lanes_established: u32,
    /// Unix time of the last handshake.
    pub last_handshake: Option<u64>,
    /// Seconds since the last handshake.
    pub handshake_age_seconds: Option<f64>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// A key change is in progress with this peer.
    pub rotating: bool,
}

/// The answer of `wireguard.status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Device name.
    pub device: String,
    /// This node's public key (base64).
    pub public_key: String,
    /// This node's endpoint.
    pub endpoint: String,
    /// Tunnel address on the device.
    pub tunnel_address: String,
    /// Device MTU.
    pub mtu: u32,
    /// Peers.
    pub peers: Vec<PeerStatus>,
    /// Nodes refused as peers, with the reason.
    pub refused: Vec<String>,
    /// Datapath counters.
    pub counters: BTreeMap<String, u64>,
}

/// The answer of `wireguard.rotate-key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotated {
    /// The key before.
    pub old_public_key: String,
    /// The key now published.
    pub new_public_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_is_camel_case_on_the_wire() {
        let r = Rotated {
            old_public_key: "a".into(),
            new_public_key: "b".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"oldPublicKey":"a","newPublicKey":"b"}"#
        );
    }
}
