//! hubmesh's peer-to-peer layer.
//!
//! Place in the graph: `… ← {auth, search, infer} ← p2p ← compute/spaces/mirror ← gateway ←
//! node`. Today it runs the libp2p swarm that gives a node its network identity and
//! connectivity: TCP with noise and yamux, `identify` and `ping`, hard connection limits, and
//! dialling the `--bootstrap` peers; and git-metadata replication on top of it: gossipsub for
//! signed ref updates and namespace documents, kademlia provider records per repo, and the
//! `/hubmesh/git-pack/1` request-response protocol for packs of the difference, and
//! `/hubmesh/blocks/1` for LFS content verified chunk by chunk (see [`spawn_replicating`] and
//! the `replicate` and `lfs` modules). The iroh-blobs data plane comes later.
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

mod codec;
mod lfs;
mod replicate;
mod schedule;
mod state;
mod swarm;

pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId};
pub use replicate::{OnReplicated, Replication, ReplicationError, spawn_replicating};
pub use state::{RefStore, RefStoreError};
pub use swarm::{
    BLOCKS_TIMEOUT, MAX_PACK_STREAMS, P2p, P2pConfig, P2pError, PACK_TIMEOUT, PeerInfo, RepoState,
    Topic, spawn,
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
