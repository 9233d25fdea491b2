//! What replication counts and remembers for the mesh inspection API: node-wide counters,
//! chunk traffic per peer, and the state of each repo it has heard of.
//!
//! Owned by the replication (its task, fetches and serving write here; the [`Mesh`] handle
//! reads), not by the transport: the swarm's own bookkeeping (connections, addresses,
//! round-trip times) stays in `hub-net`'s `PeerInfo`. Every table is bounded.
//!
//! [`Mesh`]: crate::Mesh

use hub_net::P2p;
use hub_protocol::repo::RepoId;
use libp2p::PeerId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Most repos whose state is remembered.
const MAX_REPO_STATES: usize = 65_536;
/// Most peers whose traffic is remembered (connected ones are always kept).
const MAX_PEERS: usize = 1024;

/// Replication's counters, shared by its task, fetches and serving.
#[derive(Debug)]
pub(crate) struct Stats {
    /// Gossip messages the replication task accepted / rejected or ignored.
    pub(crate) gossip_accepted: AtomicU64,
    pub(crate) gossip_refused: AtomicU64,
    /// Repos brought up to date from a peer's pack.
    pub(crate) repos_replicated: AtomicU64,
    /// Chunk bytes received / sent (good and bad), over either transport.
    pub(crate) chunk_bytes_received: AtomicU64,
    pub(crate) chunk_bytes_sent: AtomicU64,
    /// Chunks (or manifests) from peers that failed verification and were dropped.
    pub(crate) chunks_rejected: AtomicU64,
    /// LFS objects fetched, verified and imported.
    pub(crate) lfs_objects_fetched: AtomicU64,
    /// Of `chunk_bytes_received` / `chunk_bytes_sent`: over the blob endpoint (iroh).
    pub(crate) blob_bytes_received: AtomicU64,
    pub(crate) blob_bytes_sent: AtomicU64,
    /// Git pack bytes fetched as blobs over the blob endpoint.
    pub(crate) pack_blob_bytes_received: AtomicU64,
    /// Namespace documents / ref updates refused because they would give an account name of
    /// this node to other nodes (ADR 0006).
    pub(crate) foreign_claims_refused: AtomicU64,
    pub(crate) foreign_updates_refused: AtomicU64,
    /// Chunk traffic per peer.
    pub(crate) peers: PeerStats,
    /// What replication knows of each repo.
    pub(crate) repos: RepoStates,
}

impl Stats {
    /// Counters at zero; `p2p` tells which peers are connected (their traffic is kept).
    pub(crate) fn new(p2p: P2p) -> Self {
        Self {
            gossip_accepted: AtomicU64::default(),
            gossip_refused: AtomicU64::default(),
            repos_replicated: AtomicU64::default(),
            chunk_bytes_received: AtomicU64::default(),
            chunk_bytes_sent: AtomicU64::default(),
            chunks_rejected: AtomicU64::default(),
            lfs_objects_fetched: AtomicU64::default(),
            blob_bytes_received: AtomicU64::default(),
            blob_bytes_sent: AtomicU64::default(),
            pack_blob_bytes_received: AtomicU64::default(),
            foreign_claims_refused: AtomicU64::default(),
            foreign_updates_refused: AtomicU64::default(),
            peers: PeerStats {
                p2p,
                map: Mutex::default(),
            },
            repos: RepoStates::default(),
        }
    }

    /// The counters now.
    pub(crate) fn counters(&self) -> MeshCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MeshCounters {
            gossip_accepted: get(&self.gossip_accepted),
            gossip_refused: get(&self.gossip_refused),
            repos_replicated: get(&self.repos_replicated),
            lfs_objects_fetched: get(&self.lfs_objects_fetched),
            chunk_bytes_received: get(&self.chunk_bytes_received),
            chunk_bytes_sent: get(&self.chunk_bytes_sent),
            blob_bytes_received: get(&self.blob_bytes_received),
            blob_bytes_sent: get(&self.blob_bytes_sent),
            pack_blob_bytes_received: get(&self.pack_blob_bytes_received),
            chunks_rejected: get(&self.chunks_rejected),
            foreign_claims_refused: get(&self.foreign_claims_refused),
            foreign_updates_refused: get(&self.foreign_updates_refused),
        }
    }
}

/// Replication's counters since start, as [`crate::Mesh::counters`] reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MeshCounters {
    /// Gossip messages accepted (namespace documents and ref updates).
    pub gossip_accepted: u64,
    /// Gossip messages refused (rejected as invalid, or ignored as replays).
    pub gossip_refused: u64,
    /// Repos brought up to date from a peer's pack.
    pub repos_replicated: u64,
    /// LFS objects fetched from peers, verified and imported.
    pub lfs_objects_fetched: u64,
    /// Chunk bytes received from peers (verified or not), over either transport.
    pub chunk_bytes_received: u64,
    /// Chunk bytes served to peers.
    pub chunk_bytes_sent: u64,
    /// Of `chunk_bytes_received`: over the blob endpoint (iroh).
    pub blob_bytes_received: u64,
    /// Of `chunk_bytes_sent`: over the blob endpoint.
    pub blob_bytes_sent: u64,
    /// Git pack bytes fetched as blobs over the blob endpoint.
    pub pack_blob_bytes_received: u64,
    /// Chunks or manifests from peers that failed verification.
    pub chunks_rejected: u64,
    /// Namespace documents refused because they would give an account name of this node
    /// to other nodes (ADR 0006).
    pub foreign_claims_refused: u64,
    /// Ref updates refused because their repo is in an account name of this node and they
    /// come from other nodes (ADR 0006).
    pub foreign_updates_refused: u64,
}

/// Chunk traffic with one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerTraffic {
    /// Chunk bytes received from / sent to the peer, over either transport.
    pub chunk_bytes_received: u64,
    pub chunk_bytes_sent: u64,
    /// Chunks or manifests from the peer that failed verification.
    pub bad_chunks: u64,
}

/// Chunk traffic per peer, bounded: a new peer evicts one that is not connected.
#[derive(Debug)]
pub(crate) struct PeerStats {
    p2p: P2p,
    map: Mutex<BTreeMap<PeerId, PeerTraffic>>,
}

impl PeerStats {
    pub(crate) fn update(&self, peer: PeerId, f: impl FnOnce(&mut PeerTraffic)) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(&peer) && map.len() >= MAX_PEERS {
            let stale = map.keys().find(|id| !self.p2p.is_connected(id)).copied();
            match stale {
                Some(id) => {
                    map.remove(&id);
                }
                None => return,
            }
        }
        f(map.entry(peer).or_default());
    }

    pub(crate) fn get(&self, peer: &PeerId) -> Option<PeerTraffic> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(peer).cloned()
    }
}

/// What replication knows of one repo, for the mesh inspection API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepoState {
    /// The sequence number of the last signed update accepted for the repo.
    pub last_seq: Option<u64>,
    /// Whether this node seeds the repo (fetches its packs and LFS content).
    pub seeded: bool,
    /// LFS objects its tips reference that are not stored yet (after the last sync).
    pub lfs_missing: u64,
    /// LFS objects fetched from peers since start.
    pub lfs_fetched: u64,
    /// Pointers the signed update binds to no manifest (cannot be fetched verified).
    pub lfs_unbound: u64,
    /// Chunk bytes received for the repo since start.
    pub chunk_bytes_received: u64,
    /// Why the last sync failed, if it did.
    pub last_error: Option<String>,
}

/// [`RepoState`]s by repo, bounded by [`MAX_REPO_STATES`].
#[derive(Debug, Default)]
pub(crate) struct RepoStates(Mutex<BTreeMap<RepoId, RepoState>>);

impl RepoStates {
    pub(crate) fn update(&self, repo: &RepoId, f: impl FnOnce(&mut RepoState)) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = map.get_mut(repo) {
            f(state);
        } else if map.len() < MAX_REPO_STATES {
            f(map.entry(repo.clone()).or_default());
        }
    }

    pub(crate) fn get(&self, repo: &RepoId) -> Option<RepoState> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(repo).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_net::{CancellationToken, Keypair, P2pConfig};

    #[tokio::test]
    async fn peer_traffic_is_bounded_and_a_new_peer_evicts_a_disconnected_one() {
        let cancel = CancellationToken::new();
        let config = P2pConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            blobs: false,
            ..P2pConfig::default()
        };
        let (p2p, task) = hub_net::spawn(Keypair::generate_ed25519(), config, cancel.clone())
            .await
            .unwrap();
        let stats = Stats::new(p2p);
        let random = || Keypair::generate_ed25519().public().to_peer_id();
        let first = random();
        stats.peers.update(first, |t| t.bad_chunks += 1);
        for _ in 1..MAX_PEERS {
            stats.peers.update(random(), |t| t.chunk_bytes_sent += 1);
        }
        assert_eq!(stats.peers.get(&first).unwrap().bad_chunks, 1);
        let late = random();
        stats.peers.update(late, |t| t.chunk_bytes_received += 7);
        assert_eq!(stats.peers.get(&late).unwrap().chunk_bytes_received, 7);
        let kept = stats.peers.map.lock().unwrap().len();
        assert_eq!(kept, MAX_PEERS);
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn repo_states_update_in_place_and_read_back() {
        let states = RepoStates::default();
        let repo = RepoId::parse(hub_protocol::repo::RepoType::Model, "alice/tiny").unwrap();
        assert_eq!(states.get(&repo), None);
        states.update(&repo, |s| s.last_seq = Some(3));
        states.update(&repo, |s| s.seeded = true);
        let state = states.get(&repo).unwrap();
        assert_eq!((state.last_seq, state.seeded), (Some(3), true));
    }
}
