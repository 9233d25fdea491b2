//! hubmesh's transport: the libp2p swarm and the iroh blob endpoint.
//!
//! Place in the graph: `protocol ← net ← mesh ← gateway ← node` (the gateway and the node also
//! use it directly: streams, peer ids, the handle). It owns the node's network identity and
//! connectivity: TCP and QUIC with noise and yamux, `identify` and `ping` (round-trip times for
//! routing), hard connection limits, bootstrap dials, opt-in mDNS; and the transport of the
//! mesh's protocols: gossipsub topics ([`Topic`]: signed refs, namespace documents, capacity
//! adverts; strict signing, application validation), kademlia provider records, the
//! request-response protocols `/hubmesh/git-pack/1` and `/hubmesh/blocks/1` (codecs that read
//! with a hard byte bound before decoding), raw streams ([`P2p::streams`]) and the
//! `/hubmesh/infer/1` frames read and written on them ([`read_frame`], [`write_frame`]), and
//! the blob data plane ([`Blobs`], ADR 0005: iroh-blobs' protocol over an iroh endpoint with
//! the node key, every 16 KiB group verified).
//!
//! It knows no replication. What a message or request means, and what the blob endpoint
//! serves, are decided by their owners, which register on the [`Bound`] swarm before it runs
//! (the shape of iroh's `Router::builder(endpoint).accept(alpn, handler)`):
//! [`Bound::inbound`] takes gossip on the refs and namespaces topics, subscriptions, and
//! pack and block requests (hub-mesh's replication task); [`Bound::serve_blobs`] sets the
//! [`BlobSource`] the provider answers from; the compute mesh takes capacity adverts with
//! [`P2p::take_capacity_adverts`] and opens streams with [`P2p::streams`]. The handle's
//! errors are typed ([`NetError`], [`P2pError`], [`GetError`]).
//!
//! Must not depend on `hub-store`, `hub-repo`, `hub-core`, `hub-auth`, the gateway or axum:
//! it moves bytes and checks them against hashes it is given (`hub-protocol`'s chunk ids and
//! manifest ids); what is stored where, and who may read it, is its callers' business. Module
//! dependencies point one way: `blobs` uses `peers` and `codec`, `swarm` uses those three,
//! `frames` and `shard` (the blocking halves of `/hubmesh/shard/1` streams) none (`scripts/module-cycles` checks it).
//!
//! Who spawns whom: the node (through `hub_mesh::spawn_replicating`, or [`spawn`] without
//! replication) calls [`bind`], which binds every listen address, waits until each listener
//! reports an address, binds the blob endpoint and dials the bootstrap peers; [`Bound::spawn`]
//! then moves the swarm into one task that owns it, and the blob endpoint's router into
//! another. Both stop when the node's [`CancellationToken`] fires. The [`P2p`] handle is cheap
//! to clone, sends the swarm task commands over a bounded channel and reads shared state; it
//! never blocks on the swarm task.
//!
//! ```no_run
//! # async fn run() -> Result<(), hub_net::P2pError> {
//! use hub_net::{Keypair, P2pConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let cancel = CancellationToken::new();
//! let config = P2pConfig {
//!     listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
//!     ..P2pConfig::default()
//! };
//! let (p2p, task) = hub_net::spawn(Keypair::generate_ed25519(), config, cancel.clone()).await?;
//! println!("{} listens on {:?}", p2p.peer_id(), p2p.listen_addrs());
//! cancel.cancel();
//! task.await.ok();
//! # Ok(()) }
//! ```

mod blobs;
mod codec;
mod frames;
mod peers;
pub mod shard;
mod swarm;

pub use blobs::{Admission, BindError, BlobSource, Blobs, GetError, Place, ReadError};
pub use frames::{FrameError, read_frame, write_frame};
pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
pub use peers::PeerInfo;
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
