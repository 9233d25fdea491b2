//! The blob data plane: LFS chunks and git packs move between nodes over iroh (QUIC), in
//! iroh-blobs' request format with BLAKE3 verified streaming (ADR 0005).
//!
//! - **Endpoint.** Every node binds an iroh [`Endpoint`] with its node key (so its endpoint
//!   id is its libp2p identity), relays and address lookup off. Peers learn each other's
//!   socket addresses over libp2p (`/hubmesh/blocks/1` [`BlockRequest::Blobs`]).
//! - **Blobs.** A chunk of the store is a blob: its id is the BLAKE3 of its bytes, which is
//!   the root of its bao tree. A request is an iroh-blobs `GetMany` whose first hash is the
//!   file's manifest id, with no ranges (it names the file, so the provider can check the
//!   file is public and the chunks are its own), followed by the chunk ids, each with the
//!   ranges wanted (all of it, or the part a resumed fetch lacks).
//! - **Packs.** A git pack is built for the peer that asked for it over libp2p and held for
//!   that peer alone ([`Blobs::offer`]: bounded, short-lived, gone once served); the peer
//!   fetches it with an iroh-blobs `Get` of its hash.
//! - **Verification.** The provider streams each chunk bao-encoded in 16 KiB groups
//!   (`IROH_BLOCK_SIZE`); the requester decodes with iroh-blobs' get state machine, which
//!   checks every group against the chunk id before handing it over. A bad byte is caught
//!   within its group, the request is dropped, the provider penalised and the batch asked of
//!   another (the scheduler in `schedule`). Nothing unverified reaches the spool or store.
//! - **Access.** The provider serves chunks only of files its [`BlobSource`] says are public
//!   (the source is registered by its owner, the replication, before the swarm starts:
//!   [`crate::Bound::serve_blobs`]), only to endpoints that are connected libp2p peers, within the same per-peer and global
//!   serving limits as the libp2p protocols, and at most [`MAX_STREAMS_PER_CONNECTION`]
//!   streams per connection. There is no `Push`: a provider never accepts data.
//!
//! Chunks are served from `hub-store` (no second copy in an iroh-blobs store); bao trees of
//! a chunk (at most 128 KiB, eight groups) are computed when it is served.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bao_tree::ChunkRanges;
use bao_tree::io::outboard::PreOrderMemOutboard;
use hub_protocol::blocks::{MAX_BLOB_ADDRS, MAX_CHUNKS_PER_REQUEST};
use hub_protocol::manifest::{ChunkRef, Hash};
use iroh::endpoint::{Connection, QuicTransportConfig, RecvStream, SendStream, VarInt, presets};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr, PublicKey, SecretKey, TransportAddr};
use iroh_blobs::get::fsm;
use iroh_blobs::protocol::{ChunkRangesSeq, GetManyRequest, Request};
use iroh_blobs::store::IROH_BLOCK_SIZE;
use libp2p::PeerId;

use crate::peers::Peers;

#[cfg(doc)]
use hub_protocol::blocks::BlockRequest;

/// Most chunk requests one connection may have open at once (QUIC stream credit).
pub(crate) const MAX_STREAMS_PER_CONNECTION: u32 = 8;
/// Packs held for peers at once, and their bytes in all.
const MAX_OFFERS: usize = 16;
const MAX_OFFERED_BYTES: usize = 512 << 20;
/// How long a pack is held for the peer that asked for it.
const OFFER_TTL: Duration = Duration::from_secs(120);
/// How long fetching one pack may take.
const PACK_TIMEOUT: Duration = crate::codec::PACK_TIMEOUT;
/// Most connections the provider serves at once.
const MAX_CONNECTIONS: usize = 256;
/// How long connecting to a provider may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request (a batch of chunks) may take, either side.
const REQUEST_TIMEOUT: Duration = crate::codec::BLOCKS_TIMEOUT;
/// Stream reset codes the provider uses (the requester only logs them).
const REFUSED: u32 = 1;
const FAILED: u32 = 2;

/// A serving place held while one request is served (dropping it frees the place).
pub type Place = Box<dyn Send>;
/// What [`BlobSource::admit`] returns.
pub type Admission = Pin<Box<dyn Future<Output = Option<Place>> + Send>>;
/// Why a [`BlobSource`] refuses a read (said to the log, never to the peer).
pub type ReadError = Box<dyn std::error::Error + Send + Sync>;

/// What the provider needs from the blob plane's owner: which files it may serve, and its
/// limits. Only connected libp2p peers reach it (the endpoint checks that itself).
pub trait BlobSource: Send + Sync + 'static {
    /// A serving place for one more request of `peer`, held while it is served; `None`
    /// when the peer is over its limit.
    fn admit(self: Arc<Self>, peer: PeerId) -> Admission;
    /// Blocking: the chunks `ids` of the public file whose manifest is `manifest`, in
    /// order (not yet checked against their ids: the provider does that while encoding).
    /// Refused (`Err`) unless the file is public and held here and every id is one of its
    /// chunks.
    fn read(&self, manifest: &Hash, ids: &[Hash]) -> Result<Vec<Vec<u8>>, ReadError>;
    /// `bytes` of chunks were served to `peer`.
    fn served(&self, peer: PeerId, bytes: u64);
    /// Test-only misbehaviour: flip the byte at this offset of the first chunk of every
    /// answer (when the chunk is that long).
    fn corrupt(&self) -> Option<usize>;
}

impl GetError {
    /// The same failure, counting `earlier` good bytes (of a batch's earlier chunks) too.
    fn after(self, earlier: u64) -> Self {
        match self {
            Self::Bad { bytes, reason } => Self::Bad {
                bytes: earlier + bytes,
                reason,
            },
            failed => failed,
        }
    }
}

/// Why a [`Blobs::get`] or [`Blobs::get_pack`] failed. Not `non_exhaustive`: callers tell
/// a lying provider (penalised) from a failed request (asked again elsewhere), and nothing
/// else.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The provider sent data that failed verification, after `bytes` of chunk data.
    #[error("{reason}")]
    Bad { bytes: u64, reason: String },
    /// Connecting, a refusal, a timeout, a short answer: not the provider's lie.
    #[error("{0}")]
    Failed(String),
}

/// Why the blob endpoint could not be bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    #[error("blob endpoint address")]
    Address(#[source] iroh::endpoint::InvalidSocketAddr),
    #[error("bind the blob endpoint")]
    Bind(#[source] iroh::endpoint::BindError),
}

/// The node's blob endpoint: serves chunks and fetches them.
pub struct Blobs {
    endpoint: Endpoint,
    /// Packs held for the peers that asked for them.
    offers: Arc<Offers>,
    /// Open connections to providers, by peer.
    connections: Mutex<HashMap<PeerId, Connection>>,
    /// Where peers' endpoints listen (learned over libp2p); empty: the peer has none.
    addrs: Mutex<HashMap<PeerId, Vec<SocketAddr>>>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("id", &self.endpoint.id())
            .finish_non_exhaustive()
    }
}

/// The endpoint id of a peer (its ed25519 key), `None` for other key types.
fn endpoint_of(peer: &PeerId) -> Option<PublicKey> {
    PublicKey::from_bytes(&crate::key_of_peer_id(peer)?).ok()
}

fn peer_of(id: &PublicKey) -> Option<PeerId> {
    crate::peer_id_of_key(id.as_bytes())
}

impl Blobs {
    /// Binds the endpoint on `ip` (any port) with the node's ed25519 secret key. It serves
    /// nothing until [`Blobs::serve`].
    pub(crate) async fn bind(secret: [u8; 32], ip: IpAddr) -> Result<Self, BindError> {
        let transport = QuicTransportConfig::builder()
            .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .build();
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(SecretKey::from_bytes(&secret))
            .transport_config(transport)
            .clear_ip_transports()
            .bind_addr(SocketAddr::new(ip, 0))
            .map_err(BindError::Address)?
            .bind()
            .await
            .map_err(BindError::Bind)?;
        tracing::debug!(id = %endpoint.id(), addrs = ?endpoint.bound_sockets(), "blob endpoint bound");
        Ok(Self {
            endpoint,
            offers: Arc::default(),
            connections: Mutex::new(HashMap::new()),
            addrs: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the provider: iroh-blobs' protocol answered from `source` (`None`: every
    /// request refused), for connected peers of `peers` only. The caller shuts the returned
    /// router down before [`Blobs::shutdown`].
    pub(crate) fn serve(&self, source: Option<Weak<dyn BlobSource>>, peers: Arc<Peers>) -> Router {
        let provider = Provider {
            source,
            peers,
            offers: self.offers.clone(),
            open: Arc::new(AtomicUsize::new(0)),
        };
        Router::builder(self.endpoint.clone())
            .accept(iroh_blobs::ALPN, provider)
            .spawn()
    }

    /// The socket addresses peers can reach this endpoint at (at most [`MAX_BLOB_ADDRS`]):
    /// its bound sockets, a socket bound to every interface once per address in
    /// `interfaces` of its family (the swarm's listen addresses).
    pub(crate) fn local_addrs(&self, interfaces: &[IpAddr]) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for bound in self.endpoint.bound_sockets() {
            let ips: Vec<IpAddr> = if bound.ip().is_unspecified() {
                interfaces
                    .iter()
                    .copied()
                    .filter(|ip| ip.is_ipv4() == bound.is_ipv4() && !ip.is_unspecified())
                    .collect()
            } else {
                vec![bound.ip()]
            };
            for ip in ips {
                let addr = SocketAddr::new(ip, bound.port());
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        addrs.truncate(MAX_BLOB_ADDRS);
        addrs
    }

    /// Where `peer`'s endpoint listens, if it was learned (`Some(empty)`: it has none).
    pub(crate) fn addrs_of(&self, peer: &PeerId) -> Option<Vec<SocketAddr>> {
        let addrs = self.addrs.lock().unwrap_or_else(PoisonError::into_inner);
        addrs.get(peer).cloned()
    }

    /// Remembers where `peer`'s endpoint listens (bounded like the peer table).
    pub(crate) fn learn(&self, peer: PeerId, found: Vec<SocketAddr>) {
        let mut addrs = self.addrs.lock().unwrap_or_else(PoisonError::into_inner);
        if addrs.len() >= MAX_CONNECTIONS * 4 && !addrs.contains_key(&peer) {
            addrs.clear();
        }
        addrs.insert(peer, found);
    }

    /// Forgets what is known of `peer` (its addresses changed, or it went away).
    pub(crate) fn forget(&self, peer: &PeerId) {
        self.addrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(peer);
        if let Some(connection) = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(peer)
        {
            connection.close(VarInt::from_u32(0), b"forgotten");
        }
    }

    async fn connection(&self, peer: PeerId, addrs: &[SocketAddr]) -> Result<Connection, GetError> {
        {
            let connections = self
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = connections.get(&peer)
                && c.close_reason().is_none()
            {
                return Ok(c.clone());
            }
        }
        let id = endpoint_of(&peer)
            .ok_or_else(|| GetError::Failed(format!("{peer} has no ed25519 key")))?;
        let addr = EndpointAddr::from_parts(id, addrs.iter().map(|a| TransportAddr::Ip(*a)));
        let connected = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.endpoint.connect(addr, iroh_blobs::ALPN),
        )
        .await
        .map_err(|_| format!("connecting to {peer}'s blob endpoint timed out"))
        .and_then(|c| c.map_err(|e| format!("connect to {peer}'s blob endpoint: {e}")));
        let connection = match connected {
            Ok(connection) => connection,
            Err(error) => {
                // It may have restarted elsewhere: ask it again next time.
                self.forget(&peer);
                return Err(GetError::Failed(error));
            }
        };
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if connections.len() >= MAX_CONNECTIONS {
            connections.retain(|_, c| c.close_reason().is_none());
        }
        if connections.len() < MAX_CONNECTIONS {
            connections.insert(peer, connection.clone());
        }
        Ok(connection)
    }

    /// Fetches `chunks` of the file with manifest `manifest` from `peer`, verified against
    /// their ids group by group. Returns the chunks in order.
    pub async fn get(
        &self,
        peer: PeerId,
        addrs: &[SocketAddr],
        manifest: &Hash,
        chunks: &[ChunkRef],
    ) -> Result<Vec<Vec<u8>>, GetError> {
        if chunks.is_empty() || chunks.len() > MAX_CHUNKS_PER_REQUEST as usize {
            return Err(GetError::Failed(format!(
                "{} chunks in one request",
                chunks.len()
            )));
        }
        let connection = self.connection(peer, addrs).await?;
        let result = tokio::time::timeout(REQUEST_TIMEOUT, get_many(connection, manifest, chunks))
            .await
            .unwrap_or_else(|_| Err(GetError::Failed("request timed out".into())));
        if let Err(GetError::Failed(_)) = &result {
            // A dead connection is not reused.
            let mut connections = self
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if connections
                .get(&peer)
                .is_some_and(|c| c.close_reason().is_some())
            {
                connections.remove(&peer);
            }
        }
        result
    }

    /// Holds `pack` for `peer` to fetch as a blob (blocking: hashes it). Returns its BLAKE3
    /// hash and size. Offers are bounded ([`MAX_OFFERS`], [`MAX_OFFERED_BYTES`], the oldest
    /// go first), expire after [`OFFER_TTL`] and go once served whole.
    pub fn offer(&self, peer: PeerId, pack: Vec<u8>) -> ([u8; 32], u64) {
        self.offers.offer(peer, pack)
    }

    /// Fetches the pack `hash` of `size` bytes that `peer` offered, verified group by group.
    pub async fn get_pack(
        &self,
        peer: PeerId,
        addrs: &[SocketAddr],
        hash: [u8; 32],
        size: u64,
    ) -> Result<Vec<u8>, GetError> {
        if size > MAX_OFFERED_BYTES as u64 {
            return Err(GetError::Failed(format!(
                "a {size}-byte pack is over the limit"
            )));
        }
        let connection = self.connection(peer, addrs).await?;
        tokio::time::timeout(PACK_TIMEOUT, get_one(connection, hash, size))
            .await
            .unwrap_or_else(|_| Err(GetError::Failed("pack transfer timed out".into())))
    }

    /// Closes the endpoint and every connection (after its router's shutdown).
    pub(crate) async fn shutdown(&self) {
        self.endpoint.close().await;
    }
}

fn blob_hash(hash: &Hash) -> iroh_blobs::Hash {
    iroh_blobs::Hash::from_bytes(hash.0)
}

/// One `GetMany` on a fresh stream of `connection`: the manifest id (no ranges), then the
/// chunks, each whole.
async fn get_many(
    connection: Connection,
    manifest: &Hash,
    chunks: &[ChunkRef],
) -> Result<Vec<Vec<u8>>, GetError> {
    let hashes: Vec<iroh_blobs::Hash> = std::iter::once(manifest)
        .chain(chunks.iter().map(|c| &c.id))
        .map(blob_hash)
        .collect();
    let ranges = ChunkRangesSeq::from_ranges(
        std::iter::once(ChunkRanges::empty())
            .chain(std::iter::repeat_n(ChunkRanges::all(), chunks.len())),
    );
    let request = GetManyRequest::new(hashes.clone(), ranges);
    let start = fsm::start_get_many(connection, request, Default::default())
        .await
        .map_err(|e| GetError::Failed(format!("send request: {e}")))?;
    let mut child = match start {
        Ok(child) => child,
        Err(_) => return Err(GetError::Failed("empty request".into())),
    };
    let mut out = Vec::with_capacity(chunks.len());
    let mut bytes = 0u64;
    loop {
        let index = usize::try_from(child.offset()).unwrap_or(usize::MAX);
        let Some(chunk) = index.checked_sub(1).and_then(|i| chunks.get(i)) else {
            return Err(GetError::Failed(format!("unexpected child {index}")));
        };
        if index != out.len() + 1 {
            return Err(GetError::Failed(format!("child {index} out of order")));
        }
        let header = child.next(hashes[index]);
        let (content, size) = header.next().await.map_err(|e| {
            GetError::Failed(format!("chunk {} of the batch not served: {e}", index - 1))
        })?;
        let (end, data) = read_verified(content, size, u64::from(chunk.len), &chunk.id)
            .await
            .map_err(|e| e.after(bytes))?;
        bytes += data.len() as u64;
        out.push(data);
        match end.next() {
            fsm::EndBlobNext::MoreChildren(next) => child = next,
            fsm::EndBlobNext::Closing(closing) => {
                let _ = closing.next().await;
                break;
            }
        }
    }
    if out.len() != chunks.len() {
        return Err(GetError::Failed(format!(
            "{} of {} chunks served",
            out.len(),
            chunks.len()
        )));
    }
    Ok(out)
}

/// Reads one blob the provider announced as `announced` bytes, where `size` were expected,
/// leaf by leaf: every 16 KiB group is checked against the blob's hash by iroh-blobs' state
/// machine before it is kept. A wrong size or a group that fails is `Bad`, counting the good
/// bytes before it; `what` names the blob in errors.
async fn read_verified(
    mut content: fsm::AtBlobContent,
    announced: u64,
    size: u64,
    what: &(dyn std::fmt::Display + Sync),
) -> Result<(fsm::AtEndBlob, Vec<u8>), GetError> {
    if announced != size {
        return Err(GetError::Bad {
            bytes: 0,
            reason: format!("{what} announced as {announced} bytes, not {size}"),
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let end = loop {
        match content.next().await {
            fsm::BlobContentNext::More((next, item)) => {
                match item {
                    Ok(bao_tree::io::BaoContentItem::Leaf(leaf)) => {
                        if (data.len() + leaf.data.len()) as u64 > size {
                            return Err(GetError::Bad {
                                bytes: data.len() as u64,
                                reason: format!("{what} is longer than announced"),
                            });
                        }
                        data.extend_from_slice(&leaf.data);
                    }
                    Ok(bao_tree::io::BaoContentItem::Parent(_)) => {}
                    Err(
                        e @ (fsm::DecodeError::LeafHashMismatch { .. }
                        | fsm::DecodeError::ParentHashMismatch { .. }),
                    ) => {
                        return Err(GetError::Bad {
                            bytes: data.len() as u64,
                            reason: format!(
                                "{what} failed verification after {} good bytes: {e}",
                                data.len()
                            ),
                        });
                    }
                    Err(e) => return Err(GetError::Failed(format!("{what}: {e}"))),
                }
                content = next;
            }
            fsm::BlobContentNext::Done(end) => break end,
        }
    };
    if data.len() as u64 != size {
        return Err(GetError::Failed(format!("{what} arrived short")));
    }
    Ok((end, data))
}

/// One `Get` of a whole blob (a pack) on a fresh stream of `connection`.
async fn get_one(connection: Connection, hash: [u8; 32], size: u64) -> Result<Vec<u8>, GetError> {
    let hash = iroh_blobs::Hash::from_bytes(hash);
    let request = iroh_blobs::protocol::GetRequest::blob(hash);
    let connected = fsm::start(connection, request, Default::default())
        .next()
        .await
        .map_err(|e| GetError::Failed(format!("open stream: {e}")))?;
    let root = match connected.next().await {
        Ok(fsm::ConnectedNext::StartRoot(root)) => root,
        Ok(_) => return Err(GetError::Failed("unexpected answer shape".into())),
        Err(e) => return Err(GetError::Failed(format!("send request: {e}"))),
    };
    let (content, announced) = root
        .next()
        .next()
        .await
        .map_err(|e| GetError::Failed(format!("pack not served: {e}")))?;
    let (end, data) = read_verified(content, announced, size, &"pack").await?;
    if let fsm::EndBlobNext::Closing(closing) = end.next() {
        let _ = closing.next().await;
    }
    Ok(data)
}

/// A pack held for one peer: its bytes and bao tree.
struct Offer {
    peer: PeerId,
    hash: [u8; 32],
    data: Arc<Vec<u8>>,
    outboard: Arc<PreOrderMemOutboard>,
    expires: std::time::Instant,
}

/// What [`Offers::find`] returns: a pack and its bao tree.
type Held = (Arc<Vec<u8>>, Arc<PreOrderMemOutboard>);

/// Packs held for peers (oldest first), bounded by count and bytes.
#[derive(Default)]
struct Offers(Mutex<std::collections::VecDeque<Offer>>);

impl Offers {
    fn offer(&self, peer: PeerId, pack: Vec<u8>) -> ([u8; 32], u64) {
        let outboard = PreOrderMemOutboard::create(&pack, IROH_BLOCK_SIZE);
        let hash = *outboard.root.as_bytes();
        let size = pack.len() as u64;
        let mut offers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        offers.retain(|o| o.expires > now && !(o.peer == peer && o.hash == hash));
        let mut bytes: usize = offers.iter().map(|o| o.data.len()).sum();
        while !offers.is_empty()
            && (offers.len() >= MAX_OFFERS || bytes + pack.len() > MAX_OFFERED_BYTES)
        {
            if let Some(old) = offers.pop_front() {
                bytes -= old.data.len();
            }
        }
        offers.push_back(Offer {
            peer,
            hash,
            data: Arc::new(pack),
            outboard: Arc::new(outboard),
            expires: now + OFFER_TTL,
        });
        (hash, size)
    }

    /// The pack `hash` held for `peer`, if any.
    fn find(&self, peer: &PeerId, hash: &[u8; 32]) -> Option<Held> {
        let offers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        offers
            .iter()
            .find(|o| o.peer == *peer && o.hash == *hash && o.expires > now)
            .map(|o| (o.data.clone(), o.outboard.clone()))
    }

    fn remove(&self, peer: &PeerId, hash: &[u8; 32]) {
        let mut offers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        offers.retain(|o| !(o.peer == *peer && o.hash == *hash));
    }
}

/// The provider: iroh-blobs' protocol, answered from the chunk store.
#[derive(Clone)]
struct Provider {
    /// Fixed before the endpoint serves (`None`: nothing is served).
    source: Option<Weak<dyn BlobSource>>,
    /// The swarm's peers: only connected ones may connect here.
    peers: Arc<Peers>,
    offers: Arc<Offers>,
    open: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Counts an open connection while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ProtocolHandler for Provider {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let source = self.source.as_ref().and_then(Weak::upgrade);
        let peer = peer_of(&connection.remote_id());
        let (Some(source), Some(peer)) = (source, peer) else {
            connection.close(VarInt::from_u32(REFUSED), b"not serving");
            return Ok(());
        };
        if !self.peers.is_connected(&peer) {
            tracing::debug!(%peer, "blob connection from a node that is not a peer; refused");
            connection.close(VarInt::from_u32(REFUSED), b"not a peer");
            return Ok(());
        }
        if self.open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            self.open.fetch_sub(1, Ordering::Relaxed);
            connection.close(VarInt::from_u32(REFUSED), b"too many connections");
            return Ok(());
        }
        let _open = Open(self.open.clone());
        drop(source);
        let mut streams = tokio::task::JoinSet::new();
        loop {
            let (send, recv) = match connection.accept_bi().await {
                Ok(pair) => pair,
                Err(_) => break,
            };
            // Upgraded per stream: a node shutting down stops serving.
            let Some(source) = self.source.as_ref().and_then(Weak::upgrade) else {
                break;
            };
            streams.spawn(serve_stream(source, self.offers.clone(), peer, send, recv));
            while streams.try_join_next().is_some() {}
        }
        streams.abort_all();
        Ok(())
    }
}

/// Answers one request: a `GetMany` naming a manifest, then chunks of that file; or a
/// `Get` of a pack held for the peer.
async fn serve_stream(
    source: Arc<dyn BlobSource>,
    offers: Arc<Offers>,
    peer: PeerId,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let served = tokio::time::timeout(REQUEST_TIMEOUT.max(PACK_TIMEOUT), async {
        let (request, _) = Request::read_async(&mut recv)
            .await
            .map_err(|e| (REFUSED, format!("read request: {e}")))?;
        let request = match request {
            Request::GetMany(request) => request,
            Request::Get(request) => {
                let _place = source
                    .clone()
                    .admit(peer)
                    .await
                    .ok_or_else(|| (REFUSED, "over the per-peer request limit".to_owned()))?;
                return serve_pack(&offers, peer, &request, &mut send).await;
            }
            _ => {
                return Err((
                    REFUSED,
                    "only Get and GetMany requests are served".to_owned(),
                ));
            }
        };
        let n = request.hashes.len();
        if !(2..=1 + MAX_CHUNKS_PER_REQUEST as usize).contains(&n) {
            return Err((REFUSED, format!("{n} hashes in one request")));
        }
        let ranges: Vec<ChunkRanges> = request.ranges.iter_infinite().take(n).cloned().collect();
        if !ranges[0].is_empty() {
            return Err((
                REFUSED,
                "the first hash names the file; no bytes of it are served".into(),
            ));
        }
        let manifest = Hash(*request.hashes[0].as_bytes());
        let ids: Vec<Hash> = request.hashes[1..]
            .iter()
            .map(|h| Hash(*h.as_bytes()))
            .collect();
        let Some(_place) = source.clone().admit(peer).await else {
            return Err((REFUSED, "over the per-peer request limit".into()));
        };
        let reader = source.clone();
        let (encoded, bytes) = tokio::task::spawn_blocking(move || {
            let chunks = reader
                .read(&manifest, &ids)
                .map_err(|e| (REFUSED, e.to_string()))?;
            let corrupt = reader.corrupt();
            let mut out =
                Vec::with_capacity(chunks.iter().map(|c| c.len() + c.len() / 200 + 80).sum());
            let mut bytes = 0u64;
            for (i, ((data, ranges), id)) in chunks.iter().zip(&ranges[1..]).zip(&ids).enumerate() {
                if ranges.is_empty() {
                    continue;
                }
                let corrupt = corrupt.filter(|_| i == 0);
                encode(data, id, ranges, corrupt, &mut out).map_err(|e| (FAILED, e.to_string()))?;
                bytes += data.len() as u64;
            }
            Ok::<_, (u32, String)>((out, bytes))
        })
        .await
        .map_err(|e| (FAILED, format!("serving task: {e}")))??;
        // Handed over as it is: `write_all` would copy the whole batch into the stream.
        send.write_chunk(bytes::Bytes::from(encoded))
            .await
            .map_err(|e| (FAILED, format!("write: {e}")))?;
        send.finish()
            .map_err(|e| (FAILED, format!("finish: {e}")))?;
        source.served(peer, bytes);
        Ok(bytes)
    })
    .await
    .unwrap_or_else(|_| Err((FAILED, "timed out".into())));
    match served {
        Ok(bytes) => tracing::trace!(%peer, bytes, "served chunks over the blob endpoint"),
        Err((code, reason)) => {
            tracing::debug!(%peer, %reason, "blob request not served");
            let _ = send.reset(VarInt::from_u32(code));
        }
    }
}

/// Streams a pack held for `peer`: its size, then the bao encoding of the ranges asked of
/// it, encoded a piece at a time (at most a few MiB of encoding in memory besides the pack).
async fn serve_pack(
    offers: &Offers,
    peer: PeerId,
    request: &iroh_blobs::protocol::GetRequest,
    send: &mut SendStream,
) -> Result<u64, (u32, String)> {
    let hash = *request.hash.as_bytes();
    let (data, outboard) = offers
        .find(&peer, &hash)
        .ok_or_else(|| (REFUSED, "no such pack held for this peer".to_owned()))?;
    let ranges = request
        .ranges
        .iter_infinite()
        .next()
        .cloned()
        .unwrap_or_else(ChunkRanges::empty);
    if ranges.is_empty() {
        return Err((REFUSED, "no ranges of the pack asked for".into()));
    }
    let size = data.len() as u64;
    send.write_all(&size.to_le_bytes())
        .await
        .map_err(|e| (FAILED, format!("write: {e}")))?;
    // Encoded on a blocking thread into bounded pieces, written here as they come.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let encoder = tokio::task::spawn_blocking(move || {
        let mut writer = Pieces {
            tx,
            buf: Vec::with_capacity(PIECE),
        };
        bao_tree::io::sync::encode_ranges(&data[..], &*outboard, &ranges, &mut writer)
            .map_err(|e| e.to_string())?;
        writer.flush_piece().map_err(|e| e.to_string())
    });
    while let Some(piece) = rx.recv().await {
        send.write_all(&piece)
            .await
            .map_err(|e| (FAILED, format!("write: {e}")))?;
    }
    encoder
        .await
        .map_err(|e| (FAILED, format!("encoder: {e}")))?
        .map_err(|e| (FAILED, format!("encode: {e}")))?;
    send.finish()
        .map_err(|e| (FAILED, format!("finish: {e}")))?;
    offers.remove(&peer, &hash);
    Ok(size)
}

/// Bytes of bao encoding handed over at a time.
const PIECE: usize = 1 << 20;

/// A `Write` that hands its bytes to a channel in pieces of [`PIECE`].
struct Pieces {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Pieces {
    fn flush_piece(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.tx
            .blocking_send(piece)
            .map_err(|_| std::io::Error::other("the stream was closed"))
    }
}

impl std::io::Write for Pieces {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= PIECE {
            self.flush_piece()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends one chunk's answer: its size, then the bao encoding of `ranges` of it (16 KiB
/// groups, pre-order). The tree's root must be `id` (this is where a chunk read from the
/// store is checked). `corrupt` (tests only) flips the byte at that offset while keeping
/// the honest tree, as a lying provider would.
fn encode(
    data: &[u8],
    id: &Hash,
    ranges: &ChunkRanges,
    corrupt: Option<usize>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    let outboard = PreOrderMemOutboard::create(data, IROH_BLOCK_SIZE);
    if outboard.root.as_bytes() != &id.0 {
        return Err(std::io::Error::other(format!(
            "stored chunk {id} is corrupt"
        )));
    }
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let result = if let Some(at) = corrupt.filter(|at| *at < data.len()) {
        let mut bad = data.to_vec();
        bad[at] ^= 1;
        bao_tree::io::sync::encode_ranges(&bad[..], &outboard, ranges, &mut *out)
    } else {
        bao_tree::io::sync::encode_ranges(data, &outboard, ranges, &mut *out)
    };
    result.map_err(|e| std::io::Error::other(format!("encode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves the chunks of one file from memory.
    struct Memory {
        manifest: Hash,
        chunks: HashMap<Hash, Vec<u8>>,
        corrupt: Mutex<Option<usize>>,
        served: Mutex<u64>,
    }

    impl BlobSource for Memory {
        fn admit(self: Arc<Self>, _: PeerId) -> Admission {
            Box::pin(async { Some(Box::new(()) as Place) })
        }

        fn read(&self, manifest: &Hash, ids: &[Hash]) -> Result<Vec<Vec<u8>>, ReadError> {
            if *manifest != self.manifest {
                return Err("unknown file".into());
            }
            ids.iter()
                .map(|id| {
                    self.chunks
                        .get(id)
                        .cloned()
                        .ok_or_else(|| "not a chunk of it".into())
                })
                .collect()
        }

        fn served(&self, _: PeerId, bytes: u64) {
            *self.served.lock().unwrap() += bytes;
        }

        fn corrupt(&self) -> Option<usize> {
            *self.corrupt.lock().unwrap()
        }
    }

    fn blake3_of(bytes: &[u8]) -> bao_tree::blake3::Hash {
        bao_tree::blake3::hash(bytes)
    }

    fn peer_of_secret(secret: [u8; 32]) -> PeerId {
        crate::peer_id_of_key(SecretKey::from_bytes(&secret).public().as_bytes()).unwrap()
    }

    fn refs(chunks: &[Vec<u8>]) -> Vec<ChunkRef> {
        chunks
            .iter()
            .map(|c| ChunkRef {
                id: Hash::of(c),
                len: c.len() as u32,
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_stream_verified_and_a_lie_is_caught_within_its_16_kib_group() {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let (secret_a, secret_b, secret_c) = ([1; 32], [2; 32], [3; 32]);
        let a = Blobs::bind(secret_a, loopback).await.unwrap();
        let b = Blobs::bind(secret_b, loopback).await.unwrap();
        let provider = peer_of_secret(secret_a);
        let addrs = a.local_addrs(&[]);
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.ip() == loopback),
            "{addrs:?}"
        );

        // Chunk sizes as the store cuts them: up to 128 KiB, not multiples of a group.
        let chunks: Vec<Vec<u8>> = [128 * 1024, 1, 70_001, 16 * 1024]
            .iter()
            .enumerate()
            .map(|(i, len)| (0..*len).map(|j| (j * 31 + i * 7) as u8).collect())
            .collect();
        let wanted = refs(&chunks);
        // A chunk that rotted on the provider's disk: its bytes no longer hash to its id.
        let rotten = ChunkRef {
            id: Hash::of(b"what was stored"),
            len: 15,
        };
        let mut stored: HashMap<Hash, Vec<u8>> =
            chunks.iter().map(|c| (Hash::of(c), c.clone())).collect();
        stored.insert(rotten.id, b"what is there now".to_vec());
        let source = Arc::new(Memory {
            manifest: Hash([7; 32]),
            chunks: stored,
            corrupt: Mutex::new(None),
            served: Mutex::new(0),
        });
        let dyn_source: Arc<dyn BlobSource> = source.clone();
        // The provider's swarm counts B and C as connected peers.
        let peers = Arc::new(Peers::default());
        for secret in [secret_b, secret_c] {
            peers.update(peer_of_secret(secret), |p| p.connected = true);
        }
        let router = a.serve(Some(Arc::downgrade(&dyn_source)), peers.clone());

        // Honest: every chunk, whole and in order.
        let got = b
            .get(provider, &addrs, &source.manifest, &wanted)
            .await
            .unwrap();
        assert_eq!(got, chunks);
        let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        assert_eq!(*source.served.lock().unwrap(), total);

        // A lie in the third 16 KiB group of the first chunk is caught there: the two groups
        // before it verified, nothing after it is handed over.
        *source.corrupt.lock().unwrap() = Some(40 * 1024);
        match b.get(provider, &addrs, &source.manifest, &wanted).await {
            Err(GetError::Bad { bytes, reason }) => {
                assert_eq!(bytes, 32 * 1024, "{reason}");
                assert!(reason.contains("failed verification"), "{reason}");
            }
            other => panic!("a corrupt chunk was not caught: {other:?}"),
        }
        // A lie in the first byte: caught before any byte is accepted.
        *source.corrupt.lock().unwrap() = Some(0);
        match b
            .get(provider, &addrs, &source.manifest, &wanted[..1])
            .await
        {
            Err(GetError::Bad { bytes, .. }) => assert_eq!(bytes, 0),
            other => panic!("a corrupt chunk was not caught: {other:?}"),
        }
        *source.corrupt.lock().unwrap() = None;

        // Refused: a chunk of another file, a file the provider does not serve.
        let stranger = refs(&[b"not in the file".to_vec()]);
        assert!(matches!(
            b.get(provider, &addrs, &source.manifest, &stranger).await,
            Err(GetError::Failed(_))
        ));
        assert!(matches!(
            b.get(provider, &addrs, &Hash([8; 32]), &wanted).await,
            Err(GetError::Failed(_))
        ));
        // The provider checks what it reads against the id and serves nothing rotten.
        assert!(matches!(
            b.get(provider, &addrs, &source.manifest, &[rotten]).await,
            Err(GetError::Failed(_))
        ));
        // The connection still serves after refusals.
        assert_eq!(
            b.get(provider, &addrs, &source.manifest, &wanted[1..3])
                .await
                .unwrap(),
            chunks[1..3]
        );

        // A pack held for B: B gets it, verified; C (another peer) does not; once served it
        // is gone.
        let c = Blobs::bind(secret_c, loopback).await.unwrap();
        let pack: Vec<u8> = (0..3 * 1024 * 1024 + 17)
            .map(|i| (i * 131 % 251) as u8)
            .collect();
        let (hash, size) = a.offer(peer_of_secret(secret_b), pack.clone());
        assert_eq!(size, pack.len() as u64);
        assert_eq!(hash, *blake3_of(&pack).as_bytes());
        assert!(matches!(
            c.get_pack(provider, &addrs, hash, size).await,
            Err(GetError::Failed(_))
        ));
        assert!(matches!(
            b.get_pack(provider, &addrs, hash, size + 1).await,
            Err(GetError::Bad { .. })
        ));
        // (Held again, in case the provider finished sending before B hung up.)
        a.offer(peer_of_secret(secret_b), pack.clone());
        assert_eq!(
            b.get_pack(provider, &addrs, hash, size).await.unwrap(),
            pack
        );
        assert!(matches!(
            b.get_pack(provider, &addrs, hash, size).await,
            Err(GetError::Failed(_))
        ));
        c.forget(&provider);

        // A node the provider does not count as a peer cannot connect.
        peers.update(peer_of_secret(secret_c), |p| p.connected = false);
        assert!(matches!(
            c.get(provider, &addrs, &source.manifest, &wanted).await,
            Err(GetError::Failed(_))
        ));
        // Bounds: an empty or oversized batch is not sent.
        assert!(matches!(
            b.get(provider, &addrs, &source.manifest, &[]).await,
            Err(GetError::Failed(_))
        ));
        router.shutdown().await.unwrap();
        for blobs in [a, b, c] {
            blobs.shutdown().await;
        }
    }
}
