//! The swarm task: listeners, bootstrap dials, connection bookkeeping, and the protocols of
//! replication (gossipsub, kademlia, `/hubmesh/git-pack/1`).
//!
//! The task owns the [`Swarm`]. Everyone else talks to it through the [`P2p`] handle, which
//! sends [`Command`]s over a bounded channel, and (the replication task only) reads
//! [`NetEvent`]s from a bounded channel the swarm fills with `try_send`: when the reader
//! falls behind, events are dropped and counted rather than queued without bound or
//! blocking the swarm.
//!
//! Limits: gossip messages up to [`MAX_GOSSIP_MESSAGE`] (gossipsub drops larger frames),
//! strict message signing (every message carries its author's peer id and signature) and
//! application validation (a message is forwarded only after the replication task accepted
//! it); git-pack requests and responses bounded by [`MAX_REQUEST_LEN`] and
//! [`MAX_RESPONSE_LEN`] while they are read, [`MAX_PACK_STREAMS`] concurrent streams per
//! connection and a [`PACK_TIMEOUT`]; `/hubmesh/blocks/1` (LFS manifests and chunks) the same
//! way with the bounds of [`hub_protocol::blocks`] and a [`BLOCKS_TIMEOUT`].
//!
//! The handle also reads what the task records per peer ([`PeerInfo`]: addresses, bytes of
//! chunks received and sent, bad chunks) for the mesh inspection API.

use crate::codec::{BlockCodec, PackCodec};
use futures::StreamExt;
use hub_protocol::blocks::{BLOCKS_PROTOCOL, BlockRequest, BlockResponse};
use hub_protocol::replication::{
    GIT_PACK_PROTOCOL, MAX_GOSSIP_MESSAGE, PackRequest, PackResponse, TOPIC_CAPACITY,
    TOPIC_NAMESPACES, TOPIC_REFS,
};
use hub_protocol::repo::RepoId;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, gossipsub, identify, kad, mdns,
    noise, ping, tcp, yamux,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Commands queued for the swarm task.
pub(crate) const COMMAND_QUEUE: usize = 256;
/// Events queued for the replication task.
pub(crate) const EVENT_QUEUE: usize = 1024;
/// Capacity adverts queued for their consumer (the compute mesh).
const CAPACITY_QUEUE: usize = 256;
/// Concurrent git-pack streams per connection.
pub const MAX_PACK_STREAMS: usize = 8;
pub use crate::codec::{BLOCKS_TIMEOUT, PACK_TIMEOUT};
/// The kademlia protocol name (a private DHT, not the IPFS one).
const KAD_PROTOCOL: &str = "/hubmesh/kad/1";

/// The gossip topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// Signed ref updates ([`TOPIC_REFS`]).
    Refs,
    /// Signed namespace documents ([`TOPIC_NAMESPACES`]).
    Namespaces,
    /// Signed capacity adverts of the compute mesh ([`TOPIC_CAPACITY`]); judged by their
    /// consumer (see [`P2p::take_capacity_adverts`]), not by the replication task.
    Capacity,
}

impl Topic {
    fn ident(self) -> gossipsub::IdentTopic {
        gossipsub::IdentTopic::new(match self {
            Self::Refs => TOPIC_REFS,
            Self::Namespaces => TOPIC_NAMESPACES,
            Self::Capacity => TOPIC_CAPACITY,
        })
    }

    fn from_hash(hash: &gossipsub::TopicHash) -> Option<Self> {
        [Self::Refs, Self::Namespaces, Self::Capacity]
            .into_iter()
            .find(|t| t.ident().hash() == *hash)
    }
}

/// The DHT key under which a node provides a repo (one record per repo, never per chunk).
pub(crate) fn provider_key(repo: &RepoId) -> kad::RecordKey {
    kad::RecordKey::new(&format!("hubmesh/repo/{repo}"))
}

/// How a gossip message was judged (forwarded only if accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Invalid (bad signature, not a delegate, malformed): the sender is penalised.
    Reject,
    /// Valid but useless (a replay, an update we cannot place yet): dropped quietly.
    Ignore,
}

pub(crate) enum Command {
    Publish {
        topic: Topic,
        data: Vec<u8>,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    Validate {
        id: gossipsub::MessageId,
        source: PeerId,
        verdict: Verdict,
    },
    Provide(RepoId),
    /// Stop announcing this node as a provider of a repo (it was withdrawn).
    StopProviding(RepoId),
    Providers {
        repo: RepoId,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    FetchPack {
        peer: PeerId,
        request: PackRequest,
        reply: oneshot::Sender<Result<PackResponse, String>>,
    },
    Respond {
        channel: ResponseChannel<PackResponse>,
        response: PackResponse,
    },
    FetchBlocks {
        peer: PeerId,
        request: BlockRequest,
        reply: oneshot::Sender<Result<BlockResponse, String>>,
    },
    RespondBlocks {
        channel: ResponseChannel<BlockResponse>,
        response: BlockResponse,
    },
}

/// What the swarm hands to the replication task.
#[derive(Debug)]
pub(crate) enum NetEvent {
    Gossip {
        topic: Topic,
        id: gossipsub::MessageId,
        /// The peer that forwarded it.
        propagation_source: PeerId,
        /// The peer that signed (published) it.
        author: Option<PeerId>,
        data: Vec<u8>,
    },
    /// A peer subscribed to one of our topics: a chance to catch it up.
    Subscribed { peer: PeerId, topic: Topic },
    PackRequest {
        peer: PeerId,
        request: PackRequest,
        channel: ResponseChannel<PackResponse>,
    },
    BlockRequest {
        peer: PeerId,
        request: BlockRequest,
        channel: ResponseChannel<BlockResponse>,
    },
}

/// A gossip message on a topic judged outside this crate (capacity adverts). Its consumer
/// must report a [`Verdict`] with [`P2p::judge`]: gossipsub forwards it only once accepted.
#[derive(Debug)]
pub struct GossipMessage {
    id: gossipsub::MessageId,
    /// The peer that forwarded it.
    pub source: PeerId,
    /// The peer that signed (published) it: gossipsub checked its signature.
    pub author: Option<PeerId>,
    pub data: Vec<u8>,
}

/// The identify protocol name; peers of another network are told apart by it.
const PROTOCOL_VERSION: &str = "/hubmesh/0.1.0";

/// How the swarm listens and whom it joins.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    /// Addresses to listen on; port 0 picks a free port.
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start-up.
    pub bootstrap: Vec<Multiaddr>,
    /// Most established connections in total.
    pub max_connections: u32,
    /// Most established connections with any one peer.
    pub max_connections_per_peer: u32,
    /// Most incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// How long `spawn` waits for every listener to report an address.
    pub listen_timeout: Duration,
    /// Discover peers on the local network with mDNS (off by default: it announces the node
    /// to everyone on the link).
    pub mdns: bool,
    /// Run the blob data plane (an iroh endpoint next to the swarm, ADR 0005). Without it,
    /// chunks travel over `/hubmesh/blocks/1`.
    pub blobs: bool,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("static multiaddr")],
            bootstrap: Vec::new(),
            max_connections: 256,
            max_connections_per_peer: 2,
            max_pending_incoming: 64,
            listen_timeout: Duration::from_secs(10),
            mdns: false,
            blobs: true,
        }
    }
}

/// Why the swarm could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum P2pError {
    #[error("set up the transports")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("listen on {addr}")]
    Listen {
        addr: Multiaddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no listen address reported for {addr} within {timeout:?}")]
    ListenTimeout { addr: Multiaddr, timeout: Duration },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    pack: request_response::Behaviour<PackCodec>,
    blocks: request_response::Behaviour<BlockCodec>,
    /// Protocols that stream both ways (`/hubmesh/infer/1`), driven through [`P2p::streams`].
    stream: libp2p_stream::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    connected_peers: AtomicU64,
    /// Events dropped because the replication task's queue was full.
    pub(crate) events_dropped: AtomicU64,
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
}

/// What this node knows of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// Addresses the peer was reached at or announced (identify), newest last, at most 8.
    pub addrs: Vec<Multiaddr>,
    pub connected: bool,
    /// Chunk bytes received from / sent to the peer over `/hubmesh/blocks/1`.
    pub chunk_bytes_received: u64,
    pub chunk_bytes_sent: u64,
    /// Chunks or manifests from the peer that failed verification.
    pub bad_chunks: u64,
    /// The last round-trip time `ping` measured.
    pub rtt: Option<Duration>,
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

/// Most repos whose state is remembered.
const MAX_REPO_STATES: usize = 65_536;

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

    fn get(&self, repo: &RepoId) -> Option<RepoState> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(repo).cloned()
    }
}

/// Most peers remembered (connected ones are always kept).
const MAX_PEERS: usize = 1024;
/// Most addresses remembered per peer.
const MAX_PEER_ADDRS: usize = 8;

/// Per-peer bookkeeping shared by the swarm task (connections) and the replication task
/// (bytes, bad chunks).
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

    fn add_addr(&self, peer: PeerId, addr: Multiaddr) {
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

    fn snapshot(&self) -> Vec<(PeerId, PeerInfo)> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(id, p)| (*id, p.clone())).collect()
    }
}

/// A handle on the running swarm. Cheap to clone.
#[derive(Clone)]
pub struct P2p {
    peer_id: PeerId,
    listen_addrs: Arc<Vec<Multiaddr>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) repo_states: Arc<RepoStates>,
    commands: mpsc::Sender<Command>,
    streams: libp2p_stream::Control,
    capacity: Arc<Mutex<Option<mpsc::Receiver<GossipMessage>>>>,
    /// The blob data plane (`None` when [`P2pConfig::blobs`] is off).
    pub(crate) blobs: Option<Arc<crate::blobs::Blobs>>,
}

impl std::fmt::Debug for P2p {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2p")
            .field("peer_id", &self.peer_id)
            .field("listen_addrs", &self.listen_addrs)
            .finish_non_exhaustive()
    }
}

impl P2p {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses the swarm listened on once it started (without `/p2p/…`).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Peers with at least one established connection now.
    pub fn connected_peers(&self) -> u64 {
        self.counters.connected_peers.load(Ordering::Relaxed)
    }

    /// Gossip messages accepted so far (namespace documents and ref updates).
    pub fn gossip_accepted(&self) -> u64 {
        self.counters.gossip_accepted.load(Ordering::Relaxed)
    }

    /// Gossip messages refused so far (rejected as invalid, or ignored as replays).
    pub fn gossip_refused(&self) -> u64 {
        self.counters.gossip_refused.load(Ordering::Relaxed)
    }

    /// Repos brought up to date from a peer's pack so far.
    pub fn repos_replicated(&self) -> u64 {
        self.counters.repos_replicated.load(Ordering::Relaxed)
    }

    /// Chunk bytes received from peers so far (verified or not).
    pub fn chunk_bytes_received(&self) -> u64 {
        self.counters.chunk_bytes_received.load(Ordering::Relaxed)
    }

    /// Chunk bytes served to peers so far.
    pub fn chunk_bytes_sent(&self) -> u64 {
        self.counters.chunk_bytes_sent.load(Ordering::Relaxed)
    }

    /// Chunk bytes received over the blob endpoint (iroh) so far: part of
    /// [`P2p::chunk_bytes_received`].
    pub fn blob_bytes_received(&self) -> u64 {
        self.counters.blob_bytes_received.load(Ordering::Relaxed)
    }

    /// Chunk bytes served over the blob endpoint so far: part of [`P2p::chunk_bytes_sent`].
    pub fn blob_bytes_sent(&self) -> u64 {
        self.counters.blob_bytes_sent.load(Ordering::Relaxed)
    }

    /// Git pack bytes fetched as blobs over the blob endpoint so far.
    pub fn pack_blob_bytes_received(&self) -> u64 {
        self.counters
            .pack_blob_bytes_received
            .load(Ordering::Relaxed)
    }

    /// Namespace documents refused so far because they would give an account name of this
    /// node to other nodes (ADR 0006).
    pub fn foreign_claims_refused(&self) -> u64 {
        self.counters.foreign_claims_refused.load(Ordering::Relaxed)
    }

    /// Ref updates refused so far because their repo is in an account name of this node and
    /// they come from other nodes (ADR 0006).
    pub fn foreign_updates_refused(&self) -> u64 {
        self.counters
            .foreign_updates_refused
            .load(Ordering::Relaxed)
    }

    /// Where this node's blob endpoint (iroh) listens; empty when it runs without one. Its
    /// endpoint id is the node key, the same as the peer id's.
    pub fn blob_addrs(&self) -> Vec<std::net::SocketAddr> {
        let Some(blobs) = &self.blobs else {
            return Vec::new();
        };
        blobs.local_addrs(&ip_addrs(&self.listen_addrs))
    }

    /// Where `peer`'s blob endpoint listens: remembered, or asked over `/hubmesh/blocks/1`.
    /// Empty for a peer without one, or one that could not be asked. Only an answer is
    /// remembered (until the peer disconnects or its endpoint fails): a peer that was down
    /// when asked is asked again next time, not taken for one without an endpoint — else a
    /// publisher that restarts would have its packs refused for good.
    pub(crate) async fn blob_addrs_of(
        &self,
        blobs: &crate::blobs::Blobs,
        peer: PeerId,
    ) -> Vec<std::net::SocketAddr> {
        if let Some(addrs) = blobs.addrs_of(&peer) {
            return addrs;
        }
        match self.fetch_blocks(peer, BlockRequest::Blobs).await {
            Ok(BlockResponse::Blobs(addrs)) => {
                blobs.learn(peer, addrs.clone());
                addrs
            }
            Ok(_) => {
                // It answered, without addresses: a peer running without the blob plane.
                blobs.learn(peer, Vec::new());
                Vec::new()
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "blob endpoint address not learned; asking again later");
                Vec::new()
            }
        }
    }

    /// Chunks or manifests from peers that failed verification so far.
    pub fn chunks_rejected(&self) -> u64 {
        self.counters.chunks_rejected.load(Ordering::Relaxed)
    }

    /// LFS objects fetched from peers, verified and imported so far.
    pub fn lfs_objects_fetched(&self) -> u64 {
        self.counters.lfs_objects_fetched.load(Ordering::Relaxed)
    }

    /// Every peer this node remembers, connected or not, by peer id.
    pub fn peers(&self) -> Vec<(PeerId, PeerInfo)> {
        self.peers.snapshot()
    }

    /// What replication knows of `repo` (`None`: nothing yet, or no replication task).
    pub fn repo_state(&self, repo: &RepoId) -> Option<RepoState> {
        self.repo_states.get(repo)
    }

    /// The peers connected now.
    pub fn connected(&self) -> Vec<PeerId> {
        self.peers
            .snapshot()
            .into_iter()
            .filter(|(_, p)| p.connected)
            .map(|(id, _)| id)
            .collect()
    }

    /// Publishes raw bytes on a gossip topic, as they are. Nodes use the replication task to
    /// publish; this exists for tools and tests (a crafted message is judged by every
    /// receiver like any other).
    pub async fn publish(&self, topic: Topic, data: Vec<u8>) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Publish {
            topic,
            data,
            done: Some(done),
        })
        .await?;
        rx.await.map_err(|_| "swarm stopped".to_owned())?
    }

    /// Peers that provide `repo` in the DHT (possibly this node itself).
    pub async fn providers(&self, repo: &RepoId) -> Result<Vec<PeerId>, String> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Providers {
            repo: repo.clone(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| "swarm stopped".to_owned())
    }

    /// Asks `peer` for a pack over `/hubmesh/git-pack/1`.
    pub async fn fetch_pack(
        &self,
        peer: PeerId,
        request: PackRequest,
    ) -> Result<PackResponse, String> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::FetchPack {
            peer,
            request,
            reply,
        })
        .await?;
        rx.await.map_err(|_| "swarm stopped".to_owned())?
    }

    /// Asks `peer` for a manifest or chunks over `/hubmesh/blocks/1`. The answer is not
    /// verified here (see [`hub_protocol::blocks::check_manifest`] and `check_chunks`).
    pub async fn fetch_blocks(
        &self,
        peer: PeerId,
        request: BlockRequest,
    ) -> Result<BlockResponse, String> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::FetchBlocks {
            peer,
            request,
            reply,
        })
        .await?;
        rx.await.map_err(|_| "swarm stopped".to_owned())?
    }

    /// Opens and accepts raw streams of a protocol (`/hubmesh/infer/1`). Opening dials the
    /// peer when it is not connected. The control has one guaranteed queue slot per clone, so
    /// keep one per concurrent opener rather than cloning for every stream.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// The capacity adverts peers gossip, for their one consumer (`None` once taken). Each
    /// must be judged with [`P2p::judge`]. When the consumer falls behind, adverts are dropped
    /// (they are periodic: the next one replaces it).
    pub fn take_capacity_adverts(&self) -> Option<mpsc::Receiver<GossipMessage>> {
        self.capacity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Reports how a [`GossipMessage`] was judged: only accepted ones are forwarded, and
    /// the sender of a rejected one is penalised.
    pub fn judge(&self, message: &GossipMessage, verdict: Verdict) {
        self.try_send(Command::Validate {
            id: message.id.clone(),
            source: message.source,
            verdict,
        });
    }

    pub(crate) async fn send(&self, command: Command) -> Result<(), String> {
        self.commands
            .send(command)
            .await
            .map_err(|_| "swarm stopped".to_owned())
    }

    /// Queues a command without waiting; `false` when the queue is full or the swarm stopped.
    pub(crate) fn try_send(&self, command: Command) -> bool {
        self.commands.try_send(command).is_ok()
    }
}

/// Builds the swarm, binds every listen address, dials the bootstrap peers and spawns the task
/// that drives the swarm until `cancel` fires.
pub async fn spawn(
    key: Keypair,
    config: P2pConfig,
    cancel: CancellationToken,
) -> Result<(P2p, JoinHandle<()>), P2pError> {
    let (p2p, _events, task) = spawn_with_events(key, config, cancel).await?;
    Ok((p2p, task))
}

/// [`spawn`], also returning the events for the replication task.
pub(crate) async fn spawn_with_events(
    key: Keypair,
    config: P2pConfig,
    cancel: CancellationToken,
) -> Result<(P2p, mpsc::Receiver<NetEvent>, JoinHandle<()>), P2pError> {
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(config.max_pending_incoming));
    let key_copy = key.clone();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| P2pError::Transport(e.into()))?
        .with_quic()
        .with_behaviour(|key| {
            let gossip_config = gossipsub::ConfigBuilder::default()
                .max_transmit_size(MAX_GOSSIP_MESSAGE)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .heartbeat_interval(Duration::from_secs(1))
                .build()?;
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )?;
            let peer_id = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad::Config::new(StreamProtocol::new(KAD_PROTOCOL)),
            );
            // Answer DHT queries even before an external address is confirmed (loopback,
            // private networks).
            kad.set_mode(Some(kad::Mode::Server));
            let pack = request_response::Behaviour::with_codec(
                PackCodec::default(),
                [(
                    StreamProtocol::new(GIT_PACK_PROTOCOL),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(PACK_TIMEOUT)
                    .with_max_concurrent_streams(MAX_PACK_STREAMS),
            );
            let blocks = request_response::Behaviour::with_codec(
                BlockCodec::default(),
                [(StreamProtocol::new(BLOCKS_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(BLOCKS_TIMEOUT)
                    .with_max_concurrent_streams(MAX_PACK_STREAMS),
            );
            let mdns = if config.mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                stream: libp2p_stream::Behaviour::new(),
                mdns: mdns.into(),
                blocks,
                limits: connection_limits::Behaviour::new(limits),
                identify: identify::Behaviour::new(identify::Config::new(
                    PROTOCOL_VERSION.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                gossipsub,
                kad,
                pack,
            })
        })
        .map_err(|e| P2pError::Transport(e.into()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    let peer_id = *swarm.local_peer_id();
    for topic in [Topic::Refs, Topic::Namespaces, Topic::Capacity] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic.ident())
            .map_err(|e| P2pError::Transport(e.to_string().into()))?;
    }

    let mut waiting: Vec<(ListenerId, Multiaddr)> = Vec::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| P2pError::Listen {
                addr: addr.clone(),
                source: e.into(),
            })?;
        waiting.push((id, addr.clone()));
    }
    let deadline = tokio::time::Instant::now() + config.listen_timeout;
    while let Some((_, first)) = waiting.first() {
        let first = first.clone();
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| P2pError::ListenTimeout {
                addr: first,
                timeout: config.listen_timeout,
            })?;
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::debug!(%address, "p2p listening");
                waiting.retain(|(id, _)| *id != listener_id);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some((_, addr)) = waiting.iter().find(|(id, _)| *id == listener_id) {
                    let source = match reason {
                        Err(e) => e.into(),
                        Ok(()) => "listener closed".into(),
                    };
                    return Err(P2pError::Listen {
                        addr: addr.clone(),
                        source,
                    });
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some((_, addr)) = waiting.iter().find(|(id, _)| *id == listener_id) {
                    return Err(P2pError::Listen {
                        addr: addr.clone(),
                        source: error.into(),
                    });
                }
            }
            other => tracing::trace!(?other, "p2p event during start-up"),
        }
    }
    let listen_addrs: Vec<Multiaddr> = swarm.listeners().cloned().collect();
    let blobs = if config.blobs {
        let secret = key_secret(&key_copy).ok_or_else(|| {
            P2pError::Transport("the blob endpoint needs an ed25519 node key".into())
        })?;
        let ip = blob_ip(&config.listen);
        let blobs = crate::blobs::Blobs::bind(secret, ip)
            .await
            .map_err(|e| P2pError::Transport(e.into()))?;
        let blobs = Arc::new(blobs);
        let closing = blobs.clone();
        let cancelled = cancel.clone();
        tokio::spawn(async move {
            cancelled.cancelled().await;
            closing.shutdown().await;
        });
        Some(blobs)
    } else {
        None
    };

    for addr in &config.bootstrap {
        if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        match swarm.dial(addr.clone()) {
            Ok(()) => tracing::info!(%addr, "dialling bootstrap peer"),
            Err(error) => tracing::warn!(%addr, %error, "cannot dial bootstrap peer"),
        }
    }

    let counters = Arc::new(Counters::default());
    let peers = Arc::new(Peers::default());
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    let (capacity_tx, capacity_rx) = mpsc::channel(CAPACITY_QUEUE);
    let handle = P2p {
        streams: swarm.behaviour().stream.new_control(),
        capacity: Arc::new(Mutex::new(Some(capacity_rx))),
        peer_id,
        listen_addrs: Arc::new(listen_addrs),
        counters: counters.clone(),
        peers: peers.clone(),
        repo_states: Arc::default(),
        commands,
        blobs: blobs.clone(),
    };
    let driver = Driver {
        swarm,
        counters,
        peers,
        block_fetches: HashMap::new(),
        events: event_tx,
        capacity: capacity_tx,
        fetches: HashMap::new(),
        provider_queries: HashMap::new(),
        blobs,
    };
    let task = tokio::spawn(driver.run(command_rx, cancel));
    Ok((handle, event_rx, task))
}

/// The 32-byte ed25519 secret of a node key (`None` for other key types).
fn key_secret(key: &Keypair) -> Option<[u8; 32]> {
    let ed = key.clone().try_into_ed25519().ok()?;
    ed.secret().as_ref().try_into().ok()
}

/// The IP addresses in `addrs`, in order.
fn ip_addrs(addrs: &[Multiaddr]) -> Vec<std::net::IpAddr> {
    use libp2p::multiaddr::Protocol;
    addrs
        .iter()
        .flat_map(|a| a.iter())
        .filter_map(|p| match p {
            Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        })
        .collect()
}

/// Where the blob endpoint binds: the address of the first IP listen address (so a node
/// listening on loopback only stays on loopback), else every IPv4 interface.
fn blob_ip(listen: &[Multiaddr]) -> std::net::IpAddr {
    ip_addrs(listen)
        .first()
        .copied()
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

type FetchReply = oneshot::Sender<Result<PackResponse, String>>;

type BlockReply = oneshot::Sender<Result<BlockResponse, String>>;

struct Driver {
    swarm: Swarm<Behaviour>,
    counters: Arc<Counters>,
    peers: Arc<Peers>,
    block_fetches: HashMap<OutboundRequestId, BlockReply>,
    events: mpsc::Sender<NetEvent>,
    capacity: mpsc::Sender<GossipMessage>,
    fetches: HashMap<OutboundRequestId, FetchReply>,
    provider_queries: HashMap<kad::QueryId, (oneshot::Sender<Vec<PeerId>>, HashSet<PeerId>)>,
    /// The blob endpoint, told when a peer goes away (its address may change).
    blobs: Option<Arc<crate::blobs::Blobs>>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let mut connected: HashSet<PeerId> = HashSet::new();
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => break,
                // Disabled once every handle is gone; the swarm keeps serving peers.
                Some(command) = commands.recv() => {
                    self.command(command);
                    continue;
                }
                event = self.swarm.select_next_some() => event,
            };
            self.event(event, &mut connected);
            self.counters
                .connected_peers
                .store(connected.len() as u64, Ordering::Relaxed);
        }
        tracing::debug!("p2p swarm stopped");
    }

    fn emit(&self, event: NetEvent) {
        if self.events.try_send(event).is_err() && !self.events.is_closed() {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("replication queue full; dropped a network event");
        }
    }

    fn command(&mut self, command: Command) {
        let behaviour = self.swarm.behaviour_mut();
        match command {
            Command::Publish { topic, data, done } => {
                let result = behaviour
                    .gossipsub
                    .publish(topic.ident(), data)
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                if let Some(done) = done {
                    let _ = done.send(result);
                } else if let Err(error) = result {
                    tracing::debug!(?topic, %error, "gossip not published");
                }
            }
            Command::Validate {
                id,
                source,
                verdict,
            } => {
                let acceptance = match verdict {
                    Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                    Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                    Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                };
                behaviour
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Provide(repo) => {
                if let Err(error) = behaviour.kad.start_providing(provider_key(&repo)) {
                    tracing::warn!(%repo, %error, "cannot provide repo in the DHT");
                }
            }
            Command::StopProviding(repo) => behaviour.kad.stop_providing(&provider_key(&repo)),
            Command::Providers { repo, reply } => {
                let id = behaviour.kad.get_providers(provider_key(&repo));
                self.provider_queries.insert(id, (reply, HashSet::new()));
            }
            Command::FetchPack {
                peer,
                request,
                reply,
            } => {
                let id = behaviour.pack.send_request(&peer, request);
                self.fetches.insert(id, reply);
            }
            Command::Respond { channel, response } => {
                if behaviour.pack.send_response(channel, response).is_err() {
                    tracing::debug!("pack requester went away before the response");
                }
            }
            Command::FetchBlocks {
                peer,
                request,
                reply,
            } => {
                let id = behaviour.blocks.send_request(&peer, request);
                self.block_fetches.insert(id, reply);
            }
            Command::RespondBlocks { channel, response } => {
                if behaviour.blocks.send_response(channel, response).is_err() {
                    tracing::debug!("block requester went away before the response");
                }
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>, connected: &mut HashSet<PeerId>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                self.peers.update(peer_id, |p| p.connected = true);
                if endpoint.is_dialer() {
                    self.peers.add_addr(peer_id, addr.clone());
                }
                if connected.insert(peer_id) {
                    tracing::info!(peer = %peer_id, %addr, "peer connected");
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } if num_established == 0 && connected.remove(&peer_id) => {
                self.peers.update(peer_id, |p| p.connected = false);
                if let Some(blobs) = &self.blobs {
                    // Asked again on reconnection: a restarted peer listens elsewhere.
                    blobs.forget(&peer_id);
                }
                tracing::info!(peer = %peer_id, cause = ?cause, "peer disconnected");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::warn!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "p2p listening");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                tracing::debug!(peer = %peer_id, agent = %info.agent_version, protocol = %info.protocol_version, "identified peer");
                if info.protocol_version == PROTOCOL_VERSION {
                    for addr in info.listen_addrs {
                        self.peers.add_addr(peer_id, addr.clone());
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => self.peers.update(peer, |p| p.rtt = Some(rtt)),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => self.gossip(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Pack(event)) => self.pack(event),
            SwarmEvent::Behaviour(BehaviourEvent::Blocks(event)) => self.blocks(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if peer == *self.swarm.local_peer_id() {
                        continue;
                    }
                    tracing::info!(%peer, %addr, "peer discovered with mDNS");
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    self.peers.add_addr(peer, addr.clone());
                    if !self.swarm.is_connected(&peer)
                        && let Err(error) =
                            self.swarm.dial(addr.with_p2p(peer).unwrap_or_else(|a| a))
                    {
                        tracing::debug!(%peer, %error, "cannot dial an mDNS peer");
                    }
                }
            }
            _ => {}
        }
    }

    fn gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let Some(topic) = Topic::from_hash(&message.topic) else {
                    return;
                };
                if topic == Topic::Capacity {
                    let advert = GossipMessage {
                        id: message_id,
                        source: propagation_source,
                        author: message.source,
                        data: message.data,
                    };
                    // No consumer, or one that fell behind: dropped, never held unjudged.
                    if let Err(error) = self.capacity.try_send(advert) {
                        let advert = error.into_inner();
                        self.swarm
                            .behaviour_mut()
                            .gossipsub
                            .report_message_validation_result(
                                &advert.id,
                                &advert.source,
                                gossipsub::MessageAcceptance::Ignore,
                            );
                    }
                    return;
                }
                self.emit(NetEvent::Gossip {
                    topic,
                    id: message_id,
                    propagation_source,
                    author: message.source,
                    data: message.data,
                });
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                if let Some(topic) = Topic::from_hash(&topic) {
                    self.emit(NetEvent::Subscribed {
                        peer: peer_id,
                        topic,
                    });
                }
            }
            _ => {}
        }
    }

    fn kad(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = event
        else {
            return;
        };
        let kad::QueryResult::GetProviders(result) = result else {
            return;
        };
        if let Some((_, found)) = self.provider_queries.get_mut(&id)
            && let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result
        {
            found.extend(providers);
        }
        if step.last
            && let Some((reply, found)) = self.provider_queries.remove(&id)
        {
            let _ = reply.send(found.into_iter().collect());
        }
    }

    fn blocks(&mut self, event: request_response::Event<BlockRequest, BlockResponse>) {
        if let Some((peer, request, channel)) =
            request_response_event(event, &mut self.block_fetches, "block")
        {
            self.emit(NetEvent::BlockRequest {
                peer,
                request,
                channel,
            });
        }
    }

    fn pack(&mut self, event: request_response::Event<PackRequest, PackResponse>) {
        if let Some((peer, request, channel)) =
            request_response_event(event, &mut self.fetches, "pack")
        {
            self.emit(NetEvent::PackRequest {
                peer,
                request,
                channel,
            });
        }
    }
}

/// One request-response event of either of our protocols: an incoming request is returned for
/// the replication task; the outcome of one of our own requests goes to its waiter in
/// `pending`; failures are logged with `what` ("pack", "block").
fn request_response_event<Req, Resp>(
    event: request_response::Event<Req, Resp>,
    pending: &mut HashMap<OutboundRequestId, oneshot::Sender<Result<Resp, String>>>,
    what: &str,
) -> Option<(PeerId, Req, ResponseChannel<Resp>)> {
    match event {
        request_response::Event::Message {
            peer,
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            ..
        } => return Some((peer, request, channel)),
        request_response::Event::Message {
            message:
                request_response::Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some(reply) = pending.remove(&request_id) {
                let _ = reply.send(Ok(response));
            }
        }
        request_response::Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            tracing::debug!(%peer, %error, "{what} request failed");
            if let Some(reply) = pending.remove(&request_id) {
                let _ = reply.send(Err(error.to_string()));
            }
        }
        request_response::Event::InboundFailure { peer, error, .. } => {
            tracing::debug!(%peer, %error, "serving a {what} request failed");
        }
        request_response::Event::ResponseSent { .. } => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> P2pConfig {
        P2pConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..P2pConfig::default()
        }
    }

    #[tokio::test]
    async fn two_swarms_connect_through_bootstrap() {
        let cancel = CancellationToken::new();
        let (a, ta) = spawn(Keypair::generate_ed25519(), loopback(), cancel.clone())
            .await
            .unwrap();
        assert_eq!(a.listen_addrs().len(), 1);
        let boot = crate::with_peer_id(&a.listen_addrs()[0], a.peer_id());
        let (b, tb) = spawn(
            Keypair::generate_ed25519(),
            P2pConfig {
                bootstrap: vec![boot],
                ..loopback()
            },
            cancel.clone(),
        )
        .await
        .unwrap();
        connected(&a, &b, "tcp").await;
        cancel.cancel();
        ta.await.unwrap();
        tb.await.unwrap();
    }

    async fn connected(a: &P2p, b: &P2p, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while a.connected_peers() == 0 || b.connected_peers() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: never connected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn swarms_connect_over_quic() {
        let cancel = CancellationToken::new();
        let quic = |bootstrap| P2pConfig {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            bootstrap,
            ..P2pConfig::default()
        };
        let (a, ta) = spawn(Keypair::generate_ed25519(), quic(vec![]), cancel.clone())
            .await
            .unwrap();
        let addr = a.listen_addrs()[0].clone();
        assert!(addr.to_string().contains("/quic-v1"), "{addr}");
        let boot = crate::with_peer_id(&addr, a.peer_id());
        let (b, tb) = spawn(
            Keypair::generate_ed25519(),
            quic(vec![boot]),
            cancel.clone(),
        )
        .await
        .unwrap();
        connected(&a, &b, "quic").await;
        // A raw stream protocol works over it too.
        use futures::{AsyncReadExt, AsyncWriteExt};
        let protocol = StreamProtocol::new("/hubmesh/test-echo/1");
        let mut incoming = a.streams().accept(protocol.clone()).unwrap();
        tokio::spawn(async move {
            while let Some((_, mut stream)) = incoming.next().await {
                let mut buf = [0u8; 5];
                stream.read_exact(&mut buf).await.unwrap();
                stream.write_all(&buf).await.unwrap();
                stream.close().await.unwrap();
            }
        });
        let mut stream = b
            .streams()
            .open_stream(a.peer_id(), protocol)
            .await
            .unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello");
        cancel.cancel();
        ta.await.unwrap();
        tb.await.unwrap();
    }

    #[tokio::test]
    async fn unbindable_address_is_a_clear_error() {
        let config = P2pConfig {
            listen: vec!["/ip4/203.0.113.1/tcp/0".parse().unwrap()],
            listen_timeout: Duration::from_secs(5),
            ..P2pConfig::default()
        };
        let err = spawn(
            Keypair::generate_ed25519(),
            config,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("203.0.113.1"), "{err}");
    }
}
