//! hubmesh's inference engine: a Llama-family forward pass of our own over a paged KV cache,
//! token sampling, and a continuous-batching scheduler, on candle.
//!
//! Place in the crate graph: `infer ← models ← gateway ← node`. It depends on none of our
//! crates and must not: it takes a model directory (`config.json` + safetensors) or a GGUF
//! file, and turns text into token ids and token ids into text. Model lifecycle (which
//! commit, materializing files, fetching weights from the mesh) is `hub-models`'; the
//! OpenAI/TGI/HF HTTP APIs are the gateway's. Test fixtures are behind `test-support`.
//!
//! Modules, bottom-up:
//! - [`config`]: the `config.json` subset we implement (and rejection of what we do not);
//! - [`gguf`]: GGUF metadata, the Llama config in it, bounds-checked tensor reads;
//! - [`tokenizer`]: our [`tokenizer::Tokenizer`] trait on HF `tokenizers` (from
//!   `tokenizer.json` or rebuilt from GGUF metadata) and streaming detokenization;
//! - [`chat`]: Jinja chat templates (`minijinja`);
//! - [`kv_cache`]: block allocator (free list + block tables) and the K/V slot tensors;
//! - [`model`]: the packed ragged-batch forward pass (RoPE per token, RMSNorm, SwiGLU, GQA),
//!   from safetensors (f32) or GGUF (weights kept in the file's blocks, hub-quant's kernels);
//! - [`sampling`]: greedy / temperature / top-k / top-p / repetition penalty, seeded;
//! - [`scheduler`]: the vLLM-V1-style token-budget state machine (no threads, no clocks);
//! - [`engine`]: ties them together behind `add_request` / `cancel` / `step`;
//! - [`bert`]: a BERT encoder with sentence-transformers pooling, for embeddings;
//! - [`shard`]: one model split over several workers, tensor- and pipeline-parallel, behind
//!   the same [`engine::StepModel`] as the single-node [`model::Llama`];
//! - [`serve`]: an engine thread per model behind a bounded channel, token streams with stop
//!   strings and cancellation on drop, and a registry of warm models (LRU);
//! - [`threads`]: the engine pool (the thread budget) every served forward pass runs on.
//!
//! CPU by default; the `cuda` feature forwards to candle's CUDA backend (needs `nvcc` to
//! build). All weights are computed in f32 (f16/bf16 checkpoints are converted on load).
//!
//! ```no_run
//! use hub_infer::engine::{Engine, EngineConfig, GenerateRequest};
//! use hub_infer::model::Llama;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Llama::from_dir("models/smollm2".as_ref(), &candle_core::Device::Cpu)?;
//! let mut engine = Engine::new(model, EngineConfig::default())?;
//! engine.add_request(GenerateRequest::greedy(1, vec![1, 9690, 28], 16))?;
//! while engine.has_work() {
//!     for event in engine.step()? {
//!         println!("request {} token {} finish {:?}", event.id, event.token, event.finish);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod bert;
pub mod chat;
pub mod config;
pub mod engine;
pub mod gguf;
pub mod kv_cache;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod serve;
pub mod shard;
#[cfg(any(test, feature = "test-support"))]
mod testgen;
pub mod threads;
pub mod tokenizer;
