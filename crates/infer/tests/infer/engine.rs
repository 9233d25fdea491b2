//! Engine-level behaviour on the tiny model: batch invariance, preemption, cancellation,
//! admission limits, dtype conversion on load.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Device};
use hub_infer::engine::{Engine, EngineConfig, GenerateRequest};
use hub_infer::kv_cache::BlockAllocator;
use hub_infer::model::{BatchItem, Llama};
use hub_infer::sampling::SamplingParams;
use hub_infer::scheduler::{AddError, FinishReason};

use crate::fixture::{prompt, tiny_model, tiny_weights, write_model};

const LENGTHS: [usize; 8] = [1, 5, 15, 16, 17, 31, 32, 33];
const MAX_TOKENS: usize = 8;

fn engine(config: EngineConfig) -> Result<Engine> {
    let (_dir, model) = tiny_model()?;
    Ok(Engine::new(model, config)?)
}

fn request(id: u64, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        id,
        prompt: prompt(LENGTHS[id as usize], id),
        max_tokens: MAX_TOKENS,
        sampling,
        stop_token_ids: Vec::new(),
        ignore_eos: true,
    }
}

fn run(engine: &mut Engine, reqs: Vec<GenerateRequest>) -> Result<HashMap<u64, Vec<u32>>> {
    for r in reqs {
        engine.add_request(r)?;
    }
    Ok(engine.run_to_completion()?)
}

/// Each request alone in a fresh engine.
fn alone(sampling: impl Fn(u64) -> SamplingParams) -> Result<HashMap<u64, Vec<u32>>> {
    let mut out = HashMap::new();
    for id in 0..LENGTHS.len() as u64 {
        let mut e = engine(EngineConfig::default())?;
        out.extend(run(&mut e, vec![request(id, sampling(id))])?);
    }
    Ok(out)
}

#[test]
fn greedy_batch_equals_each_request_alone() -> Result<()> {
    let expected = alone(|_| SamplingParams::greedy())?;
    // A small budget forces chunked prefills mixed with decodes in the same steps.
    for budget in [512, 24, 7] {
        let mut e = engine(EngineConfig {
            max_batched_tokens: budget,
            ..EngineConfig::default()
        })?;
        let reqs = (0..LENGTHS.len() as u64)
            .map(|id| request(id, SamplingParams::greedy()))
            .collect();
        let got = run(&mut e, reqs)?;
        assert_eq!(got, expected, "budget {budget}");
        assert!(got.values().all(|t| t.len() == MAX_TOKENS));
        assert_eq!(
            e.scheduler().num_free_blocks(),
            EngineConfig::default().num_blocks
        );
    }
    Ok(())
}

#[test]
fn seeded_sampling_is_batch_invariant() -> Result<()> {
    let params = |id: u64| SamplingParams {
        temperature: 0.9,
        top_k: Some(40),
        top_p: Some(0.95),
        repetition_penalty: Some(1.1),
        seed: Some(1000 + id),
        ..SamplingParams::default()
    };
    let expected = alone(params)?;
    let mut e = engine(EngineConfig {
        max_batched_tokens: 24,
        ..EngineConfig::default()
    })?;
    let got = run(
        &mut e,
        (0..LENGTHS.len() as u64)
            .map(|id| request(id, params(id)))
            .collect(),
    )?;
    assert_eq!(got, expected);
    // Different seeds give different text (not a tautology of the test above).
    let mut e = engine(EngineConfig::default())?;
    let mut other = request(7, params(7));
    other.sampling.seed = Some(1);
    assert_ne!(run(&mut e, vec![other])?[&7], expected[&7]);
    Ok(())
}

#[test]
fn preemption_under_kv_pressure_gives_the_same_tokens() -> Result<()> {
    let expected = alone(|_| SamplingParams::greedy())?;
    // 6 blocks of 16 = 96 slots for 8 requests needing 1+8 .. 33+8 tokens each: admission
    // stalls and running sequences get preempted and recomputed.
    let mut e = engine(EngineConfig {
        num_blocks: 6,
        max_batched_tokens: 40,
        ..EngineConfig::default()
    })?;
    for id in 0..LENGTHS.len() as u64 {
        e.add_request(request(id, SamplingParams::greedy()))?;
    }
    let mut out: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut preempted = 0;
    while e.has_work() {
        let before = e.scheduler().num_running();
        for ev in e.step()? {
            out.entry(ev.id).or_default().push(ev.token);
        }
        preempted +=
            usize::from(e.scheduler().num_running() < before && e.scheduler().num_waiting() > 0);
        assert!(e.scheduler().num_free_blocks() <= 6);
    }
    assert_eq!(out, expected);
    assert!(preempted > 0, "the test should exercise preemption");
    Ok(())
}

#[test]
fn cancel_frees_blocks_and_stops_tokens() -> Result<()> {
    let mut e = engine(EngineConfig::default())?;
    let free = e.scheduler().num_free_blocks();
    e.add_request(request(6, SamplingParams::greedy()))?; // 32-token prompt: 2 blocks, then 3
    e.add_request(request(1, SamplingParams::greedy()))?;
    e.step()?;
    e.step()?;
    assert_eq!(e.scheduler().num_free_blocks(), free - 3 - 1);
    assert!(e.cancel(6));
    assert_eq!(e.scheduler().num_free_blocks(), free - 1);
    let rest = e.run_to_completion()?;
    assert!(!rest.contains_key(&6));
    assert_eq!(rest[&1].len(), MAX_TOKENS - 2);
    assert!(!e.cancel(6));
    Ok(())
}

#[test]
fn queue_limit_and_eos() -> Result<()> {
    let mut e = engine(EngineConfig {
        max_waiting: 2,
        ..EngineConfig::default()
    })?;
    e.add_request(request(0, SamplingParams::greedy()))?;
    e.add_request(request(1, SamplingParams::greedy()))?;
    let err = e
        .add_request(request(2, SamplingParams::greedy()))
        .unwrap_err();
    assert!(matches!(err, AddError::QueueFull { .. }), "{err}");
    let out = e.run_to_completion()?;
    // Stop on the first generated token of request 0 by declaring it a stop token.
    let first = out[&0][0];
    let mut r = request(0, SamplingParams::greedy());
    r.stop_token_ids = vec![first];
    e.add_request(r)?;
    let events = e.step()?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].token, first);
    assert_eq!(events[0].finish, Some(FinishReason::Stop));
    assert!(events[0].logprob <= 0.0);
    assert!(!e.has_work());
    Ok(())
}

/// f16/bf16 checkpoints load by conversion to f32: logits equal those of an f32 checkpoint
/// holding the same (rounded) values.
#[test]
fn half_precision_checkpoints_convert_on_load() -> Result<()> {
    let weights = tiny_weights(7)?;
    let tokens = prompt(20, 3);
    let logits = |dir: &std::path::Path| -> Result<Vec<f32>> {
        let model = Llama::from_dir(dir, &Device::Cpu)?;
        let kv = model.new_kv_store(4, 16)?;
        let mut alloc = BlockAllocator::new(4, 16);
        alloc.reserve(0, tokens.len())?;
        let item = BatchItem {
            tokens: &tokens,
            start_pos: 0,
            block_table: &alloc.table(0).unwrap().blocks,
            all_logits: true,
        };
        Ok(model.forward(&kv, &[item])?.remove(0).data)
    };
    for dtype in [DType::F16, DType::BF16] {
        let rounded = weights
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?.to_dtype(DType::F32)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let half_dir = tempfile::tempdir()?;
        write_model(half_dir.path(), &weights, dtype)?;
        let f32_dir = tempfile::tempdir()?;
        write_model(f32_dir.path(), &rounded, DType::F32)?;
        assert_eq!(
            logits(half_dir.path())?,
            logits(f32_dir.path())?,
            "{dtype:?}"
        );
    }
    Ok(())
}

#[test]
fn invalid_batches_are_errors_not_panics() -> Result<()> {
    let (_dir, model) = tiny_model()?;
    let kv = model.new_kv_store(2, 16)?;
    let bad = [
        BatchItem {
            tokens: &[],
            start_pos: 0,
            block_table: &[0],
            all_logits: false,
        },
        BatchItem {
            tokens: &[500],
            start_pos: 0,
            block_table: &[0],
            all_logits: false,
        },
        BatchItem {
            tokens: &[5; 17],
            start_pos: 0,
            block_table: &[0],
            all_logits: false,
        },
        BatchItem {
            tokens: &[5],
            start_pos: 0,
            block_table: &[9],
            all_logits: false,
        },
        BatchItem {
            tokens: &[5],
            start_pos: 300,
            block_table: &[0],
            all_logits: false,
        },
    ];
    for item in bad {
        assert!(model.forward(&kv, &[item]).is_err(), "{item:?}");
    }
    Ok(())
}

#[test]
fn zero_limits_are_refused() -> Result<()> {
    for config in [
        EngineConfig {
            max_running: 0,
            ..EngineConfig::default()
        },
        EngineConfig {
            block_size: 0,
            ..EngineConfig::default()
        },
        EngineConfig {
            max_batched_tokens: 0,
            ..EngineConfig::default()
        },
    ] {
        let (_dir, model) = tiny_model()?;
        assert!(Engine::new(model, config).is_err());
    }
    Ok(())
}
