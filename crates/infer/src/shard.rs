//! Sharded inference: one Llama-family model split over several workers (threads now, node
//! processes over the mesh's streams next), tensor-parallel inside a group and
//! pipeline-parallel across groups.
//!
//! - **Tensor parallel** (Megatron-LM's split, as candle's `llama_multiprocess` example and
//!   distributed-llama do it): q/k/v/gate/up are split by output rows (column-parallel: each
//!   rank computes its heads and its slice of the MLP from the full hidden state), o/down by
//!   input columns (row-parallel: each rank's product is a partial sum of the full output),
//!   followed by one all-reduce each — two per layer, `tokens × hidden` values each. Heads,
//!   and with them the KV cache, are divided across ranks; when there are more ranks than KV
//!   heads (GQA), a KV head is replicated on the ranks whose query heads share it (as vLLM
//!   does), so `tp = 4` works on a model with 2 KV heads.
//! - **Pipeline parallel**: each stage holds a contiguous range of layers
//!   ([`ShardLayout::proportional`] sizes them in proportion to the stages' memory, as exo and
//!   Mesh-LLM do); the first stage also holds the embedding, the last the final norm and the
//!   head. Between stages travels the hidden state of the step's tokens.
//!
//! Modules: [`collective`] (the all-reduce over framed byte links, f32 or 8-bit),
//! [`stage`] (one worker's weights and its forward pass), [`source`] (loading only a shard's
//! slices of a checkpoint, from tensors or by ranged reads of a safetensors file), [`local`]
//! (a whole sharded model in one process, one thread per worker, behind
//! [`crate::engine::StepModel`] so the engine, scheduler, sampling and paged KV run on it
//! unchanged).
//!
//! Numerics: a sharded f32 forward differs from the single-node one only in the order of the
//! additions inside the row-parallel matmuls (partial sums added by the all-reduce), so logits
//! agree to ~1e-6 relative; the tests hold them to 1e-4 for tp=2, tp=4, pp=2 and tp=2×pp=2.

pub mod collective;
pub mod local;
pub mod remote;
pub mod source;
pub mod stage;

use std::ops::Range;

use crate::config::LlamaConfig;

/// A layout is impossible for a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    #[error("tensor_parallel and pipeline_parallel must be at least 1")]
    Zero,
    #[error("{layers} layers cannot fill {stages} pipeline stages")]
    TooManyStages { layers: usize, stages: usize },
    #[error(
        "tensor_parallel {tp} does not divide the model: {heads} heads, {kv_heads} kv heads, intermediate {intermediate}"
    )]
    Indivisible {
        tp: usize,
        heads: usize,
        kv_heads: usize,
        intermediate: usize,
    },
    #[error("stage layer ranges do not cover 0..{layers} in order")]
    Ranges { layers: usize },
}

/// How a model is cut: `tensor_parallel` ranks per stage, and each stage's layer range.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardLayout {
    pub tensor_parallel: usize,
    pub stages: Vec<Range<usize>>,
}

impl ShardLayout {
    /// `pp` stages of (nearly) equal layer counts, `tp` ranks each.
    pub fn even(config: &LlamaConfig, tp: usize, pp: usize) -> Result<Self, LayoutError> {
        Self::proportional(config, tp, &vec![1; pp])
    }

    /// One stage per entry of `capacity` (e.g. bytes of memory free), with layers in
    /// proportion to it (largest remainders get the leftover layers); every stage gets at
    /// least one layer.
    pub fn proportional(
        config: &LlamaConfig,
        tp: usize,
        capacity: &[u64],
    ) -> Result<Self, LayoutError> {
        let layers = config.num_hidden_layers;
        let pp = capacity.len();
        if tp == 0 || pp == 0 {
            return Err(LayoutError::Zero);
        }
        if pp > layers {
            return Err(LayoutError::TooManyStages { layers, stages: pp });
        }
        let total: u128 = capacity.iter().map(|&c| u128::from(c.max(1))).sum();
        let spare = (layers - pp) as u128;
        // One layer each, then the rest by largest remainder.
        let mut counts: Vec<usize> = Vec::with_capacity(pp);
        let mut rems: Vec<(u128, usize)> = Vec::with_capacity(pp);
        for (i, &c) in capacity.iter().enumerate() {
            let share = spare * u128::from(c.max(1));
            counts.push(1 + (share / total) as usize);
            rems.push((share % total, i));
        }
        let mut left = layers - counts.iter().sum::<usize>();
        rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in rems.iter().cycle() {
            if left == 0 {
                break;
            }
            counts[i] += 1;
            left -= 1;
        }
        let mut stages = Vec::with_capacity(pp);
        let mut start = 0;
        for n in counts {
            stages.push(start..start + n);
            start += n;
        }
        let layout = Self {
            tensor_parallel: tp,
            stages,
        };
        layout.validate(config)?;
        Ok(layout)
    }

    pub fn pipeline_parallel(&self) -> usize {
        self.stages.len()
    }

    /// Checks the layout against the model (divisibility, contiguous ranges).
    pub fn validate(&self, config: &LlamaConfig) -> Result<(), LayoutError> {
        let tp = self.tensor_parallel;
        if tp == 0 || self.stages.is_empty() {
            return Err(LayoutError::Zero);
        }
        let layers = config.num_hidden_layers;
        let mut next = 0;
        for r in &self.stages {
            if r.start != next || r.end <= r.start {
                return Err(LayoutError::Ranges { layers });
            }
            next = r.end;
        }
        if next != layers {
            return Err(LayoutError::Ranges { layers });
        }
        HeadSplit::new(config, tp, 0).map(|_| ())
    }
}

/// The query and KV heads one tensor-parallel rank holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSplit {
    pub q_start: usize,
    pub q_count: usize,
    pub kv_start: usize,
    pub kv_count: usize,
    /// This rank's slice of the MLP's intermediate dimension.
    pub inter_start: usize,
    pub inter_count: usize,
}

impl HeadSplit {
    /// Rank `rank` of `tp`: `heads / tp` query heads; `kv_heads / tp` KV heads, or, when `tp`
    /// is a multiple of `kv_heads`, the one KV head its query heads share (replicated).
    pub fn new(config: &LlamaConfig, tp: usize, rank: usize) -> Result<Self, LayoutError> {
        let (nh, nkv, inter) = (
            config.num_attention_heads,
            config.num_kv_heads(),
            config.intermediate_size,
        );
        let bad = LayoutError::Indivisible {
            tp,
            heads: nh,
            kv_heads: nkv,
            intermediate: inter,
        };
        if tp == 0 || !nh.is_multiple_of(tp) || !inter.is_multiple_of(tp) || nkv == 0 {
            return Err(bad);
        }
        let q_count = nh / tp;
        let (kv_start, kv_count) = if nkv.is_multiple_of(tp) {
            (rank * (nkv / tp), nkv / tp)
        } else if tp.is_multiple_of(nkv) {
            (rank / (tp / nkv), 1)
        } else {
            return Err(bad);
        };
        Ok(Self {
            q_start: rank * q_count,
            q_count,
            kv_start,
            kv_count,
            inter_start: rank * (inter / tp),
            inter_count: inter / tp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(layers: usize, heads: usize, kv: usize) -> LlamaConfig {
        serde_json::from_value(serde_json::json!({
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "vocab_size": 128, "max_position_embeddings": 64
        }))
        .unwrap()
    }

    #[test]
    fn proportional_layers_follow_capacity() {
        let c = config(10, 4, 2);
        let l = ShardLayout::proportional(&c, 1, &[3, 1]).unwrap();
        assert_eq!(l.stages, vec![0..7, 7..10]);
        let l = ShardLayout::even(&c, 2, 3).unwrap();
        assert_eq!(l.stages, vec![0..4, 4..7, 7..10]);
        let l = ShardLayout::proportional(&c, 1, &[1_000_000, 1]).unwrap();
        assert_eq!(l.stages, vec![0..9, 9..10], "every stage keeps a layer");
        assert!(matches!(
            ShardLayout::even(&c, 1, 11),
            Err(LayoutError::TooManyStages { .. })
        ));
    }

    #[test]
    fn heads_split_and_kv_heads_replicate_past_their_count() {
        let c = config(2, 8, 2);
        let s = HeadSplit::new(&c, 2, 1).unwrap();
        assert_eq!((s.q_start, s.q_count, s.kv_start, s.kv_count), (4, 4, 1, 1));
        // tp 4 > 2 kv heads: ranks 0,1 share kv head 0; ranks 2,3 kv head 1.
        let kv: Vec<_> = (0..4)
            .map(|r| HeadSplit::new(&c, 4, r).unwrap().kv_start)
            .collect();
        assert_eq!(kv, vec![0, 0, 1, 1]);
        assert!(HeadSplit::new(&c, 3, 0).is_err());
        assert!(ShardLayout::even(&config(2, 6, 3), 2, 1).is_err());
    }
}
