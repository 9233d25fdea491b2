//! The load of this node's models as a typed value: [`LoadSnapshot`] (loaded models, queue
//! depth, running sequences, KV blocks, memory budget and what is free, measured decode
//! speed), which the capacity advert and the router read directly; and [`LoadCounters`], the
//! engines' observer that feeds it (and passes every report on to the gateway's metrics, which
//! only display it).
//!
//! Depends on hub-infer (the observer trait, model keys, limits) and hub-compute (the advert
//! and routing types); knows nothing of the network or HTTP.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hub_compute::{CapacityAdvert, LoadedModel, LocalState, Mode};
use hub_infer::engine::EngineConfig;
use hub_infer::serve::{ModelKey, ServeObserver};
use hub_protocol::repo::{RepoId, RepoType};
use hub_protocol::signed::PublicKey;

/// The engines' load, summed over every engine: kept here from their reports, and passed on
/// to `inner` (the gateway's Prometheus metrics), so nothing reads load back out of metrics.
#[derive(Debug)]
pub struct LoadCounters {
    waiting: AtomicI64,
    running: AtomicI64,
    kv_blocks_used: AtomicI64,
    generated: AtomicU64,
    inner: Option<Arc<dyn ServeObserver>>,
}

impl LoadCounters {
    pub fn new(inner: Option<Arc<dyn ServeObserver>>) -> Self {
        Self {
            waiting: AtomicI64::new(0),
            running: AtomicI64::new(0),
            kv_blocks_used: AtomicI64::new(0),
            generated: AtomicU64::new(0),
            inner,
        }
    }

    /// Requests waiting, sequences running, KV blocks used, tokens generated since start.
    pub fn load(&self) -> (u64, u64, u64, u64) {
        let get = |a: &AtomicI64| u64::try_from(a.load(Ordering::Relaxed)).unwrap_or(0);
        (
            get(&self.waiting),
            get(&self.running),
            get(&self.kv_blocks_used),
            self.generated.load(Ordering::Relaxed),
        )
    }
}

impl ServeObserver for LoadCounters {
    fn load_changed(&self, waiting: i64, running: i64, kv_blocks_used: i64) {
        self.waiting.fetch_add(waiting, Ordering::Relaxed);
        self.running.fetch_add(running, Ordering::Relaxed);
        self.kv_blocks_used
            .fetch_add(kv_blocks_used, Ordering::Relaxed);
        if let Some(inner) = &self.inner {
            inner.load_changed(waiting, running, kv_blocks_used);
        }
    }

    fn generated(&self, tokens: u64) {
        self.generated.fetch_add(tokens, Ordering::Relaxed);
        if let Some(inner) = &self.inner {
            inner.generated(tokens);
        }
    }

    fn first_token(&self, after: Duration) {
        if let Some(inner) = &self.inner {
            inner.first_token(after);
        }
    }
}

/// Decode speed, measured once per advert period: tokens generated over the time since the
/// last measurement, kept from the last period that generated any.
#[derive(Debug, Default)]
pub(crate) struct SpeedMeter {
    state: Mutex<Speed>,
}

#[derive(Debug, Default)]
struct Speed {
    tokens: u64,
    at: Option<Instant>,
    rate: f32,
}

impl SpeedMeter {
    /// Measures with `generated`, the tokens generated since start.
    pub(crate) fn measure(&self, generated: u64) {
        let mut speed = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = speed.at {
            let secs = at.elapsed().as_secs_f32();
            let tokens = generated.saturating_sub(speed.tokens);
            if tokens > 0 && secs > 0.0 {
                speed.rate = tokens as f32 / secs;
            }
        }
        speed.tokens = generated;
        speed.at = Some(Instant::now());
    }

    pub(crate) fn rate(&self) -> f32 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rate
    }
}

/// This node's model load at one moment (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSnapshot {
    /// Loaded models of both kinds, most recently used first.
    pub loaded: Vec<ModelKey>,
    /// Generation requests waiting to be admitted, over all engines.
    pub waiting: u64,
    /// Sequences running, over all engines.
    pub running: u64,
    /// KV cache blocks in use, over all engines.
    pub kv_blocks_used: u64,
    /// The memory budget the loaded models share, and what they take of it.
    pub memory_budget: u64,
    pub memory_used: u64,
    /// Decode tokens/s measured over the last advert period that generated.
    pub decode_tokens_per_s: f32,
    /// The limits each generation engine runs with (queue, KV blocks).
    pub engine: EngineConfig,
}

impl LoadSnapshot {
    pub fn memory_free(&self) -> u64 {
        self.memory_budget.saturating_sub(self.memory_used)
    }

    /// Requests queued or running.
    pub fn queue_depth(&self) -> u32 {
        u32::try_from(self.waiting + self.running).unwrap_or(u32::MAX)
    }

    /// Requests one engine takes (running + waiting).
    fn engine_queue_limit(&self) -> u32 {
        u32::try_from(self.engine.max_running + self.engine.max_waiting).unwrap_or(u32::MAX)
    }

    /// Fills the load part of `advert`: memory, queue, KV blocks, loaded models (each repo
    /// once, at most [`hub_protocol::capacity::MAX_MODELS`]) with the measured speed.
    pub fn fill_advert(&self, advert: &mut CapacityAdvert) {
        let loaded = self.loaded.len();
        advert.memory_total_bytes = self.memory_budget;
        advert.memory_free_bytes = self.memory_free();
        advert.queue_depth = self.queue_depth();
        advert.queue_limit = self
            .engine_queue_limit()
            .saturating_mul(u32::try_from(loaded.max(1)).unwrap_or(1));
        advert.running = u32::try_from(self.running).unwrap_or(u32::MAX);
        let blocks = self.engine.num_blocks.saturating_mul(loaded) as u64;
        advert.free_kv_blocks =
            u32::try_from(blocks.saturating_sub(self.kv_blocks_used)).unwrap_or(0);
        advert.kv_block_tokens = u32::try_from(self.engine.block_size).unwrap_or(0);
        let mut seen = BTreeSet::new();
        for key in &self.loaded {
            let (Ok(repo), Some(commit)) =
                (RepoId::parse(RepoType::Model, &key.repo), oid(&key.commit))
            else {
                continue;
            };
            if advert.models.len() < hub_protocol::capacity::MAX_MODELS && seen.insert(repo.clone())
            {
                advert.models.push(LoadedModel {
                    repo,
                    commit,
                    decode_tokens_per_s: self.decode_tokens_per_s,
                    running: 0,
                });
            }
        }
    }

    /// This node as the router sees it for `model`: warm when a commit of it is loaded;
    /// `can_load` when this node holds its repo.
    pub fn local_state(
        &self,
        node: PublicKey,
        mode: Mode,
        model: &RepoId,
        held: bool,
    ) -> LocalState {
        let mut local = LocalState::idle(node, mode);
        let hub_id = model.hub_id();
        local.warm = self.loaded.iter().any(|k| k.repo == hub_id);
        local.queue_depth = self.queue_depth();
        local.queue_limit = self.engine_queue_limit();
        local.can_load = held;
        local
    }
}

/// A 40-hex commit id as bytes.
pub(crate) fn oid(hex_commit: &str) -> Option<[u8; 20]> {
    hex::decode(hex_commit).ok()?.try_into().ok()
}
