//! Sharded inference (`hub_infer::shard`) against the single-node engine, in the same run:
//! batch-1 decode tokens/s for 1, 2 and 4 workers (tensor-parallel) and 2 pipeline stages,
//! bytes exchanged between workers per decoded token (measured, f32 and 8-bit sync), the
//! 8-bit sync's accuracy, and bytes/token computed for Llama 3 8B's shapes against
//! distributed-llama's published 544 kB/token (2 nodes, 8-bit sync).
//!
//! ```text
//! cargo run -p hub-benches --bin sharded -- [--decode-tokens 32] [--reps 3] [--out FILE]
//! ```
//!
//! Workers are threads of this process linked by in-process channels (the transport the
//! numbers do not include); the model is a random Llama generated here (no download).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use hub_infer::config::LlamaConfig;
use hub_infer::engine::{Engine, EngineConfig, GenerateRequest, StepModel};
use hub_infer::model::{BatchItem, Llama};
use hub_infer::sampling::argmax;
use hub_infer::shard::ShardLayout;
use hub_infer::shard::collective::SyncPrecision;
use hub_infer::shard::local::{LocalShardConfig, LocalShardedLlama};
use hub_infer::shard::source::TensorMap;

struct Args {
    decode_tokens: usize,
    reps: usize,
    out: PathBuf,
}

fn args() -> Result<Args> {
    let mut a = Args {
        decode_tokens: 32,
        reps: 3,
        out: PathBuf::from("benches/results/sharded.md"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--decode-tokens" => a.decode_tokens = value.parse().context("--decode-tokens")?,
            "--reps" => a.reps = value.parse().context("--reps")?,
            "--out" => a.out = value.into(),
            _ => bail!("unknown flag {flag}"),
        }
    }
    ensure!(a.decode_tokens >= 2 && a.reps >= 1);
    Ok(a)
}

/// A Llama of ~60 M parameters: 8 layers, hidden 768, 12 heads over 4 KV heads, MLP 2048,
/// vocab 8192 (all layouts below divide it).
fn bench_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 8192, "hidden_size": 768, "intermediate_size": 2048,
        "num_hidden_layers": 8, "num_attention_heads": 12, "num_key_value_heads": 4,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 512,
        "tie_word_embeddings": false, "eos_token_id": 2, "bos_token_id": 1
    })
}

fn random_weights(c: &LlamaConfig) -> Result<HashMap<String, Tensor>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = |shape: &[usize], scale: f32, offset: f32| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let u =
                    (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32;
                offset + scale * (2.0 * u - 1.0)
            })
            .collect();
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    };
    let (h, i, v, d) = (
        c.hidden_size,
        c.intermediate_size,
        c.vocab_size,
        c.head_dim(),
    );
    let (nq, nkv) = (c.num_attention_heads * d, c.num_kv_heads() * d);
    let lin = |fan_in: usize| 1.5 / (fan_in as f32).sqrt();
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".into(),
        uniform(&[v, h], 1.0, 0.0)?,
    );
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        w.insert(
            format!("{p}.input_layernorm.weight"),
            uniform(&[h], 0.2, 1.0)?,
        );
        w.insert(
            format!("{p}.self_attn.q_proj.weight"),
            uniform(&[nq, h], lin(h), 0.0)?,
        );
        w.insert(
            format!("{p}.self_attn.k_proj.weight"),
            uniform(&[nkv, h], lin(h), 0.0)?,
        );
        w.insert(
            format!("{p}.self_attn.v_proj.weight"),
            uniform(&[nkv, h], lin(h), 0.0)?,
        );
        w.insert(
            format!("{p}.self_attn.o_proj.weight"),
            uniform(&[h, nq], lin(nq), 0.0)?,
        );
        w.insert(
            format!("{p}.post_attention_layernorm.weight"),
            uniform(&[h], 0.2, 1.0)?,
        );
        w.insert(
            format!("{p}.mlp.gate_proj.weight"),
            uniform(&[i, h], lin(h), 0.0)?,
        );
        w.insert(
            format!("{p}.mlp.up_proj.weight"),
            uniform(&[i, h], lin(h), 0.0)?,
        );
        w.insert(
            format!("{p}.mlp.down_proj.weight"),
            uniform(&[h, i], lin(i), 0.0)?,
        );
    }
    w.insert("model.norm.weight".into(), uniform(&[h], 0.2, 1.0)?);
    w.insert(
        "lm_head.weight".into(),
        uniform(&[v, h], 2.0 * lin(h), 0.0)?,
    );
    Ok(w)
}

fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 3 + (i.wrapping_mul(2_654_435_761) >> 7) % 8000)
        .collect()
}

/// Decode rate of one greedy request (prefill excluded) and its tokens.
fn decode_rate<M: StepModel>(
    engine: &mut Engine<M>,
    id: u64,
    tokens: usize,
) -> Result<(f64, Vec<u32>)> {
    let mut r = GenerateRequest::greedy(id, prompt(24), tokens);
    r.ignore_eos = true;
    engine.add_request(r)?;
    let mut out = Vec::new();
    let mut first = None;
    while engine.has_work() {
        for e in engine.step()? {
            out.push(e.token);
        }
        if first.is_none() && !out.is_empty() {
            first = Some(Instant::now());
        }
    }
    let secs = first.context("no token")?.elapsed().as_secs_f64();
    Ok(((out.len() - 1) as f64 / secs, out))
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|_| "unknown".into())
}

fn sharded(
    c: &LlamaConfig,
    w: &HashMap<String, Tensor>,
    tp: usize,
    pp: usize,
    p: SyncPrecision,
) -> Result<LocalShardedLlama> {
    Ok(LocalShardedLlama::load(
        c,
        LocalShardConfig {
            layout: ShardLayout::even(c, tp, pp)?,
            precision: p,
            step_timeout: Duration::from_secs(120),
        },
        &mut TensorMap(w),
        &Device::Cpu,
    )?)
}

/// Logits of a 24-token prefill (every row) through `model`.
fn prefill_rows<M: StepModel>(model: &M) -> Result<Vec<Vec<f32>>> {
    let kv = model.new_cache(4, 16)?;
    let p = prompt(24);
    let out = model.forward(
        &kv,
        &[BatchItem {
            tokens: &p,
            start_pos: 0,
            block_table: &[0, 1],
            all_logits: true,
        }],
    )?;
    Ok((0..out[0].rows()).map(|r| out[0].row(r).to_vec()).collect())
}

fn main() -> Result<()> {
    let a = args()?;
    let config_json = bench_config();
    let c: LlamaConfig = serde_json::from_value(config_json)?;
    let weights = random_weights(&c)?;
    let load_start = load_avg();
    let layouts: [(usize, usize, &str); 5] = [
        (1, 1, "1 worker (sharding overhead only)"),
        (2, 1, "2 workers, tp=2"),
        (4, 1, "4 workers, tp=4"),
        (1, 2, "2 workers, pp=2"),
        (2, 2, "4 workers, tp=2 × pp=2"),
    ];
    let engine_config = EngineConfig {
        num_blocks: 64,
        ..EngineConfig::default()
    };

    // Baseline and candidates alternate inside each repetition; best of `reps`.
    let mut single = Engine::new(
        Llama::from_tensors(c.clone(), weights.clone(), &Device::Cpu)?,
        engine_config.clone(),
    )?;
    let mut engines = Vec::new();
    for &(tp, pp, _) in &layouts {
        engines.push(Engine::new(
            sharded(&c, &weights, tp, pp, SyncPrecision::F32)?,
            engine_config.clone(),
        )?);
    }
    let mut best_single = 0f64;
    let mut best = vec![0f64; layouts.len()];
    let mut same = vec![true; layouts.len()];
    let mut id = 0;
    for _ in 0..a.reps {
        id += 1;
        let (rate, tokens) = decode_rate(&mut single, id, a.decode_tokens)?;
        best_single = best_single.max(rate);
        let want = tokens;
        for (i, e) in engines.iter_mut().enumerate() {
            id += 1;
            let (rate, tokens) = decode_rate(e, id, a.decode_tokens)?;
            best[i] = best[i].max(rate);
            same[i] &= tokens == want;
        }
    }
    let load_end = load_avg();

    // Bytes per decoded token, measured on the same layouts.
    let mut traffic_rows = Vec::new();
    for &(tp, pp, name) in &layouts[1..] {
        let mut row = vec![name.to_string()];
        for p in [SyncPrecision::F32, SyncPrecision::Q8] {
            let m = sharded(&c, &weights, tp, pp, p)?;
            let kv = m.new_cache(8, 16)?;
            let table = [0u32, 1, 2, 3];
            let toks = prompt(40);
            m.forward(
                &kv,
                &[BatchItem {
                    tokens: &toks[..24],
                    start_pos: 0,
                    block_table: &table,
                    all_logits: false,
                }],
            )?;
            let before = m.traffic()?;
            for pos in 24..40 {
                m.forward(
                    &kv,
                    &[BatchItem {
                        tokens: &toks[pos..pos + 1],
                        start_pos: pos,
                        block_table: &table,
                        all_logits: false,
                    }],
                )?;
            }
            let per = (m.traffic()? - before) as f64 / 16.0;
            row.push(format!("{:.1}", per / 1024.0));
        }
        traffic_rows.push(row);
    }

    // Accuracy of the 8-bit sync against f32 (same layout, same prefill).
    let exact = prefill_rows(&sharded(&c, &weights, 2, 1, SyncPrecision::F32)?)?;
    let q8 = prefill_rows(&sharded(&c, &weights, 2, 1, SyncPrecision::Q8)?)?;
    let single_rows = prefill_rows(&Llama::from_tensors(
        c.clone(),
        weights.clone(),
        &Device::Cpu,
    )?)?;
    let max_diff = |x: &[Vec<f32>], y: &[Vec<f32>]| {
        x.iter()
            .flatten()
            .zip(y.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    let agree = exact
        .iter()
        .zip(&q8)
        .filter(|(e, q)| argmax(e) == argmax(q))
        .count();
    let range = exact.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));

    // Llama 3 8B, 2 nodes, 8-bit sync, computed with this code's codec and exchange.
    let l3 = |p: SyncPrecision| 32.0 * 2.0 * 2.0 * p.encoded_len(4096) as f64 / 1024.0;

    let mut md = String::new();
    writeln!(md, "# Sharded inference benchmarks\n")?;
    writeln!(
        md,
        "Generated by `cargo run -p hub-benches --bin sharded` (source: `benches/src/bin/sharded.rs`), dev profile (candle-core, candle-nn and gemm at opt-level 3 as in every dev build; our code unoptimized). All numbers come from one run on one machine, **a loaded, shared 2-core machine** (other builds ran beside it): load average (1/5/15 min) {load_start} at the start, {load_end} after the decode section. Read the ratios, not the absolute rates, and only as indicative.\n"
    )?;
    writeln!(
        md,
        "Model: random Llama, {} layers, hidden {}, {} heads over {} KV heads, MLP {}, vocab {} ({:.0} M parameters, f32). Workers are **threads of one process** linked by bounded in-process channels — not node processes: the transport over the mesh is not in these numbers. Each worker holds its shard's weights and KV cache.\n",
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_kv_heads(),
        c.intermediate_size,
        c.vocab_size,
        weights.values().map(|t| t.elem_count()).sum::<usize>() as f64 / 1e6
    )?;
    writeln!(
        md,
        "## 1. Batch-1 decode\n\nGreedy, {} tokens after a 24-token prompt, through `Engine::step` (scheduler, paged KV, sampler). Decode rate = (tokens − 1) ÷ time from the first token to the last. Single-node and every layout alternate within each of {} repetitions; best of each.\n",
        a.decode_tokens, a.reps
    )?;
    writeln!(
        md,
        "| model | decode tok/s | × single-node | same tokens as single-node |\n|---|---:|---:|:---:|"
    )?;
    writeln!(
        md,
        "| single-node `Llama` (baseline) | {best_single:.1} | 1.00× | — |"
    )?;
    for (i, &(_, _, name)) in layouts.iter().enumerate() {
        writeln!(
            md,
            "| {name} | {:.1} | {:.2}× | {} |",
            best[i],
            best[i] / best_single,
            if same[i] { "yes" } else { "**no**" }
        )?;
    }
    writeln!(
        md,
        "\n## 2. Bytes exchanged per decoded token\n\nMeasured: all-reduce bytes sent by every rank, plus hidden states between stages and the step description sent to each worker that is not beside the engine (the engine runs beside the last stage's rank 0, so logits never travel). Mean over 16 decode steps at context 24–40.\n"
    )?;
    writeln!(
        md,
        "| layout | f32 sync KiB/token | 8-bit sync KiB/token |\n|---|---:|---:|"
    )?;
    for r in &traffic_rows {
        writeln!(md, "| {} | {} | {} |", r[0], r[1], r[2])?;
    }
    writeln!(
        md,
        "\nPer token, tensor parallelism costs 2 all-reduces per layer; in the star exchange each non-root rank sends its partial and receives the sum: `2 × layers × 2 × (tp − 1) × encoded(hidden)` bytes. A pipeline boundary costs one hidden vector (f32) per token.\n"
    )?;
    writeln!(
        md,
        "### Against distributed-llama (Llama 3 8B, 2 nodes, 8-bit sync: 544 kB/token)\n\nFor Llama 3 8B's shapes (32 layers, hidden 4096) on 2 nodes, the formula above with this code's codecs gives **{:.1} KiB/token with the 8-bit sync** (Q8_0 blocks: 34 bytes per 32 values) and {:.1} KiB/token with f32. distributed-llama's published figure is 544 kB per token for the same model, nodes and sync. Ours is 557,056 bytes: the same number if that kB is 1024 bytes, 2.4 % above it if it is 1000 bytes (how distributed-llama counts, and whether its figure includes both directions, was not checked against its source). Not measured on Llama 3 8B itself (no such weights here); the formula is checked against the measured counts by `traffic_per_token_follows_the_all_reduce_count` in `crates/infer/tests/infer/shard.rs`.\n",
        l3(SyncPrecision::Q8),
        l3(SyncPrecision::F32)
    )?;
    writeln!(
        md,
        "## 3. 8-bit sync accuracy\n\ntp=2, 24-token prefill, all rows: max |logit difference| against the f32 sync {:.4} (logits up to {:.2} in magnitude); argmax agrees on {agree}/{} positions. f32 sync against single-node: max |difference| {:.2e}.\n",
        max_diff(&exact, &q8),
        range,
        exact.len(),
        max_diff(&exact, &single_rows)
    )?;
    let tp2 = best[1] / best_single;
    writeln!(
        md,
        "## Goals\n\n| goal | measured | met |\n|---|---:|:---:|"
    )?;
    writeln!(
        md,
        "| bytes/token ≤ distributed-llama's 544 kB (Llama 3 8B, 2 nodes, 8-bit) | {:.1} KiB computed | {} |",
        l3(SyncPrecision::Q8),
        if l3(SyncPrecision::Q8) <= 544.0 {
            "met"
        } else {
            "**no**"
        }
    )?;
    writeln!(
        md,
        "| tp=2 ≥ 0.8× single-node decode while each holds half the weights | {tp2:.2}× (threads, not node processes) | {} |",
        if tp2 >= 0.8 {
            "met (in-process)"
        } else {
            "**no**"
        }
    )?;
    hub_benches::write_results(&a.out, &md)?;
    Ok(())
}
