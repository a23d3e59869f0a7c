//! Which nodes are WireGuard peers (pure): every other node of the snapshot
//! that published a valid public key. Its allowed IPs are its pod CIDRs; its
//! endpoint is the published endpoint (or its address and our port). Two nodes
//! claiming the same key are both refused, and so is a node claiming ours.
//!
//! It does not touch the tunnel: the WireGuard part applies the result.

use std::collections::HashMap;
use std::net::SocketAddr;

use ipnetwork::IpNetwork;

use crate::datastore::Snapshot;
use crate::wireguard::keys;

/// A peer the datapath should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    /// Node name.
    pub node: String,
    /// Its public key.
    pub key: [u8; 32],
    /// Where to send.
    pub endpoint: SocketAddr,
    /// Its pod CIDRs.
    pub allowed: Vec<IpNetwork>,
    /// How many lanes it listens on (see `wireguard::lanes`; 1 when it does
    /// not say, 1 as well when it says something unparsable).
    pub lanes: usize,
}

/// A node that is not a peer, and why (for logs, metrics and status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Node name.
    pub node: String,
    /// Why.
    pub reason: RefusalReason,
}

/// Why a node is not a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// No key published yet.
    NoKey,
    /// The key is not a base64 32-byte key.
    InvalidKey,
    /// Another node claims the same key.
    DuplicateKey {
        /// The other nodes.
        with: Vec<String>,
    },
    /// The node claims this node's own key.
    OurKey,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            RefusalReason::NoKey => write!(f, "node {}: no wireguard key published yet", self.node),
            RefusalReason::InvalidKey => write!(
                f,
                "node {}: published wireguard key is not a base64 32-byte key",
                self.node
            ),
            RefusalReason::DuplicateKey { with } => write!(
                f,
                "node {}: wireguard public key is also claimed by {}; both refused as peers",
                self.node,
                with.join(", ")
            ),
            RefusalReason::OurKey => write!(
                f,
                "node {}: claims this node's own wireguard public key; refused as peer",
                self.node
            ),
        }
    }
}

/// The peers of node `self_name` (whose key is `own_key`) in `snap`.
pub fn desired(
    snap: &Snapshot,
    self_name: &str,
    own_key: &[u8; 32],
    default_port: u16,
) -> (Vec<DesiredPeer>, Vec<Refusal>) {
    let mut refused = Vec::new();
    let mut candidates = Vec::new();
    for n in &snap.nodes {
        if n.name == self_name {
            continue;
        }
        let Some(text) = n.wireguard_public_key() else {
            refused.push(Refusal {
                node: n.name.clone(),
                reason: RefusalReason::NoKey,
            });
            continue;
        };
        let Some(key) = keys::from_base64(text) else {
            refused.push(Refusal {
                node: n.name.clone(),
                reason: RefusalReason::InvalidKey,
            });
            continue;
        };
        if &key == own_key {
            refused.push(Refusal {
                node: n.name.clone(),
                reason: RefusalReason::OurKey,
            });
            continue;
        }
        let endpoint = n
            .wireguard_endpoint()
            .unwrap_or_else(|| SocketAddr::new(n.address, default_port));
        candidates.push(DesiredPeer {
            node: n.name.clone(),
            key,
            endpoint,
            allowed: n.pod_cidrs.clone(),
            lanes: n.wireguard_lanes().unwrap_or(1),
        });
    }
    let mut by_key: HashMap<[u8; 32], Vec<String>> = HashMap::new();
    for c in &candidates {
        by_key.entry(c.key).or_default().push(c.node.clone());
    }
    let mut peers = Vec::new();
    for c in candidates {
        let holders = &by_key[&c.key];
        if holders.len() > 1 {
            refused.push(Refusal {
                reason: RefusalReason::DuplicateKey {
                    with: holders.iter().filter(|h| **h != c.node).cloned().collect(),
                },
                node: c.node,
            });
        } else {
            peers.push(c);
        }
    }
    peers.sort_by(|a, b| a.node.cmp(&b.node));
    (peers, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{NodeRecord, ANNOTATION_WG_ENDPOINT, ANNOTATION_WG_PUBLIC_KEY};

    fn node(name: &str, cidr: &str, key: Option<[u8; 32]>) -> NodeRecord {
        let mut annotations = std::collections::BTreeMap::new();
        if let Some(k) = key {
            annotations.insert(ANNOTATION_WG_PUBLIC_KEY.into(), keys::to_base64(&k));
            annotations.insert(ANNOTATION_WG_ENDPOINT.into(), "198.18.0.2:51820".into());
        }
        NodeRecord {
            name: name.into(),
            address: "198.18.0.2".parse().unwrap(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            labels: Default::default(),
            annotations,
        }
    }

    #[test]
    fn other_nodes_with_keys_become_peers_with_their_pod_cidrs() {
        let snap = Snapshot {
            nodes: vec![
                node("a", "10.244.0.0/24", Some([1; 32])),
                node("b", "10.244.1.0/24", Some([2; 32])),
                node("c", "10.244.2.0/24", None),
            ],
            ..Default::default()
        };
        let (peers, refused) = desired(&snap, "a", &[1; 32], 51820);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].node, "b");
        assert_eq!(peers[0].allowed, vec!["10.244.1.0/24".parse().unwrap()]);
        assert_eq!(refused[0].reason, RefusalReason::NoKey);
    }

    #[test]
    fn two_nodes_with_the_same_key_are_both_refused() {
        let snap = Snapshot {
            nodes: vec![
                node("a", "10.244.0.0/24", Some([1; 32])),
                node("b", "10.244.1.0/24", Some([9; 32])),
                node("c", "10.244.2.0/24", Some([9; 32])),
            ],
            ..Default::default()
        };
        let (peers, refused) = desired(&snap, "a", &[1; 32], 51820);
        assert!(peers.is_empty());
        assert_eq!(refused.len(), 2);
        assert!(
            refused[0].to_string().contains("also claimed by c"),
            "{}",
            refused[0]
        );
    }

    #[test]
    fn a_node_claiming_our_key_is_refused() {
        let snap = Snapshot {
            nodes: vec![node("b", "10.244.1.0/24", Some([1; 32]))],
            ..Default::default()
        };
        let (peers, refused) = desired(&snap, "a", &[1; 32], 51820);
        assert!(peers.is_empty());
        assert_eq!(refused[0].reason, RefusalReason::OurKey);
    }

    #[test]
    fn published_lane_count_is_read_and_absent_means_one() {
        let with = |v: Option<&str>| {
            let mut n = node("b", "10.244.1.0/24", Some([2; 32]));
            if let Some(v) = v {
                n.annotations
                    .insert(crate::datastore::ANNOTATION_WG_LANES.into(), v.into());
            }
            let snap = Snapshot {
                nodes: vec![n],
                ..Default::default()
            };
            desired(&snap, "a", &[1; 32], 51820).0[0].lanes
        };
        assert_eq!(with(None), 1, "a node from before lanes");
        assert_eq!(with(Some("4")), 4);
        assert_eq!(with(Some("0")), 1);
        assert_eq!(with(Some("many")), 1);
    }
}
