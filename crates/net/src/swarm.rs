//! The swarm task: listeners, bootstrap dials, connection bookkeeping, and the transport of
//! the mesh's protocols (gossipsub, kademlia, `/hubmesh/git-pack/1`, `/hubmesh/blocks/1`,
//! raw streams). What the messages mean is decided by their owners, not here.
//!
//! Start-up has two stages, as iroh's `Router::builder(endpoint).accept(alpn, handler)`:
//! [`bind`] builds the swarm, binds every listen address and the blob endpoint, and returns
//! a [`Bound`] swarm whose [`P2p`] handle already works (commands queue); the owners of
//! protocols register on it ([`Bound::inbound`] for gossip, subscriptions and requests,
//! [`Bound::serve_blobs`] for the blob provider); [`Bound::spawn`] then moves the swarm into
//! the task that owns it. Nothing is registered or filled in after that.
//!
//! Everyone talks to the task through the [`P2p`] handle, which sends [`Command`]s over a
//! bounded channel, and (the registered consumer only) reads [`NetEvent`]s from a bounded
//! channel the swarm fills with `try_send`: when the reader falls behind, events are dropped
//! and counted rather than queued without bound or blocking the swarm.
//!
//! Limits: gossip messages up to [`MAX_GOSSIP_MESSAGE`] (gossipsub drops larger frames),
//! strict message signing (every message carries its author's peer id and signature) and
//! application validation (a message is forwarded only after the consumer of its topic
//! accepted it); git-pack requests and responses bounded by [`MAX_REQUEST_LEN`] and
//! [`MAX_RESPONSE_LEN`] while they are read, [`MAX_PACK_STREAMS`] concurrent streams per
//! connection and a [`PACK_TIMEOUT`]; `/hubmesh/blocks/1` (LFS manifests and chunks) the same
//! way with the bounds of [`hub_protocol::blocks`] and a [`BLOCKS_TIMEOUT`].
//!
//! The handle also reads what the task records per peer ([`PeerInfo`]: addresses, whether
//! connected, the last round-trip time) for the mesh inspection API and routing.

use crate::blobs::{BlobSource, Blobs};
use crate::codec::{BlockCodec, PackCodec};
use crate::peers::{PeerInfo, Peers};
use futures::StreamExt;
use hub_protocol::blocks::{BLOCKS_PROTOCOL, BlockRequest, BlockResponse};
use hub_protocol::replication::{
    GIT_PACK_PROTOCOL, MAX_GOSSIP_MESSAGE, PackRequest, PackResponse, TOPIC_CAPACITY,
    TOPIC_NAMESPACES, TOPIC_REFS,
};
use hub_protocol::repo::RepoId;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, gossipsub, identify, kad, mdns,
    noise, ping, tcp, yamux,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Commands queued for the swarm task.
pub(crate) const COMMAND_QUEUE: usize = 256;
/// Events queued for their consumer (the replication task).
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
    /// consumer (see [`P2p::take_capacity_adverts`]), not by the one of [`Bound::inbound`].
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

/// Why a request to the swarm failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The swarm task stopped (the node is shutting down).
    #[error("swarm stopped")]
    Stopped,
    /// Gossipsub did not publish the message (no peer subscribed to the topic yet, a
    /// duplicate, too large).
    #[error(transparent)]
    Publish(#[from] gossipsub::PublishError),
    /// A request to a peer failed: dialling, a timeout, the peer closed the stream or does
    /// not speak the protocol.
    #[error(transparent)]
    Request(#[from] request_response::OutboundFailure),
}

pub(crate) enum Command {
    Publish {
        topic: Topic,
        data: Vec<u8>,
        done: Option<oneshot::Sender<Result<(), NetError>>>,
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
        reply: oneshot::Sender<Result<PackResponse, NetError>>,
    },
    Respond {
        channel: ResponseChannel<PackResponse>,
        response: PackResponse,
    },
    FetchBlocks {
        peer: PeerId,
        request: BlockRequest,
        reply: oneshot::Sender<Result<BlockResponse, NetError>>,
    },
    RespondBlocks {
        channel: ResponseChannel<BlockResponse>,
        response: BlockResponse,
    },
}

/// What the swarm hands to the consumer registered with [`Bound::inbound`] (the replication
/// task): gossip on the topics it judges, subscriptions, and requests to answer with
/// [`P2p::respond_pack`] and [`P2p::respond_blocks`]. Not `non_exhaustive`: the consumer
/// handles every event.
#[derive(Debug)]
pub enum NetEvent {
    /// A message on [`Topic::Refs`] or [`Topic::Namespaces`]; its verdict goes back with
    /// [`P2p::validate`] (gossipsub forwards it only once accepted).
    Gossip {
        topic: Topic,
        id: MessageId,
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
    /// A manifest or chunks request (where the blob endpoint listens, `BlockRequest::Blobs`,
    /// is answered by the swarm itself).
    BlockRequest {
        peer: PeerId,
        request: BlockRequest,
        channel: ResponseChannel<BlockResponse>,
    },
}

/// The id gossipsub gives a message, to report its [`Verdict`] with.
pub use libp2p::gossipsub::MessageId;
/// Where the answer to an incoming request goes.
pub use libp2p::request_response::ResponseChannel;

/// A gossip message on a topic judged by the compute mesh (capacity adverts). Its consumer
/// must report a [`Verdict`] with [`P2p::judge`]: gossipsub forwards it only once accepted.
#[derive(Debug)]
pub struct GossipMessage {
    id: MessageId,
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
    #[error("bind the blob endpoint")]
    Blobs(#[source] crate::blobs::BindError),
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
struct Counters {
    connected_peers: AtomicU64,
    /// Events dropped because their consumer's queue was full.
    events_dropped: AtomicU64,
}

/// A handle on the running swarm. Cheap to clone.
#[derive(Clone)]
pub struct P2p {
    peer_id: PeerId,
    listen_addrs: Arc<Vec<Multiaddr>>,
    counters: Arc<Counters>,
    peers: Arc<Peers>,
    commands: mpsc::Sender<Command>,
    streams: libp2p_stream::Control,
    capacity: Arc<Mutex<Option<mpsc::Receiver<GossipMessage>>>>,
    /// The blob data plane (`None` when [`P2pConfig::blobs`] is off), bound before the
    /// handle exists.
    blobs: Option<Arc<Blobs>>,
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

    /// Events dropped so far because their consumer fell behind.
    pub fn events_dropped(&self) -> u64 {
        self.counters.events_dropped.load(Ordering::Relaxed)
    }

    /// Whether `peer` has an established connection now.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.is_connected(peer)
    }

    /// The blob data plane (`None` when [`P2pConfig::blobs`] is off).
    pub fn blobs(&self) -> Option<&Blobs> {
        self.blobs.as_deref()
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
    pub async fn blob_addrs_of(&self, blobs: &Blobs, peer: PeerId) -> Vec<std::net::SocketAddr> {
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

    /// Every peer this node remembers, connected or not, by peer id.
    pub fn peers(&self) -> Vec<(PeerId, PeerInfo)> {
        self.peers.snapshot()
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

    /// Publishes raw bytes on a gossip topic, as they are, and waits for gossipsub's answer
    /// (the capacity advertiser; tools and tests: a crafted message is judged by every
    /// receiver like any other).
    pub async fn publish(&self, topic: Topic, data: Vec<u8>) -> Result<(), NetError> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Publish {
            topic,
            data,
            done: Some(done),
        })
        .await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Queues `data` for publishing on `topic` without waiting; a message gossipsub then
    /// refuses is logged. `false` when the command queue is full or the swarm stopped.
    pub fn try_publish(&self, topic: Topic, data: Vec<u8>) -> bool {
        self.try_send(Command::Publish {
            topic,
            data,
            done: None,
        })
    }

    /// Reports how the gossip message `id`, forwarded by `source`, was judged (a
    /// [`NetEvent::Gossip`]): only accepted ones are forwarded, and the sender of a rejected
    /// one is penalised.
    pub fn validate(&self, id: MessageId, source: PeerId, verdict: Verdict) {
        self.try_send(Command::Validate {
            id,
            source,
            verdict,
        });
    }

    /// Announces this node as a provider of `repo` in the DHT (queued; `false` when the
    /// queue is full or the swarm stopped).
    pub fn provide(&self, repo: RepoId) -> bool {
        self.try_send(Command::Provide(repo))
    }

    /// Stops announcing this node as a provider of `repo` (queued, as [`P2p::provide`]).
    pub fn stop_providing(&self, repo: RepoId) -> bool {
        self.try_send(Command::StopProviding(repo))
    }

    /// Peers that provide `repo` in the DHT (possibly this node itself).
    pub async fn providers(&self, repo: &RepoId) -> Result<Vec<PeerId>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Providers {
            repo: repo.clone(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Asks `peer` for a pack over `/hubmesh/git-pack/1`.
    pub async fn fetch_pack(
        &self,
        peer: PeerId,
        request: PackRequest,
    ) -> Result<PackResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::FetchPack {
            peer,
            request,
            reply,
        })
        .await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Answers a [`NetEvent::PackRequest`]. A requester that went away is logged.
    pub async fn respond_pack(
        &self,
        channel: ResponseChannel<PackResponse>,
        response: PackResponse,
    ) -> Result<(), NetError> {
        self.send(Command::Respond { channel, response }).await
    }

    /// Asks `peer` for a manifest or chunks over `/hubmesh/blocks/1`. The answer is not
    /// verified here (see [`hub_protocol::blocks::check_manifest`] and `check_chunks`).
    pub async fn fetch_blocks(
        &self,
        peer: PeerId,
        request: BlockRequest,
    ) -> Result<BlockResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::FetchBlocks {
            peer,
            request,
            reply,
        })
        .await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Answers a [`NetEvent::BlockRequest`]. A requester that went away is logged.
    pub async fn respond_blocks(
        &self,
        channel: ResponseChannel<BlockResponse>,
        response: BlockResponse,
    ) -> Result<(), NetError> {
        self.send(Command::RespondBlocks { channel, response })
            .await
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

    async fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Queues a command without waiting; `false` when the queue is full or the swarm stopped.
    fn try_send(&self, command: Command) -> bool {
        self.commands.try_send(command).is_ok()
    }
}

/// [`bind`] and [`Bound::spawn`] with no protocol registered: a node that only connects,
/// gossips, streams and fetches (tools, tests, a gateway without replication).
pub async fn spawn(
    key: Keypair,
    config: P2pConfig,
    cancel: CancellationToken,
) -> Result<(P2p, JoinHandle<()>), P2pError> {
    let bound = bind(key, config).await?;
    let p2p = bound.handle().clone();
    Ok((p2p, bound.spawn(cancel)))
}

/// A swarm that listens (every listen address reported, the blob endpoint bound, the
/// bootstrap peers dialled) and is not driven yet. Protocol owners register on it, then
/// [`Bound::spawn`] starts it; its [`P2p`] handle works from the start (commands queue).
pub struct Bound {
    handle: P2p,
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    capacity: mpsc::Sender<GossipMessage>,
    /// The consumer of [`NetEvent`]s, once registered.
    events: Option<mpsc::Sender<NetEvent>>,
    /// What the blob endpoint serves, once registered.
    blob_source: Option<Weak<dyn BlobSource>>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("handle", &self.handle)
            .field("inbound", &self.events.is_some())
            .field("serves_blobs", &self.blob_source.is_some())
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// The handle on this swarm (cheap to clone; commands queue until it is spawned).
    pub fn handle(&self) -> &P2p {
        &self.handle
    }

    /// Registers the consumer of gossip on [`Topic::Refs`] and [`Topic::Namespaces`],
    /// subscriptions, and `/hubmesh/git-pack/1` and `/hubmesh/blocks/1` requests (the
    /// replication task). Without one, gossip is not forwarded and requests fail. A second
    /// call replaces the first consumer.
    pub fn inbound(&mut self) -> mpsc::Receiver<NetEvent> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        self.events = Some(tx);
        rx
    }

    /// Registers what the blob endpoint serves (held weakly: when the source is dropped,
    /// serving stops). Without one, blob requests are refused. Ignored when the node runs
    /// without the blob plane ([`P2pConfig::blobs`]).
    pub fn serve_blobs(&mut self, source: Weak<dyn BlobSource>) {
        self.blob_source = Some(source);
    }

    /// Spawns the task that drives the swarm, and the blob endpoint's router, until `cancel`
    /// fires.
    pub fn spawn(self, cancel: CancellationToken) -> JoinHandle<()> {
        let Self {
            handle,
            swarm,
            commands,
            capacity,
            events,
            blob_source,
        } = self;
        if let Some(blobs) = handle.blobs.clone() {
            let router = blobs.serve(blob_source, handle.peers.clone());
            let cancelled = cancel.clone();
            tokio::spawn(async move {
                cancelled.cancelled().await;
                if let Err(error) = router.shutdown().await {
                    tracing::debug!(%error, "blob router shutdown");
                }
                blobs.shutdown().await;
            });
        }
        let driver = Driver {
            swarm,
            counters: handle.counters.clone(),
            peers: handle.peers.clone(),
            block_fetches: HashMap::new(),
            events,
            capacity,
            fetches: HashMap::new(),
            provider_queries: HashMap::new(),
            blobs: handle.blobs.clone(),
            listen_addrs: handle.listen_addrs.clone(),
        };
        tokio::spawn(driver.run(commands, cancel))
    }
}

/// Builds the swarm, binds every listen address (waiting until each reports an address) and
/// the blob endpoint, and dials the bootstrap peers. Nothing runs until [`Bound::spawn`].
pub async fn bind(key: Keypair, config: P2pConfig) -> Result<Bound, P2pError> {
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
        let blobs = Blobs::bind(secret, ip).await.map_err(P2pError::Blobs)?;
        Some(Arc::new(blobs))
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

    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (capacity_tx, capacity_rx) = mpsc::channel(CAPACITY_QUEUE);
    let handle = P2p {
        streams: swarm.behaviour().stream.new_control(),
        capacity: Arc::new(Mutex::new(Some(capacity_rx))),
        peer_id,
        listen_addrs: Arc::new(listen_addrs),
        counters: Arc::default(),
        peers: Arc::default(),
        commands,
        blobs,
    };
    Ok(Bound {
        handle,
        swarm,
        commands: command_rx,
        capacity: capacity_tx,
        events: None,
        blob_source: None,
    })
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

type FetchReply = oneshot::Sender<Result<PackResponse, NetError>>;

type BlockReply = oneshot::Sender<Result<BlockResponse, NetError>>;

struct Driver {
    swarm: Swarm<Behaviour>,
    counters: Arc<Counters>,
    peers: Arc<Peers>,
    block_fetches: HashMap<OutboundRequestId, BlockReply>,
    /// The registered consumer of [`NetEvent`]s (`None`: nobody; events are dropped).
    events: Option<mpsc::Sender<NetEvent>>,
    capacity: mpsc::Sender<GossipMessage>,
    fetches: HashMap<OutboundRequestId, FetchReply>,
    provider_queries: HashMap<kad::QueryId, (oneshot::Sender<Vec<PeerId>>, HashSet<PeerId>)>,
    /// The blob endpoint, told when a peer goes away (its address may change).
    blobs: Option<Arc<Blobs>>,
    /// The swarm's listen addresses (the blob endpoint's are derived from them).
    listen_addrs: Arc<Vec<Multiaddr>>,
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
        let Some(events) = &self.events else {
            return;
        };
        if events.try_send(event).is_err() && !events.is_closed() {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("inbound queue full; dropped a network event");
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
                    .map_err(NetError::from);
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
            if matches!(request, BlockRequest::Blobs) {
                // The transport's own question (where this node's blob endpoint listens):
                // answered here, whoever consumes the other requests.
                let addrs = self
                    .blobs
                    .as_ref()
                    .map(|b| b.local_addrs(&ip_addrs(&self.listen_addrs)))
                    .unwrap_or_default();
                let response = BlockResponse::Blobs(addrs);
                if self
                    .swarm
                    .behaviour_mut()
                    .blocks
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!(%peer, "block requester went away before the response");
                }
                return;
            }
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
/// the inbound consumer; the outcome of one of our own requests goes to its waiter in
/// `pending`; failures are logged with `what` ("pack", "block").
fn request_response_event<Req, Resp>(
    event: request_response::Event<Req, Resp>,
    pending: &mut HashMap<OutboundRequestId, oneshot::Sender<Result<Resp, NetError>>>,
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
                let _ = reply.send(Err(error.into()));
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

    /// Serves one file of one chunk, from memory.
    struct OneChunk {
        manifest: hub_protocol::manifest::Hash,
        chunk: Vec<u8>,
    }

    impl BlobSource for OneChunk {
        fn admit(self: Arc<Self>, _: PeerId) -> crate::Admission {
            Box::pin(async { Some(Box::new(()) as crate::Place) })
        }

        fn read(
            &self,
            manifest: &hub_protocol::manifest::Hash,
            ids: &[hub_protocol::manifest::Hash],
        ) -> Result<Vec<Vec<u8>>, crate::ReadError> {
            if *manifest != self.manifest {
                return Err("unknown file".into());
            }
            Ok(ids.iter().map(|_| self.chunk.clone()).collect())
        }

        fn served(&self, _: PeerId, _: u64) {}

        fn corrupt(&self) -> Option<usize> {
            None
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_blob_source_registered_before_spawn_serves_peers() {
        use hub_protocol::manifest::{ChunkRef, Hash};
        let cancel = CancellationToken::new();
        // A registers a blob source on its bound swarm; C registers none.
        let mut bound = bind(Keypair::generate_ed25519(), loopback()).await.unwrap();
        let source: Arc<dyn BlobSource> = Arc::new(OneChunk {
            manifest: Hash([7; 32]),
            chunk: b"a chunk of a public file".to_vec(),
        });
        bound.serve_blobs(Arc::downgrade(&source));
        let a = bound.handle().clone();
        let ta = bound.spawn(cancel.clone());
        let (c, tc) = spawn(Keypair::generate_ed25519(), loopback(), cancel.clone())
            .await
            .unwrap();
        let boot = vec![
            crate::with_peer_id(&a.listen_addrs()[0], a.peer_id()),
            crate::with_peer_id(&c.listen_addrs()[0], c.peer_id()),
        ];
        let (b, tb) = spawn(
            Keypair::generate_ed25519(),
            P2pConfig {
                bootstrap: boot,
                ..loopback()
            },
            cancel.clone(),
        )
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !(b.is_connected(&a.peer_id()) && b.is_connected(&c.peer_id())) {
            assert!(tokio::time::Instant::now() < deadline, "never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // B learns where A's blob endpoint listens from A's swarm itself (no consumer of
        // A's other requests is registered) and fetches the chunk, verified.
        let blobs = b.blobs().unwrap();
        let addrs = b.blob_addrs_of(blobs, a.peer_id()).await;
        assert_eq!(addrs, a.blob_addrs());
        let chunk = b"a chunk of a public file".to_vec();
        let wanted = [ChunkRef {
            id: Hash::of(&chunk),
            len: chunk.len() as u32,
        }];
        let got = blobs
            .get(a.peer_id(), &addrs, &Hash([7; 32]), &wanted)
            .await
            .unwrap();
        assert_eq!(got, vec![chunk]);
        // C serves nothing: its endpoint refuses.
        let addrs = b.blob_addrs_of(blobs, c.peer_id()).await;
        assert!(!addrs.is_empty());
        assert!(matches!(
            blobs
                .get(c.peer_id(), &addrs, &Hash([7; 32]), &wanted)
                .await,
            Err(crate::GetError::Failed(_))
        ));
        cancel.cancel();
        for task in [ta, tb, tc] {
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn requests_fail_with_typed_errors() {
        let cancel = CancellationToken::new();
        let (p2p, task) = spawn(Keypair::generate_ed25519(), loopback(), cancel.clone())
            .await
            .unwrap();
        // A peer that cannot be dialled: the request-response failure, not a string.
        let stranger = Keypair::generate_ed25519().public().to_peer_id();
        let request = BlockRequest::Blobs;
        assert!(matches!(
            p2p.fetch_blocks(stranger, request).await,
            Err(NetError::Request(_))
        ));
        // No peer subscribed to the topic: gossipsub's refusal.
        assert!(matches!(
            p2p.publish(Topic::Capacity, b"advert".to_vec()).await,
            Err(NetError::Publish(_))
        ));
        // The swarm stopped: `Stopped`, which the capacity advertiser ends on.
        cancel.cancel();
        task.await.unwrap();
        assert!(matches!(
            p2p.publish(Topic::Capacity, b"advert".to_vec()).await,
            Err(NetError::Stopped)
        ));
        assert!(matches!(
            p2p.providers(
                &RepoId::parse(hub_protocol::repo::RepoType::Model, "alice/tiny").unwrap()
            )
            .await,
            Err(NetError::Stopped)
        ));
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
