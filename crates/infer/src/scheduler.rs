//! Continuous-batching scheduler: a plain state machine in the style of vLLM V1.
//!
//! It is fed [`Scheduler::add_request`], [`Scheduler::cancel`], [`Scheduler::schedule`] and
//! [`Scheduler::update`]; it owns no model, tensors, threads or clocks, so every policy below is
//! unit-tested with fake tokens. The engine (and, later, the task that wraps it behind a bounded
//! channel) drives it.
//!
//! Each step has a **token budget** (`max_batched_tokens`). There is no separate "prefill" or
//! "decode" phase: a sequence simply has `tokens.len() - num_computed` tokens still to compute
//! (the whole prompt at first, then 1 per decode step), and each step hands out budget:
//!
//! 1. **Running sequences first**, in arrival order: each gets `min(remaining, budget)` tokens,
//!    so decodes (1 token) are never starved by a long prompt, and a prompt that did not fit
//!    continues where it stopped (**chunked prefill**).
//! 2. **Then waiting sequences**, FIFO, while budget, `max_running` and free KV blocks allow.
//!    A prompt longer than the remaining budget is admitted with a chunk. Admission stops at the
//!    first request whose chunk does not fit in the free blocks (no overtaking, so a long
//!    prompt is not starved by short ones).
//!
//! KV blocks are reserved *before* a step computes into them. When a running sequence cannot
//! grow, the most recently admitted running sequence is **preempted** (vLLM's recompute
//! policy): its blocks are freed, it goes back to the front of the queue and later recomputes
//! prompt + generated tokens as one prefill. No new requests are admitted in a step that
//! preempted. Requests that could never fit (`prompt + max_tokens` over the model length or the
//! whole cache) are refused at [`Scheduler::add_request`], so preemption always makes progress.
//!
//! The waiting queue is bounded (`max_waiting`): over it, `add_request` fails with
//! [`AddError::QueueFull`], which the gateway maps to HTTP 429. Finished and cancelled
//! sequences free their blocks immediately, inside `update` / `cancel`.

use std::collections::{HashMap, VecDeque};

use crate::kv_cache::{BlockAllocator, SeqId};

/// Request id, chosen by the caller; unique among live requests.
pub type RequestId = SeqId;

/// Scheduler limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Token budget of one step (sum of new tokens over the batch).
    pub max_batched_tokens: usize,
    /// At most this many sequences run (hold KV blocks) at once.
    pub max_running: usize,
    /// At most this many requests wait for admission; more is [`AddError::QueueFull`].
    pub max_waiting: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    /// Longest sequence (prompt + generated) the model supports.
    pub max_model_len: usize,
}

/// What a request asks of the scheduler (sampling lives in the engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRequest {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    /// Generate at most this many tokens (≥ 1).
    pub max_tokens: usize,
    /// Generation stops after any of these tokens (EOS and friends); the token is emitted.
    pub stop_token_ids: Vec<u32>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddError {
    #[error("queue full: {waiting} requests waiting")]
    QueueFull { waiting: usize },
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    #[error("{tokens} tokens (prompt + max_tokens) exceed the limit of {limit}")]
    TooLong { tokens: usize, limit: usize },
    #[error("request {0} already exists")]
    DuplicateId(RequestId),
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` generated, or the model length reached.
    Length,
    /// A stop token was generated.
    Stop,
}

/// One sequence's work in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: RequestId,
    /// Position of the first token computed this step.
    pub start_pos: usize,
    pub num_tokens: usize,
    /// This step completes the sequence's known tokens, so the engine samples the next one.
    pub samples: bool,
}

/// The result of [`Scheduler::schedule`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences preempted in this step (blocks freed, back in the queue).
    pub preempted: Vec<RequestId>,
}

impl Schedule {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.num_tokens).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

#[derive(Debug)]
struct Sequence {
    /// Prompt followed by generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    num_computed: usize,
    max_tokens: usize,
    stop_token_ids: Vec<u32>,
}

impl Sequence {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// The scheduler state machine (see the module docs).
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockAllocator,
    seqs: HashMap<RequestId, Sequence>,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
}

impl Scheduler {
    /// # Panics
    /// If `block_size` is zero.
    pub fn new(config: SchedulerConfig) -> Self {
        let blocks = BlockAllocator::new(config.num_blocks, config.block_size);
        Self {
            config,
            blocks,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues a request, or refuses it at once.
    pub fn add_request(&mut self, req: SeqRequest) -> Result<(), AddError> {
        if self.seqs.contains_key(&req.id) {
            return Err(AddError::DuplicateId(req.id));
        }
        if req.prompt.is_empty() {
            return Err(AddError::EmptyPrompt);
        }
        if req.max_tokens == 0 {
            return Err(AddError::ZeroMaxTokens);
        }
        let tokens = req.prompt.len() + req.max_tokens;
        let limit = self
            .config
            .max_model_len
            .min(self.config.num_blocks * self.config.block_size);
        if tokens > limit {
            return Err(AddError::TooLong { tokens, limit });
        }
        if self.waiting.len() >= self.config.max_waiting {
            return Err(AddError::QueueFull {
                waiting: self.waiting.len(),
            });
        }
        self.seqs.insert(
            req.id,
            Sequence {
                prompt_len: req.prompt.len(),
                tokens: req.prompt,
                num_computed: 0,
                max_tokens: req.max_tokens,
                stop_token_ids: req.stop_token_ids,
            },
        );
        self.waiting.push_back(req.id);
        Ok(())
    }

    /// Removes a request wherever it is and frees its blocks now. Returns whether it existed.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if self.seqs.remove(&id).is_none() {
            return false;
        }
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
        self.blocks.release(id);
        true
    }

    /// Picks this step's work and reserves KV blocks for it.
    pub fn schedule(&mut self) -> Schedule {
        let mut out = Schedule::default();
        let mut budget = self.config.max_batched_tokens;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            let n = (seq.tokens.len() - seq.num_computed).min(budget);
            let (start, total) = (seq.num_computed, seq.tokens.len());
            let scheduled = loop {
                if self.blocks.reserve(id, start + n).is_ok() {
                    break true;
                }
                let victim = *self.running.last().expect("running is non-empty");
                self.preempt(victim);
                out.preempted.push(victim);
                if victim == id {
                    break false;
                }
            };
            if !scheduled {
                break; // `id` was the last running sequence.
            }
            out.seqs.push(ScheduledSeq {
                id,
                start_pos: start,
                num_tokens: n,
                samples: start + n == total,
            });
            budget -= n;
            i += 1;
        }

        if out.preempted.is_empty() {
            while budget > 0 && self.running.len() < self.config.max_running {
                let Some(&id) = self.waiting.front() else {
                    break;
                };
                let seq = &self.seqs[&id];
                let n = (seq.tokens.len() - seq.num_computed).min(budget);
                let (start, total) = (seq.num_computed, seq.tokens.len());
                if self.blocks.reserve(id, start + n).is_err() {
                    break;
                }
                self.waiting.pop_front();
                self.running.push(id);
                out.seqs.push(ScheduledSeq {
                    id,
                    start_pos: start,
                    num_tokens: n,
                    samples: start + n == total,
                });
                budget -= n;
            }
        }
        out
    }

    fn preempt(&mut self, id: RequestId) {
        self.running.retain(|&r| r != id);
        self.blocks.release(id);
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.num_computed = 0;
        }
        self.waiting.push_front(id);
    }

    /// Records a computed step: advances every scheduled sequence and appends the sampled
    /// tokens (`sampled` holds one entry per `samples` sequence). Returns the sequences that
    /// finished; their blocks are already free.
    pub fn update(
        &mut self,
        schedule: &Schedule,
        sampled: &[(RequestId, u32)],
    ) -> Vec<(RequestId, FinishReason)> {
        for s in &schedule.seqs {
            if let Some(seq) = self.seqs.get_mut(&s.id) {
                seq.num_computed = seq.num_computed.max(s.start_pos + s.num_tokens);
            }
        }
        let mut finished = Vec::new();
        for &(id, token) in sampled {
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue; // cancelled meanwhile
            };
            seq.tokens.push(token);
            let reason = if seq.stop_token_ids.contains(&token) {
                Some(FinishReason::Stop)
            } else if seq.generated() >= seq.max_tokens
                || seq.tokens.len() >= self.config.max_model_len
            {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                finished.push((id, reason));
            }
        }
        for &(id, _) in &finished {
            self.cancel(id);
        }
        finished
    }

    /// All tokens (prompt + generated) of a live request.
    pub fn tokens(&self, id: RequestId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| s.tokens.as_slice())
    }

    /// Generated tokens of a live request.
    pub fn generated(&self, id: RequestId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| &s.tokens[s.prompt_len..])
    }

    /// Blocks of a live request (empty while it waits).
    pub fn block_table(&self, id: RequestId) -> &[u32] {
        self.blocks
            .table(id)
            .map_or(&[][..], |t| t.blocks.as_slice())
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.blocks.num_free_blocks()
    }

    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SchedulerConfig {
        SchedulerConfig {
            max_batched_tokens: 32,
            max_running: 8,
            max_waiting: 4,
            num_blocks: 16,
            block_size: 4,
            max_model_len: 64,
        }
    }

    fn req(id: RequestId, prompt_len: usize, max_tokens: usize) -> SeqRequest {
        SeqRequest {
            id,
            prompt: vec![1; prompt_len],
            max_tokens,
            stop_token_ids: vec![99],
        }
    }

    /// Runs `schedule` + `update` with every sampling sequence producing `token`.
    fn step(s: &mut Scheduler, token: u32) -> (Schedule, Vec<(RequestId, FinishReason)>) {
        let sch = s.schedule();
        let sampled: Vec<_> = sch
            .seqs
            .iter()
            .filter(|q| q.samples)
            .map(|q| (q.id, token))
            .collect();
        let fin = s.update(&sch, &sampled);
        (sch, fin)
    }

    #[test]
    fn decodes_go_first_and_long_prompts_are_chunked() {
        let mut s = Scheduler::new(config());
        s.add_request(req(1, 3, 10)).unwrap();
        let (sch, _) = step(&mut s, 5);
        assert_eq!(
            sch.seqs,
            vec![ScheduledSeq {
                id: 1,
                start_pos: 0,
                num_tokens: 3,
                samples: true
            }]
        );
        s.add_request(req(2, 40, 4)).unwrap();
        let (sch, _) = step(&mut s, 5);
        // Running decode first (1 token), then 31 tokens of the 40-token prompt.
        assert_eq!(
            sch.seqs[0],
            ScheduledSeq {
                id: 1,
                start_pos: 3,
                num_tokens: 1,
                samples: true
            }
        );
        assert_eq!(
            sch.seqs[1],
            ScheduledSeq {
                id: 2,
                start_pos: 0,
                num_tokens: 31,
                samples: false
            }
        );
        assert_eq!(sch.num_tokens(), 32);
        let (sch, _) = step(&mut s, 5);
        assert_eq!(
            sch.seqs[1],
            ScheduledSeq {
                id: 2,
                start_pos: 31,
                num_tokens: 9,
                samples: true
            }
        );
        assert_eq!(s.generated(2).unwrap(), &[5]);
    }

    #[test]
    fn budget_is_never_exceeded_and_everything_finishes() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_waiting: 100,
            num_blocks: 64,
            ..config()
        });
        for id in 0..20 {
            s.add_request(req(id, 1 + (id as usize * 7) % 30, 1 + id as usize % 5))
                .unwrap();
        }
        let mut finished = 0;
        for _ in 0..1000 {
            if !s.has_work() {
                break;
            }
            let (sch, fin) = step(&mut s, 5);
            assert!(sch.num_tokens() <= 32);
            assert!(s.num_running() <= 8);
            finished += fin.len();
        }
        assert_eq!(finished, 20);
        assert_eq!(s.num_free_blocks(), 64);
    }

    #[test]
    fn stops_on_stop_token_and_max_tokens() {
        let mut s = Scheduler::new(config());
        s.add_request(req(1, 2, 3)).unwrap();
        s.add_request(req(2, 2, 10)).unwrap();
        step(&mut s, 5);
        let sch = s.schedule();
        let fin = s.update(&sch, &[(1, 5), (2, 99)]);
        assert_eq!(fin, vec![(2, FinishReason::Stop)]);
        let (_, fin) = step(&mut s, 5);
        assert_eq!(fin, vec![(1, FinishReason::Length)]);
        assert!(!s.has_work());
        assert_eq!(s.num_free_blocks(), 16);
    }

    #[test]
    fn queue_limit_and_request_validation() {
        let mut s = Scheduler::new(config());
        for id in 0..4 {
            s.add_request(req(id, 2, 2)).unwrap();
        }
        assert_eq!(
            s.add_request(req(9, 2, 2)),
            Err(AddError::QueueFull { waiting: 4 })
        );
        assert_eq!(s.add_request(req(0, 2, 2)), Err(AddError::DuplicateId(0)));
        assert_eq!(s.add_request(req(10, 0, 2)), Err(AddError::EmptyPrompt));
        assert_eq!(s.add_request(req(10, 2, 0)), Err(AddError::ZeroMaxTokens));
        assert_eq!(
            s.add_request(req(10, 60, 10)),
            Err(AddError::TooLong {
                tokens: 70,
                limit: 64
            })
        );
        // Admission drains the queue, making room again.
        s.schedule();
        assert_eq!(s.num_waiting(), 0);
        s.add_request(req(9, 2, 2)).unwrap();
    }

    #[test]
    fn admission_is_bounded_by_free_blocks() {
        // 4 blocks of 4 tokens: two 8-token prompts fill the cache; the third waits.
        let mut s = Scheduler::new(SchedulerConfig {
            num_blocks: 4,
            max_model_len: 16,
            ..config()
        });
        for id in 0..3 {
            s.add_request(req(id, 8, 1)).unwrap();
        }
        let sch = s.schedule();
        assert_eq!(
            sch.seqs.iter().map(|q| q.id).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(s.num_free_blocks(), 0);
        assert_eq!(s.num_waiting(), 1);
        // max_tokens = 1: both finish on this step and free their blocks at once.
        let fin = s.update(&sch, &[(0, 5), (1, 5)]);
        assert_eq!(fin.len(), 2);
        assert_eq!(s.num_free_blocks(), 4);
        assert_eq!(s.schedule().seqs[0].id, 2);
    }

    #[test]
    fn cancellation_frees_blocks_immediately() {
        let mut s = Scheduler::new(config());
        s.add_request(req(1, 10, 5)).unwrap();
        s.add_request(req(2, 10, 5)).unwrap();
        step(&mut s, 5);
        assert_eq!(s.num_free_blocks(), 16 - 3 - 3);
        assert!(s.cancel(1));
        assert_eq!(s.num_free_blocks(), 13);
        assert!(!s.cancel(1));
        assert!(s.tokens(1).is_none());
        // A waiting request can be cancelled too.
        s.add_request(req(3, 4, 1)).unwrap();
        assert!(s.cancel(3));
        assert_eq!(s.num_waiting(), 0);
        let sch = s.schedule();
        assert_eq!(sch.seqs.iter().map(|q| q.id).collect::<Vec<_>>(), vec![2]);
        // Tokens sampled for a request cancelled after scheduling are dropped.
        assert!(s.cancel(2));
        assert!(s.update(&sch, &[(2, 5)]).is_empty());
        assert_eq!(s.num_free_blocks(), 16);
    }

    #[test]
    fn preemption_frees_the_newest_and_recomputes_it() {
        // 3 blocks of 4: two sequences of 4-token prompts, growing until the cache is full.
        let mut s = Scheduler::new(SchedulerConfig {
            num_blocks: 3,
            max_model_len: 12,
            ..config()
        });
        s.add_request(req(1, 4, 8)).unwrap();
        s.add_request(req(2, 4, 8)).unwrap();
        step(&mut s, 5); // both prefilled, 1 block each, first token sampled
        step(&mut s, 5); // seq 1 takes block 3 for position 4; seq 2 has none left → preempted
        assert_eq!(s.num_running(), 1);
        assert_eq!(s.num_waiting(), 1);
        assert_eq!(
            s.generated(2).unwrap().len(),
            1,
            "generated tokens survive preemption"
        );
        let mut fin = Vec::new();
        for _ in 0..50 {
            if !s.has_work() {
                break;
            }
            let (sch, f) = step(&mut s, 5);
            // After seq 1 finishes, seq 2 recomputes prompt + its generated token at once.
            if let Some(q) = sch.seqs.iter().find(|q| q.id == 2 && q.start_pos == 0) {
                assert_eq!(q.num_tokens, 5);
            }
            fin.extend(f);
        }
        assert_eq!(
            fin,
            vec![(1, FinishReason::Length), (2, FinishReason::Length)]
        );
        assert_eq!(s.num_free_blocks(), 3);
    }
}
