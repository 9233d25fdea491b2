//! The replication driver: the tokio task that runs the [`Service`] against the real swarm,
//! blob endpoint, repos and chunk store.
//!
//! What it owns: the only code of replication that touches [`P2p`] and hub-net's types
//! (its handle and events) and writes replication's stats, the serving of pack and block requests
//! (admission: [`MAX_SERVING`](super::MAX_SERVING), [`MAX_SERVING_PER_PEER`]), and the execution of the service's
//! [`Effect`]s: requests to peers, DHT queries, applying packs and fetching LFS objects (one
//! fetch per object at a time, shared with downloads: [`fetch_lfs_once`]). It decides
//! nothing: each outcome goes back to the service as an [`Input`].
//!
//! Who spawns whom: `spawn_replicating` spawns [`Driver::run`]. It reads the swarm's
//! [`NetEvent`]s, the coalesced local [`Changes`], the [`ControlMsg`]s of the `Mesh` handle
//! and the outcomes of the work it spawned (one bounded channel), and sleeps until the
//! service's next retry is due. The service runs on the blocking pool (it touches the ref
//! store and the repos), one input at a time.

use super::service::{Channel, Clock, Effect, Foreign, Input, Judgement, Service, Status};
use super::{Changes, ControlMsg, MAX_SERVING_PER_PEER, OnReplicated, blocking};
use crate::error::{ApplyError, LfsError, PackBlobError, PackError, WithdrawError};
use crate::lfs::{Arrivals, Wanted};
use crate::stats::Stats;
use hub_net::{Admission, BlobSource, GetError, NetEvent, P2p, Place, ReadError, Topic, Verdict};
use hub_protocol::blocks::BlockResponse;
use hub_protocol::manifest::{Hash, Sha256};
use hub_protocol::replication::{MAX_BLOB_PACK_LEN, MAX_PACK_LEN, PackRequest, PackResponse};
use hub_protocol::repo::RepoId;
use hub_repo::{RepoError, Repos};
use libp2p::PeerId;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Outcomes of spawned work waiting for the driver.
const OUTCOMES_QUEUE: usize = 256;

/// What spawned work and the driver share.
pub(super) struct Ctx {
    pub(super) repos: Arc<Repos>,
    pub(super) chunks: hub_store::Store,
    pub(super) on_replicated: OnReplicated,
    pub(super) p2p: P2p,
    /// What replication counts and knows per peer and repo (module `stats`).
    pub(super) stats: Arc<Stats>,
    pub(super) corrupt_chunks: bool,
    /// Bumped whenever a sync applied a pack or ended: on-demand waiters re-check.
    pub(super) synced: Arc<watch::Sender<u64>>,
    /// LFS objects being fetched now (shared with the `Mesh` handle's downloads).
    pub(super) arrivals: Arc<Arrivals>,
    /// LFS objects being fetched now; a second fetcher of one waits for the first.
    pub(super) inflight: Mutex<BTreeMap<Sha256, watch::Receiver<()>>>,
    /// Requests being served per peer (bounded by [`MAX_SERVING_PER_PEER`]).
    pub(super) serving: Mutex<HashMap<PeerId, usize>>,
    pub(super) serve_slots: Arc<tokio::sync::Semaphore>,
    /// Chunk ids of files served over the blob endpoint.
    pub(super) chunk_sets: Mutex<crate::lfs::ChunkSets>,
}

impl BlobSource for Ctx {
    fn admit(self: Arc<Self>, peer: PeerId) -> Admission {
        Box::pin(async move { admit(&self, peer).await.map(|s| Box::new(s) as Place) })
    }

    fn read(&self, manifest: &Hash, ids: &[Hash]) -> Result<Vec<Vec<u8>>, ReadError> {
        crate::lfs::serve_blobs(
            &self.repos,
            &self.chunks,
            &self.arrivals,
            &self.chunk_sets,
            manifest,
            ids,
        )
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
/// [`MAX_SERVING_PER_PEER`] running already; waits while all
/// [`MAX_SERVING`](super::MAX_SERVING) are busy.
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

/// The seconds since the Unix epoch.
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) struct Driver {
    pub(super) p2p: P2p,
    pub(super) ctx: Arc<Ctx>,
    pub(super) changes: Arc<Changes>,
    pub(super) service: Arc<Mutex<Service>>,
    /// Downloads waiting for an LFS object, by the ticket the service answers.
    pub(super) waiting: HashMap<u64, oneshot::Sender<Result<(), LfsError>>>,
    pub(super) next_ticket: u64,
}

impl Driver {
    pub(super) async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        mut control: mpsc::Receiver<ControlMsg>,
        cancel: CancellationToken,
    ) {
        let (outcomes_tx, mut outcomes) = mpsc::channel(OUTCOMES_QUEUE);
        self.handle(Input::Start, &outcomes_tx).await;
        loop {
            let wake = self
                .service
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .next_wake();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.changes.notify.notified() => {
                    for repo in self.changes.take() {
                        self.handle(Input::LocalChange(repo), &outcomes_tx).await;
                    }
                }
                event = events.recv() => match event {
                    Some(event) => self.event(event, &outcomes_tx).await,
                    None => break,
                },
                Some(input) = outcomes.recv() => { self.handle(input, &outcomes_tx).await; }
                Some(msg) = control.recv() => self.on_control(msg, &outcomes_tx).await,
                () = sleep => { self.handle(Input::Tick, &outcomes_tx).await; }
            }
        }
        tracing::debug!("replication task stopped");
    }

    /// Feeds one input to the service (on a blocking thread) and carries out its effects;
    /// returns its judgement of a gossip message.
    async fn handle(&mut self, input: Input, outcomes: &mpsc::Sender<Input>) -> Option<Judgement> {
        let clock = Clock {
            at: std::time::Instant::now(),
            unix: unix_now(),
        };
        let connected = self.p2p.connected();
        let service = self.service.clone();
        let effects = blocking(move || {
            let mut service = service.lock().unwrap_or_else(PoisonError::into_inner);
            service.set_connected(connected);
            service.handle(clock, input)
        })
        .await
        .unwrap_or_default();
        let mut judgement = None;
        for effect in effects {
            if let Effect::Judge(j) = effect {
                judgement = Some(j);
            } else {
                self.execute(effect, outcomes);
            }
        }
        judgement
    }

    fn gossip(&self, channel: Channel, data: Vec<u8>) {
        let topic = match channel {
            Channel::Namespaces => Topic::Namespaces,
            Channel::Refs => Topic::Refs,
        };
        if !self.p2p.try_publish(topic, data) {
            tracing::warn!(?topic, "swarm command queue full; gossip dropped");
        }
    }

    fn execute(&mut self, effect: Effect, outcomes: &mpsc::Sender<Input>) {
        let (p2p, stats) = (&self.p2p, &self.ctx.stats);
        match effect {
            Effect::Judge(_) => {}
            Effect::Publish { channel, data } => self.gossip(channel, data),
            Effect::Provide(repo) => {
                p2p.provide(repo);
            }
            Effect::StopProviding(repo) => {
                p2p.stop_providing(repo);
            }
            Effect::Status { repo, status } => stats.repos.update(&repo, |s| match status {
                Status::Seq(seq) => s.last_seq = Some(seq),
                Status::Seeded(seeded) => s.seeded = seeded,
                Status::LfsMissing { missing, unbound } => {
                    s.lfs_missing = missing;
                    s.lfs_unbound = unbound;
                }
            }),
            Effect::Synced { repo, result } => {
                let error = result.err().map(|error| {
                    tracing::warn!(%repo, %error, "replication fetch failed; will retry");
                    error.to_string()
                });
                stats.repos.update(&repo, |s| s.last_error = error);
                self.ctx.synced.send_modify(|n| *n += 1);
            }
            Effect::Refused(what) => {
                let counter = match what {
                    Foreign::Document => &stats.foreign_claims_refused,
                    Foreign::Update => &stats.foreign_updates_refused,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Effect::Answer { ticket, result } => {
                if let Some(reply) = self.waiting.remove(&ticket) {
                    let _ = reply.send(result);
                }
            }
            Effect::RequestPack { peer, request } => {
                let (ctx, tx) = (self.ctx.clone(), outcomes.clone());
                tokio::spawn(async move {
                    let repo = request.repo.clone();
                    let result = fetch_pack(&ctx, peer, request).await;
                    let _ = tx.send(Input::PackFetched { repo, peer, result }).await;
                });
            }
            Effect::ApplyPack {
                repo,
                peer,
                pack,
                refs,
                created_at,
                seq,
            } => {
                let (ctx, tx) = (self.ctx.clone(), outcomes.clone());
                tokio::spawn(async move {
                    let (c, id) = (ctx.clone(), repo.clone());
                    let applied = blocking(move || {
                        apply_pack(&c.repos, &id, &pack, &refs, created_at)
                            .inspect(|_| (c.on_replicated)(&id))
                    })
                    .await;
                    let result = match applied {
                        Some(Ok(outcome)) => {
                            tracing::info!(%repo, %peer, seq, ?outcome, "replicated");
                            ctx.synced.send_modify(|n| *n += 1);
                            ctx.stats.repos_replicated.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        }
                        Some(Err(error)) => Err(ApplyError::Replica(error.to_string())),
                        None => Err(ApplyError::Task),
                    };
                    let _ = tx.send(Input::PackApplied { repo, peer, result }).await;
                });
            }
            Effect::FindProviders { repo, wait } => {
                let (p2p, tx) = (p2p.clone(), outcomes.clone());
                tokio::spawn(async move {
                    let found = match wait {
                        Some(wait) => tokio::time::timeout(wait, p2p.providers(&repo))
                            .await
                            .ok()
                            .and_then(Result::ok),
                        None => p2p.providers(&repo).await.ok(),
                    };
                    let peers = found.unwrap_or_default();
                    let _ = tx.send(Input::Providers { repo, peers }).await;
                });
            }
            Effect::FetchLfs {
                repo,
                wanted,
                peers,
                ticket,
            } => {
                let (ctx, tx) = (self.ctx.clone(), outcomes.clone());
                tokio::spawn(async move {
                    let result = fetch_lfs_once(&ctx, &repo, wanted, &peers).await;
                    let sha256 = wanted.sha256;
                    let input = Input::LfsFetched {
                        repo,
                        sha256,
                        ticket,
                        result,
                    };
                    let _ = tx.send(input).await;
                });
            }
            Effect::Withdraw(repo) => {
                let (ctx, tx) = (self.ctx.clone(), outcomes.clone());
                tokio::spawn(async move {
                    let (c, id) = (ctx.clone(), repo.clone());
                    let result = blocking(move || {
                        drop_replica(&c.repos, &c.chunks, &id).inspect(|_| (c.on_replicated)(&id))
                    })
                    .await
                    .unwrap_or(Err(WithdrawError::Task));
                    let _ = tx.send(Input::Withdrawn { repo, result }).await;
                });
            }
        }
    }

    async fn on_control(&mut self, msg: ControlMsg, outcomes: &mpsc::Sender<Input>) {
        let input = match msg {
            ControlMsg::SeedsChanged => Input::SeedsChanged,
            ControlMsg::Ensure(repo) => Input::Ensure(repo),
            ControlMsg::Lfs {
                repo,
                sha256,
                size,
                reply,
            } => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                // Downloads that gave up are forgotten.
                self.waiting.retain(|_, reply| !reply.is_closed());
                self.waiting.insert(ticket, reply);
                Input::WantLfs {
                    ticket,
                    repo,
                    sha256,
                    size,
                }
            }
        };
        self.handle(input, outcomes).await;
    }

    async fn event(&mut self, event: NetEvent, outcomes: &mpsc::Sender<Input>) {
        match event {
            NetEvent::Gossip {
                topic,
                id,
                propagation_source,
                author,
                data,
            } => {
                let channel = match topic {
                    Topic::Namespaces => Some(Channel::Namespaces),
                    Topic::Refs => Some(Channel::Refs),
                    // Routed to the compute mesh by the swarm; never reaches this task.
                    Topic::Capacity => None,
                };
                let judgement = match channel {
                    Some(channel) => {
                        let input = Input::Gossip {
                            channel,
                            data,
                            author,
                            via: propagation_source,
                        };
                        self.handle(input, outcomes).await
                    }
                    None => None,
                };
                let verdict = match judgement.unwrap_or(Judgement::Ignore) {
                    Judgement::Accept => Verdict::Accept,
                    Judgement::Reject => Verdict::Reject,
                    Judgement::Ignore => Verdict::Ignore,
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
                let channel = match topic {
                    Topic::Namespaces => Channel::Namespaces,
                    Topic::Refs => Channel::Refs,
                    // Adverts are periodic; a new peer hears the next round.
                    Topic::Capacity => return,
                };
                tracing::debug!(%peer, ?topic, "peer subscribed; re-gossiping our state");
                self.handle(Input::Subscribed(channel), outcomes).await;
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
                            crate::lfs::serve(
                                &ctx.repos,
                                &ctx.chunks,
                                &ctx.arrivals,
                                &request,
                                ctx.corrupt_chunks,
                            )
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
}

/// Indexes `pack` into `repo` and moves its refs; a new replica appears with its refs set
/// (blocking).
pub(super) fn apply_pack(
    repos: &Repos,
    repo: &RepoId,
    pack: &[u8],
    refs: &BTreeMap<String, [u8; 20]>,
    created_at: i64,
) -> Result<hub_repo::ReplicaOutcome, hub_repo::ReplicaError> {
    if repos.exists(repo) {
        repos.apply_replica(repo, pack, refs)
    } else {
        repos.create_replica(repo, created_at, pack, refs)
    }
}

/// Drops this node's replica of a withdrawn repo (blocking): LFS set, GC roots, git data. Its
/// LFS content is then listed by no repo: it is neither served to peers nor downloadable,
/// and `hubmesh store gc` reclaims what no other repo holds.
pub(super) fn drop_replica(
    repos: &Repos,
    chunks: &hub_store::Store,
    repo: &RepoId,
) -> Result<(), WithdrawError> {
    hub_core::lfs_objects::release(repos, chunks, repo)
        .map_err(|e| WithdrawError::Release(e.to_string()))?;
    match repos.delete(repo) {
        Ok(()) | Err(RepoError::NotFound { .. }) => Ok(()),
        Err(error) => Err(WithdrawError::Delete(error.to_string())),
    }
}

/// The pack a request asks for, up to `limit` bytes, or the answer that refuses it: only
/// for public repos, only with objects the repo has (blocking).
pub(super) fn build_pack(
    repos: &Repos,
    request: &PackRequest,
    limit: u64,
) -> Result<Vec<u8>, PackResponse> {
    match repos.meta(&request.repo) {
        Ok(meta) if !meta.private => {}
        _ => return Err(PackResponse::NotFound),
    }
    match repos.build_pack(&request.repo, &request.want, &request.have, limit) {
        Ok(pack) => Ok(pack),
        Err(hub_repo::ReplicaError::MissingObject { .. }) => Err(PackResponse::NotFound),
        Err(hub_repo::ReplicaError::TooLarge { limit }) => Err(PackResponse::TooLarge { limit }),
        Err(error) => {
            tracing::warn!(repo = %request.repo, %error, "cannot build pack");
            Err(PackResponse::Failed)
        }
    }
}

/// Answers a pack request (blocking): the pack in the answer, or, when both sides run the
/// blob data plane, held for `peer` as a blob (up to [`MAX_BLOB_PACK_LEN`]).
fn serve_pack(
    repos: &Repos,
    blobs: Option<&hub_net::Blobs>,
    peer: PeerId,
    request: &PackRequest,
) -> PackResponse {
    let blobs = blobs.filter(|_| request.blob);
    let limit = match blobs {
        Some(_) => MAX_BLOB_PACK_LEN,
        None => MAX_PACK_LEN as u64,
    };
    match build_pack(repos, request, limit) {
        Ok(pack) => match blobs {
            Some(blobs) => {
                let (hash, size) = blobs.offer(peer, pack);
                PackResponse::Blob { hash, size }
            }
            None => PackResponse::Pack(pack),
        },
        Err(refusal) => refusal,
    }
}

/// Asks `peer` for a pack: in the answer, or as a blob it holds for this node, verified
/// group by group. The error is the reason the sync reports when no peer serves.
async fn fetch_pack(
    ctx: &Arc<Ctx>,
    peer: PeerId,
    request: PackRequest,
) -> Result<Vec<u8>, PackError> {
    match ctx.p2p.fetch_pack(peer, request).await {
        Ok(PackResponse::Pack(pack)) => Ok(pack),
        Ok(PackResponse::Blob { hash, size }) => fetch_pack_blob(ctx, peer, hash, size)
            .await
            .map_err(|reason| PackError::Blob { peer, reason }),
        Ok(answer) => Err(PackError::Refused { peer, answer }),
        Err(error) => Err(PackError::Request {
            peer,
            reason: error.to_string(),
        }),
    }
}

/// Fetches a pack `peer` holds for this node as a blob, verified group by group.
async fn fetch_pack_blob(
    ctx: &Arc<Ctx>,
    peer: PeerId,
    hash: [u8; 32],
    size: u64,
) -> Result<Vec<u8>, PackBlobError> {
    let blobs = ctx.p2p.blobs().ok_or(PackBlobError::NoEndpoint)?;
    let addrs = ctx.p2p.blob_addrs_of(blobs, peer).await;
    if addrs.is_empty() {
        return Err(PackBlobError::NoAddress);
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
            Err(PackBlobError::Bad { bytes, reason })
        }
        Err(GetError::Failed(reason)) => Err(PackBlobError::Failed(reason)),
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
) -> Result<(), LfsError> {
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
            return Err(LfsError::Concurrent);
        }
        return record_lfs(ctx, repo, sha).await;
    }
    let me = ctx.p2p.peer_id();
    let more = || async {
        tokio::time::timeout(super::PROVIDERS_TIMEOUT, ctx.p2p.providers(repo))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| *p != me)
            .collect()
    };
    // Swarming: the verified parts of an object of a public repo are served while it
    // arrives (a private repo's never are).
    let (c, id) = (ctx.clone(), repo.clone());
    let share = blocking(move || c.repos.meta(&id).is_ok_and(|m| !m.private))
        .await
        .unwrap_or(false);
    let bytes = crate::lfs::fetch_object(
        &ctx.p2p,
        &ctx.stats,
        &ctx.chunks,
        &ctx.arrivals,
        wanted,
        share,
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
async fn record_lfs(ctx: &Arc<Ctx>, repo: &RepoId, sha: Sha256) -> Result<(), LfsError> {
    let (c, id) = (ctx.clone(), repo.clone());
    blocking(move || {
        hub_core::lfs_objects::adopt(&c.repos, &c.chunks, &id, &sha)
            .map_err(|e| LfsError::Record(e.to_string()))
    })
    .await
    .ok_or(LfsError::TaskEnded("record"))?
}
