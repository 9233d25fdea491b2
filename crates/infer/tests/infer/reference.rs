//! Our paged, batched, chunked forward pass against the NumPy reference (`tests/reference.py`).
//!
//! The reference recomputes every sequence from scratch in float64 with no cache; we compare
//! every prompt position and every greedy decode step (teacher-forced with the reference's
//! tokens, so one near-tie cannot derail the rest) at f32 tolerance 1e-4.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, Result, bail, ensure};
use hub_infer::engine::StepModel;
use hub_infer::kv_cache::BlockAllocator;
use hub_infer::model::{BatchItem, Llama, SeqLogits};
use hub_infer::sampling::argmax;
use serde::Deserialize;

use candle_core::{DType, Device};

use crate::fixture::{
    prompt, qwen2_style, qwen3_style, tiny_config_json, tiny_model, tiny_weights, write_model_with,
};

const TOL: f32 = 1e-4;
const BLOCK: usize = 16;
/// Page-boundary cases around the block size, plus the 1-token prompt.
const LENGTHS: [usize; 7] = [1, 15, 16, 17, 31, 32, 33];
const DECODE_STEPS: usize = 5;

#[derive(Debug, Deserialize)]
struct RefStep {
    token: u32,
    logits: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct RefResult {
    prompt_logits: Vec<Vec<f32>>,
    steps: Vec<RefStep>,
}

pub fn repo_root() -> PathBuf {
    manifest_dir().join("../..")
}

/// The Python with NumPy for the reference: `$HUBMESH_INFER_PYTHON` (scripts/test creates it
/// before any test runs), else `.venv-infer/bin/python`, created from
/// `tests/py/requirements-infer.txt` when missing (for `cargo test` on its own).
pub fn python() -> Result<PathBuf> {
    if let Some(py) = std::env::var_os("HUBMESH_INFER_PYTHON") {
        return Ok(PathBuf::from(py));
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = repo_root();
    let venv = root.join(".venv-infer");
    let py = venv.join("bin/python");
    let ok = |py: &Path| {
        Command::new(py)
            .args(["-c", "import numpy"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(&py) {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("run python3 -m venv (the reference test needs Python 3)")?;
        ensure!(status.success(), "python3 -m venv failed");
        let status = Command::new(&py)
            .args(["-m", "pip", "install", "-q", "-r"])
            .arg(root.join("tests/py/requirements-infer.txt"))
            .status()
            .context("pip install numpy")?;
        ensure!(
            status.success(),
            "pip install -r tests/py/requirements-infer.txt failed"
        );
    }
    Ok(py)
}

fn run_reference(model_dir: &Path, prompts: &[Vec<u32>]) -> Result<Vec<RefResult>> {
    use std::io::Write;
    let script = manifest_dir().join("tests/reference.py");
    let mut child = Command::new(python()?)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn reference.py")?;
    let job = serde_json::json!({
        "model_dir": model_dir,
        "prompts": prompts,
        "decode_steps": DECODE_STEPS,
    });
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(&serde_json::to_vec(&job)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "reference.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parse reference output")
}

fn max_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Per prompt: logits of every prompt position, then of each decode step.
type OurLogits = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// Runs all prompts through our engine's forward pass as one ragged batch, prefilling in
/// chunks of `chunk` tokens, then decodes teacher-forced; returns (prompt logits, step logits).
fn ours<M: StepModel>(
    model: &M,
    prompts: &[Vec<u32>],
    refs: &[RefResult],
    chunk: usize,
) -> Result<Vec<OurLogits>> {
    let total: usize = prompts.iter().map(|p| p.len() + DECODE_STEPS).sum();
    // Spare blocks; chunked rounds interleave the sequences' blocks (non-contiguous tables).
    let num_blocks = 2 * total.div_ceil(BLOCK) + prompts.len();
    let kv = model.new_cache(num_blocks, BLOCK)?;
    let mut alloc = BlockAllocator::new(num_blocks, BLOCK);
    let mut out: Vec<OurLogits> = vec![Default::default(); prompts.len()];
    let rows = |l: &SeqLogits| (0..l.rows()).map(|r| l.row(r).to_vec()).collect::<Vec<_>>();

    // Chunked prefill: in each round every unfinished prompt contributes up to `chunk` tokens.
    let mut done = vec![0usize; prompts.len()];
    while done.iter().zip(prompts).any(|(d, p)| *d < p.len()) {
        let work: Vec<(usize, usize)> = (0..prompts.len())
            .filter(|&s| done[s] < prompts[s].len())
            .map(|s| (s, chunk.min(prompts[s].len() - done[s])))
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
        let logits = model.forward(&kv, &items)?;
        for (&(s, n), l) in work.iter().zip(&logits) {
            out[s].0.extend(rows(l));
            done[s] += n;
        }
    }

    // Teacher-forced decode, all sequences in one batch per step.
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    for step in 0..DECODE_STEPS {
        for (s, r) in refs.iter().enumerate() {
            seqs[s].push(r.steps[step].token);
            alloc.reserve(s as u64, seqs[s].len())?;
        }
        if step + 1 == DECODE_STEPS {
            break;
        }
        let items: Vec<BatchItem<'_>> = seqs
            .iter()
            .enumerate()
            .map(|(s, toks)| BatchItem {
                tokens: &toks[toks.len() - 1..],
                start_pos: toks.len() - 1,
                block_table: &alloc.table(s as u64).unwrap().blocks,
                all_logits: false,
            })
            .collect();
        let logits = model.forward(&kv, &items)?;
        for (s, l) in logits.iter().enumerate() {
            out[s].1.push(l.last().to_vec());
        }
    }
    Ok(out)
}

#[test]
fn logits_match_numpy_reference_across_page_boundaries() -> Result<()> {
    let (dir, model) = tiny_model()?;
    compare_with_reference(dir.path(), &model)
}

/// q/k/v biases and a tied lm_head (Qwen2's shape of the Llama architecture).
#[test]
fn qwen2_style_biases_and_tied_head_match_reference() -> Result<()> {
    let (config, weights) = qwen2_style(tiny_weights(11)?)?;
    let dir = tempfile::tempdir()?;
    write_model_with(dir.path(), &config, &weights, DType::F32)?;
    let model = Llama::from_dir(dir.path(), &Device::Cpu)?;
    compare_with_reference(dir.path(), &model)
}

/// Qwen3: explicit head_dim (24 ≠ 64 / 4), per-head q/k RMSNorm before RoPE, tied head.
#[test]
fn qwen3_style_qk_norm_and_head_dim_match_reference() -> Result<()> {
    let (config, weights) = qwen3_style(13)?;
    let dir = tempfile::tempdir()?;
    write_model_with(dir.path(), &config, &weights, DType::F32)?;
    let model = Llama::from_dir(dir.path(), &Device::Cpu)?;
    assert_eq!(model.config().head_dim(), 24);
    compare_with_reference(dir.path(), &model)?;

    // The norms are not a no-op, and a qwen3 checkpoint without them is refused.
    let mut plain = weights.clone();
    plain.retain(|k, _| !k.contains("_norm.weight") || k.contains("layernorm"));
    let mut llama_config = config.clone();
    llama_config["model_type"] = "llama".into();
    let without = Llama::from_tensors(
        serde_json::from_value(llama_config)?,
        plain.clone(),
        &Device::Cpu,
    )?;
    let p = prompt(9, 5);
    ensure!(
        max_diff(&last_logits(&model, &p)?, &last_logits(&without, &p)?) > 1e-2,
        "q/k norms changed nothing"
    );
    let refused = Llama::from_tensors(serde_json::from_value(config)?, plain, &Device::Cpu);
    ensure!(
        refused.is_err(),
        "qwen3 without q_norm/k_norm must be refused"
    );
    Ok(())
}

/// Llama 3.1 rope scaling. With head_dim 16 and theta 1e4 the wavelengths are 6.3, 19.9, 62.8,
/// 199, …: against original_max_position_embeddings 64 and low/high factors 1/4 (wavelength
/// bounds 64 and 16) the table has kept, interpolated and divided frequencies.
#[test]
fn llama3_rope_scaling_matches_reference() -> Result<()> {
    let mut config = tiny_config_json();
    config["rope_scaling"] = serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64
    });
    scaled_rope_matches_reference(config)
}

/// Linear position interpolation, spelled with the legacy `type` key.
#[test]
fn linear_rope_scaling_matches_reference() -> Result<()> {
    let mut config = tiny_config_json();
    config["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 4.0});
    scaled_rope_matches_reference(config)
}

fn scaled_rope_matches_reference(config: serde_json::Value) -> Result<()> {
    let weights = tiny_weights(17)?;
    let dir = tempfile::tempdir()?;
    write_model_with(dir.path(), &config, &weights, DType::F32)?;
    let model = Llama::from_dir(dir.path(), &Device::Cpu)?;
    compare_with_reference(dir.path(), &model)?;
    // Scaling must change the numbers (else the comparison above proves nothing about it).
    let unscaled = Llama::from_tensors(
        serde_json::from_value(tiny_config_json())?,
        weights,
        &Device::Cpu,
    )?;
    let p = prompt(33, 3);
    ensure!(
        max_diff(&last_logits(&model, &p)?, &last_logits(&unscaled, &p)?) > 1e-2,
        "rope scaling changed nothing"
    );
    Ok(())
}

/// Last-position logits of one prompt, prefilled in one step.
fn last_logits(model: &Llama, tokens: &[u32]) -> Result<Vec<f32>> {
    let blocks = tokens.len().div_ceil(BLOCK);
    let kv = model.new_kv_store(blocks, BLOCK)?;
    let table: Vec<u32> = (0..blocks as u32).collect();
    let out = model.forward(
        &kv,
        &[BatchItem {
            tokens,
            start_pos: 0,
            block_table: &table,
            all_logits: false,
        }],
    )?;
    Ok(out[0].last().to_vec())
}

/// Compares `model` (single-node or sharded) with the NumPy reference of the checkpoint in
/// `dir`.
pub fn compare_with_reference<M: StepModel>(dir: &Path, model: &M) -> Result<()> {
    let prompts: Vec<Vec<u32>> = LENGTHS
        .iter()
        .enumerate()
        .map(|(i, &n)| prompt(n, i as u64))
        .collect();
    let refs = run_reference(dir, &prompts)?;
    ensure!(refs.len() == prompts.len());

    let mut worst = 0f32;
    // Whole prompts in one step, chunks that straddle blocks, and one token at a time.
    for chunk in [1024, 7, 1] {
        let got = ours(model, &prompts, &refs, chunk)?;
        for (s, ((prompt_rows, step_rows), r)) in got.iter().zip(&refs).enumerate() {
            ensure!(prompt_rows.len() == r.prompt_logits.len());
            for (pos, (a, b)) in prompt_rows.iter().zip(&r.prompt_logits).enumerate() {
                let d = max_diff(a, b);
                worst = worst.max(d);
                ensure!(
                    d < TOL,
                    "chunk {chunk}, prompt {s} (len {}), position {pos}: diff {d}",
                    prompts[s].len()
                );
            }
            // Step 0's logits are the last prompt row; steps 1.. come from decoding.
            ensure!(argmax(prompt_rows.last().unwrap()) == r.steps[0].token);
            for (k, a) in step_rows.iter().enumerate() {
                let b = &r.steps[k + 1];
                let d = max_diff(a, &b.logits);
                worst = worst.max(d);
                ensure!(
                    d < TOL,
                    "chunk {chunk}, prompt {s}, decode step {}: diff {d}",
                    k + 1
                );
                ensure!(
                    argmax(a) == b.token,
                    "greedy token differs at step {}",
                    k + 1
                );
            }
        }
    }
    eprintln!("max abs logit difference vs NumPy reference: {worst:e}");
    Ok(())
}

#[test]
fn engine_greedy_tokens_match_reference() -> Result<()> {
    use hub_infer::engine::{Engine, EngineConfig, GenerateRequest};
    let (dir, model) = tiny_model()?;
    let prompts: Vec<Vec<u32>> = [3, 16, 17]
        .iter()
        .map(|&n| prompt(n, 100 + n as u64))
        .collect();
    let refs = run_reference(dir.path(), &prompts)?;
    let mut engine = Engine::new(
        model,
        EngineConfig {
            num_blocks: 16,
            max_batched_tokens: 8,
            ..EngineConfig::default()
        },
    )?;
    for (i, p) in prompts.iter().enumerate() {
        let mut req = GenerateRequest::greedy(i as u64, p.clone(), DECODE_STEPS);
        req.ignore_eos = true;
        engine.add_request(req)?;
    }
    let out = engine.run_to_completion()?;
    for (i, r) in refs.iter().enumerate() {
        let expected: Vec<u32> = r.steps.iter().map(|s| s.token).collect();
        assert_eq!(out[&(i as u64)], expected, "request {i}");
    }
    Ok(())
}

/// The package's directory as Cargo or nextest gives it when the test runs, so a test binary
/// built from one checkout and reused from another (same target dir) reads this checkout's files.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
