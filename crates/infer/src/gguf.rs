//! GGUF files (llama.cpp's single-file checkpoints): metadata, the Llama config in it, and
//! bounds-checked tensor reads. The weights go into *our* forward pass ([`crate::model`]);
//! candle-transformers' `quantized_llama` is not used (its cache cannot page or batch).
//!
//! Parsing is candle's `quantized::gguf_file::Content::read`, which since 0.11.1 bounds string
//! and array lengths, counts and nesting by the file size. On top of it:
//! - a panic inside it (e.g. `general.alignment = 0` divides by zero) is caught and returned
//!   as [`GgufError::Malformed`]: a bad file is an error, never a crash;
//! - tensor reads check dimensions, the dtype's block layout and `offset + size` against the
//!   file length with checked arithmetic before allocating anything;
//! - the metadata → [`LlamaConfig`] conversion caps the context length (it sizes the RoPE
//!   tables) and requires the tensor shapes to agree with it.
//!
//! Known residual: candle materialises metadata arrays as `Vec<Value>` (~32 bytes per element),
//! so a hostile file can make the parse use ~30× its own size in memory (bounded, not huge).
//!
//! llama.cpp's converter *permutes* the rows of `attn_q`/`attn_k` so that RoPE rotates adjacent
//! pairs (GPT-J style) instead of the two halves of each head (Hugging Face style, which our
//! forward pass uses). [`GgufFile::read_tensor`] undoes that permutation on the raw bytes, row
//! by row — quantization blocks run along a row, so reordering rows is exact for any dtype.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor, ggml_file};

use crate::config::{ConfigError, LlamaConfig, TokenIds};

/// Largest context length accepted from a file (it sizes the RoPE tables).
pub const MAX_CONTEXT_LENGTH: usize = 1 << 20;

/// Failure to read a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed gguf {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("gguf {path}: missing metadata {key}")]
    MissingKey { path: PathBuf, key: String },
    #[error("gguf {path}: unsupported: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("gguf {path}: config")]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("gguf {path}: missing tensor {name}")]
    MissingTensor { path: PathBuf, name: String },
    #[error("gguf {path}: tensor {name}")]
    Tensor {
        path: PathBuf,
        name: String,
        #[source]
        source: Box<candle_core::Error>,
    },
}

/// An opened GGUF file: parsed metadata and tensor directory; tensors are read on demand.
/// A tensor's place in the file ([`GgufFile::locate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorBytes {
    pub dtype: GgmlDType,
    /// Byte range in the file.
    pub range: Range<usize>,
    pub rows: usize,
    pub row_bytes: usize,
}

pub mod mapped {
    //! A read-only memory map of a model file.
    //!
    //! `unsafe` because a mapping's bytes change if the file is written while mapped. The
    //! files mapped here are materialized model files (hub-models writes a commit's file once,
    //! under a new name, and renames it into place; nothing writes it afterwards) or a bench's
    //! input; a truncated file would raise SIGBUS, which a rename-into-place never causes.
    #![allow(unsafe_code)]

    use std::fs::File;
    use std::path::Path;

    #[derive(Debug)]
    pub struct Mapped(memmap2::Mmap);

    impl Mapped {
        pub fn open(path: &Path) -> std::io::Result<Self> {
            let file = File::open(path)?;
            // SAFETY: see the module docs (the file is not modified while mapped).
            unsafe { memmap2::Mmap::map(&file) }.map(Self)
        }
    }

    impl AsRef<[u8]> for Mapped {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
}

pub struct GgufFile {
    path: PathBuf,
    content: Content,
    file_len: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("metadata_keys", &self.content.metadata.len())
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses the header, metadata and tensor directory.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::new(file);
        let parsed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)));
        let malformed = |reason: String| GgufError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let content = match parsed {
            Ok(Ok(content)) => content,
            Ok(Err(e)) => return Err(malformed(e.to_string())),
            Err(_) => return Err(malformed("parser panicked".into())),
        };
        if content.tensor_data_offset > file_len {
            return Err(malformed(
                "tensor data starts past the end of the file".into(),
            ));
        }
        Ok(Self {
            path: path.to_owned(),
            content,
            file_len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A string metadata value.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.meta(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A non-negative integer metadata value of any integer type.
    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        int_value(self.meta(key)?).and_then(|v| u64::try_from(v).ok())
    }

    /// A float (or integer) metadata value.
    pub fn meta_f64(&self, key: &str) -> Option<f64> {
        match self.meta(key)? {
            Value::F32(v) => Some(f64::from(*v)),
            Value::F64(v) => Some(*v),
            v => int_value(v).map(|i| i as f64),
        }
    }

    pub fn meta_bool(&self, key: &str) -> Option<bool> {
        match self.meta(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// An array of strings (None if the key is absent or any element is not a string).
    pub fn meta_str_array(&self, key: &str) -> Option<Vec<&str>> {
        match self.meta(key)? {
            Value::Array(vs) => vs
                .iter()
                .map(|v| match v {
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// An array of integers.
    pub fn meta_int_array(&self, key: &str) -> Option<Vec<i64>> {
        match self.meta(key)? {
            Value::Array(vs) => vs.iter().map(int_value).collect(),
            _ => None,
        }
    }

    /// Shape (row-major, outermost first) and dtype of a tensor.
    pub fn tensor_info(&self, name: &str) -> Option<(Vec<usize>, GgmlDType)> {
        let info = self.content.tensor_infos.get(name)?;
        Some((info.shape.dims().to_vec(), info.ggml_dtype))
    }

    fn err_missing(&self, key: &str) -> GgufError {
        GgufError::MissingKey {
            path: self.path.clone(),
            key: key.into(),
        }
    }

    /// The Llama configuration in `llama.*` metadata; `vocab_size` and tied embeddings are
    /// taken from the tensors (`token_embd`, `output`).
    pub fn llama_config(&self) -> Result<LlamaConfig, GgufError> {
        let unsupported = |reason: String| GgufError::Unsupported {
            path: self.path.clone(),
            reason,
        };
        let arch = self
            .meta_str("general.architecture")
            .ok_or_else(|| self.err_missing("general.architecture"))?;
        if arch != "llama" {
            return Err(unsupported(format!("general.architecture = {arch:?}")));
        }
        let usize_key = |key: &str| -> Result<usize, GgufError> {
            let v = self.meta_u64(key).ok_or_else(|| self.err_missing(key))?;
            usize::try_from(v).map_err(|_| unsupported(format!("{key} = {v}")))
        };
        let hidden_size = usize_key("llama.embedding_length")?;
        let heads = usize_key("llama.attention.head_count")?;
        let kv_heads = match self.meta_u64("llama.attention.head_count_kv") {
            Some(_) => usize_key("llama.attention.head_count_kv")?,
            None => heads,
        };
        let context = usize_key("llama.context_length")?;
        if context == 0 || context > MAX_CONTEXT_LENGTH {
            return Err(unsupported(format!(
                "llama.context_length = {context} (at most {MAX_CONTEXT_LENGTH})"
            )));
        }
        let head_dim = match self.meta_u64("llama.attention.key_length") {
            Some(_) => Some(usize_key("llama.attention.key_length")?),
            None => None,
        };
        if let Some(rope_dims) = self.meta_u64("llama.rope.dimension_count") {
            let expect = head_dim.unwrap_or(hidden_size / heads.max(1));
            if rope_dims as usize != expect {
                return Err(unsupported(format!(
                    "partial rotary: llama.rope.dimension_count {rope_dims}, head size {expect}"
                )));
            }
        }
        if let Some(kind) = self.meta_str("llama.rope.scaling.type")
            && kind != "none"
        {
            return Err(unsupported(format!("llama.rope.scaling.type = {kind:?}")));
        }
        // llama.cpp stores Llama 3.1 rope scaling as per-frequency divisors in `rope_freqs`, and
        // Qwen3-style per-head q/k norms as `attn_{q,k}_norm`; the GGUF path applies neither, so
        // such files are refused rather than silently computed wrong.
        for name in [
            "rope_freqs.weight",
            "blk.0.attn_q_norm.weight",
            "blk.0.attn_k_norm.weight",
        ] {
            if self.tensor_info(name).is_some() {
                return Err(unsupported(format!(
                    "tensor {name} (not implemented for GGUF)"
                )));
            }
        }
        let (embd_shape, _) =
            self.tensor_info("token_embd.weight")
                .ok_or_else(|| GgufError::MissingTensor {
                    path: self.path.clone(),
                    name: "token_embd.weight".into(),
                })?;
        let [vocab_size, embd_hidden] = embd_shape[..] else {
            return Err(unsupported(format!("token_embd shape {embd_shape:?}")));
        };
        if embd_hidden != hidden_size {
            return Err(unsupported(format!(
                "token_embd width {embd_hidden} != embedding_length {hidden_size}"
            )));
        }
        let (ffn_shape, _) =
            self.tensor_info("blk.0.ffn_gate.weight")
                .ok_or_else(|| GgufError::MissingTensor {
                    path: self.path.clone(),
                    name: "blk.0.ffn_gate.weight".into(),
                })?;
        let intermediate_size = match self.meta_u64("llama.feed_forward_length") {
            Some(_) => usize_key("llama.feed_forward_length")?,
            None => ffn_shape[0],
        };
        let config = LlamaConfig {
            hidden_size,
            intermediate_size,
            num_hidden_layers: usize_key("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim,
            rms_norm_eps: self
                .meta_f64("llama.attention.layer_norm_rms_epsilon")
                .ok_or_else(|| self.err_missing("llama.attention.layer_norm_rms_epsilon"))?,
            rope_theta: self.meta_f64("llama.rope.freq_base").unwrap_or(10_000.0),
            vocab_size,
            tie_word_embeddings: self.tensor_info("output.weight").is_none(),
            max_position_embeddings: context,
            eos_token_id: self
                .meta_u64("tokenizer.ggml.eos_token_id")
                .and_then(|id| u32::try_from(id).ok())
                .map(TokenIds::One),
            bos_token_id: self
                .meta_u64("tokenizer.ggml.bos_token_id")
                .and_then(|id| u32::try_from(id).ok()),
            rope_scaling: None,
            model_type: None,
            attention_bias: false,
            use_sliding_window: None,
            sliding_window: None,
        };
        config.validate().map_err(|source| GgufError::Config {
            path: self.path.clone(),
            source,
        })?;
        Ok(config)
    }

    /// Reads tensor `name`, checking that its shape is `expected`. With `rope_heads =
    /// Some(n)`, undoes llama.cpp's Q/K row permutation for `n` heads (see the module docs).
    pub fn read_tensor(
        &self,
        reader: &mut (impl Read + Seek),
        name: &str,
        expected: &[usize],
        rope_heads: Option<usize>,
        device: &Device,
    ) -> Result<QTensor, GgufError> {
        let (dtype, data) = self.read_raw(reader, name, expected, rope_heads)?;
        ggml_file::qtensor_from_ggml(dtype, &data, expected.to_vec(), device).map_err(|source| {
            GgufError::Tensor {
                path: self.path.clone(),
                name: name.into(),
                source: Box::new(source),
            }
        })
    }

    /// Where a tensor's blocks are in the file, checked against `expected` (its shape) and
    /// the file's length: its dtype, byte range, rows and bytes per row.
    pub fn locate(&self, name: &str, expected: &[usize]) -> Result<TensorBytes, GgufError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                name: name.into(),
            })?;
        let malformed = |reason: String| GgufError::Malformed {
            path: self.path.clone(),
            reason: format!("tensor {name}: {reason}"),
        };
        let dims = info.shape.dims();
        if dims != expected {
            return Err(malformed(format!("shape {dims:?}, expected {expected:?}")));
        }
        let dtype = info.ggml_dtype;
        let row_len = *dims.last().unwrap_or(&1);
        let block = dtype.block_size();
        if block == 0 || !row_len.is_multiple_of(block) {
            return Err(malformed(format!(
                "row of {row_len} elements is not a multiple of the {dtype:?} block of {block}"
            )));
        }
        let rows = dims[..dims.len().saturating_sub(1)]
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| malformed("size overflows".into()))?;
        let row_bytes = (row_len / block)
            .checked_mul(dtype.type_size())
            .ok_or_else(|| malformed("size overflows".into()))?;
        let size = rows
            .checked_mul(row_bytes)
            .ok_or_else(|| malformed("size overflows".into()))?;
        let start = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .ok_or_else(|| malformed("offset overflows".into()))?;
        let end = start
            .checked_add(size as u64)
            .ok_or_else(|| malformed("offset overflows".into()))?;
        if end > self.file_len {
            return Err(malformed(format!(
                "bytes {start}..{end} past the end of the file ({} bytes)",
                self.file_len
            )));
        }
        Ok(TensorBytes {
            dtype,
            // Both within the file's length, which the mapping or a read can address.
            range: start as usize..end as usize,
            rows,
            row_bytes,
        })
    }

    /// The checked raw bytes of a tensor (its blocks, rows un-permuted as in
    /// [`GgufFile::read_tensor`]) and their dtype.
    pub fn read_raw(
        &self,
        reader: &mut (impl Read + Seek),
        name: &str,
        expected: &[usize],
        rope_heads: Option<usize>,
    ) -> Result<(GgmlDType, Vec<u8>), GgufError> {
        let TensorBytes {
            dtype,
            range,
            rows,
            row_bytes,
        } = self.locate(name, expected)?;
        let (start, size) = (range.start as u64, range.len());
        let malformed = |reason: String| GgufError::Malformed {
            path: self.path.clone(),
            reason: format!("tensor {name}: {reason}"),
        };
        let io = |source| GgufError::Io {
            path: self.path.clone(),
            source,
        };
        reader.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut data = vec![0u8; size];
        reader.read_exact(&mut data).map_err(io)?;
        if let Some(heads) = rope_heads {
            data = unpermute_rope_rows(&data, rows, row_bytes, heads)
                .ok_or_else(|| malformed(format!("{rows} rows do not split into {heads} heads")))?;
        }
        Ok((dtype, data))
    }

    /// The whole file mapped read-only into memory, for matrices read in place
    /// ([`hub_quant::QMatrix::shared`]): the page cache holds their bytes once, however many
    /// processes map the file, and nothing is copied at load.
    pub fn map(&self) -> Result<Arc<mapped::Mapped>, GgufError> {
        mapped::Mapped::open(&self.path)
            .map(Arc::new)
            .map_err(|source| GgufError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// A reader positioned anywhere; [`Self::read_tensor`] seeks.
    pub fn reader(&self) -> Result<BufReader<File>, GgufError> {
        File::open(&self.path)
            .map(BufReader::new)
            .map_err(|source| GgufError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

fn int_value(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(v) => i64::from(*v),
        Value::I8(v) => i64::from(*v),
        Value::U16(v) => i64::from(*v),
        Value::I16(v) => i64::from(*v),
        Value::U32(v) => i64::from(*v),
        Value::I32(v) => i64::from(*v),
        Value::U64(v) => i64::try_from(*v).ok()?,
        Value::I64(v) => *v,
        _ => return None,
    })
}

/// Inverse of llama.cpp's `permute(w, n_head)`: GGUF row `h*d + 2j + a` holds Hugging Face row
/// `h*d + a*d/2 + j` (`a` ∈ {0, 1}, `d` the head size). `None` if the rows do not split into
/// heads of even size.
pub fn unpermute_rope_rows(
    data: &[u8],
    rows: usize,
    row_bytes: usize,
    heads: usize,
) -> Option<Vec<u8>> {
    move_rope_rows(data, rows, row_bytes, heads, true)
}

/// llama.cpp's `permute(w, n_head)` (Hugging Face → GGUF row order), for writing test files.
pub fn permute_rope_rows(
    data: &[u8],
    rows: usize,
    row_bytes: usize,
    heads: usize,
) -> Option<Vec<u8>> {
    move_rope_rows(data, rows, row_bytes, heads, false)
}

/// The one row mapping behind both directions: interleaved (GGUF) row `h*d + 2j + a` ↔ split
/// (Hugging Face) row `h*d + a*d/2 + j`.
fn move_rope_rows(
    data: &[u8],
    rows: usize,
    row_bytes: usize,
    heads: usize,
    to_hf: bool,
) -> Option<Vec<u8>> {
    if heads == 0 || !rows.is_multiple_of(heads) || data.len() != rows * row_bytes {
        return None;
    }
    let d = rows / heads;
    if !d.is_multiple_of(2) {
        return None;
    }
    let half = d / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for j in 0..half {
            for a in 0..2 {
                let interleaved = h * d + 2 * j + a;
                let split = h * d + a * half + j;
                let (src, dst) = if to_hf {
                    (interleaved, split)
                } else {
                    (split, interleaved)
                };
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permutation_round_trips() {
        let rows = 12; // 2 heads of 6
        let data: Vec<u8> = (0..rows as u8 * 2).collect();
        let p = permute_rope_rows(&data, rows, 2, 2).unwrap();
        // Head 0, GGUF rows 0,1 = HF rows 0,3.
        assert_eq!(&p[..4], &[0, 1, 6, 7]);
        assert_eq!(unpermute_rope_rows(&p, rows, 2, 2).unwrap(), data);
        assert!(unpermute_rope_rows(&data, rows, 2, 5).is_none());
    }
}
