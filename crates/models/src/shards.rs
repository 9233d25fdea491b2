//! Sharded models across node processes: placing a model over several nodes, serving it from
//! this node (the coordinator) and running the shards peers place here (a worker).
//!
//! - **Placing** ([`Shards::place`]): the model's `config.json` gives the sizes; hub-compute's
//!   planner picks nodes from the live capacity adverts (this node first: it coordinates and
//!   holds rank 0 of every tensor-parallel stage); the placement is signed with the node key
//!   and kept ([`Shards::placements`]). This node then opens one `/hubmesh/shard/1` stream
//!   per remote shard, sending the signed placement and the shard's position; meanwhile it
//!   loads its own ranks; when every worker reports its shard loaded, the sharded model
//!   (hub-infer's [`LocalShardedLlama`] with remote ranks) replaces the model of its
//!   `(repo, commit)` in the registry, so every inference route serves it through the same
//!   engine.
//! - **Working** (the `/hubmesh/shard/1` server, [`Shards::start`]): a worker checks the
//!   placement's signature, that its signer opened the stream and that it names this node at
//!   the position asked; fetches the model's repo and weights from the mesh if it lacks them
//!   (whole LFS files, verified, into its own store), writes the model directory, then loads
//!   only its shard by ranged reads of `model.safetensors` (hub-infer's
//!   [`SafetensorsRanges`]) and serves the stream on a blocking thread until the coordinator
//!   lets go or the stream breaks.
//! - **Failure**: a watcher per served placement polls the model's failure flag; once a
//!   worker has failed (its process died: the stream closed; or it did not answer within the
//!   step timeout), the in-flight requests have already ended with an error, and the model
//!   is placed again on the nodes still live (a node that cannot be reached is left out and
//!   the plan retried), with a higher sequence number.
//!
//! Supported shapes across processes: tensor-parallel groups whose rank 0 is this node
//! (`tensor_parallel × 1`), and pipelines of single-node stages (`1 × pipeline_parallel`);
//! both at once need worker-to-worker links and are refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use hub_compute::{LocalCapacity, PlacementRequest, PlanError, plan_placement};
use hub_core::MeshPort;
use hub_infer::config::LlamaConfig;
use hub_infer::serve::sharded::ShardedLoaded;
use hub_infer::serve::{ModelHandle, ModelKey};
use hub_infer::shard::ShardLayout;
use hub_infer::shard::collective::SyncPrecision;
use hub_infer::shard::local::{LocalShardConfig, LocalShardedLlama};
use hub_infer::shard::remote::{RemoteRank, refuse, serve_worker};
use hub_infer::shard::source::SafetensorsRanges;
use hub_infer::shard::stage::StageShard;
use hub_net::CancellationToken;
use hub_net::shard::{SHARD_PROTOCOL, blocking_halves};
use hub_net::{P2p, PeerId, StreamProtocol};
use hub_protocol::capacity::DeviceKind;
use hub_protocol::placement::{MAX_SIGNED_PLACEMENT_LEN, Placement, SignedPlacement, Sync};
use hub_protocol::repo::RepoId;
use hub_protocol::signed::PublicKey;

use crate::compute::{Compute, unix_now};
use crate::models::Models;

/// Timeouts of sharded models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardsConfig {
    /// Bound on one step's reply from a worker and on one all-reduce receive.
    pub step_timeout: Duration,
    /// Bound on a worker fetching and loading its shard.
    pub load_timeout: Duration,
    /// Bound on opening a stream to a worker.
    pub open_timeout: Duration,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(30),
            load_timeout: Duration::from_secs(300),
            open_timeout: Duration::from_secs(10),
        }
    }
}

/// A placement could not be made or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlaceError {
    #[error("model {0} not found on this node")]
    UnknownModel(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("worker {node}: {why}")]
    Worker { node: PeerId, why: String },
    #[error("load the model here: {0}")]
    Load(String),
    #[error("placement task failed")]
    Task,
}

/// See the module docs. Share it as `Arc<Shards>`.
pub struct Shards {
    models: Arc<Models>,
    compute: Arc<Compute>,
    mesh: Arc<dyn MeshPort>,
    p2p: P2p,
    config: ShardsConfig,
    state: Mutex<State>,
    /// One placement at a time (a re-placement waits for a POST in progress).
    placing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// The newest placement per model (`ns/name`) this node made or serves a shard of.
    placements: BTreeMap<String, SignedPlacement>,
    seq: u64,
    /// Stops the watcher of each model's current placement.
    watchers: HashMap<String, CancellationToken>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn parse_oid(text: &str) -> Option<[u8; 20]> {
    hex::decode(text).ok()?.try_into().ok()
}

fn precision(sync: Sync) -> SyncPrecision {
    match sync {
        Sync::F32 => SyncPrecision::F32,
        Sync::Q8 => SyncPrecision::Q8,
    }
}

fn layout_of(p: &Placement) -> ShardLayout {
    ShardLayout {
        tensor_parallel: usize::from(p.tensor_parallel),
        stages: p
            .stages
            .iter()
            .map(|s| usize::from(s.layers.start)..usize::from(s.layers.end))
            .collect(),
    }
}

fn read_config(dir: &Path) -> Result<LlamaConfig, PlaceError> {
    let text = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| PlaceError::Unsupported(format!("read config.json: {e}")))?;
    LlamaConfig::from_json(&text).map_err(|e| {
        PlaceError::Unsupported(format!("config.json is not a Llama-family config: {e}"))
    })
}

fn weights_path(dir: &Path) -> Result<PathBuf, PlaceError> {
    let path = dir.join("model.safetensors");
    if path.is_file() {
        Ok(path)
    } else {
        Err(PlaceError::Unsupported(
            "sharding needs the model as one model.safetensors file".into(),
        ))
    }
}

/// What the planner needs to know of a model's sizes (f32 weights, as loaded).
fn request_for(
    id: &RepoId,
    commit: [u8; 20],
    c: &LlamaConfig,
    kv_positions: usize,
    tp: usize,
    pp: usize,
    sync: Sync,
) -> PlacementRequest {
    let (h, hd, inter, vocab) = (
        c.hidden_size as u64,
        c.head_dim() as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let (heads, kv) = (c.num_attention_heads as u64, c.num_kv_heads() as u64);
    let layer = h * hd * (2 * heads + 2 * kv) + 3 * h * inter + 2 * h;
    let layers = c.num_hidden_layers as u64;
    PlacementRequest {
        model: id.clone(),
        commit,
        num_layers: c.num_hidden_layers,
        layers_bytes: 4 * layer * layers,
        embed_bytes: 4 * vocab * h,
        head_bytes: 4 * (h + if c.tie_word_embeddings { 0 } else { vocab * h }),
        kv_bytes: 4 * 2 * kv * hd * layers * kv_positions as u64,
        tensor_parallel: tp,
        pipeline_parallel: pp,
        sync,
    }
}

/// The hello a coordinator sends on a shard stream: the signed placement, then the shard's
/// stage and rank.
fn encode_hello(signed: &SignedPlacement, stage: usize, rank: usize) -> Vec<u8> {
    let body = signed.encode();
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&(stage as u16).to_le_bytes());
    out.extend_from_slice(&(rank as u16).to_le_bytes());
    out
}

impl Shards {
    pub fn new(
        models: Arc<Models>,
        compute: Arc<Compute>,
        mesh: Arc<dyn MeshPort>,
        p2p: P2p,
        config: ShardsConfig,
    ) -> Self {
        Self {
            models,
            compute,
            mesh,
            p2p,
            config,
            state: Mutex::new(State::default()),
            placing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The signed placements this node knows: those it made and those it serves a shard of,
    /// the newest per model.
    pub fn placements(&self) -> Vec<SignedPlacement> {
        self.lock().placements.values().cloned().collect()
    }

    /// Spawns the `/hubmesh/shard/1` server (workers). Call once, inside the runtime.
    pub fn start(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move { this.serve_streams().await });
    }

    /// Places `revision` of `id` over `tensor_parallel × pipeline_parallel` nodes and starts
    /// serving it here (see the module docs). `rtts`: the peers' round-trip times.
    pub async fn place(
        self: &Arc<Self>,
        id: &RepoId,
        revision: &str,
        tensor_parallel: usize,
        pipeline_parallel: usize,
        sync: Sync,
        rtts: &HashMap<PublicKey, Duration>,
    ) -> Result<SignedPlacement, PlaceError> {
        let _one = self.placing.lock().await;
        self.place_excluding(
            id,
            revision,
            tensor_parallel,
            pipeline_parallel,
            sync,
            rtts,
            &HashSet::new(),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn place_excluding(
        self: &Arc<Self>,
        id: &RepoId,
        revision: &str,
        tp: usize,
        pp: usize,
        sync: Sync,
        rtts: &HashMap<PublicKey, Duration>,
        exclude: &HashSet<PublicKey>,
    ) -> Result<SignedPlacement, PlaceError> {
        if tp > 1 && pp > 1 {
            return Err(PlaceError::Unsupported(
                "tensor_parallel > 1 together with pipeline_parallel > 1 is not supported across node processes yet".into(),
            ));
        }
        let (commit, dir, config) = {
            let (models, id, revision) = (self.models.clone(), id.clone(), revision.to_owned());
            tokio::task::spawn_blocking(move || {
                let commit = models
                    .repos()
                    .resolve(&id, &revision)
                    .map_err(|_| PlaceError::UnknownModel(id.hub_id()))?;
                let dir = models
                    .materialize(&id, &commit)
                    .map_err(|e| PlaceError::Load(crate::error_chain(&e)))?;
                let config = read_config(&dir)?;
                weights_path(&dir)?;
                Ok::<_, PlaceError>((commit, dir, config))
            })
            .await
            .map_err(|_| PlaceError::Task)??
        };
        ShardLayout::even(&config, tp, pp).map_err(|e| PlaceError::Unsupported(e.to_string()))?;
        let oid = parse_oid(&commit).ok_or(PlaceError::Task)?;
        let snapshot = self.models.snapshot();
        let engine = &snapshot.engine;
        let req = request_for(
            id,
            oid,
            &config,
            engine.num_blocks * engine.block_size,
            tp,
            pp,
            sync,
        );
        let me = self.compute.me();
        let local = LocalCapacity {
            node: me,
            mode: self.compute.mode(),
            device: DeviceKind::Cpu,
            memory_free_bytes: snapshot.memory_free(),
            decode_tokens_per_s: snapshot.decode_tokens_per_s,
        };
        let now = unix_now();
        let adverts: Vec<_> = self
            .compute
            .table()
            .live(now)
            .filter(|a| !exclude.contains(&a.node))
            .cloned()
            .collect();
        let seq = {
            let mut state = self.lock();
            state.seq = state.seq.max(now.saturating_mul(1000)) + 1;
            state.seq
        };
        let placement = plan_placement(&req, &local, adverts.iter(), rtts, seq, now)?;
        if placement.position(&me) != Some((0, 0)) {
            return Err(PlaceError::Unsupported(
                "this node must hold the first shard (it coordinates the model)".into(),
            ));
        }
        let signed = placement
            .sign(self.compute.signing_key())
            .map_err(|e| PlaceError::Unsupported(e.to_string()))?;
        self.start_serving(&signed, &dir, &config, commit).await?;
        Ok(signed)
    }

    /// Opens the workers' streams, loads this node's ranks, and puts the sharded model in the
    /// registry.
    async fn start_serving(
        self: &Arc<Self>,
        signed: &SignedPlacement,
        dir: &Path,
        config: &LlamaConfig,
        commit: String,
    ) -> Result<(), PlaceError> {
        let p = &signed.placement;
        let me = self.compute.me();
        let mut remote_at = Vec::new();
        for (stage, s) in p.stages.iter().enumerate() {
            for (rank, node) in s.nodes.iter().enumerate() {
                if *node != me {
                    remote_at.push((stage, rank, *node));
                }
            }
        }
        // Every worker loads at once.
        let connects = remote_at.iter().map(|&(stage, rank, node)| {
            let this = self.clone();
            let hello = encode_hello(signed, stage, rank);
            async move {
                let peer = hub_net::peer_id_of_key(&node.0).ok_or_else(|| {
                    PlaceError::Unsupported("a placed node key is not a peer id".into())
                })?;
                let failed = |why: String| PlaceError::Worker { node: peer, why };
                let mut stream = tokio::time::timeout(
                    this.config.open_timeout,
                    this.p2p
                        .streams()
                        .open_stream(peer, StreamProtocol::new(SHARD_PROTOCOL)),
                )
                .await
                .map_err(|_| failed("no stream within the open timeout".into()))?
                .map_err(|e| failed(format!("open stream: {e}")))?;
                stream
                    .write_all(&hello)
                    .await
                    .map_err(|e| failed(format!("send the placement: {e}")))?;
                stream
                    .flush()
                    .await
                    .map_err(|e| failed(format!("send the placement: {e}")))?;
                let (load, step) = (this.config.load_timeout, this.config.step_timeout);
                let rank_end = tokio::task::spawn_blocking(move || {
                    let (r, w) = blocking_halves(stream);
                    RemoteRank::connect(&format!("shard-{stage}-{rank}"), r, w, load, step)
                })
                .await
                .map_err(|_| PlaceError::Task)?
                .map_err(|e| failed(crate::error_chain(&e)))?;
                Ok::<_, PlaceError>(((stage, rank), rank_end))
            }
        });
        let remote: HashMap<_, _> = futures::future::join_all(connects)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let (models, dir, config) = (self.models.clone(), dir.to_owned(), config.clone());
        let shard = LocalShardConfig {
            layout: layout_of(p),
            precision: precision(p.sync),
            step_timeout: self.config.step_timeout,
        };
        let key = ModelKey {
            repo: p.model.hub_id(),
            commit,
        };
        let flag = tokio::task::spawn_blocking(move || {
            let path = weights_path(&dir)?;
            let file = std::fs::File::open(&path)
                .map_err(|e| PlaceError::Load(format!("open {}: {e}", path.display())))?;
            let mut source = SafetensorsRanges::new(file)
                .map_err(|e| PlaceError::Load(crate::error_chain(&e)))?;
            let model = LocalShardedLlama::load_with_remote(
                &config,
                shard,
                &mut source,
                &candle_core::Device::Cpu,
                remote,
            )
            .map_err(|e| PlaceError::Load(crate::error_chain(&e)))?;
            let flag = model.failure_flag();
            let loaded = ShardedLoaded::from_dir(&dir, model)
                .map_err(|e| PlaceError::Load(crate::error_chain(&e)))?;
            let registry = models.registry();
            let handle = ModelHandle::spawn_sharded(
                loaded,
                registry.config().serve.clone(),
                registry.observer(),
            )
            .map_err(|e| PlaceError::Load(crate::error_chain(&e)))?;
            registry.insert_generate(key, handle);
            Ok::<_, PlaceError>(flag)
        })
        .await
        .map_err(|_| PlaceError::Task)??;
        let model = p.model.hub_id();
        let watcher = CancellationToken::new();
        {
            let mut state = self.lock();
            state.placements.insert(model.clone(), signed.clone());
            if let Some(old) = state.watchers.insert(model, watcher.clone()) {
                old.cancel();
            }
        }
        tracing::info!(model = %p.model, seq = p.seq, tp = p.tensor_parallel, stages = p.stages.len(), "sharded model placed and serving");
        let this = self.clone();
        let signed = signed.clone();
        tokio::spawn(this.watch(signed, flag, watcher));
        Ok(())
    }

    /// Places the model again once a worker of `signed` failed. (Boxed: placing again starts
    /// the next watcher, so the future's type would contain itself.)
    fn watch(
        self: Arc<Self>,
        signed: SignedPlacement,
        flag: Arc<std::sync::atomic::AtomicBool>,
        stop: CancellationToken,
    ) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(self.watch_inner(signed, flag, stop))
    }

    async fn watch_inner(
        self: Arc<Self>,
        signed: SignedPlacement,
        flag: Arc<std::sync::atomic::AtomicBool>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if flag.load(Ordering::Relaxed) {
                break;
            }
        }
        let p = &signed.placement;
        tracing::warn!(model = %p.model, seq = p.seq, "a shard worker failed; placing the model again");
        let _one = self.placing.lock().await;
        if stop.is_cancelled() {
            return;
        }
        // Nodes that cannot take their shard now are left out, one at a time.
        let mut exclude = HashSet::new();
        let commit = hex::encode(p.commit);
        let deadline = Instant::now() + self.config.load_timeout;
        while Instant::now() < deadline {
            let rtts = HashMap::new();
            match self
                .place_excluding(
                    &p.model,
                    &commit,
                    usize::from(p.tensor_parallel),
                    p.stages.len(),
                    p.sync,
                    &rtts,
                    &exclude,
                )
                .await
            {
                Ok(new) => {
                    tracing::info!(model = %p.model, seq = new.placement.seq, "model placed again");
                    return;
                }
                Err(PlaceError::Worker { node, why }) => {
                    tracing::warn!(%node, why, "worker left out of the next placement");
                    match hub_net::key_of_peer_id(&node) {
                        Some(k) => {
                            exclude.insert(PublicKey(k));
                        }
                        None => return,
                    }
                }
                Err(error) => {
                    tracing::warn!(model = %p.model, error = %crate::error_chain(&error), "cannot place the model again");
                    return;
                }
            }
        }
    }

    /// The worker side: accepts shard streams until the swarm stops.
    async fn serve_streams(self: Arc<Self>) {
        let mut incoming = match self
            .p2p
            .streams()
            .accept(StreamProtocol::new(SHARD_PROTOCOL))
        {
            Ok(incoming) => incoming,
            Err(error) => {
                tracing::warn!(%error, "cannot accept shard streams");
                return;
            }
        };
        while let Some((peer, stream)) = incoming.next().await {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(why) = this.serve_stream(peer, stream).await {
                    tracing::warn!(%peer, why, "shard stream refused");
                }
            });
        }
    }

    async fn serve_stream(
        self: &Arc<Self>,
        peer: PeerId,
        mut stream: hub_net::Stream,
    ) -> Result<(), String> {
        // The hello: a signed placement of bounded length, then stage and rank.
        let mut len = [0u8; 4];
        let read = async {
            stream.read_exact(&mut len).await?;
            let n = u32::from_le_bytes(len) as usize;
            if n > MAX_SIGNED_PLACEMENT_LEN {
                return Err(std::io::Error::other(format!("placement of {n} bytes")));
            }
            let mut body = vec![0u8; n + 4];
            stream.read_exact(&mut body).await?;
            Ok(body)
        };
        let body = tokio::time::timeout(self.config.open_timeout, read)
            .await
            .map_err(|_| "no placement within the open timeout".to_owned())?
            .map_err(|e| format!("read the placement: {e}"))?;
        let (placement, pos) = body.split_at(body.len() - 4);
        let stage = usize::from(u16::from_le_bytes([pos[0], pos[1]]));
        let rank = usize::from(u16::from_le_bytes([pos[2], pos[3]]));
        let signed = SignedPlacement::decode(placement).map_err(|e| format!("decode: {e}"))?;
        let p = &signed.placement;
        signed
            .verify_signature()
            .map_err(|e| format!("placement signature: {e}"))?;
        p.validate()
            .map_err(|e| format!("invalid placement: {e}"))?;
        if hub_net::key_of_peer_id(&peer) != Some(p.made_by.0) {
            return Err("the placement was not made by the peer that sent it".into());
        }
        if p.position(&self.compute.me()) != Some((stage, rank)) {
            return Err(format!(
                "the placement does not put this node at stage {stage} rank {rank}"
            ));
        }
        let commit = hex::encode(p.commit);
        // The model here: fetched from the mesh if this node lacks it.
        let deadline = Instant::now() + self.config.load_timeout;
        let fetched = crate::files::fetch_model(
            self.mesh.as_ref(),
            self.models.repos().clone(),
            self.models.store().clone(),
            &p.model,
            &commit,
            deadline,
        )
        .await;
        {
            let mut state = self.lock();
            let newer = state
                .placements
                .get(&p.model.hub_id())
                .is_none_or(|old| old.placement.seq <= p.seq);
            if newer {
                state.placements.insert(p.model.hub_id(), signed.clone());
            }
        }
        let (models, step_timeout) = (self.models.clone(), self.config.step_timeout);
        let layout = layout_of(p);
        let (tp, sync, model) = (usize::from(p.tensor_parallel), p.sync, p.model.clone());
        tokio::task::spawn_blocking(move || {
            let (r, w) = blocking_halves(stream);
            let load = || -> Result<StageShard, String> {
                fetched.map_err(|e| format!("fetch the model from the mesh: {}", crate::error_chain(&e)))?;
                let dir = models
                    .materialize(&model, &commit)
                    .map_err(|e| crate::error_chain(&e))?;
                let config = read_config(&dir).map_err(|e| e.to_string())?;
                let path = weights_path(&dir).map_err(|e| e.to_string())?;
                let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                let mut source = SafetensorsRanges::new(file).map_err(|e| crate::error_chain(&e))?;
                StageShard::load(&config, &layout, stage, rank, &mut source, &candle_core::Device::Cpu)
                    .map_err(|e| crate::error_chain(&e))
            };
            match load() {
                Ok(shard) => {
                    tracing::info!(model = %model, stage, rank, weight_bytes = shard.weight_bytes(), "serving a shard");
                    let result = serve_worker(shard, rank, tp, precision(sync), step_timeout, r, w);
                    tracing::info!(model = %model, stage, rank, ?result, "shard stream ended");
                    Ok(())
                }
                Err(why) => {
                    let _ = refuse(w, &why);
                    Err(why)
                }
            }
        })
        .await
        .map_err(|_| "shard task failed".to_owned())?
    }
}
