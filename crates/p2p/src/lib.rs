//! hubmesh's peer-to-peer layer.
//!
//! Place in the graph: `… ← {auth, search, infer} ← p2p ← compute/spaces/mirror ← gateway ←
//! node`. Today it runs the libp2p swarm that gives a node its network identity and
//! connectivity: TCP with noise and yamux, `identify` and `ping`, hard connection limits, and
//! dialling the `--bootstrap` peers; and git-metadata replication on top of it: gossipsub for
//! signed ref updates and namespace documents, kademlia provider records per repo, and the
//! `/hubmesh/git-pack/1` request-response protocol for packs of the difference, and
//! `/hubmesh/blocks/1` for LFS content verified chunk by chunk (see [`spawn_replicating`] and
//! the `replicate` and `lfs` modules; chunks and packs travel over iroh-blobs: ADR 0005). QUIC listens next to
//! TCP; mDNS discovery is opt-in. For the compute mesh it carries capacity adverts on their own
//! gossip topic (judged by their consumer, [`P2p::take_capacity_adverts`]) and raw streams
//! (`/hubmesh/infer/1`, [`P2p::streams`]).
//!
//! Two handles: [`P2p`] is the transport (the swarm, the blob endpoint, gossip, streams) and
//! knows nothing of replication; [`Mesh`], returned by [`spawn_replicating`], is the
//! replication on top of it (seeding, on-demand fetches, announcing local writes) and
//! implements `hub-core`'s `MeshPort`. Module dependencies point one way: `codec` ← `blobs`
//! ← `swarm` ← `lfs` ← `replicate` ← `port` (`scripts/module-cycles` checks it). This crate
//! must not depend on the gateway or on axum; it sees the Hub's rules only through
//! `hub-core` (a repo's LFS objects).
//!
//! Who spawns whom: the node calls [`spawn`], which binds every listen address, waits until
//! each listener reports an address, dials the bootstrap peers and then moves the swarm into
//! one task that owns it. That task stops when the node's [`CancellationToken`] fires. The
//! returned [`P2p`] handle is cheap to clone and reads shared counters; it never blocks on the
//! swarm task.
//!
//! ```no_run
//! # async fn run() -> Result<(), hub_p2p::P2pError> {
//! use hub_p2p::{Keypair, P2pConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let cancel = CancellationToken::new();
//! let config = P2pConfig {
//!     listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
//!     ..P2pConfig::default()
//! };
//! let (p2p, task) = hub_p2p::spawn(Keypair::generate_ed25519(), config, cancel.clone()).await?;
//! println!("{} listens on {:?}", p2p.peer_id(), p2p.listen_addrs());
//! cancel.cancel();
//! task.await.ok();
//! # Ok(()) }
//! ```

mod blobs;
mod codec;
mod lfs;
mod peers;
mod port;
mod replicate;
mod schedule;
mod seeds;
mod state;
mod stats;
mod swarm;

pub use blobs::{Admission, BindError, BlobSource, Blobs, GetError, Place, ReadError};
pub use hub_core::EnsureError;
pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
pub use peers::PeerInfo;
pub use replicate::{Mesh, OnReplicated, Replication, ReplicationError, spawn_replicating};
pub use seeds::{SEEDS_FILE, SeedEntry, SeedError, SeedSource};
pub use state::{Claim, LocalNames, RefStore, RefStoreError};
pub use stats::{MeshCounters, PeerTraffic, RepoState};
pub use swarm::{
    BLOCKS_TIMEOUT, Bound, GossipMessage, MAX_PACK_STREAMS, MessageId, NetError, NetEvent, P2p,
    P2pConfig, P2pError, PACK_TIMEOUT, ResponseChannel, Topic, Verdict, bind, spawn,
};
pub use tokio_util::sync::CancellationToken;

/// Appends `/p2p/<peer_id>` to `addr` unless it already names a peer.
pub fn with_peer_id(addr: &Multiaddr, peer_id: PeerId) -> Multiaddr {
    if addr
        .iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
    {
        addr.clone()
    } else {
        addr.clone().with(libp2p::multiaddr::Protocol::P2p(peer_id))
    }
}

/// The peer id of a node key: node keys are the same ed25519 keys in libp2p and in
/// `hub_protocol::signed` (namespace delegates, capacity adverts). `None` for bytes that are
/// not a valid ed25519 point.
pub fn peer_id_of_key(key: &[u8; 32]) -> Option<PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(key).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}

/// The ed25519 node key a peer id embeds (ed25519 peer ids inline their public key); `None`
/// for peer ids of other key types.
pub fn key_of_peer_id(peer: &PeerId) -> Option<[u8; 32]> {
    let multihash = multihash_digest(peer)?;
    let key = libp2p::identity::PublicKey::try_decode_protobuf(&multihash).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

/// The digest of an identity-multihash peer id (the protobuf-encoded public key).
fn multihash_digest(peer: &PeerId) -> Option<Vec<u8>> {
    let bytes = peer.to_bytes();
    // Identity multihash: code 0x00, then a varint length (< 128 for ed25519 keys).
    match bytes.as_slice() {
        [0x00, len, digest @ ..] if usize::from(*len) == digest.len() => Some(digest.to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod key_tests {
    #[test]
    fn peer_ids_and_node_keys_convert_both_ways() {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let peer = keypair.public().to_peer_id();
        let key = super::key_of_peer_id(&peer).expect("ed25519 peer id");
        assert_eq!(super::peer_id_of_key(&key), Some(peer));
        assert_eq!(key, keypair.public().try_into_ed25519().unwrap().to_bytes());
    }
}
