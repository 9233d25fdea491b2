//! The compute mesh's node-side state and tasks: this node's [`Compute`] (mode, node key,
//! allow-list, the table of peers' verified capacity adverts, the response cache, counters),
//! the advertiser ([`Compute::start`] → `advertise`: this node's signed advert, built from a
//! [`LoadSnapshot`], every advert period) and the advert collector (`collect_adverts`:
//! gossiped adverts judged by [`CapacityTable`]; forged or malformed → gossipsub `Reject`,
//! stale, replayed, rate-limited → `Ignore`), and the `/hubmesh/infer/1` stream server
//! ([`crate::stream`]).
//!
//! Who spawns whom: the node builds [`Compute`] and the [`Models`], hands both to the gateway,
//! builds the gateway's job handler and calls [`Compute::start`], which spawns the three
//! tasks; they end when the swarm stops. Routing and forwarding of HTTP requests are the
//! gateway's (`gateway/src/compute`); they read [`Compute::decide`] and the cache here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{AsyncWriteExt, StreamExt};
use hub_compute::{
    CapacityAdvert, CapacityTable, Decision, DeviceKind, Mode, ResponseCache, RouteRequest,
    SignedCapacityAdvert, SpaceSlots, TableConfig,
};
use hub_net::{P2p, PeerId, Stream, StreamProtocol, Topic, Verdict, read_frame, write_frame};
use hub_protocol::forward::{Frame, INFER_PROTOCOL, MAX_BODY, ResponseHead};
use hub_protocol::repo::RepoId;
use hub_protocol::signed::{PublicKey, SigningKey};
use tokio::sync::Semaphore;

use crate::models::Models;
use crate::snapshot::LoadSnapshot;
use crate::stream::{HOP_HEADERS, JobHandler, MAX_REMOTE_JOBS, REQUEST_HEADERS};

/// Total bytes the response cache keeps.
const CACHE_BYTES: usize = 64 << 20;

/// Settings of the compute mesh.
#[derive(Debug, Clone)]
pub struct ComputeConfig {
    pub mode: Mode,
    /// The node key (signs adverts).
    pub secret: [u8; 32],
    /// How often capacity adverts go out; they expire after twice this.
    pub advert_period: Duration,
    /// Peers whose jobs a `mesh` node runs; empty: every peer.
    pub allow_peers: Vec<PeerId>,
    /// Responses the cache keeps (0: no cache).
    pub cache_entries: usize,
}

/// What this node did for the compute mesh, for `GET /api/mesh/compute`.
#[derive(Debug, Default)]
pub struct Counters {
    pub served_here: AtomicU64,
    pub forwarded: AtomicU64,
    pub failovers: AtomicU64,
    pub remote_jobs: AtomicU64,
    pub cache_hits: AtomicU64,
}

/// This node in the compute mesh (see the module docs). Share it as `Arc<Compute>`.
pub struct Compute {
    mode: Mode,
    key: SigningKey,
    me: PublicKey,
    allow: Vec<PeerId>,
    period: Duration,
    table: Mutex<CapacityTable>,
    cache: Option<Mutex<ResponseCache>>,
    jobs: Arc<Semaphore>,
    counters: Counters,
    space_slots: Mutex<Option<SpaceSlotsSource>>,
}

/// Reads this node's Space slots when an advert is built (hub-spaces' runtime, set by the
/// node with [`Compute::set_space_slots`]).
pub type SpaceSlotsSource = Arc<dyn Fn() -> SpaceSlots + Send + Sync>;

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute")
            .field("mode", &self.mode)
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Compute {
    pub fn new(config: ComputeConfig) -> Self {
        let key = SigningKey::from_bytes(&config.secret);
        Self {
            mode: config.mode,
            me: key.public(),
            key,
            allow: config.allow_peers,
            period: config.advert_period,
            table: Mutex::new(CapacityTable::new(TableConfig {
                // A node may advertise about twice per period at most.
                min_interval_secs: config.advert_period.as_secs() / 2,
                ..TableConfig::default()
            })),
            cache: (config.cache_entries > 0)
                .then(|| Mutex::new(ResponseCache::new(config.cache_entries, CACHE_BYTES))),
            jobs: Arc::new(Semaphore::new(MAX_REMOTE_JOBS)),
            counters: Counters::default(),
            space_slots: Mutex::new(None),
        }
    }

    /// The node key (signs adverts and placements).
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// This node's key, as its adverts name it.
    pub fn me(&self) -> PublicKey {
        self.me
    }

    /// Where this node's adverts read its Space slots from from now on (unset: Spaces off,
    /// no slots).
    pub fn set_space_slots(&self, source: SpaceSlotsSource) {
        *self
            .space_slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(source);
    }

    /// Spawns the advertiser, the advert collector and (mode `mesh`) the stream server, which
    /// runs peers' jobs with `jobs`. Call once, inside the runtime.
    pub fn start(
        self: &Arc<Self>,
        p2p: P2p,
        models: Option<Arc<Models>>,
        jobs: Arc<dyn JobHandler>,
    ) {
        tokio::spawn(advertise(p2p.clone(), self.clone(), models));
        tokio::spawn(collect_adverts(p2p.clone(), self.clone()));
        if self.mode == Mode::Mesh {
            tokio::spawn(serve_streams(p2p, self.clone(), jobs));
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The response cache, unless it is off.
    pub fn cache(&self) -> Option<MutexGuard<'_, ResponseCache>> {
        self.cache
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn has_cache(&self) -> bool {
        self.cache.is_some()
    }

    /// The table of peers' live adverts.
    pub fn table(&self) -> MutexGuard<'_, CapacityTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this node runs jobs `peer` forwards.
    pub fn allowed(&self, peer: &PeerId) -> bool {
        self.allow.is_empty() || self.allow.contains(peer)
    }

    /// This node's advert now (unsigned), from `load` (`None`: inference is off here).
    pub fn advert(&self, load: Option<&LoadSnapshot>, now: u64) -> CapacityAdvert {
        // Milliseconds: strictly increasing across restarts without a stored counter.
        let seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut advert = CapacityAdvert::new(self.me, seq, now);
        // Two periods, plus a second for clocks read in whole seconds on both ends.
        advert.expires_at = now + 2 * self.period.as_secs().max(1) + 1;
        advert.mode = self.mode;
        advert.accepts_remote = self.mode == Mode::Mesh;
        advert.device = DeviceKind::Cpu;
        advert.device_name = format!("cpu ({} threads)", num_threads());
        if let Some(load) = load.filter(|_| self.mode != Mode::Off) {
            load.fill_advert(&mut advert);
        }
        let slots = self
            .space_slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // No Spaces runtime here: the default, mode off and no slots.
        advert.spaces = slots.map(|slots| slots()).unwrap_or_default();
        advert
    }

    /// Where `model` should run, from this node's load (`None`: inference is off here),
    /// whether it holds the repo, the live adverts and the peers' RTTs.
    pub fn decide(
        &self,
        load: Option<&LoadSnapshot>,
        model: &RepoId,
        held: bool,
        rtts: &HashMap<PublicKey, Duration>,
    ) -> Decision {
        let now = unix_now();
        let local = match load.filter(|_| self.mode != Mode::Off) {
            Some(load) => load.local_state(self.me, self.mode, model, held),
            None => hub_compute::LocalState::idle(self.me, self.mode),
        };
        let request = RouteRequest {
            model: model.clone(),
            commit: None,
            load_bytes: 0,
        };
        let table = self.table();
        hub_compute::route(&request, &local, table.live(now), rtts, now)
    }
}

fn num_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Gossips this node's signed advert every period.
async fn advertise(p2p: P2p, compute: Arc<Compute>, models: Option<Arc<Models>>) {
    let mut tick = tokio::time::interval(compute.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let load = models.as_ref().map(|m| {
            m.measure_speed();
            m.snapshot()
        });
        let advert = compute.advert(load.as_ref(), unix_now());
        let signed = match advert.sign(&compute.key) {
            Ok(signed) => signed,
            Err(error) => {
                tracing::warn!(%error, "cannot sign capacity advert");
                continue;
            }
        };
        match p2p.publish(Topic::Capacity, signed.encode()).await {
            Ok(()) => {}
            Err(hub_net::NetError::Stopped) => break,
            // No peers subscribed yet, and the like: the next period tries again.
            Err(error) => tracing::trace!(%error, "capacity advert not published"),
        }
    }
}

/// Judges the adverts peers gossip and keeps the good ones.
async fn collect_adverts(p2p: P2p, compute: Arc<Compute>) {
    let Some(mut adverts) = p2p.take_capacity_adverts() else {
        return;
    };
    while let Some(message) = adverts.recv().await {
        let verdict = match SignedCapacityAdvert::decode(&message.data) {
            Err(error) => {
                tracing::debug!(source = %message.source, %error, "malformed capacity advert");
                Verdict::Reject
            }
            // Gossipsub checked the author's signature over the message: a node may only
            // publish its own advert.
            Ok(signed)
                if message.author.and_then(|a| hub_net::key_of_peer_id(&a))
                    != Some(signed.advert.node.0) =>
            {
                tracing::debug!(source = %message.source, "capacity advert published by another node");
                Verdict::Reject
            }
            Ok(signed) => match compute.table().insert(signed, unix_now()) {
                Ok(_) => Verdict::Accept,
                Err(rejected) if rejected.penalise() => {
                    tracing::warn!(source = %message.source, %rejected, "capacity advert rejected");
                    Verdict::Reject
                }
                Err(rejected) => {
                    tracing::trace!(%rejected, "capacity advert ignored");
                    Verdict::Ignore
                }
            },
        };
        p2p.judge(&message, verdict);
    }
}

/// How long a peer may take to send its request after opening a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts `/hubmesh/infer/1` streams and runs their jobs with `handler` until the swarm
/// stops (mode `mesh` only: the caller starts it then).
async fn serve_streams(p2p: P2p, compute: Arc<Compute>, handler: Arc<dyn JobHandler>) {
    let mut incoming = match p2p.streams().accept(StreamProtocol::new(INFER_PROTOCOL)) {
        Ok(incoming) => incoming,
        Err(error) => {
            tracing::warn!(%error, "cannot accept forwarded inference requests");
            return;
        }
    };
    while let Some((peer, mut stream)) = incoming.next().await {
        let refused = if !compute.allowed(&peer) {
            Some("this node does not run jobs of this peer")
        } else {
            None
        };
        let permit = compute.jobs.clone().try_acquire_owned().ok();
        match (refused, permit) {
            (None, Some(permit)) => {
                let (compute, handler) = (compute.clone(), handler.clone());
                tokio::spawn(async move {
                    serve_stream(&compute, &*handler, peer, stream).await;
                    drop(permit);
                });
            }
            (refused, _) => {
                let why = refused.unwrap_or("too many remote jobs running");
                tracing::info!(%peer, why, "forwarded request refused");
                tokio::spawn(async move {
                    let _ = write_frame(&mut stream, &Frame::Error(why.into())).await;
                    let _ = stream.close().await;
                });
            }
        }
    }
}

async fn serve_stream(
    compute: &Compute,
    handler: &dyn JobHandler,
    peer: PeerId,
    mut stream: Stream,
) {
    let mut request = match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut stream)).await {
        Ok(Ok(Frame::Request(request))) => request,
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            tracing::debug!(%peer, "bad or missing forwarded request");
            let _ = write_frame(&mut stream, &Frame::Error("expected a request".into())).await;
            return;
        }
    };
    compute.counters.remote_jobs.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%peer, path = %request.path, "running a forwarded request");
    // Only the headers a forwarder sends: never credentials, the job is anonymous.
    request
        .headers
        .retain(|(name, _)| REQUEST_HEADERS.contains(&name.to_ascii_lowercase().as_str()));
    let answer = match handler.run(peer, request).await {
        Ok(answer) => answer,
        Err(e) => {
            let _ = write_frame(&mut stream, &Frame::Error(e.to_string())).await;
            return;
        }
    };
    let head = Frame::Head(ResponseHead {
        status: answer.head.status,
        headers: answer
            .head
            .headers
            .into_iter()
            .filter(|(n, _)| !HOP_HEADERS.contains(&n.to_ascii_lowercase().as_str()))
            .collect(),
    });
    if write_frame(&mut stream, &head).await.is_err() {
        return;
    }
    let mut body = answer.body;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                let _ = write_frame(&mut stream, &Frame::Error(error.to_string())).await;
                return;
            }
        };
        for part in chunk.chunks(MAX_BODY) {
            if write_frame(&mut stream, &Frame::Data(part.to_vec()))
                .await
                .is_err()
            {
                // The forwarding gateway went away: dropping the body cancels the request.
                tracing::debug!(%peer, "forwarding peer went away; cancelling");
                return;
            }
        }
    }
    let _ = write_frame(&mut stream, &Frame::End).await;
    let _ = stream.close().await;
}
