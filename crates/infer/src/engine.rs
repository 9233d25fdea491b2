//! The engine: scheduler + model + KV store + per-request samplers, one `step()` at a time.
//!
//! Synchronous and single-owner on purpose: the serving task (future work) owns an `Engine` on
//! a dedicated thread, feeds it requests and cancellations from a bounded channel between
//! steps, and forwards [`TokenEvent`]s to per-request streams. Nothing here blocks on I/O or
//! knows about tokio.
//!
//! Seeds: a request without a seed gets one derived from the engine seed and its request id
//! (SplitMix64), so runs are reproducible; the gateway supplies a random seed when the client
//! wants fresh randomness.

use std::collections::HashMap;

use candle_core::Device;

use crate::config::LlamaConfig;
use crate::kv_cache::KvStore;
use crate::model::{BatchItem, ForwardError, Llama, SeqLogits};
use crate::sampling::{Rng, Sampled, Sampler, SamplingParams, log_softmax_at, top_logprobs};
use crate::scheduler::{AddError, FinishReason, RequestId, Scheduler, SchedulerConfig, SeqRequest};

/// Engine limits; see [`SchedulerConfig`] for the scheduling ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks to allocate (`num_blocks * block_size` tokens across all sequences). The
    /// store takes `2 * layers * num_blocks * block_size * kv_heads * head_dim * 4` bytes:
    /// the default (8192 tokens) is 377 MB for SmolLM2-135M.
    pub num_blocks: usize,
    pub max_batched_tokens: usize,
    pub max_running: usize,
    pub max_waiting: usize,
    /// Base seed for requests without one.
    pub seed: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_blocks: 512,
            max_batched_tokens: 512,
            max_running: 64,
            max_waiting: 256,
            seed: 0,
        }
    }
}

/// A generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Extra stop tokens, on top of the model's EOS ids.
    pub stop_token_ids: Vec<u32>,
    /// Do not stop at the model's EOS ids.
    pub ignore_eos: bool,
}

impl GenerateRequest {
    /// Greedy decoding of `max_tokens` tokens.
    pub fn greedy(id: RequestId, prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            id,
            prompt,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub id: RequestId,
    pub token: u32,
    /// Log-probability under the model's raw distribution.
    pub logprob: f32,
    /// The [`SamplingParams::top_logprobs`] most likely tokens at this step, most likely first.
    pub top_logprobs: Vec<Sampled>,
    /// On the first token of a request with [`SamplingParams::prompt_logprobs`]: the
    /// log-probability of each prompt token after the first, given the tokens before it.
    pub prompt_logprobs: Option<Vec<f32>>,
    /// Set on the request's last token.
    pub finish: Option<FinishReason>,
}

/// A step failed; the requests it was computing have been aborted (their blocks freed).
#[derive(Debug, thiserror::Error)]
#[error("forward step for {} requests", aborted.len())]
pub struct StepError {
    pub aborted: Vec<RequestId>,
    #[source]
    pub source: ForwardError,
}

/// The engine could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineInitError {
    /// A limit that must be positive (and `num_blocks` fit a `u32`) is not.
    #[error("invalid engine config: {0}")]
    InvalidConfig(&'static str),
    #[error("allocate kv cache")]
    KvStore(#[source] candle_core::Error),
}

/// What the engine runs a step on: the single-node [`Llama`], or a sharded model whose
/// workers hold the weights and the KV cache ([`crate::shard::local::LocalShardedLlama`]).
/// The engine owns scheduling, block tables and sampling either way.
pub trait StepModel {
    /// The KV storage the engine allocates once and hands to every step.
    type Cache: std::fmt::Debug;
    fn config(&self) -> &LlamaConfig;
    fn device(&self) -> &Device;
    fn new_cache(&self, num_blocks: usize, block_size: usize) -> candle_core::Result<Self::Cache>;
    /// Bytes held by `cache` (on this process or on the workers).
    fn cache_bytes(&self, cache: &Self::Cache) -> usize;
    /// One step over a ragged batch (see [`Llama::forward`]).
    fn forward(
        &self,
        cache: &Self::Cache,
        batch: &[BatchItem<'_>],
    ) -> Result<Vec<SeqLogits>, ForwardError>;
}

impl StepModel for Llama {
    type Cache = KvStore;

    fn config(&self) -> &LlamaConfig {
        Llama::config(self)
    }

    fn device(&self) -> &Device {
        Llama::device(self)
    }

    fn new_cache(&self, num_blocks: usize, block_size: usize) -> candle_core::Result<KvStore> {
        self.new_kv_store(num_blocks, block_size)
    }

    fn cache_bytes(&self, cache: &KvStore) -> usize {
        cache.size_bytes()
    }

    fn forward(
        &self,
        cache: &KvStore,
        batch: &[BatchItem<'_>],
    ) -> Result<Vec<SeqLogits>, ForwardError> {
        Llama::forward(self, cache, batch)
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Engine<M: StepModel = Llama> {
    model: M,
    kv: M::Cache,
    scheduler: Scheduler,
    samplers: HashMap<RequestId, Sampler>,
    /// Requests that want prompt log-probabilities: prompt length and those computed so far
    /// (prefill may span several steps).
    prompt_logprobs: HashMap<RequestId, (usize, Vec<f32>)>,
    eos: Vec<u32>,
    seed: u64,
}

impl<M: StepModel> Engine<M> {
    /// Allocates the KV store for `model` on its device.
    pub fn new(model: M, config: EngineConfig) -> Result<Self, EngineInitError> {
        for (name, value) in [
            ("block_size", config.block_size),
            ("num_blocks", config.num_blocks),
            ("max_batched_tokens", config.max_batched_tokens),
            ("max_running", config.max_running),
        ] {
            if value == 0 {
                return Err(EngineInitError::InvalidConfig(name));
            }
        }
        if u32::try_from(config.num_blocks).is_err() {
            return Err(EngineInitError::InvalidConfig("num_blocks"));
        }
        let kv = model
            .new_cache(config.num_blocks, config.block_size)
            .map_err(EngineInitError::KvStore)?;
        let scheduler = Scheduler::new(SchedulerConfig {
            max_batched_tokens: config.max_batched_tokens,
            max_running: config.max_running,
            max_waiting: config.max_waiting,
            num_blocks: config.num_blocks,
            block_size: config.block_size,
            max_model_len: model.config().max_position_embeddings,
        });
        Ok(Self {
            eos: model.config().eos_token_ids(),
            model,
            kv,
            scheduler,
            samplers: HashMap::new(),
            prompt_logprobs: HashMap::new(),
            seed: config.seed,
        })
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Bytes of KV cache allocated.
    pub fn kv_cache_bytes(&self) -> usize {
        self.model.cache_bytes(&self.kv)
    }

    /// Queues a request (refused at once when the queue is full or it can never fit).
    pub fn add_request(&mut self, req: GenerateRequest) -> Result<(), AddError> {
        let mut stop = req.stop_token_ids;
        if !req.ignore_eos {
            stop.extend(&self.eos);
        }
        let prompt_len = req.prompt.len();
        self.scheduler.add_request(SeqRequest {
            id: req.id,
            prompt: req.prompt,
            max_tokens: req.max_tokens,
            stop_token_ids: stop,
        })?;
        let default_seed = Rng::new(self.seed ^ req.id).next_u64();
        if req.sampling.prompt_logprobs {
            self.prompt_logprobs
                .insert(req.id, (prompt_len, Vec::with_capacity(prompt_len)));
        }
        self.samplers
            .insert(req.id, Sampler::new(req.sampling, default_seed));
        Ok(())
    }

    /// Cancels a request and frees its KV blocks now.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        self.samplers.remove(&id);
        self.prompt_logprobs.remove(&id);
        self.scheduler.cancel(id)
    }

    pub fn has_work(&self) -> bool {
        self.scheduler.has_work()
    }

    /// Schedules and computes one step; returns the tokens generated in it.
    pub fn step(&mut self) -> Result<Vec<TokenEvent>, StepError> {
        let schedule = self.scheduler.schedule();
        if schedule.is_empty() {
            return Ok(Vec::new());
        }
        let items: Vec<BatchItem<'_>> = schedule
            .seqs
            .iter()
            .map(|s| BatchItem {
                tokens: &self
                    .scheduler
                    .tokens(s.id)
                    .expect("scheduled request is live")[s.start_pos..s.start_pos + s.num_tokens],
                start_pos: s.start_pos,
                block_table: self.scheduler.block_table(s.id),
                // Prompt log-probabilities need a row per prefill token.
                all_logits: self
                    .prompt_logprobs
                    .get(&s.id)
                    .is_some_and(|(len, _)| s.start_pos < *len),
            })
            .collect();
        let logits = match self.model.forward(&self.kv, &items) {
            Ok(logits) => logits,
            Err(source) => {
                let aborted: Vec<_> = schedule.seqs.iter().map(|s| s.id).collect();
                for &id in &aborted {
                    self.cancel(id);
                }
                return Err(StepError { aborted, source });
            }
        };
        let mut events = Vec::new();
        let mut sampled = Vec::new();
        for (s, logits) in schedule.seqs.iter().zip(&logits) {
            if let Some((len, lps)) = self.prompt_logprobs.get_mut(&s.id)
                && logits.rows() == s.num_tokens
            {
                let tokens = self
                    .scheduler
                    .tokens(s.id)
                    .expect("scheduled request is live");
                // Row `i` predicts position `start_pos + i + 1`.
                for i in 0..s.num_tokens {
                    let target = s.start_pos + i + 1;
                    if target < *len && target == lps.len() + 1 {
                        lps.push(log_softmax_at(logits.row(i))(tokens[target]));
                    }
                }
            }
            if !s.samples {
                continue;
            }
            let sampler = self
                .samplers
                .get_mut(&s.id)
                .expect("sampler of live request");
            let context = self
                .scheduler
                .tokens(s.id)
                .expect("scheduled request is live");
            let out = sampler.sample(logits.last(), context);
            let top = top_logprobs(logits.last(), sampler.params().top_logprobs);
            sampled.push((s.id, out.token));
            events.push(TokenEvent {
                id: s.id,
                token: out.token,
                logprob: out.logprob,
                top_logprobs: top,
                prompt_logprobs: self.prompt_logprobs.remove(&s.id).map(|(_, lps)| lps),
                finish: None,
            });
        }
        for (id, reason) in self.scheduler.update(&schedule, &sampled) {
            self.samplers.remove(&id);
            self.prompt_logprobs.remove(&id);
            if let Some(e) = events.iter_mut().find(|e| e.id == id) {
                e.finish = Some(reason);
            }
        }
        Ok(events)
    }

    /// Runs until every queued request has finished; returns each request's generated tokens.
    /// A convenience for tests and batch jobs; servers call [`Engine::step`].
    pub fn run_to_completion(&mut self) -> Result<HashMap<RequestId, Vec<u32>>, StepError> {
        let mut out: HashMap<RequestId, Vec<u32>> = HashMap::new();
        while self.has_work() {
            for e in self.step()? {
                out.entry(e.id).or_default().push(e.token);
            }
        }
        Ok(out)
    }
}
