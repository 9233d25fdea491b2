//! One worker of a sharded model: its slices of its stage's layers, and the forward pass over
//! them (see [`crate::shard`] for the split).
//!
//! The batch layout and the attention over the paged KV cache are the single-node path's
//! ([`crate::model::attention`]: packed ragged batch, per-token RoPE, paged KV gathered per
//! sequence, GQA as stacked rows), run with this rank's head counts; the two row-parallel
//! products are all-reduced through a [`Collective`].

use std::ops::Range;

use candle_core::{D, Device, Tensor};

use super::collective::{Collective, LinkError};
use super::source::{ShardSource, Slice, SourceError};
use super::{HeadSplit, LayoutError, ShardLayout};
use crate::config::LlamaConfig;
use crate::kv_cache::KvStore;
use crate::model::attention::{StepLayout, StepLayoutError, check_batch};
use crate::model::{BatchItem, SeqLogits};

/// Failure of a shard's forward step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("all-reduce")]
    Collective(#[from] LinkError),
    #[error("tensor op")]
    Tensor(#[from] candle_core::Error),
}

/// Failure to load a shard.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageLoadError {
    #[error("layout")]
    Layout(#[from] LayoutError),
    #[error("stage {stage} rank {rank} outside the layout")]
    Position { stage: usize, rank: usize },
    #[error("load {name}")]
    Source {
        name: String,
        #[source]
        source: SourceError,
    },
    #[error("rope tables")]
    Rope(#[source] crate::model::LoadError),
    #[error("start worker thread")]
    Spawn(#[source] std::io::Error),
}

#[derive(Debug)]
struct Proj {
    w: Tensor,
    b: Option<Tensor>,
}

impl Proj {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.w.t()?)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn bytes(&self) -> u64 {
        (self.w.elem_count() + self.b.as_ref().map_or(0, Tensor::elem_count)) as u64 * 4
    }
}

#[derive(Debug)]
struct ShardLayer {
    input_norm: Tensor,
    q: Proj,
    k: Proj,
    v: Proj,
    /// Row-parallel: this rank's input columns; the bias (added once, after the reduce) is in
    /// `o_bias`.
    o: Tensor,
    o_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// What a stage takes in: token ids (first stage) or the previous stage's hidden states.
#[derive(Debug)]
pub enum StageInput<'a> {
    Tokens,
    Hidden(&'a [f32]),
}

/// What a stage hands on: hidden states `(tokens, hidden)` row-major, or (last stage, rank 0)
/// the logits the engine samples from. Other ranks of the last stage return `None`.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOutput {
    Hidden(Vec<f32>),
    Logits(Vec<SeqLogits>),
    None,
}

/// One rank of one pipeline stage (see the module docs).
#[derive(Debug)]
pub struct StageShard {
    config: LlamaConfig,
    device: Device,
    layers_range: Range<usize>,
    rank: usize,
    split: HeadSplit,
    embed: Option<Tensor>,
    layers: Vec<ShardLayer>,
    /// Final norm and head: last stage, rank 0 only.
    head: Option<(Tensor, Tensor)>,
    cos: Tensor,
    sin: Tensor,
}

/// A source and a device, with errors naming the tensor.
struct Loader<'a> {
    source: &'a mut dyn ShardSource,
    device: &'a Device,
}

impl Loader<'_> {
    fn load(
        &mut self,
        name: String,
        shape: &[usize],
        slice: Slice,
    ) -> Result<Tensor, StageLoadError> {
        self.source
            .load(&name, shape, slice, self.device)
            .map_err(|source| StageLoadError::Source { name, source })
    }

    /// `{prefix}.weight` (`out × inp`) narrowed to `rows`, and its bias when present (or
    /// required) narrowed alike.
    fn column_parallel(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
        rows: Range<usize>,
        require_bias: bool,
    ) -> Result<Proj, StageLoadError> {
        let w = self.load(
            format!("{prefix}.weight"),
            &[out, inp],
            Slice::Rows(rows.clone()),
        )?;
        let bias = format!("{prefix}.bias");
        let b = if require_bias || self.source.contains(&bias) {
            Some(self.load(bias, &[out], Slice::Rows(rows))?)
        } else {
            None
        };
        Ok(Proj { w, b })
    }

    fn optional(
        &mut self,
        name: String,
        shape: &[usize],
    ) -> Result<Option<Tensor>, StageLoadError> {
        if self.source.contains(&name) {
            self.load(name, shape, Slice::All).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl StageShard {
    /// Loads rank `rank` of stage `stage` of `layout` from `source`, reading only its slices.
    pub fn load(
        config: &LlamaConfig,
        layout: &ShardLayout,
        stage: usize,
        rank: usize,
        source: &mut dyn ShardSource,
        device: &Device,
    ) -> Result<Self, StageLoadError> {
        layout.validate(config)?;
        let tp = layout.tensor_parallel;
        let range = layout
            .stages
            .get(stage)
            .cloned()
            .filter(|_| rank < tp)
            .ok_or(StageLoadError::Position { stage, rank })?;
        let split = HeadSplit::new(config, tp, rank)?;
        let (h, hd, inter, vocab) = (
            config.hidden_size,
            config.head_dim(),
            config.intermediate_size,
            config.vocab_size,
        );
        let (nq, nkv) = (config.num_attention_heads * hd, config.num_kv_heads() * hd);
        let mut l = Loader { source, device };
        let q_rows = split.q_start * hd..(split.q_start + split.q_count) * hd;
        let kv_rows = split.kv_start * hd..(split.kv_start + split.kv_count) * hd;
        let mlp = split.inter_start..split.inter_start + split.inter_count;
        let bias = config.attention_bias;
        let first = stage == 0;
        let last = stage + 1 == layout.stages.len();
        let embed_name = "model.embed_tokens.weight";
        let embed = if first {
            Some(l.load(embed_name.into(), &[vocab, h], Slice::All)?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(range.len());
        for i in range.clone() {
            let p = format!("model.layers.{i}");
            let o_bias_name = format!("{p}.self_attn.o_proj.bias");
            layers.push(ShardLayer {
                input_norm: l.load(format!("{p}.input_layernorm.weight"), &[h], Slice::All)?,
                q: l.column_parallel(
                    &format!("{p}.self_attn.q_proj"),
                    nq,
                    h,
                    q_rows.clone(),
                    bias,
                )?,
                k: l.column_parallel(
                    &format!("{p}.self_attn.k_proj"),
                    nkv,
                    h,
                    kv_rows.clone(),
                    bias,
                )?,
                v: l.column_parallel(
                    &format!("{p}.self_attn.v_proj"),
                    nkv,
                    h,
                    kv_rows.clone(),
                    bias,
                )?,
                o: l.load(
                    format!("{p}.self_attn.o_proj.weight"),
                    &[h, nq],
                    Slice::Cols(q_rows.clone()),
                )?,
                o_bias: if bias || l.source.contains(&o_bias_name) {
                    Some(l.load(o_bias_name, &[h], Slice::All)?)
                } else {
                    None
                },
                q_norm: l.optional(format!("{p}.self_attn.q_norm.weight"), &[hd])?,
                k_norm: l.optional(format!("{p}.self_attn.k_norm.weight"), &[hd])?,
                post_norm: l.load(
                    format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                    Slice::All,
                )?,
                gate: l.load(
                    format!("{p}.mlp.gate_proj.weight"),
                    &[inter, h],
                    Slice::Rows(mlp.clone()),
                )?,
                up: l.load(
                    format!("{p}.mlp.up_proj.weight"),
                    &[inter, h],
                    Slice::Rows(mlp.clone()),
                )?,
                down: l.load(
                    format!("{p}.mlp.down_proj.weight"),
                    &[h, inter],
                    Slice::Cols(mlp.clone()),
                )?,
            });
        }
        let head = if last && rank == 0 {
            let norm = l.load("model.norm.weight".into(), &[h], Slice::All)?;
            let lm = match (&embed, config.tie_word_embeddings) {
                (Some(e), true) => e.clone(),
                (None, true) => l.load(embed_name.into(), &[vocab, h], Slice::All)?,
                (_, false) => l.load("lm_head.weight".into(), &[vocab, h], Slice::All)?,
            };
            Some((norm, lm))
        } else {
            None
        };
        let (cos, sin) = crate::model::rope_tables(config, device).map_err(StageLoadError::Rope)?;
        Ok(Self {
            config: config.clone(),
            device: device.clone(),
            layers_range: range,
            rank,
            split,
            embed,
            layers,
            head,
            cos,
            sin,
        })
    }

    pub fn layers(&self) -> Range<usize> {
        self.layers_range.clone()
    }

    /// Bytes of weights this shard holds (a tied head counted once).
    pub fn weight_bytes(&self) -> u64 {
        let t = |t: &Tensor| t.elem_count() as u64 * 4;
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                t(&l.input_norm)
                    + l.q.bytes()
                    + l.k.bytes()
                    + l.v.bytes()
                    + t(&l.o)
                    + l.o_bias.as_ref().map_or(0, t)
                    + l.q_norm.as_ref().map_or(0, t)
                    + l.k_norm.as_ref().map_or(0, t)
                    + t(&l.post_norm)
                    + t(&l.gate)
                    + t(&l.up)
                    + t(&l.down)
            })
            .sum();
        let embed = self.embed.as_ref().map_or(0, t);
        let head = self.head.as_ref().map_or(0, |(n, lm)| {
            let shared = self.embed.as_ref().is_some_and(|e| e.id() == lm.id());
            t(n) + if shared { 0 } else { t(lm) }
        });
        embed + layers + head
    }

    /// The KV store this shard needs: its layers, its KV heads.
    pub fn new_kv_store(
        &self,
        num_blocks: usize,
        block_size: usize,
    ) -> candle_core::Result<KvStore> {
        KvStore::new(
            self.layers.len(),
            num_blocks,
            block_size,
            self.split.kv_count,
            self.config.head_dim(),
            &self.device,
        )
    }

    fn check_batch(&self, kv: &KvStore, batch: &[BatchItem<'_>]) -> Result<(), StageError> {
        check_batch(batch, &self.config, kv, self.layers.len(), "shard")
            .map_err(StageError::InvalidBatch)
    }

    /// One step of this shard: its layers over the packed batch, K/V written into `kv`.
    /// Every rank of the stage must call this with the same batch and input (the all-reduces
    /// pair them up).
    pub fn forward(
        &self,
        kv: &KvStore,
        batch: &[BatchItem<'_>],
        input: StageInput<'_>,
        coll: &mut dyn Collective,
    ) -> Result<StageOutput, StageError> {
        self.check_batch(kv, batch)?;
        let cfg = &self.config;
        let (nh, nkv, hd) = (self.split.q_count, self.split.kv_count, cfg.head_dim());
        let dev = &self.device;
        let hidden = cfg.hidden_size;

        let step = StepLayout::new(batch, kv.block_size, nh / nkv, &self.cos, &self.sin, dev)
            .map_err(|e| match e {
                StepLayoutError::BlockTable => StageError::InvalidBatch(e.to_string()),
                StepLayoutError::Tensor(e) => e.into(),
            })?;
        let total = step.total();
        let offsets = &step.offsets;

        let mut x = match (input, &self.embed) {
            (StageInput::Tokens, Some(embed)) => {
                embed.index_select(&Tensor::from_vec(step.ids.clone(), total, dev)?, 0)?
            }
            (StageInput::Hidden(h), None) => {
                if h.len() != total * hidden {
                    return Err(StageError::InvalidBatch(format!(
                        "{} hidden values for {total} tokens",
                        h.len()
                    )));
                }
                Tensor::from_slice(h, (total, hidden), dev)?
            }
            (StageInput::Tokens, None) => {
                return Err(StageError::InvalidBatch(
                    "token ids sent to a later stage".into(),
                ));
            }
            (StageInput::Hidden(_), Some(_)) => {
                return Err(StageError::InvalidBatch(
                    "hidden states sent to the first stage".into(),
                ));
            }
        };

        let eps = cfg.rms_norm_eps as f32;
        let mut buf = Vec::new();
        let mut reduce = |t: Tensor, coll: &mut dyn Collective| -> Result<Tensor, StageError> {
            if coll.size() == 1 {
                return Ok(t);
            }
            buf.clear();
            buf.extend(t.flatten_all()?.to_vec1::<f32>()?);
            coll.all_reduce_sum(&mut buf)?;
            Ok(Tensor::from_slice(&buf, (total, hidden), dev)?)
        };
        for (layer, (k_cache, v_cache)) in self.layers.iter().zip(&kv.layers) {
            let h = candle_nn::ops::rms_norm(&x, &layer.input_norm, eps)?;
            let q = layer.q.forward(&h)?.reshape((1, total, nh, hd))?;
            let k = layer.k.forward(&h)?.reshape((1, total, nkv, hd))?;
            let v = layer.v.forward(&h)?.reshape((total, nkv, hd))?;
            let heads = step.attend(
                q,
                k,
                v,
                (layer.q_norm.as_ref(), layer.k_norm.as_ref(), eps),
                (k_cache, v_cache),
                (nh, nkv, hd),
            )?;
            let partial = heads.matmul(&layer.o.t()?)?;
            let mut attn = reduce(partial, coll)?;
            if let Some(b) = &layer.o_bias {
                attn = attn.broadcast_add(b)?;
            }
            let x1 = (&x + attn)?;
            let h = candle_nn::ops::rms_norm(&x1, &layer.post_norm, eps)?;
            let gate = candle_nn::ops::silu(&h.matmul(&layer.gate.t()?)?)?;
            let up = h.matmul(&layer.up.t()?)?;
            let partial = (gate * up)?.matmul(&layer.down.t()?)?;
            let mlp = reduce(partial, coll)?;
            x = (x1 + mlp)?;
        }

        let Some((norm, lm_head)) = &self.head else {
            return Ok(if self.rank == 0 {
                StageOutput::Hidden(x.flatten_all()?.to_vec1::<f32>()?)
            } else {
                StageOutput::None
            });
        };
        let mut rows = Vec::new();
        let mut counts = Vec::with_capacity(batch.len());
        for (s, item) in batch.iter().enumerate() {
            let n = item.tokens.len();
            let first = if item.all_logits { 0 } else { n - 1 };
            rows.extend((first..n).map(|i| (offsets[s] + i) as u32));
            counts.push(n - first);
        }
        let num_rows = rows.len();
        let rows = Tensor::from_vec(rows, num_rows, dev)?;
        let x = candle_nn::ops::rms_norm(&x.index_select(&rows, 0)?.contiguous()?, norm, eps)?;
        let logits = x.matmul(&lm_head.t()?)?;
        let vocab = logits.dim(D::Minus1)?;
        let mut flat = logits.flatten_all()?.to_vec1::<f32>()?.into_iter();
        Ok(StageOutput::Logits(
            counts
                .into_iter()
                .map(|c| SeqLogits {
                    vocab,
                    data: flat.by_ref().take(c * vocab).collect(),
                })
                .collect(),
        ))
    }
}
