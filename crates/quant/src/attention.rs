//! Causal attention of a whole step's ragged batch over a paged f32 KV cache, in one call:
//! every (token, query head) of every sequence is one task on the rayon pool (or the calling
//! thread when the step is small), instead of a graph of small tensor ops per sequence.
//!
//! Layouts (row-major `f32`):
//! - `q`: `(tokens, heads, head_dim)`, the step's new tokens of all sequences, packed;
//! - `k`, `v`: the cache of one layer, `(slots, kv_heads, head_dim)`;
//! - `out`: `(tokens, heads, head_dim)`.
//!
//! Query head `h` reads K/V head `h / (heads / kv_heads)` (grouped-query attention). Token `t`
//! of a sequence whose new tokens start at position `start` attends the positions
//! `0..=start + t`, whose cache slots the sequence lists.
//!
//! Numerics: scores in `f32`, a max-subtracted softmax, the weighted sum of V rows in `f32`,
//! as candle's `softmax_last_dim` and matmuls compute it (sums in a different order).

use rayon::prelude::*;

/// One sequence's part of a step.
#[derive(Debug, Clone, Copy)]
pub struct AttnSeq<'a> {
    /// Index of its first new token in `q` / `out` (tokens).
    pub token_offset: usize,
    /// Its new tokens.
    pub len: usize,
    /// Position of its first new token.
    pub start: usize,
    /// Cache slot of every position `0..start + len`.
    pub slots: &'a [u32],
}

/// Head counts and the score scale of [`paged_attention`].
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Usually `1 / sqrt(head_dim)`.
    pub scale: f32,
}

/// Multiply-adds (query · key plus weight × value) under which a step stays on the calling
/// thread: waking the pool costs more than splitting a decode step of a small context.
const SEQUENTIAL_WORK: usize = 1 << 16;

/// Multiply-adds per pool task, at least.
const TASK_WORK: usize = 1 << 14;

/// Attends every new token of `seqs` (see the module docs for the layouts).
///
/// Panics if the shapes disagree: `q`/`out` shorter than the sequences' tokens, a slot outside
/// `k`/`v`, `slots` shorter than `start + len`, or `heads` not a multiple of `kv_heads`.
pub fn paged_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[AttnSeq<'_>],
    shape: AttnShape,
    out: &mut [f32],
) {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: hd,
        ..
    } = shape;
    assert!(
        kv_heads > 0 && heads.is_multiple_of(kv_heads) && hd > 0,
        "heads {heads}, kv heads {kv_heads}, head dim {hd}"
    );
    assert_eq!(k.len(), v.len(), "K and V caches differ in size");
    assert!(
        k.len().is_multiple_of(kv_heads * hd),
        "cache of {} values",
        k.len()
    );
    let slots = k.len() / (kv_heads * hd);
    let tokens: usize = seqs
        .iter()
        .map(|s| s.token_offset + s.len)
        .max()
        .unwrap_or(0);
    assert!(
        q.len() >= tokens * heads * hd && out.len() >= tokens * heads * hd,
        "q {} / out {} values for {tokens} tokens",
        q.len(),
        out.len()
    );
    for s in seqs {
        assert!(s.slots.len() >= s.start + s.len, "slots cover the context");
        assert!(
            s.slots.iter().all(|&x| (x as usize) < slots),
            "slot outside the cache"
        );
    }
    // Tasks: (sequence, token within it, head), each owning its `head_dim` slice of `out`.
    let mut work = 0usize;
    let mut tasks: Vec<(usize, usize, usize, &mut [f32])> = Vec::with_capacity(tokens * heads);
    {
        let mut by_token: Vec<Option<&mut [f32]>> = out[..tokens * heads * hd]
            .chunks_exact_mut(heads * hd)
            .map(Some)
            .collect();
        for (i, s) in seqs.iter().enumerate() {
            for t in 0..s.len {
                work += (s.start + t + 1) * 2 * hd * heads;
                let o = by_token[s.token_offset + t]
                    .take()
                    .expect("two sequences claim the same token");
                for (h, oh) in o.chunks_exact_mut(hd).enumerate() {
                    tasks.push((i, t, h, oh));
                }
            }
        }
    }
    let run = |scores: &mut Vec<f32>, (i, t, h, o): (usize, usize, usize, &mut [f32])| {
        let s = &seqs[i];
        let tok = s.token_offset + t;
        let qh = &q[(tok * heads + h) * hd..(tok * heads + h + 1) * hd];
        attend_head(qh, k, v, &s.slots[..s.start + t + 1], h, shape, scores, o);
    };
    if work < SEQUENTIAL_WORK || rayon::current_num_threads() <= 1 {
        let mut scores = Vec::new();
        for task in tasks {
            run(&mut scores, task);
        }
    } else {
        let per_task = (work / tasks.len().max(1)).max(1);
        tasks
            .into_par_iter()
            .with_min_len((TASK_WORK / per_task).max(1))
            .for_each_init(Vec::new, run);
    }
}

/// One query head of one token: `q` and `out` its `head_dim` values, `ctx` the slots it
/// attends.
#[allow(clippy::too_many_arguments)]
fn attend_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ctx: &[u32],
    h: usize,
    shape: AttnShape,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: hd,
        scale,
    } = shape;
    let kh = h / (heads / kv_heads);
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for &slot in ctx {
        let base = (slot as usize * kv_heads + kh) * hd;
        let d = dot(q, &k[base..base + hd]) * scale;
        max = max.max(d);
        scores.push(d);
    }
    let mut sum = 0f32;
    for x in scores.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    out.fill(0.0);
    for (&slot, &w) in ctx.iter().zip(scores.iter()) {
        let base = (slot as usize * kv_heads + kh) * hd;
        axpy(out, w * inv, &v[base..base + hd]);
    }
}

/// `a · b` with eight independent partial sums (vectorizable without reassociation).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `o += w · x`.
#[inline]
fn axpy(o: &mut [f32], w: f32, x: &[f32]) {
    for (a, &b) in o.iter_mut().zip(x) {
        *a += w * b;
    }
}
