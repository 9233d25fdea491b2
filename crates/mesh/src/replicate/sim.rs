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

use super::driver::{apply_pack, build_pack, drop_replica};
use super::service::{Channel, Clock, Effect, Input, Judgement, Service, SyncError};
use super::{MAX_PENDING, RETRY_PERIOD};
use crate::error::{ApplyError, LfsError, PackError};
use crate::lfs::Wanted;
use crate::schedule::{Outcome, Scheduler, plan};
use crate::seeds::{SEEDS_FILE, SeedPolicy};
use crate::state::RefStore;
use hub_protocol::blocks::{BlockRequest, BlockResponse, check_chunks, check_manifest};
use hub_protocol::manifest::Sha256;
use hub_protocol::replication::{MAX_PACK_LEN, PackRequest, PackResponse, SeedPattern};
use hub_protocol::repo::{RepoId, RepoType};
use hub_protocol::signed::{NamespaceDoc, RefUpdate, SignedRefUpdate, SigningKey, Visibility};
use hub_repo::{Author, CommitRequest, FileContent, LfsPointer, Operation, Repos};
use hub_store::Store;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds since the Unix epoch at virtual time zero.
const UNIX_ZERO: u64 = 1_800_000_000;

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

struct Node {
    peer: PeerId,
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
struct Asked {
    by: usize,
    of: usize,
    served: bool,
    at: Duration,
}

struct Net {
    _dir: tempfile::TempDir,
    root: PathBuf,
    rng: Rng,
    t0: Instant,
    now: Duration,
    next: u64,
    queue: BTreeMap<(Duration, u64), Event>,
    nodes: Vec<Node>,
    links: BTreeSet<(usize, usize)>,
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

fn author() -> Author {
    Author::new("alice", "alice@hubmesh.test")
}

fn model(name: &str) -> RepoId {
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
    fn new(seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            root: dir.path().to_owned(),
            _dir: dir,
            rng: Rng(seed),
            t0: Instant::now(),
            now: Duration::ZERO,
            next: 0,
            queue: BTreeMap::new(),
            nodes: Vec::new(),
            links: BTreeSet::new(),
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

    /// Adds a node (not started) with key `secret` seeding `seeds`.
    fn add(&mut self, secret: u8, seeds: &[&str]) -> usize {
        let i = self.nodes.len();
        let dir = self.root.join(format!("node{i}"));
        let secret = [secret; 32];
        let peer = Keypair::ed25519_from_bytes(secret)
            .unwrap()
            .public()
            .to_peer_id();
        let node = Node {
            peer,
            secret,
            repos: Arc::new(Repos::open(dir.join("repos")).unwrap()),
            chunks: Store::open(dir.join("store")).unwrap(),
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
        self.start(i);
        i
    }

    /// Builds the node's service from what it persisted (ref store, seeds) and starts it.
    fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let store = RefStore::open(node.dir.join("refs.redb")).unwrap();
        let seeds = SeedPolicy::open(Some(node.dir.join(SEEDS_FILE)), node.seeds.clone()).unwrap();
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
    fn kill(&mut self, i: usize) {
        self.nodes[i].service = None;
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

    fn linked(&self, a: usize, b: usize) -> bool {
        self.links.contains(&(a.min(b), a.max(b)))
            && self.nodes[a].service.is_some()
            && self.nodes[b].service.is_some()
    }

    fn neighbours(&self, i: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&j| j != i && self.linked(i, j))
            .collect()
    }

    fn index(&self, peer: &PeerId) -> Option<usize> {
        self.nodes.iter().position(|n| n.peer == *peer)
    }

    /// Connects two nodes; each subscribes to the other's topics (documents first).
    fn link(&mut self, a: usize, b: usize) {
        self.links.insert((a.min(b), a.max(b)));
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
        self.schedule(at - self.now, event);
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.next += 1;
        self.queue.insert((self.now + after, self.next), event);
    }

    /// Hands one input to node `i` now and carries out its effects; returns its judgement of
    /// a gossip message.
    fn feed(&mut self, i: usize, input: Input) -> Option<Judgement> {
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
            crate::lfs::serve(&node.repos, &node.chunks, request, node.corrupt)
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

    /// Runs events (and the retries they make due) until virtual time `until` from now.
    fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        loop {
            let event_at = self.queue.keys().next().map(|(t, _)| *t);
            let wake = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| Some((n.service.as_ref()?.next_wake()?, i)))
                .min()
                .map(|(at, i)| (at.saturating_duration_since(self.t0).max(self.now), i));
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
                if !self.linked(from, to) || !self.seen.insert((to, id)) {
                    return;
                }
                let via = self.nodes[from].peer;
                let input = Input::Gossip {
                    channel,
                    data: data.clone(),
                    author: Some(author),
                    via,
                };
                let judgement = self.feed(to, input).expect("gossip is judged");
                self.judged.push((to, channel, judgement));
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

    /// Creates and commits on node `i`; `lfs` adds a file of that many bytes as LFS content.
    /// Returns its SHA-256.
    fn write(&mut self, i: usize, repo: &RepoId, path: &str, lfs: usize) -> Option<Sha256> {
        let node = &self.nodes[i];
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

    fn refs(&self, i: usize, repo: &RepoId) -> Option<BTreeMap<String, [u8; 20]>> {
        let repos = &self.nodes[i].repos;
        repos.exists(repo).then(|| repos.public_refs(repo).unwrap())
    }

    fn holds(&self, i: usize, repo: &RepoId, sha: &Sha256) -> bool {
        let node = &self.nodes[i];
        node.chunks.has(sha).unwrap() && node.repos.has_lfs_object(repo, &sha.0).unwrap()
    }
}

#[test]
fn line_topology_replicates_through_the_middle_node() {
    let mut net = Net::new(1);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    let c = net.add(3, &["alice/*"]);
    net.link(a, b);
    net.link(b, c);
    net.run_for(Duration::from_secs(1));
    let repo = model("alice/tiny");
    net.write(a, &repo, "config.json", 0);
    let sha = net.write(a, &repo, "model.bin", 300_000).unwrap();
    net.run_for(Duration::from_secs(30));

    let published = net.refs(a, &repo);
    assert!(published.is_some());
    assert_eq!(net.refs(b, &repo), published);
    assert_eq!(
        net.refs(c, &repo),
        published,
        "C hears of A's update only through B"
    );
    assert!(net.holds(b, &repo, &sha));
    assert!(net.holds(c, &repo, &sha));
    // C asked the publisher first (it is not connected), then the forwarder, which served.
    let c_asked: Vec<_> = net.packs.iter().filter(|p| p.by == c).collect();
    assert!(c_asked.iter().any(|p| p.of == b && p.served));
    assert!(c_asked.iter().all(|p| p.of != a || !p.served));
    assert!(
        net.nodes[c]
            .synced
            .iter()
            .any(|(r, ok, _)| r == &repo && ok.is_ok())
    );
    // Both seeders provide the repo once they hold it whole.
    let providers = &net.providers[&repo];
    for n in [a, b, c] {
        assert!(providers.contains(&net.nodes[n].peer));
    }
}

#[test]
fn a_late_joiner_catches_up_through_a_seeder_after_the_publisher_left() {
    let mut net = Net::new(2);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    net.link(a, b);
    let repo = model("alice/tiny");
    net.run_for(Duration::from_secs(1));
    let sha = net.write(a, &repo, "model.bin", 100_000).unwrap();
    net.run_for(Duration::from_secs(10));
    assert!(net.holds(b, &repo, &sha));
    // The publisher goes; a node that joins later hears of the repo only from the catch-up
    // B gossips when it subscribes, and fetches it from B.
    net.kill(a);
    let d = net.add(4, &["alice/*"]);
    net.link(b, d);
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.refs(d, &repo), net.refs(a, &repo));
    assert!(net.holds(d, &repo, &sha));
    assert!(
        net.judged
            .iter()
            .any(|&(n, c, j)| n == d && c == Channel::Namespaces && j == Judgement::Accept)
    );
    assert_eq!(accepted(&net, d, &repo), accepted(&net, b, &repo));
}

#[test]
fn a_corrupt_provider_is_avoided_and_nothing_corrupt_is_kept() {
    let mut net = Net::new(3);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    net.link(a, b);
    let repo = model("alice/big");
    net.run_for(Duration::from_secs(1));
    let sha = net.write(a, &repo, "model.bin", 1 << 20).unwrap();
    net.run_for(Duration::from_secs(5));
    assert!(net.holds(b, &repo, &sha));

    // B turns bad. C, linked to B only, gets the refs from it but never the object: every
    // batch B sends fails verification, nothing is stored, and the sync fails.
    net.nodes[b].corrupt = true;
    let c = net.add(3, &["alice/*"]);
    net.link(b, c);
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.refs(c, &repo), net.refs(a, &repo));
    assert!(net.bad.contains(&(c, b)));
    assert!(!net.nodes[c].chunks.has(&sha).unwrap());
    let last = net.nodes[c].synced.last();
    assert!(
        matches!(last, Some((r, Err(SyncError::Lfs { left: 1, .. }), _)) if r == &repo),
        "{last:?}"
    );

    // With the publisher linked too, the retry asks B first (it forwarded the update), drops
    // it at its first bad batch, and gets the whole object from A.
    net.link(a, c);
    let bad_before = net.bad.len();
    net.run_for(Duration::from_secs(10));
    assert!(net.holds(c, &repo, &sha));
    assert!(
        net.bad[bad_before..].contains(&(c, b)),
        "asked again and caught"
    );
    assert!(!net.bad.iter().any(|&(_, p)| p == a));
    let read = |n: usize| {
        let mut out = Vec::new();
        let mut file = net.nodes[n].chunks.open_file(&sha).unwrap();
        std::io::Read::read_to_end(&mut file, &mut out).unwrap();
        out
    };
    assert!(read(c) == read(a), "the stored object is the published one");
}

#[test]
fn a_node_killed_mid_sync_resumes_from_what_it_persisted() {
    let mut net = Net::new(4);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    net.link(a, b);
    let repo = model("alice/tiny");
    net.run_for(Duration::from_secs(1));
    net.kill_at_lfs = Some(b);
    let sha = net.write(a, &repo, "model.bin", 200_000).unwrap();
    net.run_for(Duration::from_secs(10));
    // Killed after the pack was applied, before the LFS object came.
    assert!(net.nodes[b].service.is_none());
    assert_eq!(net.refs(b, &repo), net.refs(a, &repo));
    assert!(!net.nodes[b].chunks.has(&sha).unwrap());
    let asked_before = net.packs.iter().filter(|p| p.by == b).count();

    // Restarted from its ref store and seeds: the sync resumes at start-up, and goes
    // straight to the LFS content (the refs are current, no pack is asked for again).
    net.start(b);
    net.link(a, b);
    net.run_for(Duration::from_secs(10));
    assert!(net.holds(b, &repo, &sha));
    assert_eq!(net.packs.iter().filter(|p| p.by == b).count(), asked_before);
}

#[test]
fn a_failed_sync_is_retried_after_the_retry_period_in_virtual_time() {
    let mut net = Net::new(5);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    net.link(a, b);
    let repo = model("alice/tiny");
    net.run_for(Duration::from_secs(1));
    // A answers no pack request for a while: B's sync fails (no other provider either).
    net.refusing.insert(a);
    net.write(a, &repo, "config.json", 0);
    net.run_for(Duration::from_secs(1));
    assert!(net.refs(b, &repo).is_none());
    let (_, result, failed_at) = net.nodes[b].synced.last().cloned().expect("a sync ended");
    assert!(
        matches!(
            result,
            Err(SyncError::Pack(PackError::Refused {
                answer: PackResponse::Failed,
                ..
            }))
        ),
        "{result:?}"
    );
    let wake = net.nodes[b].service.as_ref().unwrap().next_wake().unwrap();
    assert_eq!(wake - net.t0, failed_at + RETRY_PERIOD);
    net.refusing.clear();
    let asked = net.packs.iter().filter(|p| p.by == b).count();
    // Nothing happens before the retry is due...
    let due = failed_at + RETRY_PERIOD;
    net.run_for(due - net.now - Duration::from_millis(1));
    assert_eq!(net.packs.iter().filter(|p| p.by == b).count(), asked);
    assert!(net.refs(b, &repo).is_none());
    // ...then A is asked again, at the due time, and serves.
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.refs(b, &repo), net.refs(a, &repo));
    let retried = net.packs.iter().find(|p| p.by == b && p.served).unwrap();
    assert_eq!(retried.at, due);
}

#[test]
fn forged_replayed_and_malformed_updates_get_the_right_verdict() {
    let mut net = Net::new(6);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    net.link(a, b);
    let repo = model("alice/tiny");
    net.run_for(Duration::from_secs(1));
    net.write(a, &repo, "config.json", 0);
    net.run_for(Duration::from_secs(5));
    let good = net.refs(a, &repo);
    assert_eq!(net.refs(b, &repo), good);

    let via = net.nodes[a].peer;
    let judge = |net: &mut Net, data: Vec<u8>| {
        let input = Input::Gossip {
            channel: Channel::Refs,
            data,
            author: Some(via),
            via,
        };
        net.feed(b, input).unwrap()
    };
    // The accepted update again: a replay, ignored (not forwarded, no blame).
    let last = accepted(&net, b, &repo);
    assert_eq!(judge(&mut net, last.encode()), Judgement::Ignore);
    // A higher seq signed by a stranger: forged, rejected.
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let mut forged = RefUpdate::new(
        repo.clone(),
        last.update.namespace_doc,
        last.update.seq + 1,
        UNIX_ZERO,
    );
    forged.refs.insert("refs/heads/main".into(), [7; 20]);
    let forged = forged.sign(&stranger).unwrap();
    assert_eq!(judge(&mut net, forged.encode()), Judgement::Reject);
    // Bytes that are no update at all.
    assert_eq!(
        judge(&mut net, b"not an update".to_vec()),
        Judgement::Reject
    );
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.refs(b, &repo), good, "nothing forged moved a ref");
}

/// The last update node `i` accepted for `repo`.
fn accepted(net: &Net, i: usize, repo: &RepoId) -> SignedRefUpdate {
    let service = net.nodes[i].service.as_ref().unwrap();
    service.last_accepted(repo).expect("an accepted update")
}

#[test]
fn updates_wait_for_their_namespace_document_bounded() {
    let mut net = Net::new(7);
    let b = net.add(2, &["alice/*", "bob/*"]);
    let a = net.add(1, &[]);
    let key = SigningKey::from_bytes(&[1; 32]);
    let via = net.nodes[a].peer;
    let gossip = |net: &mut Net, channel, data: Vec<u8>| {
        let input = Input::Gossip {
            channel,
            data,
            author: Some(via),
            via,
        };
        net.feed(b, input).unwrap()
    };
    // An update whose document B has not heard waits (ignored, not rejected).
    let doc = NamespaceDoc::new("alice", vec![key.public()], 1, Visibility::Public).unwrap();
    let genesis = doc.sign_genesis(&[&key]);
    let repo = model("alice/tiny");
    let mut update = RefUpdate::new(repo.clone(), doc.id(), 1, UNIX_ZERO);
    update.refs.insert("refs/heads/main".into(), [1; 20]);
    let update = update.sign(&key).unwrap();
    assert_eq!(
        gossip(&mut net, Channel::Refs, update.encode()),
        Judgement::Ignore
    );
    assert_eq!(net.nodes[b].service.as_ref().unwrap().pending(), 1);
    // Its document arrives: the update is accepted and B starts syncing it.
    assert_eq!(
        gossip(&mut net, Channel::Namespaces, genesis.encode()),
        Judgement::Accept
    );
    assert_eq!(net.nodes[b].service.as_ref().unwrap().pending(), 0);
    assert_eq!(accepted(&net, b, &repo), update);

    // Many updates for documents never heard: at most MAX_PENDING wait.
    let bob = SigningKey::from_bytes(&[3; 32]);
    let unknown = NamespaceDoc::new("bob", vec![bob.public()], 1, Visibility::Public).unwrap();
    for n in 0..MAX_PENDING + 10 {
        let mut update = RefUpdate::new(model(&format!("bob/m{n}")), unknown.id(), 1, UNIX_ZERO);
        update.refs.insert("refs/heads/main".into(), [2; 20]);
        let data = update.sign(&bob).unwrap().encode();
        assert_eq!(gossip(&mut net, Channel::Refs, data), Judgement::Ignore);
    }
    assert_eq!(
        net.nodes[b].service.as_ref().unwrap().pending(),
        MAX_PENDING
    );
}

#[test]
fn a_download_gets_its_object_ahead_of_any_sync_and_is_answered() {
    let mut net = Net::new(8);
    let a = net.add(1, &[]);
    // E seeds nothing: it accepts the update but syncs nothing by itself.
    let e = net.add(5, &[]);
    net.link(a, e);
    let repo = model("alice/tiny");
    net.run_for(Duration::from_secs(1));
    let sha = net.write(a, &repo, "model.bin", 150_000).unwrap();
    net.run_for(Duration::from_secs(5));
    assert!(net.nodes[e].synced.is_empty());
    assert!(!net.nodes[e].chunks.has(&sha).unwrap());
    // Its git part arrives (as an on-demand read brings it), not its LFS content.
    let refs = net.refs(a, &repo).unwrap();
    let request = PackRequest {
        repo: repo.clone(),
        want: refs.values().copied().collect(),
        have: Vec::new(),
        blob: false,
    };
    let pack = build_pack(&net.nodes[a].repos, &request, MAX_PACK_LEN as u64).unwrap();
    apply_pack(&net.nodes[e].repos, &repo, &pack, &refs, 0).unwrap();
    // A download asks for the object: it is fetched from the connected peers, verified
    // against the accepted binding, and the waiting download is answered.
    let want = |ticket, sha256| Input::WantLfs {
        ticket,
        repo: repo.clone(),
        sha256,
        size: 150_000,
    };
    net.feed(e, want(7, sha));
    net.run_for(Duration::from_secs(1));
    assert!(net.nodes[e].answers.contains(&(7, Ok(()))));
    assert!(net.nodes[e].chunks.has(&sha).unwrap());
    // An object no accepted update binds is refused at once, never fetched.
    net.feed(e, want(8, Sha256([9; 32])));
    let answer = net.nodes[e].answers.iter().find(|(t, _)| *t == 8);
    assert_eq!(answer, Some(&(8, Err(LfsError::Unbound))));
}

#[test]
fn a_repo_fetched_on_demand_or_newly_seeded_syncs_and_a_withdrawal_drops_it() {
    let mut net = Net::new(9);
    let a = net.add(1, &[]);
    let b = net.add(2, &[]);
    net.link(a, b);
    let (tiny, other) = (model("alice/tiny"), model("alice/other"));
    net.run_for(Duration::from_secs(1));
    net.write(a, &tiny, "config.json", 0);
    net.write(a, &other, "config.json", 0);
    net.run_for(Duration::from_secs(5));
    // B seeds nothing: it heard of both repos and holds neither.
    assert!(net.refs(b, &tiny).is_none() && net.refs(b, &other).is_none());
    assert!(net.nodes[b].synced.is_empty());

    // A read asks B for one: it is fetched (from the connected peers) and seeded from now on.
    net.feed(b, Input::Ensure(tiny.clone()));
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.refs(b, &tiny), net.refs(a, &tiny));
    assert!(net.refs(b, &other).is_none());
    net.write(a, &tiny, "notes.txt", 0);
    net.run_for(Duration::from_secs(2));
    assert_eq!(
        net.refs(b, &tiny),
        net.refs(a, &tiny),
        "an on-demand repo stays seeded"
    );

    // A pattern added at run time (`hubmesh seed add`) covers the other: it syncs at once.
    let policy = net.nodes[b].policy.clone().unwrap();
    assert!(policy.add("alice/*").unwrap());
    net.feed(b, Input::SeedsChanged);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.refs(b, &other), net.refs(a, &other));

    // A makes `tiny` private: its withdrawal reaches B, which drops its replica and stops
    // providing it.
    net.nodes[a].repos.set_private(&tiny, true).unwrap();
    net.feed(a, Input::LocalChange(tiny.clone()));
    net.run_for(Duration::from_secs(2));
    assert!(!net.nodes[b].repos.exists(&tiny));
    assert!(!net.providers[&tiny].contains(&net.nodes[b].peer));
    assert!(!net.providers[&tiny].contains(&net.nodes[a].peer));
    assert!(net.nodes[b].repos.exists(&other));
}
