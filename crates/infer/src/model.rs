//! Our own Llama-family forward pass over a ragged batch and the paged KV cache.
//!
//! Why not candle-transformers' `Llama`: its cache is one contiguous tensor per layer inside the
//! model, grown by concatenation, with one position offset for the whole batch — it cannot mix a
//! 300-token prefill chunk with twenty 1-token decodes of different lengths. Here:
//!
//! - The batch is *packed*: all new tokens of all sequences form one `(T, hidden)` matrix, so
//!   embeddings, norms, projections and the MLP are single large matmuls regardless of how the
//!   tokens split across sequences (this is where batching pays on CPU and GPU alike).
//! - Every token carries its own position (`start_pos + i` of its sequence); RoPE reads its
//!   cos/sin row from a precomputed table, so sequences at different offsets share a step.
//! - Only attention is per sequence: new K/V are written into the sequence's cache slots, then
//!   its whole context is gathered from its blocks (see [`crate::kv_cache`] for the cost) and
//!   attended with a causal mask relative to absolute positions. GQA is done without repeating
//!   K/V: the `g = heads / kv_heads` query heads sharing a K/V head are stacked as rows.
//!
//! Safetensors weights are held in f32 whatever their on-disk dtype (f16/bf16 are converted at
//! load): the CPU backend's f32 matmuls are its fastest path, and it keeps one numeric path to
//! test. GGUF checkpoints ([`Llama::from_gguf`]) keep their quantized projection matrices in
//! the file's blocks: Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K as [`hub_quant::QMatrix`] (our
//! AVX2 kernels, 8-bit activations; ADR 0014), other quantizations as candle `QMatMul`s. Every
//! projection goes through [`Linear`], so the forward pass is the same code for all; norms are
//! f32, and a quantized embedding table stays quantized (a lookup dequantizes its rows).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QMatMul, ggml_file};
use std::sync::Arc;

use candle_core::{D, DType, Device, Module, Tensor};
use hub_quant::{QActs, QMatrix, QType};

use crate::config::{ConfigError, LlamaConfig};
use crate::gguf::{GgufError, GgufFile};
use crate::kv_cache::KvStore;

pub(crate) mod attention;
use attention::{StepLayout, StepLayoutError};

/// Failure to load a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("read safetensors {path}")]
    Safetensors {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("parse {path}: no weight_map")]
    Index { path: PathBuf },
    #[error("missing tensor {name}")]
    MissingTensor { name: String },
    #[error("tensor {name}: shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("tensor {name}: unsupported dtype {dtype}")]
    DType { name: String, dtype: String },
    #[error("prepare tensors")]
    Tensor(#[source] candle_core::Error),
    #[error("load gguf")]
    Gguf(#[source] Box<GgufError>),
}

impl From<GgufError> for LoadError {
    fn from(e: GgufError) -> Self {
        LoadError::Gguf(Box::new(e))
    }
}

/// Failure of a forward step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("tensor op")]
    Tensor(#[from] candle_core::Error),
    /// A worker of a sharded model failed or went away ([`crate::shard`]).
    #[error("sharded step")]
    Shard(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One sequence's share of a step: its new tokens and where they go.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    /// New tokens (a prefill chunk, or the one token being decoded); non-empty.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`; positions `0..start_pos` must already be in the cache.
    pub start_pos: usize,
    /// The sequence's blocks; must cover positions `0..start_pos + tokens.len()`.
    pub block_table: &'a [u32],
    /// Return logits for every new token instead of only the last.
    pub all_logits: bool,
}

/// Logits of one sequence: `rows × vocab`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqLogits {
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl SeqLogits {
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab.max(1)
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// Logits of the last position (the one a sampler reads).
    pub fn last(&self) -> &[f32] {
        self.row(self.rows() - 1)
    }
}

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// Qwen3's per-head RMSNorm of queries and keys (over `head_dim`, before RoPE).
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A projection's weight: candle's (f32 tensor or a quantized type hub-quant lacks) or a
/// hub-quant block matrix.
#[derive(Debug)]
enum Weight {
    Candle(QMatMul),
    Quant(Arc<QMatrix>),
}

/// A projection `x W^T (+ b)`; biases are Qwen2's (q/k/v) or Llama's `attention_bias`. `W` is
/// an f32 tensor (`QMatMul::Tensor`, a plain matmul) or a quantized GGUF matrix.
#[derive(Debug)]
struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(weight: Tensor) -> Self {
        Self {
            weight: Weight::Candle(QMatMul::Tensor(weight)),
            bias: None,
        }
    }

    /// Bytes of this projection's weights, unless they are `shared` (a tied embedding).
    fn size_bytes(&self, shared: &Embedding) -> u64 {
        let w = match (&self.weight, shared) {
            (Weight::Quant(m), Embedding::Quant(e)) if Arc::ptr_eq(m, e) => 0,
            (Weight::Quant(m), _) => m.size_bytes() as u64,
            (Weight::Candle(QMatMul::QTensor(q)), _) => q.storage_size_in_bytes() as u64,
            (Weight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)), _) => {
                if matches!(shared, Embedding::Dense(s) if s.id() == t.id()) {
                    0
                } else {
                    tensor_bytes(t)
                }
            }
        };
        w + self.bias.as_ref().map_or(0, tensor_bytes)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            Weight::Candle(w) => w.forward(x)?,
            Weight::Quant(m) => quant_forward(m, x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// `x W^T` with hub-quant: `x` (`…, cols`) quantized to 8 bits per 32, one threaded matmul.
fn quant_forward(m: &QMatrix, x: &Tensor) -> candle_core::Result<Tensor> {
    let [y] = quant_forward_many([m], x)?;
    Ok(y)
}

/// `x W_i^T` for several hub-quant matrices of one input width: `x` quantized once, and one
/// split over the pool for all their rows ([`hub_quant::matmul_many`]).
fn quant_forward_many<const N: usize>(
    ms: [&QMatrix; N],
    x: &Tensor,
) -> candle_core::Result<[Tensor; N]> {
    let mut dims = x.dims().to_vec();
    let cols = dims.pop().unwrap_or(0);
    for m in ms {
        if cols != m.cols() {
            candle_core::bail!("quantized matmul: input width {cols}, weight {}", m.cols());
        }
    }
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let acts = QActs::quantize(&xs, cols);
    let mut ys: [Vec<f32>; N] = ms.map(|m| vec![0f32; acts.rows() * m.rows()]);
    {
        let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(Vec::as_mut_slice).collect();
        hub_quant::matmul_many(&ms, &acts, &mut outs);
    }
    let mut out = Vec::with_capacity(N);
    for (m, y) in ms.iter().zip(ys) {
        let mut d = dims.clone();
        d.push(m.rows());
        out.push(Tensor::from_vec(y, d, x.device())?);
    }
    out.try_into()
        .map_err(|_| candle_core::Error::Msg("quantized matmul: output count".into()))
}

/// Projections of one input: one grouped hub-quant matmul when every weight is a hub-quant
/// matrix (a layer's q/k/v, gate/up), else each on its own. Biases added per projection.
fn forward_many<const N: usize>(ls: [&Linear; N], x: &Tensor) -> candle_core::Result<[Tensor; N]> {
    let quant: Option<Vec<&QMatrix>> = ls
        .iter()
        .map(|l| match &l.weight {
            Weight::Quant(m) => Some(&**m),
            Weight::Candle(_) => None,
        })
        .collect();
    let ys: Vec<Tensor> = match quant.and_then(|q| <[&QMatrix; N]>::try_from(q).ok()) {
        Some(ms) => quant_forward_many(ms, x)?
            .into_iter()
            .zip(ls)
            .map(|(y, l)| match &l.bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            })
            .collect::<candle_core::Result<_>>()?,
        None => ls
            .iter()
            .map(|l| l.forward(x))
            .collect::<candle_core::Result<_>>()?,
    };
    ys.try_into()
        .map_err(|_| candle_core::Error::Msg("projection count".into()))
}

/// The token embedding table: f32, or the file's quantized rows (dequantized per lookup).
#[derive(Debug)]
enum Embedding {
    Dense(Tensor),
    Quant(Arc<QMatrix>),
}

impl Embedding {
    /// Rows `ids` (checked against the vocabulary by the caller) as a `(len, hidden)` tensor.
    fn lookup(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Embedding::Dense(t) => t.index_select(&Tensor::new(ids, device)?, 0),
            Embedding::Quant(m) => {
                let h = m.cols();
                let mut out = vec![0f32; ids.len() * h];
                for (row, &id) in out.chunks_exact_mut(h).zip(ids) {
                    m.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(out, (ids.len(), h), device)
            }
        }
    }

    fn size_bytes(&self) -> u64 {
        match self {
            Embedding::Dense(t) => tensor_bytes(t),
            Embedding::Quant(m) => m.size_bytes() as u64,
        }
    }
}

/// A tensor's bytes at load: read into memory, or a range of the mapped file.
enum Raw {
    Owned(Vec<u8>),
    Mapped(std::ops::Range<usize>),
}

/// hub-quant's format for a GGUF dtype, if it has kernels for it.
fn quant_type(dtype: GgmlDType) -> Option<QType> {
    match dtype {
        GgmlDType::Q4_0 => Some(QType::Q4_0),
        GgmlDType::Q4_1 => Some(QType::Q4_1),
        GgmlDType::Q5_0 => Some(QType::Q5_0),
        GgmlDType::Q5_1 => Some(QType::Q5_1),
        GgmlDType::Q8_0 => Some(QType::Q8_0),
        GgmlDType::Q4K => Some(QType::Q4K),
        GgmlDType::Q5K => Some(QType::Q5K),
        GgmlDType::Q6K => Some(QType::Q6K),
        _ => None,
    }
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// Named checkpoint tensors being moved into the model (checked, converted to f32).
struct Weights<'a> {
    tensors: HashMap<String, Tensor>,
    device: &'a Device,
}

impl Weights<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| LoadError::MissingTensor { name: name.into() })?;
        if t.dims() != shape {
            return Err(LoadError::Shape {
                name: name.into(),
                expected: shape.to_vec(),
                actual: t.dims().to_vec(),
            });
        }
        match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => {}
            other => {
                return Err(LoadError::DType {
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        }
        t.to_dtype(DType::F32)
            .and_then(|t| t.to_device(self.device))
            .map_err(tensor_err)
    }

    /// `{prefix}.weight` and, when present (or `require_bias`), `{prefix}.bias`.
    fn linear(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
        require_bias: bool,
    ) -> Result<Linear, LoadError> {
        let weight = self.take(&format!("{prefix}.weight"), &[out, inp])?;
        let bias_name = format!("{prefix}.bias");
        let bias = if require_bias || self.tensors.contains_key(&bias_name) {
            Some(self.take(&bias_name, &[out])?)
        } else {
            None
        };
        Ok(Linear {
            weight: Weight::Candle(QMatMul::Tensor(weight)),
            bias,
        })
    }
}

/// How [`Llama::from_gguf`] holds quantized projection matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufWeights {
    /// Keep them quantized, in the file's blocks: hub-quant's kernels for Q4_0, Q4_1, Q5_0,
    /// Q5_1, Q8_0, Q4_K, Q5_K and Q6_K (the embedding table too), candle's `QMatMul` for other types. The
    /// file's memory footprint; activations are quantized to 8 bits per matmul, as llama.cpp
    /// does.
    Quantized,
    /// Keep them quantized with candle's `QMatMul` for every type (the embedding table
    /// dequantized to f32): the baseline ADR 0014 measured hub-quant against.
    QuantizedCandle,
    /// Dequantize to f32 at load: ~4–8× the memory, the same f32 matmuls as safetensors
    /// checkpoints. On CPU builds without `-C target-cpu` AVX flags candle's quantized dot
    /// products run their scalar fallback, and this is ~20× faster (SmolLM2-135M: 0.5 s vs 10 s
    /// for a 20-token chat answer, 2 cores).
    DequantizeToF32,
}

/// A loaded Llama-family model (weights only; the cache is a separate [`KvStore`]).
#[derive(Debug)]
pub struct Llama {
    config: LlamaConfig,
    device: Device,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
}

fn tensor_err(e: candle_core::Error) -> LoadError {
    LoadError::Tensor(e)
}

impl Llama {
    /// Loads `config.json` and `model.safetensors` (or the shards named by
    /// `model.safetensors.index.json`) from a model directory.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self, LoadError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| LoadError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config = LlamaConfig::from_json(&text).map_err(|source| LoadError::Config {
            path: config_path,
            source,
        })?;
        let index = dir.join("model.safetensors.index.json");
        let files =
            if index.exists() {
                let text = std::fs::read_to_string(&index).map_err(|source| LoadError::Io {
                    path: index.clone(),
                    source,
                })?;
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|_| LoadError::Index {
                        path: index.clone(),
                    })?;
                let map = value.get("weight_map").and_then(|m| m.as_object()).ok_or(
                    LoadError::Index {
                        path: index.clone(),
                    },
                )?;
                let mut files: Vec<PathBuf> = map
                    .values()
                    .filter_map(|f| f.as_str())
                    .map(|f| dir.join(f))
                    .collect();
                files.sort();
                files.dedup();
                files
            } else {
                vec![dir.join("model.safetensors")]
            };
        Self::from_safetensors(config, &files, device)
    }

    /// Loads weights from safetensors files (f32, f16 or bf16; converted to f32).
    pub fn from_safetensors(
        config: LlamaConfig,
        files: &[PathBuf],
        device: &Device,
    ) -> Result<Self, LoadError> {
        let mut tensors = HashMap::new();
        for path in files {
            let loaded = candle_core::safetensors::load(path, device).map_err(|source| {
                LoadError::Safetensors {
                    path: path.clone(),
                    source,
                }
            })?;
            tensors.extend(loaded);
        }
        Self::from_tensors(config, tensors, device)
    }

    /// Builds the model from named tensors (Hugging Face names).
    pub fn from_tensors(
        config: LlamaConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self, LoadError> {
        config.validate().map_err(|source| LoadError::Config {
            path: PathBuf::from("<config>"),
            source,
        })?;
        let h = config.hidden_size;
        let d = config.head_dim();
        let nq = config.num_attention_heads * d;
        let nkv = config.num_kv_heads() * d;
        let inter = config.intermediate_size;
        let mut w = Weights { tensors, device };
        let bias = config.attention_bias;
        let qk_norm = config.requires_qk_norm();
        let embed = w.take("model.embed_tokens.weight", &[config.vocab_size, h])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut head_norm = |which: &str| {
                let name = format!("{p}.self_attn.{which}_norm.weight");
                if qk_norm || w.tensors.contains_key(&name) {
                    w.take(&name, &[d]).map(Some)
                } else {
                    Ok(None)
                }
            };
            let (q_norm, k_norm) = (head_norm("q")?, head_norm("k")?);
            layers.push(Layer {
                q_norm,
                k_norm,
                input_norm: w.take(&format!("{p}.input_layernorm.weight"), &[h])?,
                q: w.linear(&format!("{p}.self_attn.q_proj"), nq, h, bias)?,
                k: w.linear(&format!("{p}.self_attn.k_proj"), nkv, h, bias)?,
                v: w.linear(&format!("{p}.self_attn.v_proj"), nkv, h, bias)?,
                o: w.linear(&format!("{p}.self_attn.o_proj"), h, nq, bias)?,
                post_norm: w.take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate: Linear::new(w.take(&format!("{p}.mlp.gate_proj.weight"), &[inter, h])?),
                up: Linear::new(w.take(&format!("{p}.mlp.up_proj.weight"), &[inter, h])?),
                down: Linear::new(w.take(&format!("{p}.mlp.down_proj.weight"), &[h, inter])?),
            });
        }
        let norm = w.take("model.norm.weight", &[h])?;
        let lm_head = Linear::new(if config.tie_word_embeddings {
            embed.clone()
        } else {
            w.take("lm_head.weight", &[config.vocab_size, h])?
        });
        let (cos, sin) = rope_tables(&config, device)?;
        Ok(Self {
            config,
            device: device.clone(),
            embed: Embedding::Dense(embed),
            layers,
            norm,
            lm_head,
            cos,
            sin,
        })
    }

    /// Loads a GGUF checkpoint (`general.architecture = llama`): config from `llama.*`
    /// metadata, llama.cpp tensor names (`token_embd`, `blk.N.attn_q`, …, `output_norm`,
    /// `output` or tied embeddings). Quantized matrices stay quantized (see the module docs).
    pub fn from_gguf(
        gguf: &GgufFile,
        weights: GgufWeights,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let config = gguf.llama_config()?;
        let mut reader = gguf.reader()?;
        let h = config.hidden_size;
        let d = config.head_dim();
        let (nh, nkv) = (config.num_attention_heads, config.num_kv_heads());
        let inter = config.intermediate_size;
        // hub-quant keeps the file's blocks as they are (CPU only: its kernels run on the host),
        // read in place from the file mapped into memory, except the rows of attn_q/attn_k,
        // which are reordered at load (RoPE's pairing, see `gguf`).
        let ours = |dtype| {
            weights == GgufWeights::Quantized && device.is_cpu() && quant_type(dtype).is_some()
        };
        let map = if weights == GgufWeights::Quantized && device.is_cpu() {
            Some(gguf.map()?)
        } else {
            None
        };
        let mut read = |name: &str, shape: &[usize], rope_heads: Option<usize>| {
            if map.is_some() && rope_heads.is_none() {
                let t = gguf.locate(name, shape)?;
                if ours(t.dtype) {
                    return Ok((t.dtype, Raw::Mapped(t.range), shape.to_vec()));
                }
            }
            gguf.read_raw(&mut reader, name, shape, rope_heads)
                .map(|(dtype, data)| (dtype, Raw::Owned(data), shape.to_vec()))
        };
        let gguf_err = |name: &str, source| {
            LoadError::from(GgufError::Tensor {
                path: gguf.path().to_owned(),
                name: name.into(),
                source: Box::new(source),
            })
        };
        // Owned bytes of a tensor (a copy out of the mapping only for a type candle computes).
        let owned = |raw: Raw| -> Vec<u8> {
            match (raw, &map) {
                (Raw::Owned(data), _) => data,
                (Raw::Mapped(range), Some(map)) => AsRef::<[u8]>::as_ref(&**map)[range].to_vec(),
                (Raw::Mapped(_), None) => unreachable!("mapped ranges come from the map"),
            }
        };
        let qtensor = |(dtype, data, shape): (GgmlDType, Raw, Vec<usize>), name: &str| {
            let data = owned(data);
            ggml_file::qtensor_from_ggml(dtype, &data, shape, device).map_err(|e| gguf_err(name, e))
        };
        let dense = |raw, name: &str| {
            qtensor(raw, name)?
                .dequantize(device)
                .map_err(|e| gguf_err(name, e))
        };
        let qmatrix = |(dtype, data, shape): (GgmlDType, Raw, Vec<usize>), name: &str| {
            let qtype = quant_type(dtype).expect("checked by `ours`");
            match (data, &map) {
                (Raw::Mapped(range), Some(map)) => {
                    let buf: hub_quant::SharedBytes = map.clone();
                    QMatrix::shared(qtype, shape[0], shape[1], buf, range)
                }
                (data, _) => QMatrix::new(qtype, shape[0], shape[1], owned(data)),
            }
            .map(Arc::new)
            .map_err(|e| gguf_err(name, candle_core::Error::Msg(e.to_string())))
        };
        let matmul = |raw: (GgmlDType, Raw, Vec<usize>), name: &str| {
            let dtype = raw.0;
            if ours(dtype) {
                return Ok(Linear {
                    weight: Weight::Quant(qmatrix(raw, name)?),
                    bias: None,
                });
            }
            // Built directly, not with `QMatMul::from_qtensor`, which reads CANDLE_DEQUANTIZE_ALL
            // from the environment; float matrices are always plain f32 matmuls.
            let float = matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
            let q = qtensor(raw, name)?;
            let weight = if weights == GgufWeights::DequantizeToF32 || float {
                q.dequantize(device).map(QMatMul::Tensor)
            } else {
                Ok(QMatMul::QTensor(Arc::new(q)))
            };
            weight
                .map(|weight| Linear {
                    weight: Weight::Candle(weight),
                    bias: None,
                })
                .map_err(|e| gguf_err(name, e))
        };
        let embed_raw = read("token_embd.weight", &[config.vocab_size, h], None)?;
        let embed = if ours(embed_raw.0) {
            Embedding::Quant(qmatrix(embed_raw, "token_embd.weight")?)
        } else {
            Embedding::Dense(dense(embed_raw, "token_embd.weight")?)
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("blk.{i}");
            let mut lin = |suffix: &str, shape: &[usize], rope: Option<usize>| {
                let name = format!("{p}.{suffix}.weight");
                matmul(read(&name, shape, rope)?, &name)
            };
            let q = lin("attn_q", &[nh * d, h], Some(nh))?;
            let k = lin("attn_k", &[nkv * d, h], Some(nkv))?;
            let v = lin("attn_v", &[nkv * d, h], None)?;
            let o = lin("attn_output", &[h, nh * d], None)?;
            let gate = lin("ffn_gate", &[inter, h], None)?;
            let up = lin("ffn_up", &[inter, h], None)?;
            let down = lin("ffn_down", &[h, inter], None)?;
            let mut norm = |suffix: &str| {
                let name = format!("{p}.{suffix}.weight");
                dense(read(&name, &[h], None)?, &name)
            };
            layers.push(Layer {
                input_norm: norm("attn_norm")?,
                q_norm: None,
                k_norm: None,
                post_norm: norm("ffn_norm")?,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
            });
        }
        let norm = dense(
            read("output_norm.weight", &[h], None)?,
            "output_norm.weight",
        )?;
        // Tied embeddings: the head reuses token_embd, kept quantized for the matmul (one copy
        // when hub-quant holds the table).
        let lm_head = match (&embed, config.tie_word_embeddings) {
            (Embedding::Quant(m), true) => Linear {
                weight: Weight::Quant(Arc::clone(m)),
                bias: None,
            },
            _ => {
                let head_name = if config.tie_word_embeddings {
                    "token_embd.weight"
                } else {
                    "output.weight"
                };
                matmul(read(head_name, &[config.vocab_size, h], None)?, head_name)?
            }
        };
        let (cos, sin) = rope_tables(&config, device)?;
        Ok(Self {
            config,
            device: device.clone(),
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes held by the weights (a tied embedding counted once).
    pub fn weight_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|p| p.size_bytes(&self.embed))
                    .sum::<u64>()
                    + tensor_bytes(&l.input_norm)
                    + tensor_bytes(&l.post_norm)
                    + [&l.q_norm, &l.k_norm]
                        .iter()
                        .filter_map(|n| n.as_ref())
                        .map(tensor_bytes)
                        .sum::<u64>()
            })
            .sum();
        self.embed.size_bytes()
            + layers
            + tensor_bytes(&self.norm)
            + self.lm_head.size_bytes(&self.embed)
    }

    /// Bytes of a KV store of `num_blocks` blocks of `block_size` tokens for this model (what
    /// [`Llama::new_kv_store`] allocates: K and V, f32, every layer).
    pub fn kv_store_bytes(&self, num_blocks: usize, block_size: usize) -> u64 {
        let c = &self.config;
        (2 * c.num_hidden_layers * num_blocks * block_size * c.num_kv_heads() * c.head_dim() * 4)
            as u64
    }

    /// A KV store shaped for this model.
    pub fn new_kv_store(
        &self,
        num_blocks: usize,
        block_size: usize,
    ) -> candle_core::Result<KvStore> {
        KvStore::new(
            self.config.num_hidden_layers,
            num_blocks,
            block_size,
            self.config.num_kv_heads(),
            self.config.head_dim(),
            &self.device,
        )
    }

    fn check_batch(&self, kv: &KvStore, batch: &[BatchItem<'_>]) -> Result<(), ForwardError> {
        attention::check_batch(batch, &self.config, kv, self.layers.len(), "model")
            .map_err(ForwardError::InvalidBatch)
    }

    /// Runs one step over a ragged batch: writes the new tokens' K/V into their cache slots and
    /// returns, per item, the logits of its last token (or all its tokens when `all_logits`).
    pub fn forward(
        &self,
        kv: &KvStore,
        batch: &[BatchItem<'_>],
    ) -> Result<Vec<SeqLogits>, ForwardError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.check_batch(kv, batch)?;
        let cfg = &self.config;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let dev = &self.device;

        let step = StepLayout::new(batch, kv.block_size, nh / nkv, &self.cos, &self.sin, dev)
            .map_err(|e| match e {
                StepLayoutError::BlockTable => ForwardError::InvalidBatch(e.to_string()),
                StepLayoutError::Tensor(e) => e.into(),
            })?;
        let total = step.total();
        let offsets = &step.offsets;
        let eps = cfg.rms_norm_eps as f32;
        let mut x = self.embed.lookup(&step.ids, dev)?;
        for (layer, (k_cache, v_cache)) in self.layers.iter().zip(&kv.layers) {
            let residual = &x;
            let h = candle_nn::ops::rms_norm(&x, &layer.input_norm, eps)?;
            let [q, k, v] = forward_many([&layer.q, &layer.k, &layer.v], &h)?;
            let q = q.reshape((1, total, nh, hd))?;
            let k = k.reshape((1, total, nkv, hd))?;
            let v = v.reshape((total, nkv, hd))?;
            let heads = step.attend(
                q,
                k,
                v,
                (layer.q_norm.as_ref(), layer.k_norm.as_ref(), eps),
                (k_cache, v_cache),
                (nh, nkv, hd),
            )?;
            let attn = layer.o.forward(&heads)?;
            let x1 = (residual + attn)?;
            let h = candle_nn::ops::rms_norm(&x1, &layer.post_norm, eps)?;
            let [gate, up] = forward_many([&layer.gate, &layer.up], &h)?;
            let gate = candle_nn::ops::silu(&gate)?;
            let mlp = layer.down.forward(&(gate * up)?)?;
            x = (x1 + mlp)?;
        }

        // Only the rows somebody reads go through the (vocab-sized) head.
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
        let x =
            candle_nn::ops::rms_norm(&x.index_select(&rows, 0)?.contiguous()?, &self.norm, eps)?;
        let logits = self.lm_head.forward(&x)?;
        let vocab = logits.dim(D::Minus1)?;
        let mut flat = logits.flatten_all()?.to_vec1::<f32>()?.into_iter();
        Ok(counts
            .into_iter()
            .map(|c| SeqLogits {
                vocab,
                data: flat.by_ref().take(c * vocab).collect(),
            })
            .collect())
    }
}

/// cos/sin tables `(max_position_embeddings, head_dim / 2)`, computed in f64 from
/// [`LlamaConfig::rope_inv_freq`] (rope scaling included).
pub(crate) fn rope_tables(
    cfg: &LlamaConfig,
    device: &Device,
) -> Result<(Tensor, Tensor), LoadError> {
    let half = cfg.head_dim() / 2;
    let max = cfg.max_position_embeddings;
    let inv = cfg.rope_inv_freq().map_err(|source| LoadError::Config {
        path: PathBuf::from("<config>"),
        source,
    })?;
    let mut cos = Vec::with_capacity(max * half);
    let mut sin = Vec::with_capacity(max * half);
    for p in 0..max {
        for f in &inv {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (max, half), device).map_err(tensor_err)?,
        Tensor::from_vec(sin, (max, half), device).map_err(tensor_err)?,
    ))
}
