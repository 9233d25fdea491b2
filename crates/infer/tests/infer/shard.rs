//! Sharded inference (`hub_infer::shard`) against the single-node engine and the NumPy
//! reference: tp=2, tp=4, pp=2 and tp=2×pp=2 on GQA, biased and tied-embedding fixtures; the
//! engine running on a sharded model; the 8-bit sync's accuracy; a worker killed mid-stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Device, Tensor};
use hub_infer::config::LlamaConfig;
use hub_infer::engine::{Engine, EngineConfig, GenerateRequest, StepModel};
use hub_infer::kv_cache::BlockAllocator;
use hub_infer::model::{BatchItem, Llama};
use hub_infer::sampling::argmax;
use hub_infer::shard::ShardLayout;
use hub_infer::shard::collective::SyncPrecision;
use hub_infer::shard::local::{LocalShardConfig, LocalShardedLlama};
use hub_infer::shard::source::{SafetensorsRanges, TensorMap};

use crate::fixture::{
    prompt, qwen2_style, tiny_config_json, tiny_weights, weights_for, write_model_with,
};

const TOL: f32 = 1e-4;
const BLOCK: usize = 16;
/// (tensor_parallel, pipeline_parallel) of the issue.
const LAYOUTS: [(usize, usize); 4] = [(2, 1), (4, 1), (1, 2), (2, 2)];

/// 8 query heads over 2 KV heads (GQA 4:1), 4 layers: every layout divides it, and tp=4
/// replicates each KV head on two ranks.
fn gqa_config() -> serde_json::Value {
    let mut c = tiny_config_json();
    c["num_attention_heads"] = 8.into();
    c["num_hidden_layers"] = 4.into();
    c
}

fn sharded(
    config: &serde_json::Value,
    weights: &HashMap<String, Tensor>,
    (tp, pp): (usize, usize),
    precision: SyncPrecision,
) -> Result<LocalShardedLlama> {
    let config: LlamaConfig = serde_json::from_value(config.clone())?;
    let layout = ShardLayout::even(&config, tp, pp)?;
    Ok(LocalShardedLlama::load(
        &config,
        LocalShardConfig {
            layout,
            precision,
            step_timeout: Duration::from_secs(60),
        },
        &mut TensorMap(weights),
        &Device::Cpu,
    )?)
}

/// Per sequence, the logits of every position: a ragged prefill (all rows) of several prompts
/// in chunks of 7 (so steps mix sequences at different offsets and cross blocks), then
/// `decode` greedy steps batched together, each feeding back its own argmax.
fn run_rows<M: StepModel>(
    model: &M,
    prompts: &[Vec<u32>],
    decode: usize,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let total: usize = prompts.iter().map(|p| p.len() + decode).sum();
    let num_blocks = 2 * total.div_ceil(BLOCK) + prompts.len();
    let kv = model.new_cache(num_blocks, BLOCK)?;
    let mut alloc = BlockAllocator::new(num_blocks, BLOCK);
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    let mut rows: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    let mut done = vec![0usize; prompts.len()];
    while done.iter().zip(prompts).any(|(d, p)| *d < p.len()) {
        let work: Vec<(usize, usize)> = (0..prompts.len())
            .filter(|&s| done[s] < prompts[s].len())
            .map(|s| (s, 7.min(prompts[s].len() - done[s])))
            .collect();
        for &(s, n) in &work {
            alloc.reserve(s as u64, done[s] + n)?;
        }
        let items: Vec<BatchItem<'_>> = work
            .iter()
            .map(|&(s, n)| BatchItem {
                tokens: &prompts[s][done[s]..done[s] + n],
                start_pos: done[s],
                block_table: &alloc.table(s as u64).unwrap().blocks,
                all_logits: true,
            })
            .collect();
        for (&(s, n), l) in work.iter().zip(model.forward(&kv, &items)?) {
            rows[s].extend((0..l.rows()).map(|r| l.row(r).to_vec()));
            done[s] += n;
        }
    }
    for _ in 0..decode {
        for (s, seq) in seqs.iter_mut().enumerate() {
            seq.push(argmax(rows[s].last().unwrap()));
            alloc.reserve(s as u64, seq.len())?;
        }
        let items: Vec<BatchItem<'_>> = seqs
            .iter()
            .enumerate()
            .map(|(s, t)| BatchItem {
                tokens: &t[t.len() - 1..],
                start_pos: t.len() - 1,
                block_table: &alloc.table(s as u64).unwrap().blocks,
                all_logits: false,
            })
            .collect();
        for (s, l) in model.forward(&kv, &items)?.iter().enumerate() {
            rows[s].push(l.last().to_vec());
        }
    }
    Ok(rows)
}

fn prompts() -> Vec<Vec<u32>> {
    [1, 15, 17, 33]
        .iter()
        .enumerate()
        .map(|(i, &n)| prompt(n, 40 + i as u64))
        .collect()
}

/// Largest |difference| over all rows, and whether every row's argmax agrees.
fn compare(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> (f32, bool) {
    let mut worst = 0f32;
    let mut same = true;
    for (sa, sb) in a.iter().zip(b) {
        assert_eq!(sa.len(), sb.len());
        for (ra, rb) in sa.iter().zip(sb) {
            worst = ra
                .iter()
                .zip(rb)
                .map(|(x, y)| (x - y).abs())
                .fold(worst, f32::max);
            same &= argmax(ra) == argmax(rb);
        }
    }
    (worst, same)
}

fn check_layouts(
    config: &serde_json::Value,
    weights: &HashMap<String, Tensor>,
    layouts: &[(usize, usize)],
) -> Result<()> {
    let single = Llama::from_tensors(
        serde_json::from_value(config.clone())?,
        weights.clone(),
        &Device::Cpu,
    )?;
    let want = run_rows(&single, &prompts(), 6)?;
    for &layout in layouts {
        let model = sharded(config, weights, layout, SyncPrecision::F32)?;
        let got = run_rows(&model, &prompts(), 6)?;
        let (worst, same) = compare(&want, &got);
        ensure!(worst < TOL, "layout {layout:?}: max logit diff {worst}");
        ensure!(same, "layout {layout:?}: a greedy token differs");
    }
    Ok(())
}

#[test]
fn sharded_logits_equal_single_node_on_gqa_model() -> Result<()> {
    check_layouts(&gqa_config(), &weights_for(&gqa_config(), 21)?, &LAYOUTS)
}

/// The 2-layer tiny model: 4 heads over 2 KV heads, so tp=4 gives one query head per rank.
#[test]
fn sharded_logits_equal_single_node_on_tiny_model() -> Result<()> {
    check_layouts(&tiny_config_json(), &tiny_weights(7)?, &LAYOUTS)
}

/// Qwen2 shape: q/k/v biases sliced with their rows, and a tied head on the last stage.
#[test]
fn sharded_biases_and_tied_embeddings_equal_single_node() -> Result<()> {
    let (config, weights) = qwen2_style(tiny_weights(11)?)?;
    check_layouts(&config, &weights, &LAYOUTS)
}

/// The most split layout against the float64 NumPy reference directly (chunked prefill,
/// teacher-forced decode, tolerance 1e-4).
#[test]
fn sharded_tp2_pp2_matches_numpy_reference() -> Result<()> {
    let config = gqa_config();
    let weights = weights_for(&config, 23)?;
    let dir = tempfile::tempdir()?;
    write_model_with(dir.path(), &config, &weights, DType::F32)?;
    let model = sharded(&config, &weights, (2, 2), SyncPrecision::F32)?;
    crate::reference::compare_with_reference(dir.path(), &model)
}

/// The engine (scheduler, paged blocks, continuous batching with chunked prefill) on a sharded
/// model generates the same greedy tokens as on the single-node model.
#[test]
fn engine_on_sharded_model_generates_the_same_greedy_tokens() -> Result<()> {
    let config = gqa_config();
    let weights = weights_for(&config, 25)?;
    let engine_config = EngineConfig {
        max_batched_tokens: 24,
        num_blocks: 64,
        ..EngineConfig::default()
    };
    let requests = || {
        prompts()
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut r = GenerateRequest::greedy(i as u64, p, 10);
                r.ignore_eos = true;
                r
            })
            .collect::<Vec<_>>()
    };
    let single = Llama::from_tensors(
        serde_json::from_value(config.clone())?,
        weights.clone(),
        &Device::Cpu,
    )?;
    let mut e = Engine::new(single, engine_config.clone())?;
    for r in requests() {
        e.add_request(r)?;
    }
    let want = e.run_to_completion()?;
    let mut e = Engine::new(
        sharded(&config, &weights, (2, 2), SyncPrecision::F32)?,
        engine_config,
    )?;
    for r in requests() {
        e.add_request(r)?;
    }
    let got = e.run_to_completion()?;
    ensure!(want.len() == 4 && want.values().all(|t| t.len() == 10));
    ensure!(
        got == want,
        "sharded engine tokens {got:?} != single-node {want:?}"
    );
    Ok(())
}

/// The 8-bit sync: what it costs in accuracy against the exact f32 sync (same model, same
/// batch). Printed for the bench notes; the bound is loose by design (random weights make
/// near-ties common), the f32 path is the one held to 1e-4.
#[test]
fn q8_sync_stays_close_to_f32() -> Result<()> {
    let config = gqa_config();
    let weights = weights_for(&config, 27)?;
    let exact = run_rows(
        &sharded(&config, &weights, (2, 1), SyncPrecision::F32)?,
        &prompts(),
        6,
    )?;
    for layout in [(2, 1), (4, 1)] {
        let q8 = run_rows(
            &sharded(&config, &weights, layout, SyncPrecision::Q8)?,
            &prompts(),
            0,
        )?;
        let exact_prefill: Vec<Vec<Vec<f32>>> = exact
            .iter()
            .zip(&q8)
            .map(|(e, q)| e[..q.len()].to_vec())
            .collect();
        let (worst, _) = compare(&exact_prefill, &q8);
        let (rows, agree) = exact_prefill
            .iter()
            .zip(&q8)
            .flat_map(|(e, q)| e.iter().zip(q))
            .fold((0, 0), |(n, a), (e, q)| {
                (n + 1, a + usize::from(argmax(e) == argmax(q)))
            });
        let range = exact_prefill
            .iter()
            .flatten()
            .flatten()
            .fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "q8 sync {layout:?}: max |logit diff| {worst:.4} (logits up to {range:.2}), argmax agrees on {agree}/{rows} positions"
        );
        ensure!(worst < 0.05 * range, "q8 drifted: {worst} of {range}");
        ensure!(
            agree * 10 >= rows * 9,
            "q8 argmax agrees on only {agree}/{rows}"
        );
    }
    Ok(())
}

/// Bytes exchanged per decoded token for tp=2 follow the formula the bench notes use:
/// two all-reduces per layer, each one hidden vector up and one down, plus the step
/// description sent to the non-engine worker.
#[test]
fn traffic_per_token_follows_the_all_reduce_count() -> Result<()> {
    let config = gqa_config();
    let weights = weights_for(&config, 29)?;
    let c: LlamaConfig = serde_json::from_value(config.clone())?;
    for precision in [SyncPrecision::F32, SyncPrecision::Q8] {
        let model = sharded(&config, &weights, (2, 1), precision)?;
        let kv = model.new_cache(4, BLOCK)?;
        let table = [0u32, 1];
        let tokens = prompt(20, 1);
        model.forward(
            &kv,
            &[BatchItem {
                tokens: &tokens[..19],
                start_pos: 0,
                block_table: &table,
                all_logits: false,
            }],
        )?;
        let before = model.traffic()?;
        model.forward(
            &kv,
            &[BatchItem {
                tokens: &tokens[19..],
                start_pos: 19,
                block_table: &table,
                all_logits: false,
            }],
        )?;
        let per_token = model.traffic()? - before;
        let all_reduce =
            2 * c.num_hidden_layers as u64 * 2 * precision.encoded_len(c.hidden_size) as u64;
        let step = 4 * (1 + 2 + 3);
        ensure!(
            per_token == all_reduce + step,
            "{precision:?}: {per_token} != {all_reduce} + {step}"
        );
    }
    Ok(())
}

/// Each tp=2 worker reads only its half of the layers' matrices from the safetensors file
/// (ranged reads at the header's offsets) and the result equals the in-memory load.
#[test]
fn shards_load_by_ranged_reads_of_the_checkpoint() -> Result<()> {
    let mut config = gqa_config();
    config["tie_word_embeddings"] = true.into();
    let mut weights = weights_for(&config, 31)?;
    weights.remove("lm_head.weight");
    let dir = tempfile::tempdir()?;
    write_model_with(dir.path(), &config, &weights, DType::F32)?;
    let path = dir.path().join("model.safetensors");
    let file_len = std::fs::metadata(&path)?.len();
    let c: LlamaConfig = serde_json::from_value(config.clone())?;
    let layout = ShardLayout::even(&c, 2, 1)?;
    let shard_config = LocalShardConfig {
        layout,
        precision: SyncPrecision::F32,
        step_timeout: Duration::from_secs(60),
    };
    let mut ranged = SafetensorsRanges::new(std::fs::File::open(&path)?)?;
    let from_file = LocalShardedLlama::load(&c, shard_config.clone(), &mut ranged, &Device::Cpu)?;
    let in_memory =
        LocalShardedLlama::load(&c, shard_config, &mut TensorMap(&weights), &Device::Cpu)?;
    // Both ranks read their slices; embeddings (tied head) are read by each rank of the one
    // stage. Layers are split, so together they read each layer matrix once.
    let embed = (c.vocab_size * c.hidden_size * 4) as u64;
    let layers = file_len - embed;
    ensure!(
        ranged.bytes_read() < file_len + embed + layers / 20,
        "read {} of a {file_len}-byte file",
        ranged.bytes_read()
    );
    let per_rank: Vec<u64> = from_file.weight_bytes()[0].clone();
    ensure!(
        per_rank[0] - embed < (layers / 2) + layers / 20,
        "rank 0 holds {per_rank:?} of {layers} layer bytes"
    );
    let a = run_rows(&from_file, &prompts(), 2)?;
    let b = run_rows(&in_memory, &prompts(), 2)?;
    ensure!(
        compare(&a, &b).0 == 0.0,
        "ranged load differs from the in-memory load"
    );
    Ok(())
}

/// A worker that dies while a stream is being generated fails the engine's step with an
/// error naming it (the requests are aborted), quickly, instead of hanging.
#[test]
fn killed_worker_fails_the_step_instead_of_hanging() -> Result<()> {
    let config = gqa_config();
    let weights = weights_for(&config, 33)?;
    for (stage, rank) in [(0, 1), (1, 0), (0, 0)] {
        let mut model = sharded(&config, &weights, (2, 2), SyncPrecision::F32)?;
        // Mid-stream: a request has produced tokens, then its worker goes.
        let kv = model.new_cache(8, BLOCK)?;
        let table = [0u32, 1];
        let tokens = prompt(6, 2);
        model.forward(
            &kv,
            &[BatchItem {
                tokens: &tokens,
                start_pos: 0,
                block_table: &table,
                all_logits: false,
            }],
        )?;
        model.kill(stage, rank);
        let t = Instant::now();
        let err = model
            .forward(
                &kv,
                &[BatchItem {
                    tokens: &tokens[..1],
                    start_pos: 6,
                    block_table: &table,
                    all_logits: false,
                }],
            )
            .err()
            .context("step after a worker died succeeded")?;
        let text = format!("{:#}", anyhow::Error::from(err));
        ensure!(text.contains("stage"), "{text}");
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "took {:?}",
            t.elapsed()
        );
    }
    // Through the engine, mid-stream: the in-flight request is aborted with an error.
    let model = sharded(&config, &weights, (2, 2), SyncPrecision::F32)?;
    let switch = model.kill_switch(1, 1).context("worker (1, 1)")?;
    let mut e = Engine::new(model, EngineConfig::default())?;
    let mut r = GenerateRequest::greedy(1, prompt(5, 9), 50);
    r.ignore_eos = true;
    e.add_request(r)?;
    let mut produced = 0;
    while produced < 3 {
        produced += e.step()?.len();
    }
    switch.kill();
    let t = Instant::now();
    let err = e
        .step()
        .err()
        .context("step after a worker died succeeded")?;
    ensure!(err.aborted == vec![1], "aborted {:?}", err.aborted);
    ensure!(!e.has_work());
    ensure!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    Ok(())
}

/// Serves `(stage, rank)` of `layout` on a fresh loopback TCP listener, loading its shard by
/// ranged reads of `path` — a worker in another process as far as the coordinator can tell
/// (the mesh carries the same frames on a `/hubmesh/shard/1` stream). Returns the socket the
/// coordinator talks on and, for the test to kill it, a clone of the worker's end.
fn tcp_worker(
    path: &std::path::Path,
    config: &LlamaConfig,
    layout: &ShardLayout,
    (stage, rank): (usize, usize),
) -> Result<(std::net::TcpStream, std::net::TcpStream)> {
    use hub_infer::shard::remote::serve_worker;
    use hub_infer::shard::stage::StageShard;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let coordinator = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (worker, _) = listener.accept()?;
    let killer = worker.try_clone()?;
    let mut source = SafetensorsRanges::new(std::fs::File::open(path)?)?;
    let shard = StageShard::load(config, layout, stage, rank, &mut source, &Device::Cpu)?;
    let tp = layout.tensor_parallel;
    std::thread::spawn(move || {
        let reader = worker.try_clone().expect("clone socket");
        let _ = serve_worker(
            shard,
            rank,
            tp,
            SyncPrecision::F32,
            Duration::from_secs(30),
            reader,
            worker,
        );
    });
    Ok((coordinator, killer))
}

fn remote_sharded(
    path: &std::path::Path,
    config: &LlamaConfig,
    (tp, pp): (usize, usize),
    remote_at: &[(usize, usize)],
    step_timeout: Duration,
) -> Result<(LocalShardedLlama, Vec<std::net::TcpStream>)> {
    use hub_infer::shard::remote::RemoteRank;
    let layout = ShardLayout::even(config, tp, pp)?;
    let mut remote = HashMap::new();
    let mut killers = Vec::new();
    for &at in remote_at {
        let (sock, killer) = tcp_worker(path, config, &layout, at)?;
        let rank = RemoteRank::connect(
            "test-worker",
            sock.try_clone()?,
            sock,
            Duration::from_secs(30),
            step_timeout,
        )?;
        remote.insert(at, rank);
        killers.push(killer);
    }
    let mut local = SafetensorsRanges::new(std::fs::File::open(path)?)?;
    let model = LocalShardedLlama::load_with_remote(
        config,
        LocalShardConfig {
            layout,
            precision: SyncPrecision::F32,
            step_timeout,
        },
        &mut local,
        &Device::Cpu,
        remote,
    )?;
    Ok((model, killers))
}

/// Workers behind framed byte streams (the remote protocol, over real loopback sockets):
/// tp=2 with rank 1 remote, pp=2 with the second stage remote, tp=2×pp=2 with both rank 1s
/// remote — every logit row within 1e-4 of single-node and every greedy token equal; the
/// remote rank holds only its half of the layers.
#[test]
fn remote_workers_over_streams_equal_single_node() -> Result<()> {
    let config = gqa_config();
    let weights = weights_for(&config, 35)?;
    let dir = tempfile::tempdir()?;
    write_model_with(dir.path(), &config, &weights, DType::F32)?;
    let path = dir.path().join("model.safetensors");
    let c: LlamaConfig = serde_json::from_value(config.clone())?;
    let single = Llama::from_tensors(c.clone(), weights.clone(), &Device::Cpu)?;
    let want = run_rows(&single, &prompts(), 6)?;
    for (layout, remote_at) in [
        ((2, 1), vec![(0, 1)]),
        ((1, 2), vec![(1, 0)]),
        ((2, 2), vec![(0, 1), (1, 1)]),
    ] {
        let (model, _killers) =
            remote_sharded(&path, &c, layout, &remote_at, Duration::from_secs(30))?;
        let got = run_rows(&model, &prompts(), 6)?;
        let (worst, same) = compare(&want, &got);
        ensure!(worst < TOL, "layout {layout:?}: max logit diff {worst}");
        ensure!(same, "layout {layout:?}: a greedy token differs");
        if layout == (2, 1) {
            let held = model.weight_bytes()[0].clone();
            let embed = (c.vocab_size * c.hidden_size * 4) as u64;
            ensure!(
                held[1] + embed < held[0] + held[0] / 10 && held[1] > 0,
                "rank 1 holds {held:?}"
            );
        }
    }
    Ok(())
}

/// A remote worker whose connection dies (its process was killed) fails the next step at once
/// with an error naming it — not after the step timeout, and not a hang.
#[test]
fn remote_worker_dying_fails_the_step_at_once() -> Result<()> {
    let config = gqa_config();
    let weights = weights_for(&config, 36)?;
    let dir = tempfile::tempdir()?;
    write_model_with(dir.path(), &config, &weights, DType::F32)?;
    let path = dir.path().join("model.safetensors");
    let c: LlamaConfig = serde_json::from_value(config.clone())?;
    let (model, killers) = remote_sharded(&path, &c, (2, 1), &[(0, 1)], Duration::from_secs(120))?;
    let kv = model.new_cache(8, BLOCK)?;
    let table = [0u32, 1];
    let tokens = prompt(6, 2);
    let step = |start: usize, toks: &[u32]| {
        model.forward(
            &kv,
            &[BatchItem {
                tokens: toks,
                start_pos: start,
                block_table: &table,
                all_logits: false,
            }],
        )
    };
    step(0, &tokens)?;
    killers[0].shutdown(std::net::Shutdown::Both)?;
    let started = Instant::now();
    let err = step(6, &tokens[..1]).expect_err("a step without its worker");
    let waited = started.elapsed();
    let message = format!("{:#}", anyhow::Error::from(err));
    // The root's all-reduce link to rank 1 closed, or rank 1 is gone: either is named.
    ensure!(
        message.contains("stage 0 rank")
            && (message.contains("closed") || message.contains("gone")),
        "error says which worker lost its link: {message}"
    );
    ensure!(
        waited < Duration::from_secs(10),
        "failed after {waited:?}, the timeout is 120 s"
    );
    // And the model stays failed.
    ensure!(step(7, &tokens[..1]).is_err());
    Ok(())
}
