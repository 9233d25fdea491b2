//! What the test fixtures of both model kinds share (`serve::fixture`, a tiny Llama;
//! `bert::fixture`, a tiny BERT): the word-level vocabulary and tokenizer, and random
//! safetensors. Only with the `test-support` feature (and in this crate's tests).

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::sampling::Rng;

pub const VOCAB: usize = 128;

/// Words of the vocabulary after the specials, in id order from 3.
const WORDS: [&str; 4] = ["user", "assistant", "system", ":"];

/// The word of token `id` (`w{id}` for ids past the named words).
pub fn word(id: u32) -> String {
    match id {
        0 => "<unk>".into(),
        1 => "<s>".into(),
        2 => "</s>".into(),
        i if (i as usize) < 3 + WORDS.len() => WORDS[i as usize - 3].into(),
        i => format!("w{i}"),
    }
}

/// A word-level `tokenizer.json` (whitespace pre-tokenizer; decoding joins words with spaces).
pub fn tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..VOCAB as u32).map(|i| (word(i), i.into())).collect();
    let added: Vec<_> = (0..3u32)
        .map(|i| {
            serde_json::json!({"id": i, "content": word(i), "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// A safetensors file of f32 tensors `(name, shape, scale, offset)`, each value
/// `offset + scale * u` with `u` uniform in [-1, 1) from a seeded generator.
pub fn random_safetensors(shapes: Vec<(String, Vec<usize>, f64, f64)>, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let tensors: HashMap<String, Tensor> = shapes
        .into_iter()
        .map(|(name, shape, scale, offset)| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| (offset + scale * (2.0 * rng.next_f64() - 1.0)) as f32)
                .collect();
            let t = Tensor::from_vec(data, shape, &Device::Cpu).expect("shape matches data");
            (name, t)
        })
        .collect();
    // candle writes safetensors to files only: go through a unique temporary file.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "hub-infer-fixture-{}-{n}.safetensors",
        std::process::id()
    ));
    candle_core::safetensors::save(&tensors, &path).expect("write fixture safetensors");
    let bytes = std::fs::read(&path).expect("read fixture safetensors");
    let _ = std::fs::remove_file(&path);
    bytes
}
