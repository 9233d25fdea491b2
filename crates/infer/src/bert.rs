//! BERT sentence embeddings: an encoder forward pass of our own on candle, with
//! sentence-transformers pooling.
//!
//! A model directory holds `config.json` (`model_type: "bert"`), `model.safetensors` (names
//! with or without the `bert.` prefix) and `tokenizer.json`; a sentence-transformers repository
//! adds `modules.json`, which lists the pipeline: `Transformer` → `Pooling` (configured by
//! `<path>/config.json`: CLS, mean, max or mean/√len) → optionally `Normalize` (L2). Without
//! `modules.json` we mean-pool and do not normalize, as sentence-transformers does for a plain
//! BERT checkpoint. Modules we do not implement (`Dense`, …) are refused at load, never skipped.
//!
//! Why not candle-transformers' `BertModel`: the workspace does not depend on
//! candle-transformers (a large crate of model files), the encoder is ~150 lines, and owning
//! it, like the Llama pass, lets us fuse Q/K/V and test the padding behaviour directly. Here:
//!
//! - A batch is padded to its longest sequence; an additive key mask (`-1e30` on padding) keeps
//!   every real token's attention, and pooling uses the same mask, so an embedding does not
//!   depend on what it was batched with (tested to 1e-5).
//! - Projections run on the flattened `(batch × len, hidden)` matrix, Q/K/V as one fused
//!   matmul; only the score/value products are per sequence and head.
//! - [`Embedder::embed`] sorts inputs by length before cutting batches, so short texts are not
//!   padded to a long neighbour.
//!
//! Everything is computed in f32 (f16/bf16 weights are converted at load).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear};
use serde::Deserialize;

use crate::tokenizer::{HfTokenizer, Tokenizer, TokenizerError};

/// Test fixtures for this crate and the crates above it (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub mod fixture;

/// Sequences per forward pass in [`Embedder::embed`].
const BATCH: usize = 16;
/// Additive attention bias of padded keys: `exp` of it underflows to exactly 0.
const MASKED: f64 = -1e30;

/// The `config.json` subset a BERT encoder needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// How token states become one vector (sentence-transformers' `Pooling` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pooling {
    /// The first token's (`[CLS]`) state.
    Cls,
    /// The mean over real (unpadded) tokens.
    Mean,
    /// The element-wise maximum over real tokens.
    Max,
    /// The sum over real tokens divided by √(token count).
    MeanSqrtLen,
}

/// Failure to load an encoder or embedding model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BertLoadError {
    #[error("read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported embedding model: {0}")]
    Unsupported(String),
    #[error("read safetensors {path}")]
    Safetensors {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("missing tensor {name}")]
    MissingTensor { name: String },
    #[error("tensor {name}: shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("prepare tensor")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Failure to embed texts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("token id {id} is outside the vocabulary ({vocab})")]
    TokenId { id: u32, vocab: usize },
    #[error("sequence of {len} tokens is longer than the model's {max}")]
    TooLong { len: usize, max: usize },
    #[error("a sequence has no tokens")]
    Empty,
    #[error("forward pass")]
    Forward(#[from] candle_core::Error),
}

/// Whether `dir/config.json` describes a BERT encoder (`model_type: "bert"`).
pub fn is_bert_dir(dir: &Path) -> bool {
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("model_type").and_then(|t| t.as_str()) == Some("bert"))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BertLoadError> {
    let bytes = std::fs::read(path).map_err(|source| BertLoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| BertLoadError::Json {
        path: path.to_owned(),
        source,
    })
}

struct Layer {
    /// Q, K and V stacked: `(3 × hidden, hidden)`.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

/// A BERT encoder (no pooler head: sentence embeddings pool the token states).
pub struct BertModel {
    config: BertConfig,
    word: Embedding,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    exact_gelu: bool,
    device: Device,
    /// Bytes of the weights as loaded (f32), for the memory budget of the models a node keeps.
    weight_bytes: u64,
}

impl std::fmt::Debug for BertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Weights<'a> {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
    device: &'a Device,
    /// Bytes of the tensors taken so far, as converted.
    taken: u64,
}

impl Weights<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, BertLoadError> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .tensors
            .remove(&full)
            .ok_or_else(|| BertLoadError::MissingTensor { name: full.clone() })?;
        if t.dims() != shape {
            return Err(BertLoadError::Shape {
                name: full,
                actual: t.dims().to_vec(),
                expected: shape.to_vec(),
            });
        }
        let t = t.to_dtype(DType::F32)?.to_device(self.device)?;
        self.taken += (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        Ok(t)
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Result<Linear, BertLoadError> {
        let w = self.take(&format!("{name}.weight"), &[out, inp])?;
        let b = self.take(&format!("{name}.bias"), &[out])?;
        Ok(Linear::new(w, Some(b)))
    }

    fn norm(&mut self, name: &str, dim: usize, eps: f64) -> Result<LayerNorm, BertLoadError> {
        let w = self.take(&format!("{name}.weight"), &[dim])?;
        let b = self.take(&format!("{name}.bias"), &[dim])?;
        Ok(LayerNorm::new(w, b, eps))
    }
}

impl BertModel {
    /// Loads `config.json` and `model.safetensors` from a model directory.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self, BertLoadError> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&path, device)
            .map_err(|source| BertLoadError::Safetensors { path, source })?;
        Self::from_tensors(config, tensors, device)
    }

    /// Builds the encoder from named tensors (Hugging Face names, `bert.` prefix optional).
    pub fn from_tensors(
        config: BertConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self, BertLoadError> {
        let c = &config;
        if c.model_type.as_deref().is_some_and(|t| t != "bert") {
            return Err(BertLoadError::Unsupported(format!(
                "model_type {:?}",
                c.model_type
            )));
        }
        if c.position_embedding_type
            .as_deref()
            .is_some_and(|t| t != "absolute")
        {
            return Err(BertLoadError::Unsupported(format!(
                "position_embedding_type {:?}",
                c.position_embedding_type
            )));
        }
        let exact_gelu = match c.hidden_act.as_str() {
            "gelu" => true,
            "gelu_new" | "gelu_pytorch_tanh" => false,
            other => {
                return Err(BertLoadError::Unsupported(format!("hidden_act {other:?}")));
            }
        };
        if c.num_attention_heads == 0
            || !c.hidden_size.is_multiple_of(c.num_attention_heads)
            || c.num_hidden_layers == 0
            || c.type_vocab_size == 0
        {
            return Err(BertLoadError::Unsupported(format!(
                "hidden_size {} with {} heads, {} layers, {} token types",
                c.hidden_size, c.num_attention_heads, c.num_hidden_layers, c.type_vocab_size
            )));
        }
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let mut w = Weights {
            tensors,
            prefix,
            device,
            taken: 0,
        };
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let word = w.take("embeddings.word_embeddings.weight", &[c.vocab_size, h])?;
        let position = w.take(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, h],
        )?;
        let token_type = w.take(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, h],
        )?;
        let embed_norm = w.norm("embeddings.LayerNorm", h, eps)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let a = format!("{p}.attention.self");
            let mut qkv_w = Vec::new();
            let mut qkv_b = Vec::new();
            for part in ["query", "key", "value"] {
                qkv_w.push(w.take(&format!("{a}.{part}.weight"), &[h, h])?);
                qkv_b.push(w.take(&format!("{a}.{part}.bias"), &[h])?);
            }
            layers.push(Layer {
                qkv: Linear::new(Tensor::cat(&qkv_w, 0)?, Some(Tensor::cat(&qkv_b, 0)?)),
                attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                up: w.linear(&format!("{p}.intermediate.dense"), c.intermediate_size, h)?,
                down: w.linear(&format!("{p}.output.dense"), h, c.intermediate_size)?,
                out_norm: w.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Self {
            word: Embedding::new(word, h),
            position,
            // Single-segment inputs: every token has type 0.
            token_type: token_type.get(0)?,
            embed_norm,
            layers,
            exact_gelu,
            device: device.clone(),
            weight_bytes: w.taken,
            config,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Bytes the weights take in memory (f32).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Last hidden states of a padded batch: `(batch, longest, hidden)`, and the `(batch,
    /// longest)` f32 mask (1 for real tokens). Rows past a sequence's end are padding.
    pub fn forward(&self, batch: &[Vec<u32>]) -> Result<(Tensor, Tensor), EmbedError> {
        let c = &self.config;
        let b = batch.len();
        let len = batch.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || batch.iter().any(Vec::is_empty) {
            return Err(EmbedError::Empty);
        }
        if len > c.max_position_embeddings {
            return Err(EmbedError::TooLong {
                len,
                max: c.max_position_embeddings,
            });
        }
        let mut ids = Vec::with_capacity(b * len);
        let mut mask = Vec::with_capacity(b * len);
        for seq in batch {
            for &id in seq {
                if id as usize >= c.vocab_size {
                    return Err(EmbedError::TokenId {
                        id,
                        vocab: c.vocab_size,
                    });
                }
            }
            ids.extend_from_slice(seq);
            ids.resize(ids.len() + len - seq.len(), c.pad_token_id);
            mask.extend(std::iter::repeat_n(1f32, seq.len()));
            mask.extend(std::iter::repeat_n(0f32, len - seq.len()));
        }
        let dev = &self.device;
        let (h, heads) = (c.hidden_size, c.num_attention_heads);
        let d = h / heads;
        let n = b * len;
        let ids = Tensor::from_vec(ids, n, dev)?;
        let mask = Tensor::from_vec(mask, (b, len), dev)?;
        // (b, 1, 1, len): 0 on real keys, MASKED on padding.
        let bias = mask
            .affine(-MASKED, MASKED)?
            .reshape((b, 1, 1, len))?
            .contiguous()?;

        let pos = self.position.narrow(0, 0, len)?.repeat((b, 1))?;
        let x = self
            .word
            .forward(&ids)?
            .add(&pos)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.embed_norm.forward(&x)?;
        let scale = 1.0 / (d as f64).sqrt();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let split = |i: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(1, i * h, h)?
                    .reshape((b, len, heads, d))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (split(0)?, split(1)?, split(2)?);
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((n, h))?;
            let attn = layer.attn_out.forward(&ctx)?;
            x = layer.attn_norm.forward(&(attn + &x)?)?;
            let up = layer.up.forward(&x)?;
            let up = if self.exact_gelu {
                up.gelu_erf()?
            } else {
                up.gelu()?
            };
            let down = layer.down.forward(&up)?;
            x = layer.out_norm.forward(&(down + &x)?)?;
        }
        Ok((x.reshape((b, len, h))?, mask))
    }
}

/// Pools `(batch, len, hidden)` states under a `(batch, len)` mask into `(batch, hidden)`.
pub fn pool(states: &Tensor, mask: &Tensor, pooling: Pooling) -> candle_core::Result<Tensor> {
    let m = mask.unsqueeze(2)?;
    let count = || mask.sum_keepdim(1)?.clamp(1e-9, f64::MAX);
    match pooling {
        Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean => states.broadcast_mul(&m)?.sum(1)?.broadcast_div(&count()?),
        Pooling::MeanSqrtLen => states
            .broadcast_mul(&m)?
            .sum(1)?
            .broadcast_div(&count()?.sqrt()?),
        // sentence-transformers sets padded states to -1e9 before the max.
        Pooling::Max => states.broadcast_add(&m.affine(1e9, -1e9)?)?.max(1),
    }
}

/// L2-normalizes rows (`torch.nn.functional.normalize`: divides by `max(‖x‖, 1e-12)`).
pub fn normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

#[derive(Debug, Deserialize)]
struct StModule {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct StPooling {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Debug, Deserialize)]
struct StConfig {
    max_seq_length: Option<usize>,
}

/// The sentence-transformers pipeline after the encoder: pooling and normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentencePipeline {
    pub pooling: Pooling,
    pub normalize: bool,
}

impl SentencePipeline {
    /// Reads `modules.json` (and the pooling module's `config.json`) from `dir`; mean pooling
    /// without normalization when there is no `modules.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, BertLoadError> {
        let modules_path = dir.join("modules.json");
        if !modules_path.exists() {
            return Ok(Self {
                pooling: Pooling::Mean,
                normalize: false,
            });
        }
        let modules: Vec<StModule> = read_json(&modules_path)?;
        let mut pooling = None;
        let mut normalize = false;
        for (i, m) in modules.iter().enumerate() {
            let kind = m.kind.rsplit('.').next().unwrap_or(&m.kind);
            match kind {
                "Transformer" if i == 0 => {}
                "Pooling" if pooling.is_none() => {
                    let c: StPooling = read_json(&dir.join(&m.path).join("config.json"))?;
                    let modes = [
                        (c.pooling_mode_cls_token, Some(Pooling::Cls)),
                        (c.pooling_mode_mean_tokens, Some(Pooling::Mean)),
                        (c.pooling_mode_max_tokens, Some(Pooling::Max)),
                        (
                            c.pooling_mode_mean_sqrt_len_tokens,
                            Some(Pooling::MeanSqrtLen),
                        ),
                        (c.pooling_mode_weightedmean_tokens, None),
                        (c.pooling_mode_lasttoken, None),
                    ];
                    let on: Vec<_> = modes.iter().filter(|(on, _)| *on).collect();
                    match on.as_slice() {
                        [(_, Some(p))] => pooling = Some(*p),
                        _ => {
                            return Err(BertLoadError::Unsupported(
                                "pooling: exactly one of cls, mean, max, mean_sqrt_len".into(),
                            ));
                        }
                    }
                }
                "Normalize" if pooling.is_some() => normalize = true,
                other => {
                    return Err(BertLoadError::Unsupported(format!(
                        "sentence-transformers module {other} at position {i}"
                    )));
                }
            }
        }
        Ok(Self {
            pooling: pooling.unwrap_or(Pooling::Mean),
            normalize,
        })
    }
}

/// Embeddings of a list of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of all inputs, special tokens included.
    pub tokens: usize,
}

/// A sentence-embedding model: tokenizer, encoder, pooling, normalization.
#[derive(Debug)]
pub struct Embedder {
    model: BertModel,
    tokenizer: HfTokenizer,
    pipeline: SentencePipeline,
    max_len: usize,
}

impl Embedder {
    /// Loads a BERT sentence-embedding directory on the CPU (see the module docs). Inputs are
    /// truncated to `sentence_bert_config.json`'s `max_seq_length`, else the position table.
    pub fn from_dir(dir: &Path) -> Result<Self, BertLoadError> {
        let model = BertModel::from_dir(dir, &Device::Cpu)?;
        let pipeline = SentencePipeline::from_dir(dir)?;
        let st_path = dir.join("sentence_bert_config.json");
        let st_max = if st_path.exists() {
            read_json::<StConfig>(&st_path)?.max_seq_length
        } else {
            None
        };
        let positions = model.config().max_position_embeddings;
        let max_len = st_max.unwrap_or(positions).min(positions);
        let mut tokenizer = HfTokenizer::from_dir(dir)?;
        tokenizer.set_max_length(Some(max_len))?;
        Ok(Self {
            model,
            tokenizer,
            pipeline,
            max_len,
        })
    }

    pub fn model(&self) -> &BertModel {
        &self.model
    }

    pub fn tokenizer(&self) -> &HfTokenizer {
        &self.tokenizer
    }

    pub fn pipeline(&self) -> SentencePipeline {
        self.pipeline
    }

    /// Longest input in tokens (longer texts are truncated).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Bytes the model holds (its weights; an embedder has no KV cache), as the memory budget
    /// of a node's models counts it.
    pub fn memory_bytes(&self) -> u64 {
        self.model.weight_bytes()
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.model.config().hidden_size
    }

    /// Token ids of `text` as the model sees it (`[CLS] … [SEP]`, truncated).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        Ok(self.tokenizer.encode(text, true)?)
    }

    /// Embeds texts (see [`Embedder::embed_ids`]).
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings, EmbedError> {
        let ids = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let tokens = ids.iter().map(Vec::len).sum();
        Ok(Embeddings {
            vectors: self.embed_ids(&ids)?,
            tokens,
        })
    }

    /// Embeds token sequences: sorted by length, cut into batches of 16, each padded to its
    /// longest; results in input order.
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let (states, mask) = self.model.forward(&batch)?;
            let mut pooled = pool(&states, &mask, self.pipeline.pooling)?;
            if self.pipeline.normalize {
                pooled = normalize(&pooled)?;
            }
            for (&i, row) in chunk.iter().zip(pooled.to_vec2::<f32>()?) {
                out[i] = row;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_padding() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // Two sequences of 3 positions; the second has one real token.
        let states = Tensor::new(
            &[
                [[1f32, 2.], [3., 4.], [5., -6.]],
                [[7., 8.], [100., 100.], [-100., 100.]],
            ],
            &dev,
        )?;
        let mask = Tensor::new(&[[1f32, 1., 1.], [1., 0., 0.]], &dev)?;
        let rows = |p| pool(&states, &mask, p).and_then(|t| t.to_vec2::<f32>());
        assert_eq!(rows(Pooling::Mean)?, vec![vec![3., 0.], vec![7., 8.]]);
        assert_eq!(rows(Pooling::Cls)?, vec![vec![1., 2.], vec![7., 8.]]);
        assert_eq!(rows(Pooling::Max)?, vec![vec![5., 4.], vec![7., 8.]]);
        let sqrt = rows(Pooling::MeanSqrtLen)?;
        assert!((sqrt[0][0] - 9. / 3f32.sqrt()).abs() < 1e-6);
        let n = normalize(&Tensor::new(&[[3f32, 4.], [0., 0.]], &dev)?)?.to_vec2::<f32>()?;
        assert_eq!(n, vec![vec![0.6, 0.8], vec![0., 0.]]);
        Ok(())
    }

    #[test]
    fn modules_json_picks_pooling_and_normalize() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path();
        assert_eq!(
            SentencePipeline::from_dir(p)?,
            SentencePipeline {
                pooling: Pooling::Mean,
                normalize: false
            }
        );
        std::fs::create_dir(p.join("1_Pooling"))?;
        std::fs::write(
            p.join("1_Pooling/config.json"),
            r#"{"word_embedding_dimension": 4, "pooling_mode_cls_token": true}"#,
        )?;
        let modules = |extra: &str| {
            format!(
                r#"[{{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"}},
                   {{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}}{extra}]"#
            )
        };
        std::fs::write(p.join("modules.json"), modules(""))?;
        assert_eq!(
            SentencePipeline::from_dir(p)?,
            SentencePipeline {
                pooling: Pooling::Cls,
                normalize: false
            }
        );
        std::fs::write(
            p.join("modules.json"),
            modules(
                r#",{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}"#,
            ),
        )?;
        assert!(SentencePipeline::from_dir(p)?.normalize);
        std::fs::write(
            p.join("modules.json"),
            modules(
                r#",{"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.models.Dense"}"#,
            ),
        )?;
        assert!(matches!(
            SentencePipeline::from_dir(p),
            Err(BertLoadError::Unsupported(_))
        ));
        Ok(())
    }
}
