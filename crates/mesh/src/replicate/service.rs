//! The replication service: every decision replication makes, as a plain state machine.
//!
//! What it owns: the judgement of gossiped namespace documents and signed updates (through the
//! [`RefStore`]), the updates waiting for their namespace document (at most [`MAX_PENDING`]),
//! publishing this node's signed refs and the catch-up a new subscriber gets, the seeding
//! policy's consequences, and each repo's sync: which peer to ask for the pack of the
//! difference and in what order, when to ask the DHT for more, which LFS objects to fetch
//! from which candidates, when a repo that failed is tried again ([`RETRY_PERIOD`]), and what
//! a waiting download is answered.
//!
//! What it must not depend on: the swarm, the blob endpoint, tokio, a clock or a socket. It is
//! fed [`Input`]s with the time ([`Clock`]) they happen at and returns [`Effect`]s, in the
//! style of Radicle heartwood's `radicle-protocol` service. Work that is inherently I/O — a
//! request to a peer, a DHT query, building or indexing a pack, fetching an LFS object chunk
//! by chunk, dropping a replica — is an effect: whoever runs the service (the tokio driver in
//! `replicate/driver.rs`, or the virtual-time harness in `replicate/sim.rs`) performs it and
//! reports its outcome back as an input. Local, short reads and writes (the ref store, the
//! seeding policy, a repo's refs and LFS pointers) it does itself, so its caller runs it on a
//! blocking thread. The connected peers are told to it with [`Service::set_connected`]
//! before each input.

use super::{MAX_CATCH_UP, MAX_ON_DEMAND_LFS, MAX_PENDING, PROVIDERS_TIMEOUT, RETRY_PERIOD};
use crate::error::{ApplyError, LfsError, PackError, ScanError, WithdrawError};
use crate::lfs::Wanted;
use crate::seeds::{SeedError, SeedPolicy};
use crate::state::{RefStore, RefStoreError};
use hub_protocol::manifest::Sha256;
use hub_protocol::replication::PackRequest;
use hub_protocol::repo::RepoId;
use hub_protocol::signed::{
    DocAccepted, DocReject, MAX_LFS, NamespaceDoc, RefReject, RefUpdate, SignedNamespaceDoc,
    SignedRefUpdate, SigningKey, Visibility,
};
use hub_repo::{RepoError, Repos};
use libp2p::PeerId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// When an input happens: `at` orders timers (virtual in tests), `unix` (seconds since the
/// Unix epoch) stamps signed updates and judges their time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub at: Instant,
    pub unix: u64,
}

/// The gossip topics replication speaks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Channel {
    Namespaces,
    Refs,
}

/// What gossipsub is told of a message: forwarded (`Accept`), dropped without blame
/// (`Ignore`: a replay, a message waiting for its document, a refused claim), or dropped
/// with blame on the forwarder (`Reject`: forged, malformed, mis-bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judgement {
    Accept,
    Reject,
    Ignore,
}

/// A document or update refused because it names an account of this node (ADR 0006).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Foreign {
    Document,
    Update,
}

/// Why a sync failed (shown as `last_error` in the mesh status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SyncError {
    /// No peer, gossip or DHT, served a pack that applied; the last one's reason.
    #[error("{0}")]
    Pack(PackError),
    /// LFS objects were not fetched; the last one's reason.
    #[error("{left} LFS objects still missing; last: {last}")]
    Lfs { left: usize, last: LfsError },
    #[error("scan LFS pointers: {0}")]
    Scan(ScanError),
    #[error("drop the withdrawn replica: {0}")]
    Withdraw(WithdrawError),
}

/// What happened, fed to [`Service::handle`].
#[derive(Debug)]
pub(crate) enum Input {
    /// The node started: resume every seeded repo with an accepted update.
    Start,
    /// A repo was written locally.
    LocalChange(RepoId),
    /// A gossip message from `via` (forwarder), published by `author`.
    Gossip {
        channel: Channel,
        data: Vec<u8>,
        author: Option<PeerId>,
        via: PeerId,
    },
    /// A peer subscribed to `channel`: a chance to catch it up.
    Subscribed(Channel),
    /// The seeding policy changed.
    SeedsChanged,
    /// A user asked for a repo this node does not hold (admitted by the seeding policy).
    Ensure(RepoId),
    /// A download waits for one LFS object; answered with [`Effect::Answer`] and `ticket`.
    WantLfs {
        ticket: u64,
        repo: RepoId,
        sha256: Sha256,
        size: u64,
    },
    /// Time passed: repos whose retry is due sync again.
    Tick,
    /// The outcome of [`Effect::RequestPack`]: the pack, or why not.
    PackFetched {
        repo: RepoId,
        peer: PeerId,
        result: Result<Vec<u8>, PackError>,
    },
    /// The outcome of [`Effect::ApplyPack`].
    PackApplied {
        repo: RepoId,
        peer: PeerId,
        result: Result<(), ApplyError>,
    },
    /// The outcome of [`Effect::FindProviders`] (empty when the query failed).
    Providers { repo: RepoId, peers: Vec<PeerId> },
    /// The outcome of [`Effect::FetchLfs`].
    LfsFetched {
        repo: RepoId,
        sha256: Sha256,
        ticket: Option<u64>,
        result: Result<(), LfsError>,
    },
    /// The outcome of [`Effect::Withdraw`].
    Withdrawn {
        repo: RepoId,
        result: Result<(), WithdrawError>,
    },
}

/// A change of a repo's state as the mesh status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Status {
    Seq(u64),
    Seeded(bool),
    LfsMissing { missing: u64, unbound: u64 },
}

/// What the service asks its runner to do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Report the judgement of the gossip message just handed in.
    Judge(Judgement),
    /// Publish on a gossip topic.
    Publish { channel: Channel, data: Vec<u8> },
    /// Provide the repo in the DHT.
    Provide(RepoId),
    /// Stop providing it.
    StopProviding(RepoId),
    /// Ask `peer` for a pack; report [`Input::PackFetched`].
    RequestPack { peer: PeerId, request: PackRequest },
    /// Index `pack` into the repo (creating the replica first) and move its refs to `refs`,
    /// then refresh the listing; report [`Input::PackApplied`].
    ApplyPack {
        repo: RepoId,
        peer: PeerId,
        pack: Vec<u8>,
        refs: BTreeMap<String, [u8; 20]>,
        created_at: i64,
        seq: u64,
    },
    /// Ask the DHT for the repo's providers, waiting at most `wait` when set; report
    /// [`Input::Providers`].
    FindProviders {
        repo: RepoId,
        wait: Option<Duration>,
    },
    /// Fetch one LFS object from `peers` (in order of preference; the DHT's providers when
    /// they run out), verified, and add it to the repo; report [`Input::LfsFetched`].
    FetchLfs {
        repo: RepoId,
        wanted: Wanted,
        peers: Vec<PeerId>,
        ticket: Option<u64>,
    },
    /// Drop this node's replica of a withdrawn repo (LFS set, GC roots, git data, listing);
    /// report [`Input::Withdrawn`].
    Withdraw(RepoId),
    /// Answer the download waiting with `ticket`.
    Answer {
        ticket: u64,
        result: Result<(), LfsError>,
    },
    /// The repo's state changed.
    Status { repo: RepoId, status: Status },
    /// A sync ended; waiters re-check.
    Synced {
        repo: RepoId,
        result: Result<(), SyncError>,
    },
    /// A document or update was refused for naming an account of this node.
    Refused(Foreign),
}

/// An update that waits for its namespace document.
#[derive(Debug)]
struct Heard {
    data: Vec<u8>,
    author: Option<PeerId>,
    via: PeerId,
}

/// A repo whose last sync failed: synced again at `at` with `peers`.
#[derive(Debug)]
struct Retry {
    peers: Vec<PeerId>,
    at: Instant,
}

/// One repo's sync in progress.
#[derive(Debug)]
struct Syncing {
    /// Another accepted update arrived meanwhile: sync again once this one ends.
    again: bool,
    /// The peers it was started with (kept for a retry or the next run).
    peers: Vec<PeerId>,
    /// The gossip peers (or the connected ones) the LFS objects are asked of first.
    gossip: Vec<PeerId>,
    step: Step,
}

#[derive(Debug)]
enum Step {
    Starting,
    Withdrawing,
    /// Asking peers in turn for the pack of the difference (then the DHT's providers).
    Pack {
        update: Box<SignedRefUpdate>,
        request: PackRequest,
        queue: VecDeque<PeerId>,
        tried: BTreeSet<PeerId>,
        providers_asked: bool,
        last_error: PackError,
    },
    /// Waiting for the DHT's providers before the LFS objects.
    LfsProviders {
        wanted: Vec<Wanted>,
        unbound: u64,
    },
    /// Fetching LFS objects one at a time.
    Lfs {
        queue: VecDeque<Wanted>,
        peers: Vec<PeerId>,
        left: usize,
        unbound: u64,
        last_error: Option<LfsError>,
    },
}

/// The replication service (see the module docs).
pub(crate) struct Service {
    me: PeerId,
    key: SigningKey,
    store: Arc<Mutex<RefStore>>,
    repos: Arc<Repos>,
    chunks: hub_store::Store,
    seeds: Arc<SeedPolicy>,
    /// Packs may come as blobs (this node runs the blob data plane).
    blob_packs: bool,
    connected: Vec<PeerId>,
    pending: BTreeMap<RepoId, Heard>,
    syncs: BTreeMap<RepoId, Syncing>,
    failed: BTreeMap<RepoId, Retry>,
    seeded: BTreeMap<RepoId, bool>,
    out: Vec<Effect>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("me", &self.me)
            .field("pending", &self.pending.len())
            .field("syncs", &self.syncs.keys().collect::<Vec<_>>())
            .field("failed", &self.failed.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What a sync brings a repo to, read from the ref store and the repo.
struct Target {
    update: SignedRefUpdate,
    have: Vec<[u8; 20]>,
    current: BTreeMap<String, [u8; 20]>,
    local: bool,
}

impl Service {
    pub(crate) fn new(
        me: PeerId,
        key: SigningKey,
        store: Arc<Mutex<RefStore>>,
        repos: Arc<Repos>,
        chunks: hub_store::Store,
        seeds: Arc<SeedPolicy>,
        blob_packs: bool,
    ) -> Self {
        Self {
            me,
            key,
            store,
            repos,
            chunks,
            seeds,
            blob_packs,
            connected: Vec::new(),
            pending: BTreeMap::new(),
            syncs: BTreeMap::new(),
            failed: BTreeMap::new(),
            seeded: BTreeMap::new(),
            out: Vec::new(),
        }
    }

    /// The peers connected now (asked when a sync has no gossip peer to prefer).
    pub(crate) fn set_connected(&mut self, peers: Vec<PeerId>) {
        self.connected = peers;
    }

    /// When the earliest retry is due: the runner hands in [`Input::Tick`] then.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.failed.values().map(|r| r.at).min()
    }

    /// Updates waiting for their namespace document.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The last update accepted for `repo`.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn last_accepted(&self, repo: &RepoId) -> Option<SignedRefUpdate> {
        self.store().state().last_accepted(repo).cloned()
    }

    fn store(&self) -> MutexGuard<'_, RefStore> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&mut self, effect: Effect) {
        self.out.push(effect);
    }

    /// Handles one input and returns what to do.
    pub(crate) fn handle(&mut self, clock: Clock, input: Input) -> Vec<Effect> {
        match input {
            Input::Start => self.start(clock),
            Input::LocalChange(repo) => self.publish(clock, &repo),
            Input::Gossip {
                channel,
                data,
                author,
                via,
            } => {
                let judgement = match channel {
                    Channel::Namespaces => self.on_doc(clock, &data),
                    Channel::Refs => self.on_update(clock, data, author, via),
                };
                self.emit(Effect::Judge(judgement));
            }
            Input::Subscribed(channel) => {
                for data in self.own_state(channel) {
                    self.emit(Effect::Publish { channel, data });
                }
            }
            Input::SeedsChanged => self.seeds_changed(clock),
            Input::Ensure(repo) => self.ensure(clock, repo),
            Input::WantLfs {
                ticket,
                repo,
                sha256,
                size,
            } => self.want_lfs(ticket, repo, sha256, size),
            Input::Tick => self.tick(clock),
            Input::PackFetched { repo, peer, result } => {
                self.pack_fetched(clock, repo, peer, result)
            }
            Input::PackApplied { repo, peer, result } => {
                self.pack_applied(clock, repo, peer, result)
            }
            Input::Providers { repo, peers } => self.providers(clock, repo, peers),
            Input::LfsFetched {
                repo,
                sha256,
                ticket,
                result,
            } => self.lfs_fetched(clock, repo, sha256, ticket, result),
            Input::Withdrawn { repo, result } => {
                if !matches!(
                    self.syncs.get(&repo).map(|s| &s.step),
                    Some(Step::Withdrawing)
                ) {
                    return std::mem::take(&mut self.out);
                }
                match result {
                    Ok(()) => {
                        tracing::info!(%repo, "repo withdrawn by its host; replica dropped");
                        self.emit(Effect::StopProviding(repo.clone()));
                        self.finish(clock, &repo, Ok(()));
                    }
                    Err(error) => self.finish(clock, &repo, Err(SyncError::Withdraw(error))),
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Records the accepted seqs, and schedules at once a sync of every seeded repo with an
    /// accepted update: it fetches what an earlier run left missing (nothing, when all is
    /// stored).
    fn start(&mut self, clock: Clock) {
        let accepted: Vec<(RepoId, u64)> = self
            .store()
            .state()
            .accepted()
            .map(|(repo, update)| (repo.clone(), update.update.seq))
            .collect();
        for (repo, seq) in accepted {
            let seeded = self.seeds.matches(&repo);
            self.set_seeded(&repo, seeded);
            self.emit(Effect::Status {
                repo: repo.clone(),
                status: Status::Seq(seq),
            });
            if seeded {
                let retry = Retry {
                    peers: Vec::new(),
                    at: clock.at,
                };
                self.failed.insert(repo, retry);
            }
        }
        self.tick(clock);
    }

    fn set_seeded(&mut self, repo: &RepoId, seeded: bool) {
        self.seeded.insert(repo.clone(), seeded);
        self.emit(Effect::Status {
            repo: repo.clone(),
            status: Status::Seeded(seeded),
        });
    }

    /// Signs and gossips the state of a locally written repo (public ones only).
    fn publish(&mut self, clock: Clock, repo: &RepoId) {
        let signed = {
            let mut store = self.store();
            sign_update(
                &mut store,
                &self.key,
                &self.repos,
                &self.chunks,
                repo,
                clock.unix,
            )
        };
        let Some((doc, update)) = signed else {
            return;
        };
        if let Some(doc) = doc {
            self.emit(Effect::Publish {
                channel: Channel::Namespaces,
                data: doc.encode(),
            });
        }
        let seq = update.update.seq;
        self.emit(Effect::Status {
            repo: repo.clone(),
            status: Status::Seq(seq),
        });
        self.emit(Effect::Publish {
            channel: Channel::Refs,
            data: update.encode(),
        });
        if is_withdrawal(&update) {
            tracing::info!(%repo, seq, "withdrawing the repo from the mesh (private or deleted)");
            self.emit(Effect::StopProviding(repo.clone()));
        } else {
            tracing::info!(%repo, seq, lfs = update.update.lfs.len(), "announcing signed refs");
            self.emit(Effect::Provide(repo.clone()));
        }
    }

    fn on_doc(&mut self, clock: Clock, data: &[u8]) -> Judgement {
        let result = self.store().apply_namespace_doc_bytes(data);
        match result {
            // A document this node holds already (a catch-up re-gossiped to a new subscriber,
            // or a copy that came another way) is a replay, as a stale update is: not
            // forwarded, no blame. Forwarding it would flood the whole mesh once per copy,
            // since every re-publication is a new gossipsub message (hub-netsim's partition
            // heal measured thousands of messages per node for two documents).
            Ok(DocAccepted::Known { .. }) => {
                tracing::debug!("namespace document already held; not forwarded");
                Judgement::Ignore
            }
            Ok(_) => {
                tracing::debug!("namespace document accepted");
                // Updates that waited for a document get another chance.
                for (_, heard) in std::mem::take(&mut self.pending) {
                    self.on_update(clock, heard.data, heard.author, heard.via);
                }
                Judgement::Accept
            }
            // Another node's claim on a name this node gave to someone first (ADR 0006): not
            // forwarded, but no forgery either, so the sender is not penalised.
            Err(RefStoreError::DocRejected(reason @ DocReject::ConflictingClaim { .. })) => {
                tracing::info!(%reason, "conflicting namespace claim not taken");
                Judgement::Ignore
            }
            Err(RefStoreError::DocRejected(reason)) => {
                tracing::warn!(%reason, "namespace document rejected");
                Judgement::Reject
            }
            Err(error @ RefStoreError::LocalNamespace { .. }) => {
                self.refused(Foreign::Document, &error)
            }
            Err(error) => {
                tracing::warn!(%error, "namespace document not stored");
                Judgement::Ignore
            }
        }
    }

    /// Counts and logs a document or update refused because it would give an account name
    /// of this node to other nodes. Gossipsub is told to ignore it: it is not forwarded from
    /// here, but the peer that sent it is not penalised, since another site's `bob` is no
    /// forgery.
    fn refused(&mut self, what: Foreign, error: &RefStoreError) -> Judgement {
        self.emit(Effect::Refused(what));
        tracing::info!(%error, ?what, "refused: the namespace is an account of this node");
        Judgement::Ignore
    }

    fn on_update(
        &mut self,
        clock: Clock,
        data: Vec<u8>,
        author: Option<PeerId>,
        via: PeerId,
    ) -> Judgement {
        let signed = match SignedRefUpdate::decode(&data) {
            Ok(signed) => signed,
            Err(error) => {
                tracing::warn!(%via, %error, "malformed ref update rejected");
                return Judgement::Reject;
            }
        };
        let repo = signed.update.repo.clone();
        let result = self
            .store()
            .apply_ref_update(&repo, signed, clock.unix)
            .map(|u| (u.update.seq, is_withdrawal(u)));
        match result {
            Ok((seq, withdrawn)) => {
                tracing::info!(%repo, seq, %via, "ref update accepted");
                let seeded = self.seeds.matches(&repo);
                self.emit(Effect::Status {
                    repo: repo.clone(),
                    status: Status::Seq(seq),
                });
                self.set_seeded(&repo, seeded);
                // A withdrawal is obeyed whether the repo is seeded or was fetched once.
                if seeded || withdrawn {
                    let peers = author.into_iter().chain([via]).collect();
                    self.sync(clock, repo, peers);
                }
                Judgement::Accept
            }
            Err(RefStoreError::Rejected(RefReject::UnknownNamespaceDoc { doc })) => {
                tracing::debug!(%repo, %doc, "ref update waits for its namespace document");
                if self.pending.len() < MAX_PENDING || self.pending.contains_key(&repo) {
                    self.pending.insert(repo, Heard { data, author, via });
                }
                Judgement::Ignore
            }
            Err(RefStoreError::Rejected(reason @ RefReject::StaleSeq { .. })) => {
                tracing::debug!(%repo, %reason, "ref update ignored");
                Judgement::Ignore
            }
            Err(RefStoreError::Rejected(reason)) => {
                tracing::warn!(%repo, %via, author = ?author, %reason, "ref update rejected");
                Judgement::Reject
            }
            Err(error @ RefStoreError::LocalNamespace { .. }) => {
                self.refused(Foreign::Update, &error)
            }
            Err(error) => {
                tracing::warn!(%repo, %error, "ref update not stored");
                Judgement::Ignore
            }
        }
    }

    /// What a peer that just subscribed is sent to catch up: every namespace chain and every
    /// accepted update of a public repo, ours or relayed (a node that joined through a seeder
    /// hears of repos whose publisher it is not connected to, or that is gone). Receivers
    /// judge them like any gossip; what they hold already is ignored as a replay.
    fn own_state(&self, channel: Channel) -> Vec<Vec<u8>> {
        let store = self.store();
        let state = store.state();
        match channel {
            Channel::Namespaces => state
                .namespaces()
                .flat_map(|ns| state.chain(ns).iter().map(SignedNamespaceDoc::encode))
                .take(MAX_CATCH_UP)
                .collect(),
            Channel::Refs => state
                .accepted()
                // Never re-gossip a repo that is private here, except its withdrawal (which
                // names no refs).
                .filter(|(repo, update)| {
                    is_withdrawal(update) || !self.repos.meta(repo).is_ok_and(|m| m.private)
                })
                .map(|(_, update)| update.encode())
                .take(MAX_CATCH_UP)
                .collect(),
        }
    }

    fn seeds_changed(&mut self, clock: Clock) {
        let accepted: Vec<RepoId> = self
            .store()
            .state()
            .accepted()
            .map(|(repo, _)| repo.clone())
            .collect();
        for repo in accepted {
            let seeded = self.seeds.matches(&repo);
            let was = self.seeded.get(&repo).copied().unwrap_or(false);
            self.set_seeded(&repo, seeded);
            if seeded && !was {
                tracing::info!(%repo, "now seeded; syncing");
                self.sync(clock, repo, Vec::new());
            } else if !seeded {
                self.failed.remove(&repo);
            }
        }
    }

    fn ensure(&mut self, clock: Clock, repo: RepoId) {
        // Remembered only when no pattern covers it already.
        let remembered = if self.seeds.matches(&repo) {
            Ok(false)
        } else {
            self.seeds.add_fetched(&repo)
        };
        match remembered {
            Ok(true) => tracing::info!(%repo, "fetching on demand; seeded from now on"),
            Ok(false) => {}
            Err(error @ SeedError::TooManyFetched) => {
                // Not kept, so not fetched either (seeds::MAX_FETCHED).
                tracing::warn!(%repo, %error, "fetched repo not remembered; not fetched");
                return;
            }
            Err(error) => tracing::warn!(%repo, %error, "fetched repo not remembered"),
        }
        self.set_seeded(&repo, true);
        if !self.syncs.contains_key(&repo) {
            let peers = self
                .failed
                .remove(&repo)
                .map(|r| r.peers)
                .unwrap_or_default();
            self.sync(clock, repo, peers);
        }
    }

    /// A download waits for one LFS object of `repo`: fetch it now, ahead of the repo's sync
    /// (which fetches objects one at a time), verified against the last accepted update.
    fn want_lfs(&mut self, ticket: u64, repo: RepoId, sha256: Sha256, size: u64) {
        let manifest = self
            .store()
            .state()
            .last_accepted(&repo)
            .and_then(|u| u.update.lfs.get(&sha256).copied());
        if crate::lfs::stored_as(&self.chunks, &sha256, manifest.as_ref()) {
            let result = hub_core::lfs_objects::adopt(&self.repos, &self.chunks, &repo, &sha256)
                .map_err(|e| LfsError::Record(e.to_string()));
            self.emit(Effect::Answer { ticket, result });
            return;
        }
        let Some(manifest_id) = manifest else {
            let result = Err(LfsError::Unbound);
            self.emit(Effect::Answer { ticket, result });
            return;
        };
        let wanted = Wanted {
            sha256,
            size,
            manifest_id,
        };
        let peers = self.connected.clone();
        self.emit(Effect::FetchLfs {
            repo,
            wanted,
            peers,
            ticket: Some(ticket),
        });
    }

    /// Syncs the repos whose retry is due; one no longer seeded (`seed rm`) is dropped.
    fn tick(&mut self, clock: Clock) {
        let due: Vec<RepoId> = self
            .failed
            .iter()
            .filter(|(_, r)| r.at <= clock.at)
            .map(|(repo, _)| repo.clone())
            .collect();
        for repo in due {
            let Some(retry) = self.failed.remove(&repo) else {
                continue;
            };
            if self.seeds.matches(&repo) {
                self.sync(clock, repo, retry.peers);
            }
        }
    }

    /// Starts (or re-arms) the sync of a repo: it is brought to its last accepted update,
    /// asking `peers` first.
    fn sync(&mut self, clock: Clock, repo: RepoId, peers: Vec<PeerId>) {
        if let Some(sync) = self.syncs.get_mut(&repo) {
            sync.again = true;
            sync.peers = peers;
            return;
        }
        let sync = Syncing {
            again: false,
            peers: peers.clone(),
            gossip: Vec::new(),
            step: Step::Starting,
        };
        self.syncs.insert(repo.clone(), sync);
        let Some(target) = self.target(&repo) else {
            return self.finish(clock, &repo, Ok(()));
        };
        if is_withdrawal(&target.update) {
            return self.withdraw(clock, &repo);
        }
        let mut peers = if peers.is_empty() {
            // Resumed, retried or fetched on demand: no gossip peer to prefer; the connected
            // peers first (a quick NotFound from those without it), then the DHT's providers.
            self.connected.clone()
        } else {
            peers
        };
        if let Some(sync) = self.syncs.get_mut(&repo) {
            sync.gossip = peers.clone();
        }
        if target.local && target.current == target.update.update.refs {
            return self.lfs_begin(clock, &repo, &target.update);
        }
        let mut want: Vec<[u8; 20]> = target.update.update.refs.values().copied().collect();
        want.sort_unstable();
        want.dedup();
        let request = PackRequest {
            repo: repo.clone(),
            want,
            have: target.have,
            blob: self.blob_packs,
        };
        // The gossip peers first; DHT providers only when none of them could serve.
        let mut tried = BTreeSet::from([self.me]);
        peers.retain(|p| tried.insert(*p));
        if let Some(sync) = self.syncs.get_mut(&repo) {
            sync.step = Step::Pack {
                update: Box::new(target.update),
                request,
                queue: peers.into(),
                tried,
                providers_asked: false,
                last_error: PackError::NoPeer,
            };
        }
        self.next_pack_peer(clock, &repo);
    }

    fn target(&self, repo: &RepoId) -> Option<Target> {
        let update = self.store().state().last_accepted(repo).cloned()?;
        let local = self.repos.exists(repo);
        if local && self.repos.meta(repo).is_ok_and(|m| m.private) {
            // A private repo of this node under the same name is never overwritten.
            return None;
        }
        let (have, current) = if local {
            (
                self.repos.ref_tips(repo).unwrap_or_default(),
                self.repos.public_refs(repo).unwrap_or_default(),
            )
        } else {
            (Vec::new(), BTreeMap::new())
        };
        Some(Target {
            update,
            have,
            current,
            local,
        })
    }

    /// Obeys a withdrawal: this node's replica goes, unless the namespace is this node's own.
    fn withdraw(&mut self, clock: Clock, repo: &RepoId) {
        let hosted_here = self
            .store()
            .state()
            .head(repo.namespace())
            .is_some_and(|doc| doc.is_delegate(&self.key.public()));
        if hosted_here || !self.repos.exists(repo) {
            self.emit(Effect::StopProviding(repo.clone()));
            return self.finish(clock, repo, Ok(()));
        }
        if let Some(sync) = self.syncs.get_mut(repo) {
            sync.step = Step::Withdrawing;
        }
        self.emit(Effect::Withdraw(repo.clone()));
    }

    /// Asks the next candidate for the pack; the DHT once they ran out; fails after that.
    fn next_pack_peer(&mut self, clock: Clock, repo: &RepoId) {
        let Some(Syncing {
            step:
                Step::Pack {
                    request,
                    queue,
                    providers_asked,
                    last_error,
                    ..
                },
            ..
        }) = self.syncs.get_mut(repo)
        else {
            return;
        };
        if let Some(peer) = queue.pop_front() {
            let request = request.clone();
            return self.emit(Effect::RequestPack { peer, request });
        }
        if !*providers_asked {
            *providers_asked = true;
            return self.emit(Effect::FindProviders {
                repo: repo.clone(),
                wait: None,
            });
        }
        let error = SyncError::Pack(last_error.clone());
        self.finish(clock, repo, Err(error));
    }

    fn pack_fetched(
        &mut self,
        clock: Clock,
        repo: RepoId,
        peer: PeerId,
        result: Result<Vec<u8>, PackError>,
    ) {
        let Some(Syncing {
            step: Step::Pack {
                update, last_error, ..
            },
            ..
        }) = self.syncs.get_mut(&repo)
        else {
            return;
        };
        match result {
            Ok(pack) => {
                let refs = update.update.refs.clone();
                let created_at = i64::try_from(update.update.time).unwrap_or(0);
                let seq = update.update.seq;
                self.emit(Effect::ApplyPack {
                    repo,
                    peer,
                    pack,
                    refs,
                    created_at,
                    seq,
                });
            }
            Err(reason) => {
                *last_error = reason;
                self.next_pack_peer(clock, &repo);
            }
        }
    }

    fn pack_applied(
        &mut self,
        clock: Clock,
        repo: RepoId,
        peer: PeerId,
        result: Result<(), ApplyError>,
    ) {
        let Some(Syncing {
            step: Step::Pack {
                update, last_error, ..
            },
            ..
        }) = self.syncs.get_mut(&repo)
        else {
            return;
        };
        match result {
            Ok(()) => {
                let update = update.clone();
                self.lfs_begin(clock, &repo, &update);
            }
            Err(reason) => {
                *last_error = PackError::Apply { peer, reason };
                self.next_pack_peer(clock, &repo);
            }
        }
    }

    fn providers(&mut self, clock: Clock, repo: RepoId, found: Vec<PeerId>) {
        let Some(sync) = self.syncs.get_mut(&repo) else {
            return;
        };
        match &mut sync.step {
            Step::Pack { queue, tried, .. } => {
                queue.extend(found.into_iter().filter(|p| tried.insert(*p)));
                self.next_pack_peer(clock, &repo);
            }
            Step::LfsProviders { wanted, unbound } => {
                // Publisher and forwarder first, then every connected peer, then the DHT's
                // providers (other seeders): chunk batches are spread over several at once.
                let mut seen = BTreeSet::from([self.me]);
                let peers: Vec<PeerId> = sync
                    .gossip
                    .iter()
                    .chain(&self.connected)
                    .chain(&found)
                    .copied()
                    .filter(|p| seen.insert(*p))
                    .collect();
                let queue: VecDeque<Wanted> = std::mem::take(wanted).into();
                sync.step = Step::Lfs {
                    left: queue.len(),
                    queue,
                    peers,
                    unbound: *unbound,
                    last_error: None,
                };
                self.next_lfs(clock, &repo);
            }
            _ => {}
        }
    }

    /// Fetches the LFS objects the repo's tips reference and the store lacks (module `lfs`).
    fn lfs_begin(&mut self, clock: Clock, repo: &RepoId, update: &SignedRefUpdate) {
        let missing = match crate::lfs::missing(&self.repos, &self.chunks, repo, &update.update.lfs)
        {
            Ok(missing) => missing,
            Err(error) => return self.finish(clock, repo, Err(SyncError::Scan(error))),
        };
        let unbound = missing.unbound as u64;
        self.emit(Effect::Status {
            repo: repo.clone(),
            status: Status::LfsMissing {
                missing: missing.wanted.len() as u64,
                unbound,
            },
        });
        if unbound > 0 {
            tracing::warn!(%repo, unbound, "LFS pointers the signed update binds to no manifest; not fetched");
        }
        if missing.wanted.is_empty() {
            return self.finish(clock, repo, Ok(()));
        }
        let total: u64 = missing.wanted.iter().map(|w| w.size).sum();
        if total > MAX_ON_DEMAND_LFS && self.seeds.on_demand_only(repo) {
            // A read fetched this repo; its content comes when a download asks for it.
            tracing::info!(%repo, total, "on-demand repo: LFS objects fetched per download only");
            return self.finish(clock, repo, Ok(()));
        }
        if let Some(sync) = self.syncs.get_mut(repo) {
            sync.step = Step::LfsProviders {
                wanted: missing.wanted,
                unbound,
            };
        }
        self.emit(Effect::FindProviders {
            repo: repo.clone(),
            wait: Some(PROVIDERS_TIMEOUT),
        });
    }

    fn next_lfs(&mut self, clock: Clock, repo: &RepoId) {
        let Some(Syncing {
            step:
                Step::Lfs {
                    queue,
                    peers,
                    left,
                    last_error,
                    ..
                },
            ..
        }) = self.syncs.get_mut(repo)
        else {
            return;
        };
        if let Some(wanted) = queue.pop_front() {
            let peers = peers.clone();
            return self.emit(Effect::FetchLfs {
                repo: repo.clone(),
                wanted,
                peers,
                ticket: None,
            });
        }
        let result = match last_error.take() {
            None => Ok(()),
            Some(last) => Err(SyncError::Lfs { left: *left, last }),
        };
        self.finish(clock, repo, result);
    }

    fn lfs_fetched(
        &mut self,
        clock: Clock,
        repo: RepoId,
        sha256: Sha256,
        ticket: Option<u64>,
        result: Result<(), LfsError>,
    ) {
        if let Some(ticket) = ticket {
            if let Err(error) = &result {
                tracing::warn!(%repo, %sha256, %error, "LFS object wanted by a download not fetched");
            }
            return self.emit(Effect::Answer { ticket, result });
        }
        let Some(Syncing {
            step:
                Step::Lfs {
                    left,
                    unbound,
                    last_error,
                    ..
                },
            ..
        }) = self.syncs.get_mut(&repo)
        else {
            return;
        };
        match result {
            Ok(()) => {
                *left -= 1;
                let status = Status::LfsMissing {
                    missing: *left as u64,
                    unbound: *unbound,
                };
                self.emit(Effect::Status {
                    repo: repo.clone(),
                    status,
                });
            }
            Err(error) => {
                tracing::warn!(%repo, %sha256, %error, "LFS object not fetched");
                *last_error = Some(error);
            }
        }
        self.next_lfs(clock, &repo);
    }

    /// Ends a sync: a seeder with the whole repo is one more provider of it; another update
    /// that arrived meanwhile starts the next sync; a failure is tried again after
    /// [`RETRY_PERIOD`].
    fn finish(&mut self, clock: Clock, repo: &RepoId, result: Result<(), SyncError>) {
        let Some(sync) = self.syncs.remove(repo) else {
            return;
        };
        let ok = result.is_ok();
        self.emit(Effect::Synced {
            repo: repo.clone(),
            result,
        });
        let withdrawn = self
            .store()
            .state()
            .last_accepted(repo)
            .is_some_and(is_withdrawal);
        if ok && !withdrawn {
            self.emit(Effect::Provide(repo.clone()));
        }
        if sync.again {
            self.sync(clock, repo.clone(), sync.peers);
        } else if !ok {
            let retry = Retry {
                peers: sync.peers,
                at: clock.at + RETRY_PERIOD,
            };
            self.failed.insert(repo.clone(), retry);
        }
    }
}

/// Builds (and accepts into our own store) the next signed update of `repo`, plus the
/// namespace genesis when this is the namespace's first update, stamped `now` (Unix seconds).
/// `None` when the repo is private or gone and was never announced, or in a namespace this
/// node is not a delegate of.
///
/// A repo that was announced and is now private or deleted gets a **withdrawal**: the next
/// update with no refs and no LFS bindings. Seeders obey it at once (they drop their copy,
/// stop serving and providing it), nodes that never held it will not fetch it on demand, and
/// it is re-gossiped to peers that join later, so a seeder that was offline hears it too.
/// Making the repo public again announces it anew with a higher sequence number.
pub(crate) fn sign_update(
    store: &mut RefStore,
    key: &SigningKey,
    repos: &Repos,
    chunks: &hub_store::Store,
    repo: &RepoId,
    now: u64,
) -> Option<(Option<SignedNamespaceDoc>, SignedRefUpdate)> {
    match repos.meta(repo) {
        Ok(meta) if !meta.private => {}
        Ok(_) | Err(RepoError::NotFound { .. }) => return sign_withdrawal(store, key, repo, now),
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
    let mut update = RefUpdate::new(repo.clone(), doc.id(), seq, now);
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
    if let Err(error) = store.apply_ref_update(repo, signed.clone(), now) {
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
    now: u64,
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
    let signed = RefUpdate::new(repo.clone(), doc.id(), seq, now)
        .sign(key)
        .inspect_err(|error| tracing::warn!(%repo, %error, "cannot sign a withdrawal"))
        .ok()?;
    if let Err(error) = store.apply_ref_update(repo, signed.clone(), now) {
        tracing::warn!(%repo, %error, "own withdrawal refused");
        return None;
    }
    Some((None, signed))
}

/// Whether an accepted update withdraws its repo (no refs: made private or deleted).
pub(crate) fn is_withdrawal(update: &SignedRefUpdate) -> bool {
    update.update.refs.is_empty()
}
