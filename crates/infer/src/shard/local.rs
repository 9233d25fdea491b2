//! A sharded model inside one process: one thread per worker (stage × rank), each owning its
//! [`StageShard`], its slice of the KV cache and its [`StarCollective`]; the driver (the
//! engine's thread) sends every worker the step's batch and relays hidden states from stage to
//! stage. It implements [`StepModel`], so the engine — scheduler, paged block tables, sampling,
//! streaming — runs on it unchanged.
//!
//! Who talks to whom: driver → every worker (bounded channel: the batch, and for stages after
//! the first the previous stage's hidden states); workers of a stage ↔ their root (the
//! all-reduces); rank 0 of each stage → driver (hidden states or, last stage, logits). The
//! driver counts the bytes that would cross a network between workers if each were a node and
//! the engine ran beside the last stage's rank 0 (logits then never travel): see
//! [`LocalShardedLlama::traffic`].
//!
//! Failure: a worker whose step fails on a tensor or link error exits, which closes its links,
//! so its peers fail at once instead of waiting; the driver waits for each reply at most
//! `step_timeout`. A dead worker fails every later step with [`ForwardError::Shard`] — the
//! engine aborts the requests in flight, and whoever placed the model places it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::Device;

use super::ShardLayout;
use super::collective::{Collective, StarCollective, SyncPrecision, Traffic, channel_link};
use super::remote::RemoteRank;
use super::source::ShardSource;
use super::stage::{StageInput, StageLoadError, StageOutput, StageShard};
use crate::config::LlamaConfig;
use crate::engine::StepModel;
use crate::model::{BatchItem, ForwardError, SeqLogits};

/// Settings of an in-process sharded model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalShardConfig {
    pub layout: ShardLayout,
    pub precision: SyncPrecision,
    /// Bound on one worker's reply and on one all-reduce receive.
    pub step_timeout: Duration,
}

/// A worker failed, went away or did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("stage {stage} rank {rank}: {message}")]
pub struct WorkerError {
    pub stage: usize,
    pub rank: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OwnedItem {
    pub(super) tokens: Vec<u32>,
    pub(super) start_pos: usize,
    pub(super) block_table: Vec<u32>,
    pub(super) all_logits: bool,
}

#[derive(Debug)]
pub(super) enum Job {
    Cache {
        num_blocks: usize,
        block_size: usize,
    },
    Step {
        items: Arc<Vec<OwnedItem>>,
        hidden: Option<Arc<Vec<f32>>>,
    },
    Traffic,
    /// Stop as if the worker's node had died.
    Exit,
}

#[derive(Debug)]
pub(super) enum Reply {
    Cache(usize),
    Out(StageOutput),
    Traffic(Traffic),
}

#[derive(Debug)]
pub(super) struct Worker {
    stage: usize,
    rank: usize,
    tx: SyncSender<Job>,
    rx: Receiver<Result<Reply, String>>,
    thread: Option<JoinHandle<()>>,
    weight_bytes: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct LocalShardedLlama {
    config: LlamaConfig,
    device: Device,
    shard: LocalShardConfig,
    /// `[stage][rank]`.
    workers: Vec<Vec<Worker>>,
    /// Bytes of hidden states and batch descriptions the driver sent or relayed.
    relayed: std::sync::atomic::AtomicU64,
    /// Set when a worker failed: every later step fails at once.
    failed: Arc<std::sync::atomic::AtomicBool>,
}

/// The worker-side state of [`LocalShardedLlama`] caches: nothing lives with the driver.
#[derive(Debug)]
pub struct ShardedCache {
    bytes: usize,
}

pub(super) fn worker_loop(
    shard: StageShard,
    mut coll: StarCollective,
    jobs: Receiver<Job>,
    replies: SyncSender<Result<Reply, String>>,
) {
    let mut kv = None;
    while let Ok(job) = jobs.recv() {
        let reply = match job {
            Job::Exit => return,
            Job::Traffic => Ok(Reply::Traffic(coll.traffic())),
            Job::Cache {
                num_blocks,
                block_size,
            } => match shard.new_kv_store(num_blocks, block_size) {
                Ok(store) => {
                    let bytes = store.size_bytes();
                    kv = Some(store);
                    Ok(Reply::Cache(bytes))
                }
                Err(e) => Err(format!("allocate kv cache: {e}")),
            },
            Job::Step { items, hidden } => {
                let Some(kv) = &kv else {
                    let _ = replies.send(Err("step before the kv cache".into()));
                    continue;
                };
                let batch: Vec<BatchItem<'_>> = items
                    .iter()
                    .map(|i| BatchItem {
                        tokens: &i.tokens,
                        start_pos: i.start_pos,
                        block_table: &i.block_table,
                        all_logits: i.all_logits,
                    })
                    .collect();
                let input = match &hidden {
                    Some(h) => StageInput::Hidden(h),
                    None => StageInput::Tokens,
                };
                match shard.forward(kv, &batch, input, &mut coll) {
                    Ok(out) => Ok(Reply::Out(out)),
                    Err(e @ super::stage::StageError::InvalidBatch(_)) => Err(e.to_string()),
                    Err(e) => {
                        // Tensor or link failure: this worker is done; leaving closes its
                        // links so its peers stop waiting for it.
                        let _ = replies.send(Err(format!("{:#}", Chain(&e))));
                        return;
                    }
                }
            }
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

/// `{:#}`-style display of an error and its sources.
pub(super) struct Chain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

impl LocalShardedLlama {
    /// Loads every worker's shard from `source` (each reads only its slices) and starts the
    /// worker threads.
    pub fn load(
        config: &LlamaConfig,
        shard: LocalShardConfig,
        source: &mut dyn ShardSource,
        device: &Device,
    ) -> Result<Self, StageLoadError> {
        Self::load_with_remote(config, shard, source, device, HashMap::new())
    }

    /// As [`Self::load`], but the workers `(stage, rank)` in `remote` run in other processes
    /// (see [`super::remote`]); only the other ranks are loaded here. Rank 0 of a stage with
    /// more than one rank must be local (it is the all-reduce root).
    pub fn load_with_remote(
        config: &LlamaConfig,
        shard: LocalShardConfig,
        source: &mut dyn ShardSource,
        device: &Device,
        mut remote: HashMap<(usize, usize), RemoteRank>,
    ) -> Result<Self, StageLoadError> {
        shard.layout.validate(config)?;
        let tp = shard.layout.tensor_parallel;
        if let Some(&(stage, rank)) = remote
            .keys()
            .find(|&&(s, r)| r >= tp || s >= shard.layout.stages.len() || (r == 0 && tp > 1))
        {
            return Err(StageLoadError::Position { stage, rank });
        }
        let mut workers = Vec::with_capacity(shard.layout.stages.len());
        for stage in 0..shard.layout.stages.len() {
            // The stage's group: rank 0 is the root, with one link per other rank, in-process
            // or over the remote rank's stream.
            let mut root_links: Vec<Box<dyn super::collective::Link>> = Vec::new();
            let mut members: Vec<Option<StarCollective>> = vec![None];
            for rank in 1..tp {
                match remote.get_mut(&(stage, rank)).and_then(|r| r.link.take()) {
                    Some(link) => {
                        root_links.push(link);
                        members.push(None);
                    }
                    None => {
                        let (a, b) = channel_link(shard.step_timeout);
                        root_links.push(Box::new(a));
                        members.push(Some(StarCollective::member(
                            rank,
                            tp,
                            shard.precision,
                            Box::new(b),
                        )));
                    }
                }
            }
            members[0] = Some(if tp == 1 {
                StarCollective::solo()
            } else {
                StarCollective::root(shard.precision, root_links)
            });
            let mut ranks = Vec::with_capacity(tp);
            for (rank, coll) in members.into_iter().enumerate() {
                if let Some(r) = remote.remove(&(stage, rank)) {
                    ranks.push(Worker {
                        stage,
                        rank,
                        tx: r.jobs,
                        rx: r.replies,
                        thread: None,
                        weight_bytes: r.weight_bytes,
                    });
                    continue;
                }
                let coll = coll.expect("a local rank has its collective");
                let s = StageShard::load(config, &shard.layout, stage, rank, source, device)?;
                let weight_bytes = s.weight_bytes();
                let (tx, jobs) = sync_channel(2);
                let (replies, rx) = sync_channel(2);
                let thread = std::thread::Builder::new()
                    .name(format!("shard-{stage}-{rank}"))
                    .spawn(move || worker_loop(s, coll, jobs, replies))
                    .map_err(StageLoadError::Spawn)?;
                ranks.push(Worker {
                    stage,
                    rank,
                    tx,
                    rx,
                    thread: Some(thread),
                    weight_bytes,
                });
            }
            workers.push(ranks);
        }
        Ok(Self {
            config: config.clone(),
            device: device.clone(),
            shard,
            workers,
            relayed: 0.into(),
            failed: Arc::new(false.into()),
        })
    }

    /// A flag set once a worker has failed (the model then fails every step until it is
    /// placed again): whoever placed the model watches it while an engine owns the model.
    pub fn failure_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.failed.clone()
    }

    pub fn layout(&self) -> &ShardLayout {
        &self.shard.layout
    }

    /// Weight bytes of each worker, `[stage][rank]`.
    pub fn weight_bytes(&self) -> Vec<Vec<u64>> {
        self.workers
            .iter()
            .map(|s| s.iter().map(|w| w.weight_bytes).collect())
            .collect()
    }

    /// A handle that stops worker `(stage, rank)` as if its node had died, usable while an
    /// engine owns the model (tests and drills).
    pub fn kill_switch(&self, stage: usize, rank: usize) -> Option<KillSwitch> {
        self.workers
            .get(stage)
            .and_then(|s| s.get(rank))
            .map(|w| KillSwitch { tx: w.tx.clone() })
    }

    /// Stops worker `(stage, rank)` as if its node had died, and waits until it has.
    pub fn kill(&mut self, stage: usize, rank: usize) {
        if let Some(w) = self.workers.get_mut(stage).and_then(|s| s.get_mut(rank)) {
            let _ = w.tx.send(Job::Exit);
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Bytes that crossed between workers so far: every rank's all-reduce traffic (counted at
    /// the sender) plus the batch descriptions and hidden states sent to workers other than
    /// the last stage's rank 0 (where the engine runs).
    pub fn traffic(&self) -> Result<u64, ForwardError> {
        let mut total = self.relayed.load(std::sync::atomic::Ordering::Relaxed);
        for w in self.workers.iter().flatten() {
            match self.call(w, Job::Traffic)? {
                Reply::Traffic(t) => total += t.sent,
                other => return Err(self.unexpected(w, &other)),
            }
        }
        Ok(total)
    }

    fn err(&self, w: &Worker, message: impl Into<String>) -> ForwardError {
        ForwardError::Shard(Box::new(WorkerError {
            stage: w.stage,
            rank: w.rank,
            message: message.into(),
        }))
    }

    fn unexpected(&self, w: &Worker, reply: &Reply) -> ForwardError {
        self.err(w, format!("unexpected reply {reply:?}"))
    }

    fn send(&self, w: &Worker, job: Job) -> Result<(), ForwardError> {
        w.tx.send(job).map_err(|_| self.err(w, "worker is gone"))
    }

    fn recv(&self, w: &Worker) -> Result<Reply, ForwardError> {
        match w.rx.recv_timeout(self.shard.step_timeout) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(m)) => Err(self.err(w, m)),
            Err(RecvTimeoutError::Timeout) => {
                Err(self.err(w, format!("no reply within {:?}", self.shard.step_timeout)))
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.err(w, "worker is gone")),
        }
    }

    fn call(&self, w: &Worker, job: Job) -> Result<Reply, ForwardError> {
        self.send(w, job)?;
        self.recv(w)
    }

    fn is_engine_side(&self, w: &Worker) -> bool {
        w.stage + 1 == self.workers.len() && w.rank == 0
    }
}

/// See [`LocalShardedLlama::kill_switch`].
#[derive(Debug, Clone)]
pub struct KillSwitch {
    tx: SyncSender<Job>,
}

impl KillSwitch {
    /// The worker stops after the job it is on (its queued jobs are dropped unanswered).
    pub fn kill(&self) {
        let _ = self.tx.send(Job::Exit);
    }
}

impl Drop for LocalShardedLlama {
    fn drop(&mut self) {
        for w in self.workers.iter_mut().flatten() {
            let _ = w.tx.try_send(Job::Exit);
        }
        for w in self.workers.iter_mut().flatten() {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl StepModel for LocalShardedLlama {
    type Cache = ShardedCache;

    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn new_cache(&self, num_blocks: usize, block_size: usize) -> candle_core::Result<ShardedCache> {
        let mut bytes = 0;
        for w in self.workers.iter().flatten() {
            match self.call(
                w,
                Job::Cache {
                    num_blocks,
                    block_size,
                },
            ) {
                Ok(Reply::Cache(b)) => bytes += b,
                Ok(other) => return Err(candle_core::Error::msg(self.unexpected(w, &other))),
                Err(e) => return Err(candle_core::Error::msg(Chain(&e).to_string())),
            }
        }
        Ok(ShardedCache { bytes })
    }

    fn cache_bytes(&self, cache: &ShardedCache) -> usize {
        cache.bytes
    }

    fn forward(
        &self,
        _cache: &ShardedCache,
        batch: &[BatchItem<'_>],
    ) -> Result<Vec<SeqLogits>, ForwardError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let items: Arc<Vec<OwnedItem>> = Arc::new(
            batch
                .iter()
                .map(|b| OwnedItem {
                    tokens: b.tokens.to_vec(),
                    start_pos: b.start_pos,
                    block_table: b.block_table.to_vec(),
                    all_logits: b.all_logits,
                })
                .collect(),
        );
        // What a step description costs on a wire: per item its tokens, block table and
        // three u32 fields.
        let step_bytes: u64 = items
            .iter()
            .map(|i| 4 * (i.tokens.len() + i.block_table.len() + 3) as u64)
            .sum();
        if self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(self.err(&self.workers[0][0], "a worker of this model failed earlier"));
        }
        let result = self.step_stages(&items, step_bytes);
        if let Err(ForwardError::Shard(_)) = &result {
            // Replies of the failed step may still arrive: nothing after it can trust the
            // channels, and the model must be placed again anyway.
            self.failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }
}

impl LocalShardedLlama {
    fn step_stages(
        &self,
        items: &Arc<Vec<OwnedItem>>,
        step_bytes: u64,
    ) -> Result<Vec<SeqLogits>, ForwardError> {
        let mut hidden: Option<Arc<Vec<f32>>> = None;
        let mut relayed = 0u64;
        for stage in &self.workers {
            // Send to every rank first (they compute together), then collect from those that
            // took the job.
            let mut first_err = None;
            let mut sent = Vec::with_capacity(stage.len());
            for w in stage {
                let job = Job::Step {
                    items: items.clone(),
                    hidden: hidden.clone(),
                };
                match self.send(w, job) {
                    Ok(()) => sent.push(w),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
                // Hidden states come from another stage's node whoever receives them.
                relayed += hidden.as_ref().map_or(0, |h| 4 * h.len() as u64);
                if !self.is_engine_side(w) {
                    relayed += step_bytes;
                }
            }
            let mut out = None;
            for w in sent {
                match self.recv(w) {
                    Ok(Reply::Out(StageOutput::None)) => {}
                    Ok(Reply::Out(o)) if w.rank == 0 => out = Some(o),
                    Ok(other) => {
                        first_err.get_or_insert(self.unexpected(w, &other));
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
            match out {
                Some(StageOutput::Hidden(h)) => hidden = Some(Arc::new(h)),
                Some(StageOutput::Logits(l)) => {
                    self.relayed
                        .fetch_add(relayed, std::sync::atomic::Ordering::Relaxed);
                    return Ok(l);
                }
                _ => return Err(self.err(&stage[0], "no output from rank 0")),
            }
        }
        Err(ForwardError::InvalidBatch(
            "no stage produced logits".into(),
        ))
    }
}
