//! GGUF: the tiny random Llama written as GGUF (llama.cpp names, Q/K rows permuted as
//! llama.cpp's converter does, byte-level BPE tokenizer and a chat template in the metadata),
//! loaded back through our loader and compared with the safetensors model; malformed files.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use hub_infer::chat::{ChatMessage, ChatTemplate};
use hub_infer::config::LlamaConfig;
use hub_infer::gguf::GgufFile;
use hub_infer::kv_cache::BlockAllocator;
use hub_infer::model::{BatchItem, GgufWeights, Llama};
use hub_infer::sampling::Rng;
use hub_infer::tokenizer::{HfTokenizer, IncrementalDecoder, Tokenizer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::fixture::{prompt, tiny_config_json, tiny_weights, weights_for};

/// Hugging Face row `h*d + a*d/2 + j` → GGUF row `h*d + 2j + a` (llama.cpp's `permute`).
fn permute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let rows = t.dim(0)?;
    let d = rows / heads;
    let idx: Vec<u32> = (0..rows)
        .map(|g| {
            let (h, r) = (g / d, g % d);
            (h * d + (r % 2) * d / 2 + r / 2) as u32
        })
        .collect();
    Ok(t.index_select(&Tensor::new(idx, t.device())?, 0)?)
}

/// The byte-level tokens: the 256 ByteLevel alphabet characters, then merges' results, then
/// two control tokens.
fn tokenizer_metadata() -> Vec<(String, Value)> {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    let merges = ["h e", "l l", "he ll", "Ġ w"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    tokens.extend(["<|im_start|>".to_string(), "<|im_end|>".to_string()]);
    let mut types = vec![1i32; tokens.len()];
    let n = types.len();
    types[n - 2] = 3;
    types[n - 1] = 3;
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        (
            "tokenizer.ggml.merges".into(),
            strings(merges.iter().map(|m| m.to_string()).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(n as u32 - 2)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(n as u32 - 1)),
        (
            "tokenizer.chat_template".into(),
            Value::String(
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
            ),
        ),
    ]
}

/// Writes the tiny model (seed 7) as GGUF with matrices in `dtype` (norms stay F32).
fn write_tiny_gguf(path: &Path, dtype: GgmlDType) -> Result<()> {
    write_tiny_gguf_with(path, dtype, Vec::new())
}

/// The tiny GGUF plus `extra` tensors.
fn write_tiny_gguf_with(
    path: &Path,
    dtype: GgmlDType,
    extra: Vec<(String, QTensor)>,
) -> Result<()> {
    write_gguf(path, &tiny_config_json(), &|_| dtype, extra)
}

/// Which dtype a tensor is written in, by its GGUF name.
type DtypeOf<'a> = &'a dyn Fn(&str) -> GgmlDType;

/// A GGUF of `config`'s random Llama (seed 7): each matrix in `dtype_of(its GGUF name)`,
/// the norms in F32, the tiny tokenizer in the metadata.
fn write_gguf(
    path: &Path,
    config: &serde_json::Value,
    dtype_of: DtypeOf,
    extra: Vec<(String, QTensor)>,
) -> Result<()> {
    let c: LlamaConfig = serde_json::from_value(config.clone())?;
    let w = weights_for(config, 7)?;
    let mut tensors: Vec<(String, QTensor)> = extra;
    let mut add = |name: String, t: &Tensor, dtype: Option<GgmlDType>| -> Result<()> {
        let dtype = dtype.unwrap_or_else(|| dtype_of(&name));
        tensors.push((name, QTensor::quantize(t, dtype)?));
        Ok(())
    };
    add(
        "token_embd.weight".into(),
        &w["model.embed_tokens.weight"],
        None,
    )?;
    add("output.weight".into(), &w["lm_head.weight"], None)?;
    add(
        "output_norm.weight".into(),
        &w["model.norm.weight"],
        Some(GgmlDType::F32),
    )?;
    for l in 0..c.num_hidden_layers {
        let hf = |s: &str| &w[&format!("model.layers.{l}.{s}.weight")];
        let g = |s: &str| format!("blk.{l}.{s}.weight");
        let q = permute_rows(hf("self_attn.q_proj"), c.num_attention_heads)?;
        let k = permute_rows(hf("self_attn.k_proj"), c.num_kv_heads())?;
        add(g("attn_q"), &q, None)?;
        add(g("attn_k"), &k, None)?;
        add(g("attn_v"), hf("self_attn.v_proj"), None)?;
        add(g("attn_output"), hf("self_attn.o_proj"), None)?;
        add(g("ffn_gate"), hf("mlp.gate_proj"), None)?;
        add(g("ffn_up"), hf("mlp.up_proj"), None)?;
        add(g("ffn_down"), hf("mlp.down_proj"), None)?;
        add(g("attn_norm"), hf("input_layernorm"), Some(GgmlDType::F32))?;
        add(
            g("ffn_norm"),
            hf("post_attention_layernorm"),
            Some(GgmlDType::F32),
        )?;
    }
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "llama.embedding_length".into(),
            Value::U32(c.hidden_size as u32),
        ),
        (
            "llama.feed_forward_length".into(),
            Value::U32(c.intermediate_size as u32),
        ),
        (
            "llama.block_count".into(),
            Value::U32(c.num_hidden_layers as u32),
        ),
        (
            "llama.attention.head_count".into(),
            Value::U32(c.num_attention_heads as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(c.num_kv_heads() as u32),
        ),
        (
            "llama.context_length".into(),
            Value::U32(c.max_position_embeddings as u32),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(c.rope_theta as f32),
        ),
        (
            "llama.rope.dimension_count".into(),
            Value::U32(c.head_dim() as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(c.rms_norm_eps as f32),
        ),
    ];
    meta.extend(tokenizer_metadata());
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path)?;
    gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    Ok(())
}

fn logits(model: &Llama, tokens: &[u32]) -> Result<Vec<f32>> {
    let kv = model.new_kv_store(4, 16)?;
    let mut alloc = BlockAllocator::new(4, 16);
    alloc.reserve(0, tokens.len())?;
    let item = BatchItem {
        tokens,
        start_pos: 0,
        block_table: &alloc.table(0).unwrap().blocks,
        all_logits: true,
    };
    Ok(model.forward(&kv, &[item])?.remove(0).data)
}

/// max |a - b| / max |a|
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

#[test]
fn gguf_llama_matches_safetensors_model_per_dtype() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let reference = Llama::from_tensors(
        serde_json::from_value(tiny_config_json())?,
        tiny_weights(7)?,
        &Device::Cpu,
    )?;
    let tokens = prompt(20, 5);
    let want = logits(&reference, &tokens)?;
    // Bounds: f32 exact up to summation order; the rest ~2× what was measured (F16 6e-4,
    // Q8_0 0.013/0.017, Q4_1 0.15, Q4_0 0.17–0.18: weight rounding dominates, the 8-bit
    // activations of the quantized kernels add little).
    let cases = [
        (GgmlDType::F32, 1e-5),
        (GgmlDType::F16, 2e-3),
        (GgmlDType::Q8_0, 4e-2),
        (GgmlDType::Q4_1, 0.3),
        (GgmlDType::Q4_0, 0.35),
    ];
    let mut errs = HashMap::new();
    for (dtype, bound) in cases {
        let path = dir.path().join(format!("tiny-{dtype:?}.gguf"));
        write_tiny_gguf(&path, dtype)?;
        let gguf = GgufFile::open(&path)?;
        let config = gguf.llama_config()?;
        assert_eq!(&config.hidden_size, &reference.config().hidden_size);
        assert_eq!(config.num_kv_heads(), 2);
        assert!(!config.tie_word_embeddings);
        for weights in [GgufWeights::Quantized, GgufWeights::DequantizeToF32] {
            let model = Llama::from_gguf(&gguf, weights, &Device::Cpu)?;
            let err = rel_err(&want, &logits(&model, &tokens)?);
            errs.insert(format!("{dtype:?}/{weights:?}"), (err, bound));
        }
    }
    eprintln!("gguf relative logit errors (measured, bound): {errs:?}");
    for (case, (err, bound)) in errs {
        assert!(err <= bound, "{case}: relative error {err} > {bound}");
    }
    Ok(())
}

/// The k-quants end to end: a tiny Llama whose rows are multiples of 256 (hidden 256,
/// intermediate 512), written as Q4_K, Q5_K, Q6_K and a Q4_K_M-like mix (Q6_K for attn_v,
/// ffn_down and the head, as llama.cpp's Q4_K_M does), loaded with the matrices kept in their
/// blocks (hub-quant), and held to the safetensors model's logits.
#[test]
fn gguf_k_quant_llama_matches_safetensors_model() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = tiny_config_json();
    config["hidden_size"] = 256.into();
    config["intermediate_size"] = 512.into();
    let reference = Llama::from_tensors(
        serde_json::from_value(config.clone())?,
        weights_for(&config, 7)?,
        &Device::Cpu,
    )?;
    let tokens = prompt(20, 5);
    let want = logits(&reference, &tokens)?;
    let q4_k_m = |name: &str| {
        if ["attn_v", "ffn_down", "output."]
            .iter()
            .any(|t| name.contains(t))
        {
            GgmlDType::Q6K
        } else {
            GgmlDType::Q4K
        }
    };
    let uniform = |dtype: GgmlDType| move |_: &str| dtype;
    // Bounds: ~2× what was measured (Q5_0 0.083, Q5_1 0.080, Q6_K 0.045, Q5_K 0.070, Q4_K 0.107,
    // Q4_K_M 0.100; the dequantized-f32 mode 0.081/0.082/0.038/0.070/0.107/0.101: the weights'
    // rounding dominates).
    // Q5_0/Q5_1: what llama.cpp writes instead of Q4_K/Q5_K for rows that are not a multiple
    // of 256 (most of a small model's "Q4_K_M"), kept in their blocks by hub-quant too.
    let cases: [(&str, DtypeOf, f32); 6] = [
        ("Q5_0", &uniform(GgmlDType::Q5_0), 0.16),
        ("Q5_1", &uniform(GgmlDType::Q5_1), 0.16),
        ("Q6_K", &uniform(GgmlDType::Q6K), 0.09),
        ("Q5_K", &uniform(GgmlDType::Q5K), 0.14),
        ("Q4_K", &uniform(GgmlDType::Q4K), 0.21),
        ("Q4_K_M", &q4_k_m, 0.2),
    ];
    let mut errs = Vec::new();
    for (name, dtype_of, bound) in cases {
        let path = dir.path().join(format!("tiny-{name}.gguf"));
        write_gguf(&path, &config, dtype_of, Vec::new())?;
        let gguf = GgufFile::open(&path)?;
        let quantized = Llama::from_gguf(&gguf, GgufWeights::Quantized, &Device::Cpu)?;
        let f32 = Llama::from_gguf(&gguf, GgufWeights::DequantizeToF32, &Device::Cpu)?;
        // Kept in the file's blocks: the weights take no more than the file, and a fraction
        // of the dequantized model.
        let file = std::fs::metadata(&path)?.len();
        assert!(
            quantized.weight_bytes() <= file,
            "{name}: {} > {file}",
            quantized.weight_bytes()
        );
        assert!(
            quantized.weight_bytes() * 3 < f32.weight_bytes(),
            "{name}: {} vs f32 {}",
            quantized.weight_bytes(),
            f32.weight_bytes()
        );
        let got = logits(&quantized, &tokens)?;
        let err = rel_err(&want, &got);
        // 8-bit activations add little to the weights' own rounding: within 2× the error of
        // the same file dequantized to f32 (plus a floor).
        let f32_err = rel_err(&want, &logits(&f32, &tokens)?);
        errs.push((name, err, f32_err, bound));
    }
    eprintln!("k-quant relative logit errors (quantized, dequantized-f32, bound): {errs:?}");
    for (name, err, f32_err, bound) in errs {
        assert!(err <= bound, "{name}: relative error {err} > {bound}");
        assert!(
            err <= 2.0 * f32_err + 0.01,
            "{name}: kept quantized {err} vs dequantized {f32_err}"
        );
    }
    Ok(())
}

#[test]
fn gguf_tokenizer_and_chat_template_from_metadata() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, GgmlDType::F32)?;
    let gguf = GgufFile::open(&path)?;
    let tok = HfTokenizer::from_gguf(&gguf)?;
    let special = tok.special_tokens();
    let (bos, eos) = (special.bos_id().unwrap(), special.eos_ids()[0]);
    assert_eq!(special.eos_text(), "<|im_end|>");
    assert_eq!(tok.vocab_size(), 256 + 4 + 2);

    // Merges apply; control tokens are single ids; digits split one by one (smollm pre).
    let hello = tok.encode("hello world", false)?;
    assert_eq!(tok.decode(&hello, false)?, "hello world");
    assert_eq!(hello[0], tok.token_to_id("hell").unwrap());
    assert_eq!(
        tok.encode("<|im_start|>hi<|im_end|>", false)?,
        [vec![bos], tok.encode("hi", false)?, vec![eos]].concat()
    );
    let digits = tok.encode("12345", false)?;
    assert_eq!(digits.len(), 5);
    assert_eq!(tok.decode(&[bos, hello[0], eos], true)?, "hell");

    // Multi-byte round trips, and streaming never emits half a character.
    for text in [
        "héllo wörld",
        "日本語 テキスト",
        "emoji 🎉🦀 end",
        "a\u{0301}\n\ttab",
    ] {
        let ids = tok.encode(text, false)?;
        assert_eq!(tok.decode(&ids, false)?, text);
        let mut stream = IncrementalDecoder::new(false);
        let mut out = String::new();
        let mut held = 0;
        for &id in &ids {
            match stream.step(&tok, id)? {
                Some(delta) => {
                    assert!(!delta.contains('\u{FFFD}'), "{text:?}: {delta:?}");
                    out.push_str(&delta);
                }
                None => held += 1,
            }
        }
        out.push_str(&stream.finish(&tok)?);
        assert_eq!(out, text);
        if !text.is_ascii() {
            assert!(held > 0, "{text:?}: multi-byte characters span tokens");
        }
    }
    // "🎉" is 4 byte tokens: three held back, then the whole character.
    let ids = tok.encode("🎉", false)?;
    assert_eq!(ids.len(), 4);
    let mut stream = IncrementalDecoder::new(false);
    let deltas: Vec<Option<String>> = ids
        .iter()
        .map(|&id| stream.step(&tok, id))
        .collect::<Result<_, _>>()?;
    assert_eq!(deltas, [None, None, None, Some("🎉".to_string())]);
    // A stream cut inside a character flushes it as U+FFFD at the end.
    let mut stream = IncrementalDecoder::new(false);
    assert_eq!(stream.step(&tok, ids[0])?, None);
    assert_eq!(stream.finish(&tok)?, "\u{FFFD}");

    let template = ChatTemplate::from_gguf(&gguf, special.bos_text(), special.eos_text())?;
    let text = template.render(&[ChatMessage::new("user", "hello")], true)?;
    assert_eq!(
        text,
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&text, false)?;
    assert_eq!(ids.iter().filter(|&&i| i == bos).count(), 2);
    Ok(())
}

/// Truncations, random byte flips and hostile headers are errors, never panics or huge
/// allocations.
#[test]
fn gguf_rope_freqs_and_qk_norms_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("m.gguf");
    let ones = |n: usize| -> Result<QTensor> {
        Ok(QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?,
            GgmlDType::F32,
        )?)
    };
    for (name, n) in [
        ("rope_freqs.weight", 8),
        ("blk.0.attn_q_norm.weight", 16),
        ("blk.0.attn_k_norm.weight", 16),
    ] {
        write_tiny_gguf_with(&path, GgmlDType::F32, vec![(name.into(), ones(n)?)])?;
        let gguf = GgufFile::open(&path)?;
        let err = Llama::from_gguf(&gguf, GgufWeights::Quantized, &Device::Cpu).unwrap_err();
        let msg = format!("{:#}", anyhow::Error::from(err));
        assert!(msg.contains(name), "{name}: {msg}");
    }
    Ok(())
}

#[test]
fn malformed_gguf_files_are_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.gguf");
    write_tiny_gguf(&good, GgmlDType::Q8_0)?;
    let bytes = std::fs::read(&good)?;
    let bad = dir.path().join("bad.gguf");
    let try_load = |data: &[u8]| -> Result<bool> {
        std::fs::write(&bad, data)?;
        let Ok(gguf) = GgufFile::open(&bad) else {
            return Ok(false);
        };
        let _ = HfTokenizer::from_gguf(&gguf);
        let _ = ChatTemplate::from_gguf(&gguf, "", "");
        Ok(Llama::from_gguf(&gguf, GgufWeights::Quantized, &Device::Cpu).is_ok())
    };
    for cut in [0, 3, 8, 24, 100, 1000, bytes.len() / 2, bytes.len() - 1] {
        assert!(!try_load(&bytes[..cut])?, "truncated at {cut} loaded");
    }
    let mut rng = Rng::new(42);
    for _ in 0..150 {
        let mut data = bytes.clone();
        // Flip bytes in the header and metadata region, where lengths and counts live.
        let region = 40_000.min(data.len());
        for _ in 0..1 + rng.next_u64() % 4 {
            let i = (rng.next_u64() % region as u64) as usize;
            data[i] = (rng.next_u64() & 0xff) as u8;
        }
        try_load(&data)?;
    }
    // Header claiming 2^40 tensors; a u64 string length; alignment 0 (a division by zero in
    // the parser).
    let mut header = b"GGUF".to_vec();
    header.extend(3u32.to_le_bytes());
    header.extend((1u64 << 40).to_le_bytes());
    header.extend(0u64.to_le_bytes());
    assert!(!try_load(&header)?);
    let mut header = b"GGUF".to_vec();
    header.extend(3u32.to_le_bytes());
    header.extend(0u64.to_le_bytes());
    header.extend(1u64.to_le_bytes());
    header.extend(u64::MAX.to_le_bytes());
    assert!(!try_load(&header)?);
    let mut header = b"GGUF".to_vec();
    header.extend(3u32.to_le_bytes());
    header.extend(0u64.to_le_bytes());
    header.extend(1u64.to_le_bytes());
    let key = b"general.alignment";
    header.extend((key.len() as u64).to_le_bytes());
    header.extend(key);
    header.extend(4u32.to_le_bytes()); // u32
    header.extend(0u32.to_le_bytes());
    std::fs::write(&bad, &header)?;
    let err = GgufFile::open(&bad).unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
    Ok(())
}

/// GGUF headers built to hit a parser's limits: any version, tensor and key counts (small or
/// huge), keys of any declared length, values of any type id (arrays of any element type and
/// count), `general.alignment` of 0, 1, 3 or 2^31, then random bytes.
fn hostile_gguf() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let count = || prop_oneof![0u64..4, Just(1 << 24), Just(1 << 40), Just(u64::MAX)];
    let kv = (
        prop_oneof![0u64..24, Just(1 << 33), Just(u64::MAX)],
        0u32..14,
        0u32..14,
        count(),
        proptest::collection::vec(any::<u8>(), 0..48),
    );
    (
        1u32..5,
        count(),
        proptest::option::of(prop_oneof![Just(0u32), Just(1), Just(3), Just(1 << 31)]),
        proptest::collection::vec(kv, 0..4),
        proptest::collection::vec(any::<u8>(), 0..96),
    )
        .prop_map(|(version, tensors, alignment, entries, tail)| {
            let mut v = b"GGUF".to_vec();
            v.extend(version.to_le_bytes());
            v.extend(tensors.to_le_bytes());
            v.extend((entries.len() as u64 + u64::from(alignment.is_some())).to_le_bytes());
            if let Some(alignment) = alignment {
                let key = b"general.alignment";
                v.extend((key.len() as u64).to_le_bytes());
                v.extend(key);
                v.extend(4u32.to_le_bytes());
                v.extend(alignment.to_le_bytes());
            }
            for (key_len, ty, elem, n, payload) in entries {
                v.extend(key_len.to_le_bytes());
                v.extend(std::iter::repeat_n(b'k', key_len.min(24) as usize));
                v.extend(ty.to_le_bytes());
                if ty == 9 {
                    v.extend(elem.to_le_bytes());
                    v.extend(n.to_le_bytes());
                }
                v.extend(payload);
            }
            v.extend(tail);
            v
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

    /// Hostile headers are errors (or tiny valid files), never panics, aborts or huge
    /// allocations: a declared length or count larger than the file is refused before
    /// anything is allocated for it.
    #[test]
    fn hostile_gguf_headers_never_panic(bytes in hostile_gguf()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.gguf");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(gguf) = GgufFile::open(&path) {
            let _ = gguf.llama_config();
            let _ = HfTokenizer::from_gguf(&gguf);
            let _ = ChatTemplate::from_gguf(&gguf, "", "");
            let _ = Llama::from_gguf(&gguf, GgufWeights::Quantized, &Device::Cpu);
        }
    }
}
