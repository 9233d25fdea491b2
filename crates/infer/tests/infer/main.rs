//! Integration tests of hub-infer: one binary (STYLE.md), modules per concern.
//!
//! The model is a tiny random Llama written by [`fixture`] (no downloads); [`reference`]
//! compares our paged, batched forward pass with an independent NumPy implementation.

mod engine;
mod fixture;
mod gguf;
mod minilm;
mod reference;
mod shard;
mod smollm2;
