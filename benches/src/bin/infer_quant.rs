//! One measurement of the hubmesh engine on a GGUF, printed as JSON, for
//! `benches/infer_vs_llama.py` (which alternates it with llama.cpp's `llama-bench`).
//!
//! ```text
//! infer_quant --model F.gguf [--weights quantized|candle|f32] [--decode 32] [--prefill 100]
//!     [--streams 16] [--matmul]
//! ```
//! Threads: `RAYON_NUM_THREADS` (set by the caller like llama-bench's -t) workers of the engine
//! pool ([`hub_infer::threads::engine_pool`]); each step runs inside it, as the node's serving
//! loop runs it, so the stepping thread is one of the workers.
//! - decode: greedy, `--decode` tokens after a 1-token prompt (as llama-bench's tg), tok/s of
//!   the tokens after the first (the first comes out of the prefill step);
//! - prefill: a `--prefill`-token prompt, prompt tokens ÷ time to the first token;
//! - streams: `--streams` requests of `--decode` tokens queued at once, aggregate tok/s of
//!   the decode phase (from the step where all have their first token);
//! - rss: resident set before and after loading and after the decode (weights read in place
//!   from the mapped file count once touched), the file size, the KV cache's reserved bytes and
//!   the bytes of its blocks the decode wrote (`kv_touched_bytes`);
//! - matmul (with `--matmul`): one 576→1536 projection of the file, hub-quant vs candle's
//!   `QMatMul`, µs per batch-1 call (ADR 0014).

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Module, Tensor};
use hub_infer::engine::{Engine, EngineConfig, GenerateRequest};
use hub_infer::gguf::GgufFile;
use hub_infer::model::{GgufWeights, Llama};
use std::path::PathBuf;
use std::time::Instant;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<()> {
    let mut model = None;
    let mut weights = GgufWeights::Quantized;
    let (mut decode, mut prefill, mut streams, mut matmul) = (32usize, 0usize, 0usize, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--matmul" {
            matmul = true;
            continue;
        }
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(v)),
            "--weights" => {
                weights = match v.as_str() {
                    "quantized" => GgufWeights::Quantized,
                    "candle" => GgufWeights::QuantizedCandle,
                    "f32" => GgufWeights::DequantizeToF32,
                    _ => bail!("--weights quantized|candle|f32"),
                }
            }
            "--decode" => decode = v.parse()?,
            "--prefill" => prefill = v.parse()?,
            "--streams" => streams = v.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    let path = model.context("--model FILE.gguf")?;
    ensure!(decode >= 2, "--decode must be at least 2");
    let gguf = GgufFile::open(&path)?;
    let file_bytes = std::fs::metadata(&path)?.len();
    let rss0 = rss_bytes();
    let llama = Llama::from_gguf(&gguf, weights, &Device::Cpu)?;
    let rss_loaded = rss_bytes();
    let vocab = llama.config().vocab_size as u32;
    let max_pos = llama.config().max_position_embeddings;
    let mut out = serde_json::json!({
        "threads": rayon_threads(),
        "file_bytes": file_bytes,
        "weight_bytes": llama.weight_bytes(),
        "rss_before_load": rss0,
        "rss_loaded": rss_loaded,
    });
    let engine_config = EngineConfig {
        num_blocks: 256,
        max_batched_tokens: 1024,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(llama, engine_config.clone())?;
    out["kv_cache_bytes"] = engine.kv_cache_bytes().into();
    // What the batch-1 decode writes (a 1-token prompt and `decode` tokens, whole blocks): the
    // store is allocated zeroed, so only these pages are resident when `rss_after_decode` is read.
    out["kv_touched_bytes"] = (engine.kv_cache_bytes() / engine_config.num_blocks
        * (1 + decode).div_ceil(engine_config.block_size))
    .into();
    let pool = hub_infer::threads::engine_pool(rayon_threads())?;
    // Token ids: a deterministic spread over the vocabulary (content does not change speed).
    let prompt = |n: usize, salt: u32| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (i * 7919 + salt * 104_729 + 17) % vocab)
            .collect()
    };
    ensure!(prefill + decode < max_pos, "context too long for the model");

    // Batch-1 decode.
    let mut req = GenerateRequest::greedy(0, prompt(1, 0), decode);
    req.ignore_eos = true;
    engine.add_request(req)?;
    let (mut n, mut first) = (0usize, None);
    while engine.has_work() {
        n += pool.install(|| engine.step())?.len();
        if first.is_none() && n > 0 {
            first = Some(Instant::now());
        }
    }
    ensure!(n == decode, "generated {n} of {decode}");
    let secs = first.context("no token")?.elapsed().as_secs_f64();
    out["decode_tok_s"] = ((decode - 1) as f64 / secs).into();
    out["rss_after_decode"] = rss_bytes().into();

    if prefill > 0 {
        let t = Instant::now();
        engine.add_request(GenerateRequest::greedy(1, prompt(prefill, 1), 1))?;
        while engine.has_work() {
            pool.install(|| engine.step())?;
        }
        out["prefill_tok_s"] = (prefill as f64 / t.elapsed().as_secs_f64()).into();
    }

    if streams > 0 {
        for s in 0..streams {
            let mut req = GenerateRequest::greedy(100 + s as u64, prompt(8, 2 + s as u32), decode);
            req.ignore_eos = true;
            engine.add_request(req)?;
        }
        let mut counts = vec![0usize; streams];
        let mut all = None;
        while engine.has_work() {
            for e in pool.install(|| engine.step())? {
                counts[(e.id - 100) as usize] += 1;
            }
            if all.is_none() && counts.iter().all(|&c| c > 0) {
                all = Some(Instant::now());
            }
        }
        ensure!(
            counts.iter().all(|&c| c == decode),
            "a stream stopped early"
        );
        let secs = all.context("no token")?.elapsed().as_secs_f64();
        out["streams"] = streams.into();
        out["streams_tok_s"] = ((streams * (decode - 1)) as f64 / secs).into();
    }

    if matmul {
        out["matmul_us"] = matmul_compare(&gguf)?;
    }
    println!("{out}");
    Ok(())
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// µs per batch-1 call of `blk.0.ffn_up` (1536 × 576), hub-quant vs candle `QMatMul`, best of
/// 200 calls each, alternating.
fn matmul_compare(gguf: &GgufFile) -> Result<serde_json::Value> {
    let mut reader = gguf.reader()?;
    let name = "blk.0.ffn_up.weight";
    let (dims, _) = gguf.tensor_info(name).context("ffn_up")?;
    let q = gguf.read_tensor(&mut reader, name, &dims, None, &Device::Cpu)?;
    let (dtype, raw) = gguf.read_raw(&mut reader, name, &dims, None)?;
    let qtype = ggml_id(dtype)
        .and_then(hub_quant::QType::from_ggml_id)
        .context("dtype without hub-quant kernels")?;
    let ours = hub_quant::QMatrix::new(qtype, dims[0], dims[1], raw)?;
    let candle = candle_core::quantized::QMatMul::from_arc(std::sync::Arc::new(q))?;
    let cols = dims[1];
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let xt = Tensor::from_vec(x.clone(), (1, cols), &Device::Cpu)?;
    let mut y = vec![0f32; dims[0]];
    let (mut best_ours, mut best_candle) = (f64::MAX, f64::MAX);
    for _ in 0..200 {
        let t = Instant::now();
        let acts = hub_quant::QActs::quantize(&x, cols);
        ours.matmul(&acts, &mut y);
        best_ours = best_ours.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let yc = candle.forward(&xt)?;
        std::hint::black_box(yc);
        best_candle = best_candle.min(t.elapsed().as_secs_f64());
    }
    Ok(serde_json::json!({
        "tensor": name, "dtype": format!("{dtype:?}"),
        "hub_quant": best_ours * 1e6, "candle": best_candle * 1e6,
    }))
}

fn ggml_id(d: candle_core::quantized::GgmlDType) -> Option<u32> {
    use candle_core::quantized::GgmlDType as G;
    Some(match d {
        G::Q4_0 => 2,
        G::Q4_1 => 3,
        G::Q5_0 => 6,
        G::Q5_1 => 7,
        G::Q8_0 => 8,
        G::Q4K => 12,
        G::Q5K => 13,
        G::Q6K => 14,
        _ => return None,
    })
}
