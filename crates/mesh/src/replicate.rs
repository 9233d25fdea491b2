//! Replication: publishes signed refs of the repos this node hosts, judges what peers
//! gossip, and brings seeded repos up to date with packs of the difference.
//!
//! It is split in two (heartwood's `service` + `io`): the **service** (`replicate/service.rs`)
//! makes every decision as a plain state machine fed inputs and the time, with no swarm, no
//! clock and no tokio, and returns effects; the **driver** (`replicate/driver.rs`) is the
//! tokio task that feeds it the swarm's events, local writes, control messages, timer ticks
//! and the outcomes of the I/O it ran, and carries out its effects with the real swarm, blob
//! endpoint, repos and chunk store. The driver is the only part that touches [`P2p`].
//! `replicate/sim.rs` runs several services in virtual time with simulated links (tests, and
//! `hub-netsim` through the `sim` feature).
//!
//! Who spawns whom: [`spawn_replicating`] starts the swarm task (which owns the swarm) and
//! the driver task (which owns the service, and through it the [`RefStore`] and the seeding
//! policy). They are connected by two bounded channels: commands to the swarm (through the
//! [`P2p`] handle) and [`NetEvent`](hub_net::NetEvent)s back. The gateway reports local
//! writes with [`Mesh::repo_changed`], coalesced per repo in [`Changes`]. The service runs on
//! the blocking pool, one input at a time; disk and git work it asks for (`pack-objects`,
//! `index-pack`, the store's commits) runs there too; one sync per repo runs at a time.
//!
//! Publishing (the hosting node): on a change to a *public* repo, the node makes sure its
//! namespace has a document (a genesis naming the node key as the only delegate, created on
//! first need and gossiped), then signs a [`RefUpdate`](hub_protocol::signed::RefUpdate) of all `refs/heads/*` and
//! `refs/tags/*` with `seq = last + 1`, accepts it into its own store (which persists the
//! seq) and gossips it. The `lfs` map binds the SHA-256 of every LFS pointer in the trees of
//! the signed tips (not their history; at most [`MAX_LFS`](hub_protocol::signed::MAX_LFS), the smallest SHA-256s when there
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
//! accepted update of a repo matching a [`SeedPattern`], the service asks the publisher (then
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
//! (the driver's `fetch_lfs_once`). [`P2p::namespace_hosts`] names the delegates of a namespace this
//! node is not a delegate of, so the gateway can send writes there.

use crate::error::LfsError;
use crate::lfs::Arrivals;
use crate::seeds::{SEEDS_FILE, SeedEntry, SeedError, SeedPolicy};
use crate::state::{LocalNames, RefStore, RefStoreError};
use crate::stats::{MeshCounters, PeerTraffic, RepoState, Stats};
use driver::{Ctx, Driver};
use hub_core::{EnsureError, LfsFetchError};
use hub_net::{BlobSource, P2p, P2pConfig, P2pError};
use hub_protocol::manifest::Sha256;
use hub_protocol::replication::SeedPattern;
use hub_protocol::repo::RepoId;
use hub_protocol::signed::{PublicKey, SigningKey};
use hub_repo::Repos;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use service::{Service, is_withdrawal};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod claims;
mod driver;
mod service;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

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
        reply: oneshot::Sender<Result<(), LfsError>>,
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
            return Err(EnsureError::Pending(why.to_string()));
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
            Ok(Ok(result)) => result.map_err(|e| LfsFetchError::Failed(e.to_string())),
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
    let synced = Arc::new(watch::channel(0u64).0);
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let control = Arc::new(Control {
        seeds: seeds.clone(),
        store: store.clone(),
        repos: replication.repos.clone(),
        me,
        key: SigningKey::from_bytes(&replication.secret),
        tx: control_tx,
        synced: synced.clone(),
        chunks: replication.store.clone(),
    });
    let service = Service::new(
        p2p.peer_id(),
        SigningKey::from_bytes(&replication.secret),
        store,
        replication.repos.clone(),
        replication.store.clone(),
        seeds,
        p2p.blobs().is_some(),
    );
    let ctx = Arc::new(Ctx {
        repos: replication.repos,
        chunks: replication.store,
        on_replicated: replication.on_replicated,
        p2p: p2p.clone(),
        stats: stats.clone(),
        corrupt_chunks: replication.corrupt_chunks_for_tests,
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
    let driver = Driver {
        p2p: p2p.clone(),
        ctx,
        changes: changes.clone(),
        service: Arc::new(Mutex::new(service)),
        waiting: HashMap::new(),
        next_ticket: 0,
    };
    let replication_task = tokio::spawn(driver.run(events, control_rx, cancel));
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

#[cfg(test)]
mod tests {
    use super::service::sign_update;
    use super::*;
    use crate::replicate::driver::unix_now as now;
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
            let (genesis, first) =
                sign_update(&mut store, &key, &repos, &chunks, &public, now()).unwrap();
            let genesis = genesis.expect("first update of a namespace brings its genesis");
            assert_eq!(genesis.doc.delegates(), [key.public()]);
            assert_eq!(first.update.seq, 1);
            assert_eq!(first.update.namespace_doc, genesis.doc.id());
            assert_eq!(first.update.refs, repos.public_refs(&public).unwrap());
            assert!(first.update.lfs.is_empty());
            let (again, second) =
                sign_update(&mut store, &key, &repos, &chunks, &public, now()).unwrap();
            assert!(again.is_none());
            assert_eq!(second.update.seq, 2);
            assert!(sign_update(&mut store, &key, &repos, &chunks, &private, now()).is_none());
            let missing = RepoId::parse(RepoType::Model, "alice/gone").unwrap();
            assert!(sign_update(&mut store, &key, &repos, &chunks, &missing, now()).is_none());
        }
        // After a restart the sequence continues, never repeats.
        let mut store = RefStore::open(&path).unwrap();
        let (_, third) = sign_update(&mut store, &key, &repos, &chunks, &public, now()).unwrap();
        assert_eq!(third.update.seq, 3);
        // Another node's key is not a delegate of alice: it announces nothing.
        let other = SigningKey::from_bytes(&[6; 32]);
        assert!(sign_update(&mut store, &other, &repos, &chunks, &public, now()).is_none());
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
        let (_, first) = sign_update(&mut store, &key, &repos, &chunks, &repo, now()).unwrap();
        assert!(!is_withdrawal(&first));

        repos.set_private(&repo, true).unwrap();
        let (doc, withdrawal) = sign_update(&mut store, &key, &repos, &chunks, &repo, now())
            .expect("an announced repo made private is withdrawn");
        assert!(doc.is_none());
        assert!(is_withdrawal(&withdrawal));
        assert!(withdrawal.update.lfs.is_empty());
        assert_eq!(withdrawal.update.seq, first.update.seq + 1);
        // Accepted like any update, by the same rules (a peer's RefStore does the same).
        assert_eq!(store.state().last_accepted(&repo), Some(&withdrawal));
        // Withdrawn once: nothing more to say while it stays private.
        assert!(sign_update(&mut store, &key, &repos, &chunks, &repo, now()).is_none());

        // Public again: announced anew, above the withdrawal.
        repos.set_private(&repo, false).unwrap();
        let (_, again) = sign_update(&mut store, &key, &repos, &chunks, &repo, now()).unwrap();
        assert!(!is_withdrawal(&again));
        assert_eq!(again.update.seq, withdrawal.update.seq + 1);
        // Deleted: withdrawn too.
        repos.delete(&repo).unwrap();
        let (_, gone) = sign_update(&mut store, &key, &repos, &chunks, &repo, now()).unwrap();
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
