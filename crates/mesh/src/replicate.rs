//! The replication task: publishes signed refs of the repos this node hosts, judges what peers
//! gossip, and brings seeded repos up to date with packs of the difference.
//!
//! Who spawns whom: [`spawn_replicating`] starts the swarm task (which owns the swarm) and
//! this task (which owns the [`RefStore`] and the seeding policy). They are connected by two
//! bounded channels: commands to the swarm (through the [`P2p`] handle) and [`NetEvent`]s
//! back. The gateway reports local writes with [`P2p::repo_changed`], coalesced per repo in
//! [`Changes`]. Disk and git work (the store's commits, `pack-objects`, `index-pack`) runs on
//! the blocking pool; fetches run as one task per repo at a time.
//!
//! Publishing (the hosting node): on a change to a *public* repo, the node makes sure its
//! namespace has a document (a genesis naming the node key as the only delegate, created on
//! first need and gossiped), then signs a [`RefUpdate`] of all `refs/heads/*` and
//! `refs/tags/*` with `seq = last + 1`, accepts it into its own store (which persists the
//! seq) and gossips it. The `lfs` map binds the SHA-256 of every LFS pointer in the trees of
//! the signed tips (not their history; at most [`MAX_LFS`], the smallest SHA-256s when there
//! are more) to the id of the manifest the local store holds for it, so the signature covers
//! the manifests and a seeder verifies LFS content from its first chunk. Private repos are
//! never announced. When a peer subscribes, the node re-gossips the documents and latest
//! updates it holds (its own and those it accepted from others), so a peer that joined late,
//! or joined through a seeder, catches up. A seeder that has synced a repo completely
//! provides it in the DHT, so later fetchers find it as one more source.
//!
//! Seeding: every gossiped document and update goes through [`RefStore`] (signature, delegate,
//! seq, binding); refusals are logged and reported to gossipsub so they are not forwarded.
//! An update that names a namespace document not heard yet waits (bounded) for it. For an
//! accepted update of a repo matching a [`SeedPattern`], the task asks the publisher (then
//! the forwarder, then DHT providers) for the pack of the difference and applies it with
//! hub-repo's push machinery; the listing is then refreshed through the `on_replicated` hook.
//! Then (also when the refs were already current) the LFS objects the tips reference and the
//! store lacks are fetched over `/hubmesh/blocks/1` (module `lfs`), one at a time, from the
//! gossip peers, then the connected peers, then DHT providers. A repo with objects still
//! missing counts as failed and is synced again after [`RETRY_PERIOD`]; at start-up every
//! seeded repo with an accepted update is synced once, which resumes interrupted fetches.
//!
//! The seeding policy ([`SeedPolicy`], module `seeds`) is shared with the [`P2p`] handle
//! through [`Control`]: `hubmesh seed add|rm` change it at run time (persisted next to the
//! ref store) and send [`ControlMsg::SeedsChanged`], after which newly covered repos sync.
//! Any gateway serves the whole mesh: [`P2p::ensure_repo`] fetches a public repo this node
//! does not hold but has an accepted update for (remembered as fetched, so it stays
//! seeded) and waits for its git part; [`P2p::ensure_lfs`] fetches one LFS object ahead of
//! the repo's sync for a waiting download. One fetch per LFS object runs at a time
//! ([`fetch_lfs_once`]). [`P2p::namespace_hosts`] names the delegates of a namespace this
//! node is not a delegate of, so the gateway can send writes there.

use crate::lfs::{Arrivals, Wanted};
use crate::seeds::{SEEDS_FILE, SeedEntry, SeedError, SeedPolicy};
use crate::state::{LocalNames, RefStore, RefStoreError};
use crate::stats::{MeshCounters, PeerTraffic, RepoState, Stats};
use hub_core::{EnsureError, LfsFetchError};
use hub_net::{
    Admission, BlobSource, GetError, NetEvent, P2p, P2pConfig, P2pError, Place, ReadError, Topic,
    Verdict,
};
use hub_protocol::blocks::BlockResponse;
use hub_protocol::manifest::{Hash, Sha256};
use hub_protocol::replication::{
    MAX_BLOB_PACK_LEN, MAX_PACK_LEN, PackRequest, PackResponse, SeedPattern,
};
use hub_protocol::repo::RepoId;
use hub_protocol::signed::{
    DocReject, MAX_LFS, NamespaceDoc, PublicKey, RefReject, RefUpdate, SignedNamespaceDoc,
    SignedRefUpdate, SigningKey, Visibility,
};
use hub_repo::{RepoError, Repos};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod claims;

/// Updates that wait for their namespace document, at most.
const MAX_PENDING: usize = 256;
/// Most updates re-gossiped to a peer that subscribed.
const MAX_CATCH_UP: usize = 1024;
/// How often repos whose fetch failed are tried again.
const RETRY_PERIOD: Duration = Duration::from_secs(5);
/// How long a sync waits for the DHT's providers of a repo.
const PROVIDERS_TIMEOUT: Duration = Duration::from_secs(5);
/// Most LFS bytes a repo fetched on demand (by a read; no seed pattern covers it) pulls in
/// the background; a larger one gets each object when a download asks for it.
pub const MAX_ON_DEMAND_LFS: u64 = 2 << 30;
/// Requests from the gateway side (seeding changes, on-demand fetches) waiting for the task.
const CONTROL_QUEUE: usize = 256;
/// Pack and block requests served at once, over all peers (each holds a blocking thread
/// and up to one answer in memory); more wait.
const MAX_SERVING: usize = 32;
/// Pack and block requests of one peer served at once; more are refused (`Failed`). An
/// honest fetcher keeps at most 2 in flight per provider and object
/// (`schedule::MAX_PER_PROVIDER`).
const MAX_SERVING_PER_PEER: usize = 8;

/// Called (on a blocking thread) after a repo was replicated, e.g. to refresh the listing.
pub type OnReplicated = Arc<dyn Fn(&RepoId) + Send + Sync>;

/// What the replication task needs.
pub struct Replication {
    /// The repositories (published from, replicated into).
    pub repos: Arc<Repos>,
    /// Where the [`RefStore`] lives (`DATA/refs.redb`).
    pub ref_store: PathBuf,
    /// The node's 32-byte ed25519 secret (`DATA/node.key`): signs documents and updates.
    pub secret: [u8; 32],
    /// The chunk store: LFS content is published from and fetched into it.
    pub store: hub_store::Store,
    /// Which repos this node seeds, from its configuration. Patterns added at run time and
    /// repos fetched on demand are persisted in [`SEEDS_FILE`] next to `ref_store` and merged.
    pub seeds: Vec<SeedPattern>,
    pub on_replicated: OnReplicated,
    /// The names of this node's accounts: their namespaces are never taken from other nodes
    /// (ADR 0006, [`RefStore::protect_local`]).
    pub local_names: LocalNames,
    /// Tests only: serve every chunk batch with one bit flipped (a misbehaving provider).
    pub corrupt_chunks_for_tests: bool,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("ref_store", &self.ref_store)
            .field("seeds", &self.seeds)
            .finish_non_exhaustive()
    }
}

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    #[error(transparent)]
    Swarm(#[from] P2pError),
    #[error(transparent)]
    RefStore(#[from] RefStoreError),
    #[error("open the seeding policy: {0}")]
    Seeds(std::io::Error),
}

/// Repos written locally and not announced yet: a set, so repeated writes coalesce and the
/// queue never outgrows the number of repos.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pending: Mutex<BTreeSet<RepoId>>,
    notify: Notify,
}

impl Changes {
    pub(crate) fn push(&self, repo: RepoId) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(repo);
        self.notify.notify_one();
    }

    fn take(&self) -> BTreeSet<RepoId> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Requests from the gateway side ([`P2p`] methods) to the replication task.
#[derive(Debug)]
pub(crate) enum ControlMsg {
    /// The seeding policy changed: sync every accepted repo it now covers.
    SeedsChanged,
    /// A user asked this node for a repo it does not hold: remember it and fetch it now.
    Ensure(RepoId),
    /// A download waits for one LFS object: fetch it ahead of the others.
    Lfs {
        repo: RepoId,
        sha256: Sha256,
        size: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// What the [`P2p`] handle reaches of a running replication task (no [`P2p`] inside: no
/// reference cycle).
pub(crate) struct Control {
    seeds: Arc<SeedPolicy>,
    store: Arc<Mutex<RefStore>>,
    repos: Arc<Repos>,
    /// This node's delegate key.
    me: PublicKey,
    /// Its secret: signs namespace claims (module `claims`).
    key: SigningKey,
    tx: mpsc::Sender<ControlMsg>,
    synced: Arc<watch::Sender<u64>>,
    /// The chunk store (downloads stream arriving objects from it and the spool).
    chunks: hub_store::Store,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("seeds", &self.seeds)
            .finish_non_exhaustive()
    }
}

/// The libp2p peer id of a delegate key (node keys are the same ed25519 keys).
fn peer_id_of(key: &PublicKey) -> Option<PeerId> {
    hub_net::peer_id_of_key(&key.0)
}

/// The handle on a running replication: the swarm's [`P2p`] handle plus what reaches the
/// replication task (the seeding policy, on-demand fetches, namespace hosting, repos changed
/// here). Cheap to clone. `hub-core`'s `MeshPort` is implemented on it.
#[derive(Clone)]
pub struct Mesh {
    p2p: P2p,
    /// What replication counts and knows per peer and repo (module `stats`).
    stats: Arc<Stats>,
    control: Arc<Control>,
    changes: Arc<Changes>,
    /// LFS objects being fetched now, for downloads that stream them as they arrive.
    arrivals: Arc<Arrivals>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("p2p", &self.p2p)
            .finish_non_exhaustive()
    }
}

/// The seeding policy, on-demand fetches and namespace hosting, for the gateway.
impl Mesh {
    /// The swarm under this replication.
    pub fn p2p(&self) -> &P2p {
        &self.p2p
    }

    /// Replication's counters since start.
    pub fn counters(&self) -> MeshCounters {
        self.stats.counters()
    }

    /// The chunk traffic with `peer` (`None`: none yet, or forgotten).
    pub fn peer_traffic(&self, peer: &PeerId) -> Option<PeerTraffic> {
        self.stats.peers.get(peer)
    }

    /// What replication knows of `repo` (`None`: nothing yet).
    pub fn repo_state(&self, repo: &RepoId) -> Option<RepoState> {
        self.stats.repos.get(repo)
    }

    /// Tells replication that a repo was written locally (commit, push, branch, tag, create,
    /// settings). Never blocks: changes are coalesced per repo (so the queue is bounded by
    /// the number of repos) and announced by the replication task, which skips private
    /// repos.
    pub fn repo_changed(&self, repo: &RepoId) {
        self.changes.push(repo.clone());
    }

    /// The merged seeding policy: configuration, run-time patterns, repos fetched on demand.
    pub fn seeds(&self) -> Vec<SeedEntry> {
        self.control.seeds.list()
    }

    /// Adds a run-time seed pattern (persisted); matching repos with an accepted update start
    /// syncing. `Ok(false)`: the policy had it already.
    pub async fn add_seed(&self, pattern: &str) -> Result<bool, SeedError> {
        let control = self.control.clone();
        let (seeds, pattern) = (control.seeds.clone(), pattern.to_owned());
        let added = blocking(move || seeds.add(&pattern))
            .await
            .ok_or_else(|| SeedError::Io("seed task failed".into()))??;
        if added {
            let _ = control.tx.send(ControlMsg::SeedsChanged).await;
        }
        Ok(added)
    }

    /// Removes a run-time pattern, or a repo fetched on demand (`ns/name`); future updates
    /// of repos no longer covered are not fetched (what is stored stays).
    pub async fn remove_seed(&self, pattern: &str) -> Result<(), SeedError> {
        let control = self.control.clone();
        let (seeds, pattern) = (control.seeds.clone(), pattern.to_owned());
        blocking(move || seeds.remove(&pattern))
            .await
            .ok_or_else(|| SeedError::Io("seed task failed".into()))??;
        let _ = control.tx.send(ControlMsg::SeedsChanged).await;
        Ok(())
    }

    /// Makes sure this node holds `repo`, which it does not host: when an accepted signed
    /// update names it (and this node is no delegate of its namespace), the repo is remembered as fetched (seeded from now on) and fetched
    /// now; this waits until its refs are those of the update, or until `deadline` (then a
    /// repo with some refs is good enough). LFS content follows in the background (see
    /// [`P2p::ensure_lfs`]).
    pub async fn ensure_repo(&self, repo: &RepoId, deadline: Instant) -> Result<(), EnsureError> {
        let control = self.control.clone();
        let mut synced = control.synced.subscribe();
        let check = {
            let (c, id) = (control.clone(), repo.clone());
            move || {
                let refs = {
                    let store = c.store.lock().unwrap_or_else(PoisonError::into_inner);
                    let state = store.state();
                    if state
                        .head(id.namespace())
                        .is_some_and(|doc| doc.is_delegate(&c.me))
                    {
                        // This node hosts the namespace: a repo it lacks was deleted here,
                        // and no peer's copy brings it back.
                        return None;
                    }
                    let last = state.last_accepted(&id)?;
                    if is_withdrawal(last) {
                        // Its host made it private or deleted it: the mesh does not have it.
                        return None;
                    }
                    last.update.refs.clone()
                };
                Some(c.repos.exists(&id) && c.repos.public_refs(&id).is_ok_and(|r| r == refs))
            }
        };
        match blocking(check.clone()).await.flatten() {
            None => return Err(EnsureError::Unknown),
            Some(true) => return Ok(()),
            Some(false) => {}
        }
        // Reads are anonymous: how many repos they make this node fetch is bounded.
        if let Err(why) = control
            .seeds
            .admit_on_demand(repo, std::time::Instant::now())
        {
            tracing::info!(%repo, %why, "on-demand fetch refused");
            return Err(EnsureError::Pending(why));
        }
        if control
            .tx
            .send(ControlMsg::Ensure(repo.clone()))
            .await
            .is_err()
        {
            return Err(EnsureError::Pending("replication stopped".into()));
        }
        loop {
            tokio::select! {
                changed = synced.changed() => if changed.is_err() { break },
                () = tokio::time::sleep_until(deadline) => break,
            }
            if blocking(check.clone()).await.flatten() == Some(true) {
                return Ok(());
            }
        }
        let (c, id) = (control.clone(), repo.clone());
        let partial = blocking(move || {
            c.repos.exists(&id) && c.repos.public_refs(&id).is_ok_and(|r| !r.is_empty())
        })
        .await
        .unwrap_or(false);
        if partial {
            return Ok(());
        }
        let why = self
            .repo_state(repo)
            .and_then(|s| s.last_error)
            .unwrap_or_else(|| "not arrived yet".into());
        Err(EnsureError::Pending(why))
    }

    /// Fetches one LFS object of `repo` (named by its pointer) ahead of the repo's sync and
    /// waits until it is stored, or until `deadline`.
    pub async fn ensure_lfs(
        &self,
        repo: &RepoId,
        sha256: Sha256,
        size: u64,
        deadline: Instant,
    ) -> Result<(), LfsFetchError> {
        let control = self.control.clone();
        let (reply, rx) = oneshot::channel();
        let msg = ControlMsg::Lfs {
            repo: repo.clone(),
            sha256,
            size,
            reply,
        };
        control
            .tx
            .send(msg)
            .await
            .map_err(|_| LfsFetchError::Stopped)?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result.map_err(LfsFetchError::Failed),
            Ok(Err(_)) => Err(LfsFetchError::Stopped),
            Err(_) => Err(LfsFetchError::Timeout),
        }
    }

    /// Starts fetching one LFS object of `repo` ahead of the repo's sync (as
    /// [`P2p::ensure_lfs`]) and, once its manifest is verified and its spool open (by
    /// `deadline`) and its first chunk verified, streams it from its first byte as its chunks
    /// arrive, each verified. `None`: the object is stored already, or nothing good had
    /// arrived by the deadline (the caller waits or answers 503). The stream ends with an
    /// error if the fetch fails part way (the client sees a short body, never a wrong byte).
    pub async fn stream_lfs(
        &self,
        repo: &RepoId,
        sha256: Sha256,
        size: u64,
        deadline: Instant,
    ) -> Option<mpsc::Receiver<std::io::Result<Vec<u8>>>> {
        let control = self.control.clone();
        let (reply, done) = oneshot::channel();
        let msg = ControlMsg::Lfs {
            repo: repo.clone(),
            sha256,
            size,
            reply,
        };
        control.tx.send(msg).await.ok()?;
        let arriving = self.arrivals.wait_for(&sha256, done, deadline).await?;
        if !arriving.started(deadline).await {
            return None;
        }
        Some(crate::lfs::stream_arriving(
            arriving,
            control.chunks.clone(),
        ))
    }

    /// The nodes (delegates) hosting `namespace`, when its accepted namespace document does
    /// not list this node: writes belong there. `None`: this node is a delegate, or no
    /// document is known (a namespace of this node's own that was never announced).
    pub async fn namespace_hosts(&self, namespace: &str) -> Option<Vec<PeerId>> {
        let control = self.control.clone();
        let ns = namespace.to_owned();
        blocking(move || {
            let store = control.store.lock().unwrap_or_else(PoisonError::into_inner);
            let doc = store.state().head(&ns)?;
            if doc.is_delegate(&control.me) {
                return None;
            }
            Some(doc.delegates().iter().filter_map(peer_id_of).collect())
        })
        .await
        .flatten()
    }
}

/// Starts the swarm and the replication task; the returned task ends when both have.
pub async fn spawn_replicating(
    key: Keypair,
    config: P2pConfig,
    replication: Replication,
    cancel: CancellationToken,
) -> Result<(Mesh, JoinHandle<()>), ReplicationError> {
    let path = replication.ref_store.clone();
    let mut store = tokio::task::spawn_blocking(move || RefStore::open(path))
        .await
        .map_err(|_| RefStoreError::Inconsistent("open task failed".into()))??;
    let me = SigningKey::from_bytes(&replication.secret).public();
    store.protect_local(me, replication.local_names.clone());
    let seeds_path = replication.ref_store.with_file_name(SEEDS_FILE);
    let configured = replication.seeds.clone();
    let seeds = tokio::task::spawn_blocking(move || SeedPolicy::open(Some(seeds_path), configured))
        .await
        .map_err(|e| ReplicationError::Seeds(std::io::Error::other(e)))?
        .map_err(ReplicationError::Seeds)?;
    let seeds = Arc::new(seeds);
    let mut bound = hub_net::bind(key, config).await?;
    let events = bound.inbound();
    let p2p = bound.handle().clone();
    let stats = Arc::new(Stats::new(p2p.clone()));
    let changes = Arc::new(Changes::default());
    let arrivals = Arc::new(Arrivals::default());
    let store = Arc::new(Mutex::new(store));
    let key = SigningKey::from_bytes(&replication.secret);
    let synced = Arc::new(watch::channel(0u64).0);
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let control = Arc::new(Control {
        seeds: seeds.clone(),
        store: store.clone(),
        repos: replication.repos.clone(),
        me: key.public(),
        key: SigningKey::from_bytes(&replication.secret),
        tx: control_tx,
        synced: synced.clone(),
        chunks: replication.store.clone(),
    });
    let (done_tx, done_rx) = mpsc::channel(64);
    let ctx = Arc::new(Ctx {
        store,
        key,
        repos: replication.repos,
        chunks: replication.store,
        on_replicated: replication.on_replicated,
        p2p: p2p.clone(),
        stats: stats.clone(),
        corrupt_chunks: replication.corrupt_chunks_for_tests,
        seeds,
        synced,
        arrivals: arrivals.clone(),
        inflight: Mutex::default(),
        serving: Mutex::default(),
        serve_slots: Arc::new(tokio::sync::Semaphore::new(MAX_SERVING)),
        chunk_sets: Mutex::default(),
    });
    let source: Arc<dyn BlobSource> = ctx.clone();
    bound.serve_blobs(Arc::downgrade(&source));
    let swarm_task = bound.spawn(cancel.clone());
    let task = Task {
        p2p: p2p.clone(),
        ctx,
        changes: changes.clone(),
        pending: HashMap::new(),
        fetching: HashMap::new(),
        failed: HashMap::new(),
        done_tx,
    };
    let replication_task = tokio::spawn(task.run(events, done_rx, control_rx, cancel));
    let joined = tokio::spawn(async move {
        let _ = replication_task.await;
        let _ = swarm_task.await;
    });
    let mesh = Mesh {
        p2p,
        stats,
        control,
        changes,
        arrivals,
    };
    Ok((mesh, joined))
}

/// What fetch tasks and the main loop share.
struct Ctx {
    /// Used only on blocking threads (its methods sync to disk).
    store: Arc<Mutex<RefStore>>,
    key: SigningKey,
    repos: Arc<Repos>,
    chunks: hub_store::Store,
    on_replicated: OnReplicated,
    p2p: P2p,
    stats: Arc<Stats>,
    corrupt_chunks: bool,
    /// Which repos this node seeds (configuration, run time, fetched on demand).
    seeds: Arc<SeedPolicy>,
    /// Bumped whenever a fetch applied a pack or finished: on-demand waiters re-check.
    synced: Arc<watch::Sender<u64>>,
    /// LFS objects being fetched now (shared with the [`Mesh`] handle's downloads).
    arrivals: Arc<Arrivals>,
    /// LFS objects being fetched now; a second fetcher of one waits for the first.
    inflight: Mutex<BTreeMap<Sha256, watch::Receiver<()>>>,
    /// Requests being served per peer (bounded by [`MAX_SERVING_PER_PEER`]).
    serving: Mutex<HashMap<PeerId, usize>>,
    serve_slots: Arc<tokio::sync::Semaphore>,
    /// Chunk ids of files served over the blob endpoint.
    chunk_sets: Mutex<crate::lfs::ChunkSets>,
}

impl BlobSource for Ctx {
    fn admit(self: Arc<Self>, peer: PeerId) -> Admission {
        Box::pin(async move { admit(&self, peer).await.map(|s| Box::new(s) as Place) })
    }

    fn read(&self, manifest: &Hash, ids: &[Hash]) -> Result<Vec<Vec<u8>>, ReadError> {
        crate::lfs::serve_blobs(&self.repos, &self.chunks, &self.chunk_sets, manifest, ids)
            .map_err(Into::into)
    }

    fn served(&self, peer: PeerId, bytes: u64) {
        let stats = &self.stats;
        stats.chunk_bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        stats.blob_bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        stats.peers.update(peer, |p| p.chunk_bytes_sent += bytes);
    }

    fn corrupt(&self) -> Option<usize> {
        self.corrupt_chunks.then_some(0)
    }
}

/// One request being served for a peer; frees its place when dropped.
struct Serving {
    ctx: Arc<Ctx>,
    peer: PeerId,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let mut serving = self
            .ctx
            .serving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = serving.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                serving.remove(&self.peer);
            }
        }
    }
}

/// A place to serve one more request of `peer`: `None` when it has
/// [`MAX_SERVING_PER_PEER`] running already; waits while all [`MAX_SERVING`] are busy.
async fn admit(ctx: &Arc<Ctx>, peer: PeerId) -> Option<Serving> {
    {
        let mut serving = ctx.serving.lock().unwrap_or_else(PoisonError::into_inner);
        let n = serving.entry(peer).or_default();
        if *n >= MAX_SERVING_PER_PEER {
            tracing::debug!(%peer, "peer over its request limit; refused");
            return None;
        }
        *n += 1;
    }
    // Counted before the wait, so a peer cannot queue more than its share either.
    let slot = ctx.serve_slots.clone().acquire_owned().await;
    let mut serving = ctx.serving.lock().unwrap_or_else(PoisonError::into_inner);
    match slot {
        Ok(slot) => Some(Serving {
            ctx: ctx.clone(),
            peer,
            _slot: slot,
        }),
        // The semaphore is never closed; undo the count all the same.
        Err(_) => {
            if let Some(n) = serving.get_mut(&peer) {
                *n = n.saturating_sub(1);
            }
            None
        }
    }
}

impl Ctx {
    fn store(&self) -> std::sync::MutexGuard<'_, RefStore> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Task {
    p2p: P2p,
    ctx: Arc<Ctx>,
    changes: Arc<Changes>,
    /// Updates waiting for their namespace document: repo → (bytes, publisher, forwarder).
    pending: HashMap<RepoId, (Vec<u8>, Option<PeerId>, PeerId)>,
    /// Repos with a fetch running; `true` when another accepted update arrived meanwhile.
    fetching: HashMap<RepoId, (bool, Vec<PeerId>)>,
    /// Repos whose last fetch failed, with the peers to try again.
    failed: HashMap<RepoId, Vec<PeerId>>,
    done_tx: mpsc::Sender<(RepoId, bool)>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

impl Task {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        mut done: mpsc::Receiver<(RepoId, bool)>,
        mut control: mpsc::Receiver<ControlMsg>,
        cancel: CancellationToken,
    ) {
        let mut retry = tokio::time::interval(RETRY_PERIOD);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.resume().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.changes.notify.notified() => {
                    for repo in self.changes.take() {
                        self.publish(repo).await;
                    }
                }
                event = events.recv() => match event {
                    Some(event) => self.event(event).await,
                    None => break,
                },
                Some((repo, ok)) = done.recv() => self.fetched(repo, ok),
                Some(msg) = control.recv() => self.on_control(msg).await,
                _ = retry.tick() => {
                    for (repo, peers) in std::mem::take(&mut self.failed) {
                        // A repo no longer seeded (`seed rm`) is not fetched again.
                        if self.ctx.seeds.matches(&repo) {
                            self.fetch(repo, peers);
                        }
                    }
                }
            }
        }
        tracing::debug!("replication task stopped");
    }

    /// Records the accepted seqs, and schedules a sync of every seeded repo with an accepted
    /// update: it fetches what an earlier run left missing (nothing, when all is stored).
    async fn resume(&mut self) {
        let ctx = self.ctx.clone();
        let accepted = blocking(move || {
            let store = ctx.store();
            store
                .state()
                .accepted()
                .map(|(repo, update)| (repo.clone(), update.update.seq))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (repo, seq) in accepted {
            let seeded = self.ctx.seeds.matches(&repo);
            self.ctx.stats.repos.update(&repo, |s| {
                s.last_seq = Some(seq);
                s.seeded = seeded;
            });
            if seeded {
                self.failed.insert(repo, Vec::new());
            }
        }
    }

    /// Signs and gossips the state of a locally written repo (public ones only).
    async fn publish(&mut self, repo: RepoId) {
        let ctx = self.ctx.clone();
        let id = repo.clone();
        let signed =
            blocking(move || sign_update(&mut ctx.store(), &ctx.key, &ctx.repos, &ctx.chunks, &id))
                .await
                .flatten();
        let Some((doc, update)) = signed else {
            return;
        };
        if let Some(doc) = doc {
            self.gossip(Topic::Namespaces, doc.encode());
        }
        let seq = update.update.seq;
        self.ctx
            .stats
            .repos
            .update(&repo, |s| s.last_seq = Some(seq));
        self.gossip(Topic::Refs, update.encode());
        if is_withdrawal(&update) {
            tracing::info!(%repo, seq, "withdrawing the repo from the mesh (private or deleted)");
            self.p2p.stop_providing(repo);
        } else {
            tracing::info!(%repo, seq, lfs = update.update.lfs.len(), "announcing signed refs");
            self.p2p.provide(repo);
        }
    }

    fn gossip(&self, topic: Topic, data: Vec<u8>) {
        if !self.p2p.try_publish(topic, data) {
            tracing::warn!(?topic, "swarm command queue full; gossip dropped");
        }
    }

    async fn event(&mut self, event: NetEvent) {
        match event {
            NetEvent::Gossip {
                topic,
                id,
                propagation_source,
                author,
                data,
            } => {
                let verdict = match topic {
                    Topic::Namespaces => self.on_doc(data).await,
                    Topic::Refs => self.on_update(data, author, propagation_source).await,
                    // Routed to the compute mesh by the swarm; never reaches this task.
                    Topic::Capacity => Verdict::Ignore,
                };
                let counter = if verdict == Verdict::Accept {
                    &self.ctx.stats.gossip_accepted
                } else {
                    &self.ctx.stats.gossip_refused
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.p2p.validate(id, propagation_source, verdict);
            }
            NetEvent::Subscribed { peer, topic } => {
                tracing::debug!(%peer, ?topic, "peer subscribed; re-gossiping our state");
                let ctx = self.ctx.clone();
                let messages = blocking(move || own_state(&ctx, topic))
                    .await
                    .unwrap_or_default();
                for data in messages {
                    self.gossip(topic, data);
                }
            }
            NetEvent::PackRequest {
                peer,
                request,
                channel,
            } => {
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    let Some(_serving) = admit(&ctx, peer).await else {
                        let response = PackResponse::Failed;
                        let _ = ctx.p2p.respond_pack(channel, response).await;
                        return;
                    };
                    let repo = request.repo.clone();
                    let response = blocking({
                        let ctx = ctx.clone();
                        move || serve_pack(&ctx.repos, ctx.p2p.blobs(), peer, &request)
                    })
                    .await
                    .unwrap_or(PackResponse::Failed);
                    tracing::debug!(%peer, %repo, ok = matches!(response, PackResponse::Pack(_)), "served pack request");
                    let _ = ctx.p2p.respond_pack(channel, response).await;
                });
            }
            NetEvent::BlockRequest {
                peer,
                request,
                channel,
            } => {
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    let Some(_serving) = admit(&ctx, peer).await else {
                        let response = BlockResponse::Failed;
                        let _ = ctx.p2p.respond_blocks(channel, response).await;
                        return;
                    };
                    let response = blocking({
                        let ctx = ctx.clone();
                        move || {
                            crate::lfs::serve(&ctx.repos, &ctx.chunks, &request, ctx.corrupt_chunks)
                        }
                    })
                    .await
                    .unwrap_or(BlockResponse::Failed);
                    if let BlockResponse::Chunks(chunks) = &response {
                        let bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                        ctx.stats
                            .chunk_bytes_sent
                            .fetch_add(bytes, Ordering::Relaxed);
                        ctx.stats
                            .peers
                            .update(peer, |p| p.chunk_bytes_sent += bytes);
                    }
                    let _ = ctx.p2p.respond_blocks(channel, response).await;
                });
            }
        }
    }

    async fn on_doc(&mut self, data: Vec<u8>) -> Verdict {
        let ctx = self.ctx.clone();
        let result = blocking(move || ctx.store().apply_namespace_doc_bytes(&data)).await;
        match result {
            Some(Ok(accepted)) => {
                tracing::debug!(?accepted, "namespace document accepted");
                // Updates that waited for a document get another chance.
                for (_, (bytes, author, via)) in std::mem::take(&mut self.pending) {
                    Box::pin(self.on_update(bytes, author, via)).await;
                }
                Verdict::Accept
            }
            // Another node's claim on a name this node gave to someone first (ADR 0006): not
            // forwarded, but no forgery either, so the sender is not penalised.
            Some(Err(RefStoreError::DocRejected(reason @ DocReject::ConflictingClaim { .. }))) => {
                tracing::info!(%reason, "conflicting namespace claim not taken");
                Verdict::Ignore
            }
            Some(Err(RefStoreError::DocRejected(reason))) => {
                tracing::warn!(%reason, "namespace document rejected");
                Verdict::Reject
            }
            Some(Err(error @ RefStoreError::LocalNamespace { .. })) => claims::refused(
                &self.ctx.stats.foreign_claims_refused,
                &error,
                "namespace document",
            ),
            Some(Err(error)) => {
                tracing::warn!(%error, "namespace document not stored");
                Verdict::Ignore
            }
            None => Verdict::Ignore,
        }
    }

    async fn on_update(&mut self, data: Vec<u8>, author: Option<PeerId>, via: PeerId) -> Verdict {
        let signed = match SignedRefUpdate::decode(&data) {
            Ok(signed) => signed,
            Err(error) => {
                tracing::warn!(%via, %error, "malformed ref update rejected");
                return Verdict::Reject;
            }
        };
        let repo = signed.update.repo.clone();
        let ctx = self.ctx.clone();
        let id = repo.clone();
        let result = blocking(move || {
            ctx.store()
                .apply_ref_update(&id, signed, now())
                .map(|u| (u.update.seq, is_withdrawal(u)))
        })
        .await;
        match result {
            Some(Ok((seq, withdrawn))) => {
                tracing::info!(%repo, seq, %via, "ref update accepted");
                let seeded = self.ctx.seeds.matches(&repo);
                self.ctx.stats.repos.update(&repo, |s| {
                    s.last_seq = Some(seq);
                    s.seeded = seeded;
                });
                // A withdrawal is obeyed whether the repo is seeded or was fetched once.
                if seeded || withdrawn {
                    let peers = author.into_iter().chain([via]).collect();
                    self.fetch(repo, peers);
                }
                Verdict::Accept
            }
            Some(Err(RefStoreError::Rejected(RefReject::UnknownNamespaceDoc { doc }))) => {
                tracing::debug!(%repo, %doc, "ref update waits for its namespace document");
                if self.pending.len() < MAX_PENDING || self.pending.contains_key(&repo) {
                    self.pending.insert(repo, (data, author, via));
                }
                Verdict::Ignore
            }
            Some(Err(RefStoreError::Rejected(reason @ RefReject::StaleSeq { .. }))) => {
                tracing::debug!(%repo, %reason, "ref update ignored");
                Verdict::Ignore
            }
            Some(Err(RefStoreError::Rejected(reason))) => {
                tracing::warn!(%repo, %via, author = ?author, %reason, "ref update rejected");
                Verdict::Reject
            }
            Some(Err(error @ RefStoreError::LocalNamespace { .. })) => claims::refused(
                &self.ctx.stats.foreign_updates_refused,
                &error,
                "ref update",
            ),
            Some(Err(error)) => {
                tracing::warn!(%repo, %error, "ref update not stored");
                Verdict::Ignore
            }
            None => Verdict::Ignore,
        }
    }

    async fn on_control(&mut self, msg: ControlMsg) {
        match msg {
            ControlMsg::SeedsChanged => {
                let ctx = self.ctx.clone();
                let accepted = blocking(move || {
                    ctx.store()
                        .state()
                        .accepted()
                        .map(|(repo, _)| repo.clone())
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                for repo in accepted {
                    let seeded = self.ctx.seeds.matches(&repo);
                    let was = self.ctx.stats.repos.get(&repo).is_some_and(|s| s.seeded);
                    self.ctx.stats.repos.update(&repo, |s| s.seeded = seeded);
                    if seeded && !was {
                        tracing::info!(%repo, "now seeded; syncing");
                        self.fetch(repo, Vec::new());
                    } else if !seeded {
                        self.failed.remove(&repo);
                    }
                }
            }
            ControlMsg::Ensure(repo) => {
                let (seeds, id) = (self.ctx.seeds.clone(), repo.clone());
                // Remembered only when no pattern covers it already.
                let remember = move || {
                    if seeds.matches(&id) {
                        Ok(false)
                    } else {
                        seeds.add_fetched(&id)
                    }
                };
                match blocking(remember).await {
                    Some(Ok(true)) => {
                        tracing::info!(%repo, "fetching on demand; seeded from now on");
                    }
                    Some(Err(error @ SeedError::TooManyFetched)) => {
                        // Not kept, so not fetched either (seeds::MAX_FETCHED).
                        tracing::warn!(%repo, %error, "fetched repo not remembered; not fetched");
                        return;
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%repo, %error, "fetched repo not remembered");
                    }
                    _ => {}
                }
                self.ctx.stats.repos.update(&repo, |s| s.seeded = true);
                if !self.fetching.contains_key(&repo) {
                    let peers = self.failed.remove(&repo).unwrap_or_default();
                    self.fetch(repo, peers);
                }
            }
            ControlMsg::Lfs {
                repo,
                sha256,
                size,
                reply,
            } => {
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    let result = priority_lfs(&ctx, &repo, sha256, size).await;
                    if let Err(error) = &result {
                        tracing::warn!(%repo, %sha256, %error, "LFS object wanted by a download not fetched");
                    }
                    let _ = reply.send(result);
                });
            }
        }
    }

    /// Starts (or re-arms) the fetch of a seeded repo.
    fn fetch(&mut self, repo: RepoId, peers: Vec<PeerId>) {
        if let Some((again, known)) = self.fetching.get_mut(&repo) {
            *again = true;
            *known = peers;
            return;
        }
        self.fetching.insert(repo.clone(), (false, peers.clone()));
        let (ctx, done) = (self.ctx.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            let ok = match fetch_repo(&ctx, &repo, peers).await {
                Ok(()) => {
                    ctx.stats.repos.update(&repo, |s| s.last_error = None);
                    true
                }
                Err(error) => {
                    tracing::warn!(%repo, %error, "replication fetch failed; will retry");
                    ctx.stats
                        .repos
                        .update(&repo, |s| s.last_error = Some(error));
                    false
                }
            };
            let _ = done.send((repo, ok)).await;
        });
    }

    fn fetched(&mut self, repo: RepoId, ok: bool) {
        self.ctx.synced.send_modify(|n| *n += 1);
        let Some((again, peers)) = self.fetching.remove(&repo) else {
            return;
        };
        let withdrawn = self
            .ctx
            .store()
            .state()
            .last_accepted(&repo)
            .is_some_and(is_withdrawal);
        if ok && !withdrawn {
            // A seeder with the whole repo is one more provider of it.
            self.p2p.provide(repo.clone());
        }
        if again {
            self.fetch(repo, peers);
        } else if !ok {
            self.failed.insert(repo, peers);
        }
    }
}

/// Builds (and accepts into our own store) the next signed update of `repo`, plus the
/// namespace genesis when this is the namespace's first update. `None` when the repo is
/// private or gone and was never announced, or in a namespace this node is not a delegate of.
///
/// A repo that was announced and is now private or deleted gets a **withdrawal**: the next
/// update with no refs and no LFS bindings. Seeders obey it at once (they drop their copy,
/// stop serving and providing it), nodes that never held it will not fetch it on demand, and
/// it is re-gossiped to peers that join later, so a seeder that was offline hears it too.
/// Making the repo public again announces it anew with a higher sequence number.
fn sign_update(
    store: &mut RefStore,
    key: &SigningKey,
    repos: &Repos,
    chunks: &hub_store::Store,
    repo: &RepoId,
) -> Option<(Option<SignedNamespaceDoc>, SignedRefUpdate)> {
    match repos.meta(repo) {
        Ok(meta) if !meta.private => {}
        Ok(_) | Err(RepoError::NotFound { .. }) => return sign_withdrawal(store, key, repo),
        Err(error) => {
            tracing::warn!(%repo, %error, "cannot read repo metadata; not announced");
            return None;
        }
    }
    let refs = match repos.public_refs(repo) {
        Ok(refs) => refs,
        Err(error) => {
            tracing::warn!(%repo, %error, "cannot read refs; not announced");
            return None;
        }
    };
    let me = key.public();
    let mut genesis = None;
    let doc = match store.state().head(repo.namespace()) {
        Some(doc) => doc.clone(),
        None => {
            let doc = NamespaceDoc::new(repo.namespace(), vec![me], 1, Visibility::Public)
                .inspect_err(
                    |error| tracing::warn!(%repo, %error, "cannot make a namespace document"),
                )
                .ok()?;
            let signed = doc.sign_genesis(&[key]);
            if let Err(error) = store.apply_namespace_doc(signed.clone()) {
                tracing::warn!(%repo, %error, "own namespace document refused");
                return None;
            }
            genesis = Some(signed);
            doc
        }
    };
    if !doc.is_delegate(&me) {
        tracing::debug!(%repo, "not a delegate of the namespace; not announced");
        return None;
    }
    let seq = store.state().last_seq(repo).unwrap_or(0) + 1;
    let mut update = RefUpdate::new(repo.clone(), doc.id(), seq, now());
    let mut tips: Vec<[u8; 20]> = refs.values().copied().collect();
    tips.sort_unstable();
    tips.dedup();
    update.refs = refs;
    match repos.lfs_pointers(repo, &tips, MAX_LFS) {
        Ok(pointers) => {
            for sha in pointers.into_keys() {
                // Only the repo's own objects: binding another one's would hand out the
                // manifest id that proves possession (crate::lfs::stored_as).
                if !repos.has_lfs_object(repo, &sha).unwrap_or(false) {
                    tracing::warn!(%repo, sha256 = %Sha256(sha), "LFS object not in the repo's set; not bound");
                    continue;
                }
                match chunks.manifest(&Sha256(sha)) {
                    Ok((id, _)) => {
                        update.lfs.insert(Sha256(sha), id);
                    }
                    Err(error) => {
                        tracing::warn!(%repo, sha256 = %Sha256(sha), %error, "LFS object without a manifest; not bound");
                    }
                }
            }
        }
        Err(error) => tracing::warn!(%repo, %error, "cannot list LFS pointers; none bound"),
    }
    let signed = update
        .sign(key)
        .inspect_err(|error| tracing::warn!(%repo, %error, "cannot sign ref update"))
        .ok()?;
    if let Err(error) = store.apply_ref_update(repo, signed.clone(), now()) {
        tracing::warn!(%repo, %error, "own ref update refused");
        return None;
    }
    Some((genesis, signed))
}

/// The withdrawal of a repo that was announced and is now private or gone here (see
/// [`sign_update`]); `None` when there is nothing to withdraw (never announced, withdrawn
/// already, or not this node's namespace).
fn sign_withdrawal(
    store: &mut RefStore,
    key: &SigningKey,
    repo: &RepoId,
) -> Option<(Option<SignedNamespaceDoc>, SignedRefUpdate)> {
    let me = key.public();
    let doc = store.state().head(repo.namespace())?.clone();
    if !doc.is_delegate(&me) {
        return None;
    }
    let last = store.state().last_accepted(repo)?;
    if is_withdrawal(last) {
        return None;
    }
    let seq = last.update.seq + 1;
    let signed = RefUpdate::new(repo.clone(), doc.id(), seq, now())
        .sign(key)
        .inspect_err(|error| tracing::warn!(%repo, %error, "cannot sign a withdrawal"))
        .ok()?;
    if let Err(error) = store.apply_ref_update(repo, signed.clone(), now()) {
        tracing::warn!(%repo, %error, "own withdrawal refused");
        return None;
    }
    Some((None, signed))
}

/// Whether an accepted update withdraws its repo (no refs: made private or deleted).
fn is_withdrawal(update: &SignedRefUpdate) -> bool {
    update.update.refs.is_empty()
}

/// Obeys a withdrawal (blocking): drops this node's replica of `repo` — git data, LFS set,
/// GC roots, listing entry — unless the namespace is this node's own. Its LFS content is then
/// listed by no repo: it is neither served to peers nor downloadable, and `hubmesh store gc`
/// reclaims what no other repo holds. Returns whether a replica was dropped.
fn withdraw_replica(ctx: &Ctx, repo: &RepoId) -> Result<bool, String> {
    let hosted_here = ctx
        .store()
        .state()
        .head(repo.namespace())
        .is_some_and(|doc| doc.is_delegate(&ctx.key.public()));
    if hosted_here || !ctx.repos.exists(repo) {
        return Ok(false);
    }
    hub_core::lfs_objects::release(&ctx.repos, &ctx.chunks, repo).map_err(|e| e.to_string())?;
    match ctx.repos.delete(repo) {
        Ok(()) | Err(RepoError::NotFound { .. }) => {}
        Err(error) => return Err(error.to_string()),
    }
    (ctx.on_replicated)(repo);
    Ok(true)
}

/// What a peer that just subscribed is sent to catch up: every namespace chain and every
/// accepted update of a public repo, ours or relayed (a node that joined through a seeder
/// hears of repos whose publisher it is not connected to, or that is gone). Receivers judge
/// them like any gossip; what they hold already is ignored as a replay.
fn own_state(ctx: &Ctx, topic: Topic) -> Vec<Vec<u8>> {
    let store = ctx.store();
    let state = store.state();
    match topic {
        // Adverts are periodic; a new peer hears the next round.
        Topic::Capacity => Vec::new(),
        Topic::Namespaces => state
            .namespaces()
            .flat_map(|ns| state.chain(ns).iter().map(SignedNamespaceDoc::encode))
            .take(MAX_CATCH_UP)
            .collect(),
        Topic::Refs => state
            .accepted()
            // Never re-gossip a repo that is private here, except its withdrawal (which
            // names no refs).
            .filter(|(repo, update)| {
                is_withdrawal(update) || !ctx.repos.meta(repo).is_ok_and(|m| m.private)
            })
            .map(|(_, update)| update.encode())
            .take(MAX_CATCH_UP)
            .collect(),
    }
}

/// Answers a pack request: only for public repos, only with objects the repo has.
/// Answers a pack request (blocking): the pack in the answer, or, when both sides run the
/// blob data plane, held for `peer` as a blob (up to [`MAX_BLOB_PACK_LEN`]).
fn serve_pack(
    repos: &Repos,
    blobs: Option<&hub_net::Blobs>,
    peer: PeerId,
    request: &PackRequest,
) -> PackResponse {
    match repos.meta(&request.repo) {
        Ok(meta) if !meta.private => {}
        _ => return PackResponse::NotFound,
    }
    let blobs = blobs.filter(|_| request.blob);
    let limit = match blobs {
        Some(_) => MAX_BLOB_PACK_LEN,
        None => MAX_PACK_LEN as u64,
    };
    match repos.build_pack(&request.repo, &request.want, &request.have, limit) {
        Ok(pack) => match blobs {
            Some(blobs) => {
                let (hash, size) = blobs.offer(peer, pack);
                PackResponse::Blob { hash, size }
            }
            None => PackResponse::Pack(pack),
        },
        Err(hub_repo::ReplicaError::MissingObject { .. }) => PackResponse::NotFound,
        Err(hub_repo::ReplicaError::TooLarge { limit }) => PackResponse::TooLarge { limit },
        Err(error) => {
            tracing::warn!(repo = %request.repo, %error, "cannot build pack");
            PackResponse::Failed
        }
    }
}

/// Brings `repo` to its last accepted update: asks each candidate peer in turn (then DHT
/// providers) for the pack of the difference and applies the first good one.
async fn fetch_repo(ctx: &Arc<Ctx>, repo: &RepoId, mut peers: Vec<PeerId>) -> Result<(), String> {
    let (c, id) = (ctx.clone(), repo.clone());
    let target = blocking(move || {
        let update = c.store().state().last_accepted(&id).cloned()?;
        let local = c.repos.exists(&id);
        if local && c.repos.meta(&id).is_ok_and(|m| m.private) {
            // A private repo of this node under the same name is never overwritten.
            return None;
        }
        let have = if local {
            c.repos.ref_tips(&id).unwrap_or_default()
        } else {
            Vec::new()
        };
        let current = if local {
            c.repos.public_refs(&id).unwrap_or_default()
        } else {
            Default::default()
        };
        Some((update, have, current, local))
    })
    .await
    .flatten();
    let Some((update, have, current, local)) = target else {
        return Ok(());
    };
    if is_withdrawal(&update) {
        let (c, id) = (ctx.clone(), repo.clone());
        let dropped = blocking(move || withdraw_replica(&c, &id))
            .await
            .ok_or("withdrawal task failed")??;
        if dropped {
            tracing::info!(%repo, seq = update.update.seq, "repo withdrawn by its host; replica dropped");
        }
        ctx.p2p.stop_providing(repo.clone());
        return Ok(());
    }
    if peers.is_empty() {
        // Resumed, retried or fetched on demand: no gossip peer to prefer; the connected
        // peers first (a quick NotFound from those without it), then the DHT's providers.
        peers = ctx.p2p.connected();
    }
    let gossip_peers = peers.clone();
    if local && current == update.update.refs {
        return sync_lfs(ctx, repo, &update, gossip_peers).await;
    }
    let mut want: Vec<[u8; 20]> = update.update.refs.values().copied().collect();
    want.sort_unstable();
    want.dedup();
    let request = PackRequest {
        repo: repo.clone(),
        want,
        have,
        blob: ctx.p2p.blobs().is_some(),
    };
    // The gossip peers first; DHT providers only when none of them could serve (a DHT query
    // can take as long as its timeout).
    let me = ctx.p2p.peer_id();
    let mut tried = std::collections::HashSet::from([me]);
    peers.retain(|p| tried.insert(*p));
    let mut last_error = match try_peers(ctx, &request, &update, &peers).await {
        Ok(()) => return sync_lfs(ctx, repo, &update, gossip_peers).await,
        Err(error) => error,
    };
    if let Ok(mut providers) = ctx.p2p.providers(repo).await {
        providers.retain(|p| tried.insert(*p));
        if !providers.is_empty() {
            last_error = match try_peers(ctx, &request, &update, &providers).await {
                Ok(()) => return sync_lfs(ctx, repo, &update, gossip_peers).await,
                Err(error) => error,
            };
        }
    }
    Err(last_error)
}

/// Fetches the LFS objects the repo's tips reference and the store lacks (module `lfs`).
/// An error when some could not be fetched: the repo is synced again later.
async fn sync_lfs(
    ctx: &Arc<Ctx>,
    repo: &RepoId,
    update: &SignedRefUpdate,
    gossip_peers: Vec<PeerId>,
) -> Result<(), String> {
    let (c, id, binding) = (ctx.clone(), repo.clone(), update.update.lfs.clone());
    let missing = blocking(move || crate::lfs::missing(&c.repos, &c.chunks, &id, &binding))
        .await
        .ok_or("LFS scan task failed")??;
    let set_missing = |n: usize| {
        ctx.stats.repos.update(repo, |s| {
            s.lfs_missing = n as u64;
            s.lfs_unbound = missing.unbound as u64;
        })
    };
    set_missing(missing.wanted.len());
    if missing.unbound > 0 {
        tracing::warn!(%repo, unbound = missing.unbound, "LFS pointers the signed update binds to no manifest; not fetched");
    }
    if missing.wanted.is_empty() {
        return Ok(());
    }
    let total: u64 = missing.wanted.iter().map(|w| w.size).sum();
    if total > MAX_ON_DEMAND_LFS && ctx.seeds.on_demand_only(repo) {
        // A read fetched this repo; its content comes when a download asks for it.
        tracing::info!(%repo, total, "on-demand repo: LFS objects fetched per download only");
        return Ok(());
    }
    // Publisher and forwarder first, then every connected peer, then the DHT's providers
    // (other seeders): chunk batches are spread over several of them at once.
    let me = ctx.p2p.peer_id();
    let mut seen = std::collections::HashSet::from([me]);
    let providers = tokio::time::timeout(PROVIDERS_TIMEOUT, ctx.p2p.providers(repo))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let peers: Vec<PeerId> = gossip_peers
        .into_iter()
        .chain(ctx.p2p.connected())
        .chain(providers)
        .filter(|p| seen.insert(*p))
        .collect();
    let mut left = missing.wanted.len();
    let mut last_error = None;
    for wanted in missing.wanted {
        match fetch_lfs_once(ctx, repo, wanted, &peers).await {
            Ok(()) => {
                left -= 1;
                set_missing(left);
            }
            Err(error) => {
                tracing::warn!(%repo, sha256 = %wanted.sha256, %error, "LFS object not fetched");
                last_error = Some(error);
            }
        }
    }
    match last_error {
        None => Ok(()),
        Some(error) => Err(format!("{left} LFS objects still missing; last: {error}")),
    }
}

/// Ends an in-flight LFS fetch: waiters wake (the sender drops) and re-check the store.
struct Inflight {
    ctx: Arc<Ctx>,
    sha256: Sha256,
    _done: watch::Sender<()>,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.ctx
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.sha256);
    }
}

/// Fetches one LFS object for `repo` (module `lfs`) from `peers`, then the DHT's providers,
/// and records it (GC root, the repo's LFS set). One fetch per object at a time: a second
/// caller (a download that wants the object while the repo's sync fetches it, or the other
/// way round) waits for the first and re-checks the store.
async fn fetch_lfs_once(
    ctx: &Arc<Ctx>,
    repo: &RepoId,
    wanted: Wanted,
    peers: &[PeerId],
) -> Result<(), String> {
    let sha = wanted.sha256;
    let (waiting, guard) = {
        let mut map = ctx.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(&sha) {
            Some(rx) => (Some(rx.clone()), None),
            None => {
                let (tx, rx) = watch::channel(());
                map.insert(sha, rx);
                let guard = Inflight {
                    ctx: ctx.clone(),
                    sha256: sha,
                    _done: tx,
                };
                (None, Some(guard))
            }
        }
    };
    if let Some(mut rx) = waiting {
        // Resolves when the other fetch ends (its sender drops).
        let _ = rx.changed().await;
        let (c, s, m) = (ctx.clone(), sha, wanted.manifest_id);
        let stored = blocking(move || crate::lfs::stored_as(&c.chunks, &s, Some(&m)))
            .await
            .unwrap_or(false);
        if !stored {
            return Err("a concurrent fetch of this object failed".into());
        }
        return record_lfs(ctx, repo, sha).await;
    }
    let me = ctx.p2p.peer_id();
    let more = || async {
        tokio::time::timeout(PROVIDERS_TIMEOUT, ctx.p2p.providers(repo))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| *p != me)
            .collect()
    };
    let bytes = crate::lfs::fetch_object(
        &ctx.p2p,
        &ctx.stats,
        &ctx.chunks,
        &ctx.arrivals,
        wanted,
        peers,
        more,
    )
    .await?;
    record_lfs(ctx, repo, sha).await?;
    drop(guard);
    ctx.stats
        .lfs_objects_fetched
        .fetch_add(1, Ordering::Relaxed);
    ctx.stats.repos.update(repo, |s| {
        s.lfs_fetched += 1;
        s.chunk_bytes_received += bytes;
    });
    tracing::info!(%repo, sha256 = %wanted.sha256, size = wanted.size, bytes, "LFS object replicated");
    Ok(())
}

/// A stored object joins the GC roots and `repo`'s LFS set.
async fn record_lfs(ctx: &Arc<Ctx>, repo: &RepoId, sha: Sha256) -> Result<(), String> {
    let (c, id) = (ctx.clone(), repo.clone());
    blocking(move || {
        hub_core::lfs_objects::adopt(&c.repos, &c.chunks, &id, &sha).map_err(|e| e.to_string())
    })
    .await
    .ok_or("record task failed")?
}

/// A download waits for one LFS object of `repo`: fetch it now, ahead of the repo's sync
/// (which fetches objects one at a time), verified against the last accepted update.
async fn priority_lfs(
    ctx: &Arc<Ctx>,
    repo: &RepoId,
    sha256: Sha256,
    size: u64,
) -> Result<(), String> {
    let (c, id) = (ctx.clone(), repo.clone());
    let (manifest_id, stored) = blocking(move || {
        let manifest = c
            .store()
            .state()
            .last_accepted(&id)
            .and_then(|u| u.update.lfs.get(&sha256).copied());
        let stored = crate::lfs::stored_as(&c.chunks, &sha256, manifest.as_ref());
        (manifest, stored)
    })
    .await
    .ok_or("lookup task failed")?;
    if stored {
        return record_lfs(ctx, repo, sha256).await;
    }
    let manifest_id =
        manifest_id.ok_or("no accepted signed update binds this object to a manifest")?;
    let wanted = Wanted {
        sha256,
        size,
        manifest_id,
    };
    let peers = ctx.p2p.connected();
    fetch_lfs_once(ctx, repo, wanted, &peers).await
}

/// Asks each peer in turn for the pack and applies the first good one.
/// Fetches a pack `peer` holds for this node as a blob, verified group by group.
async fn fetch_pack_blob(
    ctx: &Arc<Ctx>,
    peer: PeerId,
    hash: [u8; 32],
    size: u64,
) -> Result<Vec<u8>, String> {
    let blobs = ctx
        .p2p
        .blobs()
        .ok_or("offered a blob without a blob endpoint")?;
    let addrs = ctx.p2p.blob_addrs_of(blobs, peer).await;
    if addrs.is_empty() {
        return Err("no address of its blob endpoint".into());
    }
    match blobs.get_pack(peer, &addrs, hash, size).await {
        Ok(pack) => {
            ctx.stats
                .pack_blob_bytes_received
                .fetch_add(pack.len() as u64, Ordering::Relaxed);
            Ok(pack)
        }
        Err(GetError::Bad { bytes, reason }) => {
            ctx.stats.peers.update(peer, |p| p.bad_chunks += 1);
            ctx.stats.chunks_rejected.fetch_add(1, Ordering::Relaxed);
            Err(format!("{reason} (after {bytes} good bytes)"))
        }
        Err(GetError::Failed(reason)) => Err(reason),
    }
}

async fn try_peers(
    ctx: &Arc<Ctx>,
    request: &PackRequest,
    update: &SignedRefUpdate,
    peers: &[PeerId],
) -> Result<(), String> {
    let repo = &request.repo;
    let mut last_error = "no peer to fetch from".to_owned();
    for &peer in peers {
        let pack = match ctx.p2p.fetch_pack(peer, request.clone()).await {
            Ok(PackResponse::Pack(pack)) => pack,
            Ok(PackResponse::Blob { hash, size }) => {
                match fetch_pack_blob(ctx, peer, hash, size).await {
                    Ok(pack) => pack,
                    Err(error) => {
                        last_error = format!("pack blob from {peer}: {error}");
                        continue;
                    }
                }
            }
            Ok(other) => {
                last_error = format!("{peer} answered {other:?}");
                continue;
            }
            Err(error) => {
                last_error = format!("{peer}: {error}");
                continue;
            }
        };
        let (c, id, refs) = (ctx.clone(), repo.clone(), update.update.refs.clone());
        let created_at = i64::try_from(update.update.time).unwrap_or(0);
        let applied = blocking(move || {
            if !c.repos.exists(&id) {
                c.repos
                    .create_replica(&id, created_at)
                    .map_err(hub_repo::ReplicaError::from)?;
            }
            let outcome = c.repos.apply_replica(&id, &pack, &refs)?;
            (c.on_replicated)(&id);
            Ok::<_, hub_repo::ReplicaError>(outcome)
        })
        .await;
        match applied {
            Some(Ok(outcome)) => {
                tracing::info!(%repo, %peer, seq = update.update.seq, ?outcome, "replicated");
                ctx.synced.send_modify(|n| *n += 1);
                ctx.stats.repos_replicated.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Some(Err(error)) => last_error = format!("apply pack from {peer}: {error}"),
            None => last_error = "apply task failed".into(),
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_protocol::repo::RepoType;
    use hub_repo::Author;

    #[test]
    fn publishing_numbers_updates_across_restarts_and_skips_private_and_foreign_repos() {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::open(dir.path().join("repos")).unwrap();
        let chunks = hub_store::Store::open(dir.path().join("store")).unwrap();
        let path = dir.path().join("refs.redb");
        let key = SigningKey::from_bytes(&[5; 32]);
        let author = Author::new("alice", "alice@hubmesh.test");
        let public = RepoId::parse(RepoType::Model, "alice/tiny").unwrap();
        let private = RepoId::parse(RepoType::Model, "alice/secret").unwrap();
        repos.create(&public, &author).unwrap();
        repos.create_with(&private, &author, true).unwrap();
        {
            let mut store = RefStore::open(&path).unwrap();
            let (genesis, first) = sign_update(&mut store, &key, &repos, &chunks, &public).unwrap();
            let genesis = genesis.expect("first update of a namespace brings its genesis");
            assert_eq!(genesis.doc.delegates(), [key.public()]);
            assert_eq!(first.update.seq, 1);
            assert_eq!(first.update.namespace_doc, genesis.doc.id());
            assert_eq!(first.update.refs, repos.public_refs(&public).unwrap());
            assert!(first.update.lfs.is_empty());
            let (again, second) = sign_update(&mut store, &key, &repos, &chunks, &public).unwrap();
            assert!(again.is_none());
            assert_eq!(second.update.seq, 2);
            assert!(sign_update(&mut store, &key, &repos, &chunks, &private).is_none());
            let missing = RepoId::parse(RepoType::Model, "alice/gone").unwrap();
            assert!(sign_update(&mut store, &key, &repos, &chunks, &missing).is_none());
        }
        // After a restart the sequence continues, never repeats.
        let mut store = RefStore::open(&path).unwrap();
        let (_, third) = sign_update(&mut store, &key, &repos, &chunks, &public).unwrap();
        assert_eq!(third.update.seq, 3);
        // Another node's key is not a delegate of alice: it announces nothing.
        let other = SigningKey::from_bytes(&[6; 32]);
        assert!(sign_update(&mut store, &other, &repos, &chunks, &public).is_none());
    }

    #[test]
    fn an_announced_repo_made_private_or_deleted_is_withdrawn_once() {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::open(dir.path().join("repos")).unwrap();
        let chunks = hub_store::Store::open(dir.path().join("store")).unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let author = Author::new("alice", "alice@hubmesh.test");
        let repo = RepoId::parse(RepoType::Model, "alice/tiny").unwrap();
        repos.create(&repo, &author).unwrap();
        let mut store = RefStore::open(dir.path().join("refs.redb")).unwrap();
        let (_, first) = sign_update(&mut store, &key, &repos, &chunks, &repo).unwrap();
        assert!(!is_withdrawal(&first));

        repos.set_private(&repo, true).unwrap();
        let (doc, withdrawal) = sign_update(&mut store, &key, &repos, &chunks, &repo)
            .expect("an announced repo made private is withdrawn");
        assert!(doc.is_none());
        assert!(is_withdrawal(&withdrawal));
        assert!(withdrawal.update.lfs.is_empty());
        assert_eq!(withdrawal.update.seq, first.update.seq + 1);
        // Accepted like any update, by the same rules (a peer's RefStore does the same).
        assert_eq!(store.state().last_accepted(&repo), Some(&withdrawal));
        // Withdrawn once: nothing more to say while it stays private.
        assert!(sign_update(&mut store, &key, &repos, &chunks, &repo).is_none());

        // Public again: announced anew, above the withdrawal.
        repos.set_private(&repo, false).unwrap();
        let (_, again) = sign_update(&mut store, &key, &repos, &chunks, &repo).unwrap();
        assert!(!is_withdrawal(&again));
        assert_eq!(again.update.seq, withdrawal.update.seq + 1);
        // Deleted: withdrawn too.
        repos.delete(&repo).unwrap();
        let (_, gone) = sign_update(&mut store, &key, &repos, &chunks, &repo).unwrap();
        assert!(is_withdrawal(&gone));
        assert_eq!(gone.update.seq, again.update.seq + 1);

        // A peer accepts the withdrawal after the update it withdraws.
        let mut peer = RefStore::open(dir.path().join("peer.redb")).unwrap();
        let genesis = store.state().chain("alice").to_vec();
        for doc in genesis {
            peer.apply_namespace_doc(doc).unwrap();
        }
        peer.apply_ref_update(&repo, again.clone(), now()).unwrap();
        let accepted = peer.apply_ref_update(&repo, gone.clone(), now()).unwrap();
        assert!(is_withdrawal(accepted));
    }

    #[test]
    fn a_delegate_key_names_the_node_with_that_key() {
        let mut secret = [7u8; 32];
        let key = SigningKey::from_bytes(&secret);
        let node = Keypair::ed25519_from_bytes(&mut secret).unwrap();
        assert_eq!(peer_id_of(&key.public()), Some(node.public().to_peer_id()));
    }
}
