//! Virtual-time tests of the replication [`Service`]: the scenarios `tests/py/test_replication.py`
//! runs end to end (line topology, late joiner, corrupt provider, resume after a kill), plus
//! retries, forged and replayed updates, updates waiting for their namespace document,
//! on-demand fetches, seeding changes, withdrawals and a download's object fetched ahead.
//!
//! The harness runs N services with no sockets and no tokio: links between them deliver
//! gossip and answers after a latency drawn from a seeded generator, on a virtual clock, in a
//! deterministic order. Effects that need git or LFS work run for real on each node's
//! [`Repos`] and chunk [`Store`] in a temporary directory (packs are built and indexed with
//! the driver's own functions; LFS objects are served by `lfs::serve`, checked with the
//! protocol's `check_manifest`/`check_chunks`, spread over providers by `schedule`'s
//! scheduler and imported only when every chunk verified). Gossip is forwarded only by nodes
//! that accepted it, as gossipsub does with validation; the DHT is one global provider map.
//!
//! The harness is public behind the `sim` feature so `hub-netsim` drives it at scale (1 000
//! to 10 000 nodes): links are adjacency sets, peers are found by a map, the next retry is
//! kept in an ordered set rather than asked of every node, and a *relay* node
//! ([`Net::add_relay`]) judges and forwards gossip with its own ref store but no repos of
//! its own (relays share one empty repo root and chunk store: they seed nothing, so the
//! service never reads or writes them). Every node counts the gossip it sent, received and
//! judged, and when it accepted each seq ([`NodeStats`]). It is a test tool: it panics when
//! its temporary directories cannot be made.

use super::driver::{apply_pack, build_pack, drop_replica};
use super::service::{Channel, Clock, Effect, Input, Judgement, Service, Status, SyncError};
use crate::error::{ApplyError, LfsError, PackError};
use crate::lfs::Wanted;
use crate::schedule::{Outcome, Scheduler, plan};
use crate::seeds::{SEEDS_FILE, SeedPolicy};
use crate::state::RefStore;
use hub_protocol::blocks::{BlockRequest, BlockResponse, check_chunks, check_manifest};
use hub_protocol::manifest::Sha256;
use hub_protocol::replication::{MAX_PACK_LEN, PackResponse, SeedPattern};
use hub_protocol::repo::{RepoId, RepoType};
use hub_protocol::signed::{SignedRefUpdate, SigningKey};
use hub_repo::{Author, CommitRequest, FileContent, LfsPointer, Operation, Repos};
use hub_store::Store;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds since the Unix epoch at virtual time zero.
pub const UNIX_ZERO: u64 = 1_800_000_000;

/// splitmix64: a small seeded generator, so every run orders deliveries the same way.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A link's latency: 1 to 50 ms.
    fn latency(&mut self) -> Duration {
        Duration::from_millis(1 + self.next() % 50)
    }
}

/// What one node did, counted by the harness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Gossip messages it sent over its links (publishing, forwarding, catch-up).
    pub sent: u64,
    /// Gossip messages that reached it over a live link, duplicates included.
    pub received: u64,
    /// Of those, the ones it had not seen: handed to its service and judged.
    pub handled: u64,
    /// Judged `Accept` (and forwarded).
    pub accepted: u64,
    /// Judged `Reject` (forged, malformed: the forwarder is blamed).
    pub rejected: u64,
    /// Judged `Ignore` (replays, stale seqs, updates waiting for their document).
    pub ignored: u64,
    /// Per repo, the highest seq it accepted (or published) and when, in virtual time.
    pub seqs: BTreeMap<RepoId, (u64, Duration)>,
}

struct Node {
    peer: PeerId,
    /// Gossip only: shares the relays' empty repos and store, seeds nothing.
    relay: bool,
    /// The retry this node's service asked to be woken for (kept in [`Net::wakes`]).
    wake: Option<Instant>,
    stats: NodeStats,
    secret: [u8; 32],
    dir: PathBuf,
    repos: Arc<Repos>,
    chunks: Store,
    seeds: Vec<SeedPattern>,
    /// Serves every chunk batch with one bit flipped.
    corrupt: bool,
    /// `None` while killed.
    service: Option<Service>,
    /// The seeding policy the running service reads (`hubmesh seed add|rm` change it).
    policy: Option<Arc<SeedPolicy>>,
    /// Syncs ended: the repo, the outcome, when.
    synced: Vec<(RepoId, Result<(), SyncError>, Duration)>,
    answers: Vec<(u64, Result<(), LfsError>)>,
}

enum Event {
    Input(usize, Input),
    Gossip {
        to: usize,
        from: usize,
        id: u64,
        channel: Channel,
        data: Vec<u8>,
        author: PeerId,
    },
}

/// A pack request one node made of another, and whether it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    pub by: usize,
    pub of: usize,
    pub served: bool,
    pub at: Duration,
}

/// N replication services on a virtual clock with simulated links (see the module docs).
pub struct Net {
    _dir: tempfile::TempDir,
    root: PathBuf,
    rng: Rng,
    t0: Instant,
    now: Duration,
    next: u64,
    queue: BTreeMap<(Duration, u64), Event>,
    nodes: Vec<Node>,
    /// Per node, the nodes it is linked to.
    adj: Vec<BTreeSet<usize>>,
    by_peer: HashMap<PeerId, usize>,
    /// When each node's next retry is due (at most one entry per node).
    wakes: BTreeSet<(Instant, usize)>,
    /// The repos and store every relay shares (empty), made with the first relay.
    relay_parts: Option<(Arc<Repos>, Store)>,
    providers: BTreeMap<RepoId, BTreeSet<PeerId>>,
    /// Per node, gossip message ids seen (a node handles a message once).
    seen: BTreeSet<(usize, u64)>,
    /// Judgements: (node, channel, judgement).
    judged: Vec<(usize, Channel, Judgement)>,
    packs: Vec<Asked>,
    /// (fetcher, provider) of chunk answers that failed verification.
    bad: Vec<(usize, usize)>,
    /// Kill this node when it is about to fetch an LFS object.
    kill_at_lfs: Option<usize>,
    /// Nodes that answer every pack request `Failed` (overloaded).
    refusing: BTreeSet<usize>,
    /// Per link and direction, when its last gossip arrives: a link delivers in order.
    arrivals: BTreeMap<(usize, usize), Duration>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("root", &self.root)
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

fn author() -> Author {
    Author::new("alice", "alice@hubmesh.test")
}

/// A model repo id (`name` is `owner/repo`); panics on a bad name.
pub fn model(name: &str) -> RepoId {
    RepoId::parse(RepoType::Model, name).unwrap()
}

fn commit(repos: &Repos, id: &RepoId, path: &str, content: FileContent) {
    let request = CommitRequest {
        branch: "main".into(),
        message: format!("add {path}"),
        author: author(),
        parent: None,
        operations: vec![Operation::Add {
            path: path.into(),
            content,
        }],
    };
    repos.commit(id, request).unwrap();
}

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Net {
    /// An empty network in a temporary directory, its deliveries ordered by `seed`.
    pub fn new(seed: u64) -> Self {
        Self::new_in(seed, &std::env::temp_dir())
    }

    /// [`Net::new`] with the nodes' directories under `parent` (e.g. a tmpfs).
    pub fn new_in(seed: u64, parent: &Path) -> Self {
        let dir = tempfile::tempdir_in(parent).unwrap();
        Self {
            root: dir.path().to_owned(),
            _dir: dir,
            rng: Rng(seed),
            t0: Instant::now(),
            now: Duration::ZERO,
            next: 0,
            queue: BTreeMap::new(),
            nodes: Vec::new(),
            adj: Vec::new(),
            by_peer: HashMap::new(),
            wakes: BTreeSet::new(),
            relay_parts: None,
            providers: BTreeMap::new(),
            seen: BTreeSet::new(),
            judged: Vec::new(),
            packs: Vec::new(),
            bad: Vec::new(),
            kill_at_lfs: None,
            refusing: BTreeSet::new(),
            arrivals: BTreeMap::new(),
        }
    }

    fn clock(&self) -> Clock {
        Clock {
            at: self.t0 + self.now,
            unix: UNIX_ZERO + self.now.as_secs(),
        }
    }

    /// Adds and starts a node with key `[secret; 32]` seeding `seeds`.
    pub fn add(&mut self, secret: u8, seeds: &[&str]) -> usize {
        self.add_node([secret; 32], seeds, false)
    }

    /// Adds and starts a node with its own repos and store seeding `seeds`; its key is
    /// derived from its index.
    pub fn add_seeder(&mut self, seeds: &[&str]) -> usize {
        let secret = self.derived_secret();
        self.add_node(secret, seeds, false)
    }

    /// Adds and starts a relay: it judges, stores and forwards gossip (its own ref store)
    /// and seeds nothing; its key is derived from its index.
    pub fn add_relay(&mut self) -> usize {
        let secret = self.derived_secret();
        self.add_node(secret, &[], true)
    }

    fn derived_secret(&self) -> [u8; 32] {
        let mut rng = Rng(0x6e65_7473_696d ^ self.nodes.len() as u64);
        let mut secret = [0; 32];
        for part in secret.chunks_mut(8) {
            part.copy_from_slice(&rng.next().to_le_bytes());
        }
        secret
    }

    fn add_node(&mut self, secret: [u8; 32], seeds: &[&str], relay: bool) -> usize {
        let i = self.nodes.len();
        let dir = self.root.join(format!("node{i}"));
        let peer = Keypair::ed25519_from_bytes(secret)
            .unwrap()
            .public()
            .to_peer_id();
        let (repos, chunks) = if relay {
            let shared = self.root.join("relays");
            self.relay_parts
                .get_or_insert_with(|| {
                    let repos = Arc::new(Repos::open(shared.join("repos")).unwrap());
                    (repos, Store::open(shared.join("store")).unwrap())
                })
                .clone()
        } else {
            let repos = Arc::new(Repos::open(dir.join("repos")).unwrap());
            (repos, Store::open(dir.join("store")).unwrap())
        };
        std::fs::create_dir_all(&dir).unwrap();
        let node = Node {
            peer,
            relay,
            wake: None,
            stats: NodeStats::default(),
            secret,
            repos,
            chunks,
            dir,
            seeds: seeds
                .iter()
                .map(|s| SeedPattern::parse(s).unwrap())
                .collect(),
            corrupt: false,
            service: None,
            policy: None,
            synced: Vec::new(),
            answers: Vec::new(),
        };
        self.nodes.push(node);
        self.adj.push(BTreeSet::new());
        self.by_peer.insert(peer, i);
        self.start(i);
        i
    }

    /// How many nodes there are (killed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Virtual time since the network was made.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Node `i`'s peer id.
    pub fn peer(&self, i: usize) -> PeerId {
        self.nodes[i].peer
    }

    /// What node `i` did so far.
    pub fn stats(&self, i: usize) -> &NodeStats {
        &self.nodes[i].stats
    }

    /// Every pack request made so far, in order.
    pub fn packs(&self) -> &[Asked] {
        &self.packs
    }

    /// Builds the node's service from what it persisted (ref store, seeds) and starts it.
    pub fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let store = RefStore::open(node.dir.join("refs.redb")).unwrap();
        let path = (!node.relay).then(|| node.dir.join(SEEDS_FILE));
        let seeds = SeedPolicy::open(path, node.seeds.clone()).unwrap();
        let seeds = Arc::new(seeds);
        node.policy = Some(seeds.clone());
        node.service = Some(Service::new(
            node.peer,
            SigningKey::from_bytes(&node.secret),
            Arc::new(Mutex::new(store)),
            node.repos.clone(),
            node.chunks.clone(),
            seeds,
            false,
        ));
        self.feed(i, Input::Start);
    }

    /// Kills a node: its service goes (what it persisted stays), events for it are lost.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].service = None;
        if let Some(at) = self.nodes[i].wake.take() {
            self.wakes.remove(&(at, i));
        }
        let lost: Vec<_> = self
            .queue
            .iter()
            .filter(|(_, e)| match e {
                Event::Input(to, _) | Event::Gossip { to, .. } => *to == i,
            })
            .map(|(k, _)| *k)
            .collect();
        for key in lost {
            self.queue.remove(&key);
        }
    }

    /// Whether `a` and `b` are linked and both running.
    pub fn linked(&self, a: usize, b: usize) -> bool {
        self.adj[a].contains(&b)
            && self.nodes[a].service.is_some()
            && self.nodes[b].service.is_some()
    }

    fn neighbours(&self, i: usize) -> Vec<usize> {
        if self.nodes[i].service.is_none() {
            return Vec::new();
        }
        self.adj[i]
            .iter()
            .copied()
            .filter(|&j| self.nodes[j].service.is_some())
            .collect()
    }

    fn index(&self, peer: &PeerId) -> Option<usize> {
        self.by_peer.get(peer).copied()
    }

    /// Cuts the link between two nodes: what is in flight on it is lost.
    pub fn unlink(&mut self, a: usize, b: usize) {
        self.adj[a].remove(&b);
        self.adj[b].remove(&a);
    }

    /// Connects two nodes; each subscribes to the other's topics (documents first).
    pub fn link(&mut self, a: usize, b: usize) {
        if a == b || !self.adj[a].insert(b) {
            return;
        }
        self.adj[b].insert(a);
        for (x, _) in [(a, b), (b, a)] {
            self.schedule(
                Duration::from_millis(1),
                Event::Input(x, Input::Subscribed(Channel::Namespaces)),
            );
            self.schedule(
                Duration::from_millis(2),
                Event::Input(x, Input::Subscribed(Channel::Refs)),
            );
        }
    }

    /// Sends gossip over the link `from`–`to`: after a random latency, never before what
    /// the link carried earlier (one ordered stream, as over a connection).
    fn send(&mut self, from: usize, to: usize, event: Event) {
        let latency = self.rng.latency();
        let last = self.arrivals.get(&(from, to)).copied().unwrap_or_default();
        let at = (self.now + latency).max(last);
        self.arrivals.insert((from, to), at);
        self.nodes[from].stats.sent += 1;
        self.schedule(at - self.now, event);
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.next += 1;
        self.queue.insert((self.now + after, self.next), event);
    }

    /// Hands one input to node `i` now and carries out its effects; returns its judgement of
    /// a gossip message.
    pub(crate) fn feed(&mut self, i: usize, input: Input) -> Option<Judgement> {
        let judgement = self.feed_inner(i, input);
        let wake = self.nodes[i].service.as_ref().and_then(Service::next_wake);
        if self.nodes[i].wake != wake {
            if let Some(at) = self.nodes[i].wake.take() {
                self.wakes.remove(&(at, i));
            }
            if let Some(at) = wake {
                self.wakes.insert((at, i));
                self.nodes[i].wake = Some(at);
            }
        }
        judgement
    }

    fn feed_inner(&mut self, i: usize, input: Input) -> Option<Judgement> {
        let clock = self.clock();
        let connected: Vec<PeerId> = self
            .neighbours(i)
            .into_iter()
            .map(|j| self.nodes[j].peer)
            .collect();
        let service = self.nodes[i].service.as_mut()?;
        service.set_connected(connected);
        let effects = service.handle(clock, input);
        let mut judgement = None;
        for effect in effects {
            if self.nodes[i].service.is_none() {
                break;
            }
            match effect {
                Effect::Judge(j) => judgement = Some(j),
                effect => self.execute(i, effect),
            }
        }
        judgement
    }

    fn publish(&mut self, i: usize, channel: Channel, data: Vec<u8>) {
        self.next += 1;
        let id = self.next;
        self.seen.insert((i, id));
        let author = self.nodes[i].peer;
        for j in self.neighbours(i) {
            let event = Event::Gossip {
                to: j,
                from: i,
                id,
                channel,
                data: data.clone(),
                author,
            };
            self.send(i, j, event);
        }
    }

    fn execute(&mut self, i: usize, effect: Effect) {
        let latency = self.rng.latency();
        let me = self.nodes[i].peer;
        match effect {
            Effect::Status {
                repo,
                status: Status::Seq(seq),
            } => {
                let now = self.now;
                let seqs = &mut self.nodes[i].stats.seqs;
                if seqs.get(&repo).is_none_or(|(s, _)| *s < seq) {
                    seqs.insert(repo, (seq, now));
                }
            }
            Effect::Judge(_) | Effect::Status { .. } | Effect::Refused(_) => {}
            Effect::Publish { channel, data } => self.publish(i, channel, data),
            Effect::Provide(repo) => {
                self.providers.entry(repo).or_default().insert(me);
            }
            Effect::StopProviding(repo) => {
                self.providers.entry(repo).or_default().remove(&me);
            }
            Effect::RequestPack { peer, request } => {
                let j = self.index(&peer).expect("a known peer");
                let result = if self.refusing.contains(&j) {
                    Err(PackError::Refused {
                        peer,
                        answer: PackResponse::Failed,
                    })
                } else if self.linked(i, j) {
                    build_pack(&self.nodes[j].repos, &request, MAX_PACK_LEN as u64)
                        .map_err(|answer| PackError::Refused { peer, answer })
                } else {
                    Err(PackError::Request {
                        peer,
                        reason: "not connected".into(),
                    })
                };
                self.packs.push(Asked {
                    by: i,
                    of: j,
                    served: result.is_ok(),
                    at: self.now,
                });
                let repo = request.repo;
                let input = Input::PackFetched { repo, peer, result };
                self.schedule(latency * 2, Event::Input(i, input));
            }
            Effect::ApplyPack {
                repo,
                peer,
                pack,
                refs,
                created_at,
                ..
            } => {
                let result = apply_pack(&self.nodes[i].repos, &repo, &pack, &refs, created_at)
                    .map(|_| ())
                    .map_err(|e| ApplyError::Replica(e.to_string()));
                let input = Input::PackApplied { repo, peer, result };
                self.schedule(Duration::from_millis(1), Event::Input(i, input));
            }
            Effect::FindProviders { repo, .. } => {
                let peers = self
                    .providers
                    .get(&repo)
                    .map(|p| p.iter().copied().collect())
                    .unwrap_or_default();
                let input = Input::Providers { repo, peers };
                self.schedule(latency, Event::Input(i, input));
            }
            Effect::FetchLfs {
                repo,
                wanted,
                peers,
                ticket,
            } => {
                if self.kill_at_lfs == Some(i) {
                    self.kill_at_lfs = None;
                    return self.kill(i);
                }
                let result = self.fetch_lfs(i, &repo, wanted, &peers);
                let sha256 = wanted.sha256;
                let input = Input::LfsFetched {
                    repo,
                    sha256,
                    ticket,
                    result,
                };
                self.schedule(latency, Event::Input(i, input));
            }
            Effect::Withdraw(repo) => {
                let node = &self.nodes[i];
                let result = drop_replica(&node.repos, &node.chunks, &repo);
                let input = Input::Withdrawn { repo, result };
                self.schedule(Duration::from_millis(1), Event::Input(i, input));
            }
            Effect::Answer { ticket, result } => self.nodes[i].answers.push((ticket, result)),
            Effect::Synced { repo, result } => {
                let now = self.now;
                self.nodes[i].synced.push((repo, result, now));
            }
        }
    }

    /// Fetches one LFS object for node `i` from those of `peers` it is linked to: the
    /// manifest from the first that serves one that checks, then batches spread by the
    /// scheduler, each checked; imported (and adopted by the repo) only when all verified.
    fn fetch_lfs(
        &mut self,
        i: usize,
        repo: &RepoId,
        wanted: Wanted,
        peers: &[PeerId],
    ) -> Result<(), LfsError> {
        let sha256 = wanted.sha256;
        let candidates: Vec<usize> = peers
            .iter()
            .filter_map(|p| self.index(p))
            .filter(|&j| self.linked(i, j))
            .collect();
        let serve = |net: &Self, j: usize, request: &BlockRequest| {
            let node = &net.nodes[j];
            // Fetches here are instantaneous: no object is ever partly held.
            let none = crate::lfs::Arrivals::default();
            crate::lfs::serve(&node.repos, &node.chunks, &none, request, node.corrupt)
        };
        let mut manifest = None;
        for &j in &candidates {
            if let BlockResponse::Manifest(bytes) =
                serve(self, j, &BlockRequest::Manifest { sha256 })
            {
                match check_manifest(&bytes, &wanted.manifest_id, &sha256, wanted.size) {
                    Ok(m) => {
                        manifest = Some(m);
                        break;
                    }
                    Err(_) => self.bad.push((i, j)),
                }
            }
        }
        let manifest = manifest.ok_or(LfsError::NoManifest(sha256))?;
        let lens: Vec<u32> = manifest.chunks.iter().map(|c| c.len).collect();
        let batches = plan(&lens, &vec![false; lens.len()]);
        let providers: Vec<PeerId> = candidates.iter().map(|&j| self.nodes[j].peer).collect();
        let mut scheduler = Scheduler::new(&batches, &providers);
        let mut got: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        let mut at = self.t0 + self.now;
        let total = lens.len() as u32;
        while !scheduler.is_done() {
            let mut assigned = Vec::new();
            while let Some(a) = scheduler.next(at, total) {
                assigned.push(a);
            }
            if assigned.is_empty() {
                // The first chunk not got: where the verified prefix ends.
                let frontier = got
                    .iter()
                    .try_fold(0u32, |f, (&first, c)| {
                        (first == f).then(|| f + c.len() as u32).ok_or(f)
                    })
                    .unwrap_or_else(|f| f);
                return Err(LfsError::NoChunks { sha256, frontier });
            }
            for a in assigned {
                at += self.rng.latency();
                let j = self.index(&a.peer).expect("a candidate");
                let request = BlockRequest::Chunks {
                    sha256,
                    first: a.batch.first,
                    count: a.batch.count,
                };
                let outcome = match serve(self, j, &request) {
                    BlockResponse::Chunks(mut chunks) if !chunks.is_empty() => {
                        chunks.truncate(a.batch.count as usize);
                        if check_chunks(&manifest, u64::from(a.batch.first), &chunks).is_ok() {
                            let n = chunks.len() as u32;
                            let bytes = chunks.iter().map(|c| c.len() as u64).sum();
                            got.insert(a.batch.first, chunks);
                            Outcome::Served { chunks: n, bytes }
                        } else {
                            self.bad.push((i, j));
                            Outcome::Bad
                        }
                    }
                    _ => Outcome::Failed,
                };
                scheduler.finish(a.id, at, outcome);
            }
        }
        let content: Vec<u8> = got.into_values().flatten().flatten().collect();
        let node = &self.nodes[i];
        let info = node
            .chunks
            .import_reader(content.as_slice())
            .map_err(|e| LfsError::Import {
                sha256,
                reason: e.to_string(),
            })?;
        if info.sha256 != sha256 {
            return Err(LfsError::Mismatch {
                sha256,
                got: info.sha256,
            });
        }
        hub_core::lfs_objects::adopt(&node.repos, &node.chunks, repo, &sha256)
            .map_err(|e| LfsError::Record(e.to_string()))
    }

    /// Runs events (and the retries they make due) for `span` of virtual time.
    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        loop {
            let event_at = self.queue.keys().next().map(|(t, _)| *t);
            let wake = self
                .wakes
                .first()
                .map(|&(at, i)| (at.saturating_duration_since(self.t0).max(self.now), i));
            match (event_at, wake) {
                (_, Some((at, i))) if at <= end && event_at.is_none_or(|e| at < e) => {
                    self.now = at;
                    self.feed(i, Input::Tick);
                }
                (Some(at), _) if at <= end => {
                    let (_, event) = self.queue.pop_first().expect("an event");
                    self.now = at;
                    self.deliver(event);
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn deliver(&mut self, event: Event) {
        match event {
            Event::Input(i, input) => {
                self.feed(i, input);
            }
            Event::Gossip {
                to,
                from,
                id,
                channel,
                data,
                author,
            } => {
                if !self.linked(from, to) {
                    return;
                }
                self.nodes[to].stats.received += 1;
                if !self.seen.insert((to, id)) {
                    return;
                }
                self.nodes[to].stats.handled += 1;
                let via = self.nodes[from].peer;
                let input = Input::Gossip {
                    channel,
                    data: data.clone(),
                    author: Some(author),
                    via,
                };
                let judgement = self.feed(to, input).expect("gossip is judged");
                self.judged.push((to, channel, judgement));
                let stats = &mut self.nodes[to].stats;
                match judgement {
                    Judgement::Accept => stats.accepted += 1,
                    Judgement::Reject => stats.rejected += 1,
                    Judgement::Ignore => stats.ignored += 1,
                }
                if judgement == Judgement::Accept {
                    // Forwarded to the other neighbours, as gossipsub does once validated.
                    for j in self.neighbours(to) {
                        if j != from {
                            let event = Event::Gossip {
                                to: j,
                                from: to,
                                id,
                                channel,
                                data: data.clone(),
                                author,
                            };
                            self.send(to, j, event);
                        }
                    }
                }
            }
        }
    }

    /// Node `i` gossips `data` on the refs topic as its own message, as a liar or a
    /// replayer would: its neighbours judge it like any gossip.
    pub fn gossip_update(&mut self, i: usize, data: Vec<u8>) {
        self.publish(i, Channel::Refs, data);
    }

    /// The last update node `i` accepted for `repo` (`None` also while it is killed).
    pub fn last_accepted(&self, i: usize, repo: &RepoId) -> Option<SignedRefUpdate> {
        self.nodes[i].service.as_ref()?.last_accepted(repo)
    }

    /// Creates and commits on node `i`; `lfs` adds a file of that many bytes as LFS content.
    /// Returns its SHA-256.
    pub fn write(&mut self, i: usize, repo: &RepoId, path: &str, lfs: usize) -> Option<Sha256> {
        let node = &self.nodes[i];
        assert!(!node.relay, "relays hold no repos of their own");
        if !node.repos.exists(repo) {
            node.repos.create(repo, &author()).unwrap();
        }
        let sha = if lfs > 0 {
            let bytes = noise(self.now.as_nanos() as u64 ^ lfs as u64, lfs);
            let info = node.chunks.import_reader(bytes.as_slice()).unwrap();
            hub_core::lfs_objects::adopt(&node.repos, &node.chunks, repo, &info.sha256).unwrap();
            let pointer = LfsPointer::new(&info.sha256.to_string(), info.size).unwrap();
            commit(&node.repos, repo, path, FileContent::Lfs(pointer));
            Some(info.sha256)
        } else {
            commit(
                &node.repos,
                repo,
                path,
                FileContent::Regular(path.as_bytes().to_vec()),
            );
            None
        };
        self.feed(i, Input::LocalChange(repo.clone()));
        sha
    }

    /// The public refs of node `i`'s copy of `repo`, if it has one.
    pub fn refs(&self, i: usize, repo: &RepoId) -> Option<BTreeMap<String, [u8; 20]>> {
        let repos = &self.nodes[i].repos;
        repos.exists(repo).then(|| repos.public_refs(repo).unwrap())
    }

    /// Whether node `i` holds LFS object `sha` for `repo`.
    pub fn holds(&self, i: usize, repo: &RepoId, sha: &Sha256) -> bool {
        let node = &self.nodes[i];
        node.chunks.has(sha).unwrap() && node.repos.has_lfs_object(repo, &sha.0).unwrap()
    }
}

#[cfg(test)]
mod tests;
