//! What the swarm knows of each peer: addresses, whether connected, the last round-trip
//! time. Written by the swarm task, read by the [`P2p`](crate::P2p) handle and by the blob
//! endpoint (which serves connected peers only). Bounded: connected peers are always kept.

use libp2p::{Multiaddr, PeerId};
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// What this node knows of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// Addresses the peer was reached at or announced (identify), newest last, at most 8.
    pub addrs: Vec<Multiaddr>,
    pub connected: bool,
    /// The last round-trip time `ping` measured.
    pub rtt: Option<Duration>,
}

/// Most peers remembered (connected ones are always kept).
const MAX_PEERS: usize = 1024;
/// Most addresses remembered per peer.
const MAX_PEER_ADDRS: usize = 8;

/// Per-peer bookkeeping of the swarm task (connections, addresses, round-trip times).
#[derive(Debug, Default)]
pub(crate) struct Peers(Mutex<BTreeMap<PeerId, PeerInfo>>);

impl Peers {
    pub(crate) fn update(&self, peer: PeerId, f: impl FnOnce(&mut PeerInfo)) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(&peer) && map.len() >= MAX_PEERS {
            let stale = map.iter().find(|(_, p)| !p.connected).map(|(id, _)| *id);
            match stale {
                Some(id) => {
                    map.remove(&id);
                }
                None => return,
            }
        }
        f(map.entry(peer).or_default());
    }

    pub(crate) fn add_addr(&self, peer: PeerId, addr: Multiaddr) {
        self.update(peer, |p| {
            if !p.addrs.contains(&addr) {
                if p.addrs.len() >= MAX_PEER_ADDRS {
                    p.addrs.remove(0);
                }
                p.addrs.push(addr);
            }
        });
    }

    pub(crate) fn is_connected(&self, peer: &PeerId) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(peer).is_some_and(|p| p.connected)
    }

    pub(crate) fn snapshot(&self) -> Vec<(PeerId, PeerInfo)> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(id, p)| (*id, p.clone())).collect()
    }
}
