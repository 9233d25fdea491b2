//! `paged_attention` against a direct float64 implementation of causal grouped-query
//! attention (gather the context's K/V rows by slot, softmax of scaled scores, weighted sum),
//! on ragged batches with scattered slots; and the pooled split against the sequential one.

use hub_quant::attention::{AttnSeq, AttnShape, paged_attention};
use proptest::prelude::*;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-2, 2).
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 2.0
    }
}

struct Case {
    shape: AttnShape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Per sequence: (token offset, len, start, slots).
    seqs: Vec<(usize, usize, usize, Vec<u32>)>,
    tokens: usize,
}

/// `lens[i]` new tokens after `starts[i]` cached ones per sequence; every position gets a
/// distinct slot of a shuffled cache (as a block table scatters them).
fn case(seed: u64, lens: &[usize], starts: &[usize], kv_heads: usize, groups: usize) -> Case {
    let mut rng = Rng(seed);
    let hd = 16;
    let heads = kv_heads * groups;
    let positions: usize = lens.iter().zip(starts).map(|(l, s)| l + s).sum();
    let slots_total = positions + 5;
    let mut free: Vec<u32> = (0..slots_total as u32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut seqs = Vec::new();
    let mut offset = 0;
    for (&len, &start) in lens.iter().zip(starts) {
        let slots: Vec<u32> = free.drain(..start + len).collect();
        seqs.push((offset, len, start, slots));
        offset += len;
    }
    let tokens = offset;
    let mut fill = |n: usize| (0..n).map(|_| rng.f32()).collect::<Vec<f32>>();
    Case {
        shape: AttnShape {
            heads,
            kv_heads,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        },
        q: fill(tokens * heads * hd),
        k: fill(slots_total * kv_heads * hd),
        v: fill(slots_total * kv_heads * hd),
        seqs,
        tokens,
    }
}

fn run(c: &Case) -> Vec<f32> {
    let seqs: Vec<AttnSeq<'_>> = c
        .seqs
        .iter()
        .map(|(token_offset, len, start, slots)| AttnSeq {
            token_offset: *token_offset,
            len: *len,
            start: *start,
            slots,
        })
        .collect();
    let mut out = vec![f32::NAN; c.tokens * c.shape.heads * c.shape.head_dim];
    paged_attention(&c.q, &c.k, &c.v, &seqs, c.shape, &mut out);
    out
}

fn reference(c: &Case) -> Vec<f64> {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: hd,
        scale,
    } = c.shape;
    let mut out = vec![0f64; c.tokens * heads * hd];
    for (off, len, start, slots) in &c.seqs {
        for t in 0..*len {
            let tok = off + t;
            for h in 0..heads {
                let kh = h / (heads / kv_heads);
                let q = &c.q[(tok * heads + h) * hd..][..hd];
                let row = |m: &[f32], p: usize| {
                    let b = (slots[p] as usize * kv_heads + kh) * hd;
                    m[b..b + hd]
                        .iter()
                        .map(|&x| f64::from(x))
                        .collect::<Vec<_>>()
                };
                let ctx = start + t + 1;
                let scores: Vec<f64> = (0..ctx)
                    .map(|p| {
                        let k = row(&c.k, p);
                        q.iter()
                            .zip(&k)
                            .map(|(&a, b)| f64::from(a) * b)
                            .sum::<f64>()
                            * f64::from(scale)
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (p, w) in e.iter().enumerate() {
                    let v = row(&c.v, p);
                    for (j, x) in v.iter().enumerate() {
                        out[(tok * heads + h) * hd + j] += w / sum * x;
                    }
                }
            }
        }
    }
    out
}

fn assert_close(got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "element {i}: {g} vs {w}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Ragged batches: prefill chunks after cached context, single-token decodes, GQA and
    /// plain multi-head attention.
    #[test]
    fn attention_matches_a_float64_reference(
        seed in any::<u64>(),
        items in proptest::collection::vec((1usize..6, 0usize..20), 1..5),
        kv_heads in 1usize..4,
        groups in 1usize..4,
    ) {
        let (lens, starts): (Vec<usize>, Vec<usize>) = items.into_iter().unzip();
        let c = case(seed, &lens, &starts, kv_heads, groups);
        assert_close(&run(&c), &reference(&c));
    }
}

/// A step big enough to be split over the pool gives the same bits as on one thread (each
/// head's sums run in the same order whichever worker computes it).
#[test]
fn pooled_and_sequential_attention_agree() {
    let lens = [40, 1, 1, 1, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
    let starts = [0, 90, 3, 200, 12, 50, 60, 70, 80, 1, 2, 3, 4, 5, 6, 300];
    let c = case(7, &lens, &starts, 3, 3);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| run(&c));
    let pooled = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap()
        .install(|| run(&c));
    assert_eq!(one, pooled);
    assert_close(&one, &reference(&c));
}
