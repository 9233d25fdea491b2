//! Token sampling: repetition penalty, temperature, top-k, top-p, seeded RNG.
//!
//! Runs on the CPU over a logits row (`&[f32]`) after the forward pass: a vocabulary of 150k
//! floats sorts in well under a millisecond, far below one decode step, so there is no reason to
//! do this on the device or with tensors.
//!
//! Order of operations follows `transformers`' logits processors (and TGI):
//! repetition penalty → temperature → top-k → top-p → draw. `temperature == 0` (or `top_k ==
//! 1`) means greedy argmax; ties go to the lowest token id, so greedy is deterministic.
//!
//! Each sequence owns its RNG (SplitMix64 seeded from the request's seed): a seeded request
//! draws the same tokens whatever else is in the batch — batch invariance for sampling, not
//! just for greedy decoding. SplitMix64 is 10 lines, passes BigCrush and needs no dependency;
//! this is not a cryptographic use.

/// Per-request sampling parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None` or 0 = all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (`None` or
    /// ≥ 1 = all).
    pub top_p: Option<f32>,
    /// `transformers`-style: logits of tokens already in the context are divided by it when
    /// positive and multiplied when negative. `None` or 1 = off.
    pub repetition_penalty: Option<f32>,
    /// RNG seed; the engine picks one when absent.
    pub seed: Option<u64>,
    /// Report this many most likely tokens with each generated one (OpenAI's `top_logprobs`,
    /// TGI's `top_n_tokens`); 0 = none. From the raw distribution, like [`Sampled::logprob`].
    pub top_logprobs: usize,
    /// Report the log-probability of each prompt token after the first (TGI's
    /// `decoder_input_details`, vLLM's `prompt_logprobs`). Costs a logits row per prompt token.
    pub prompt_logprobs: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: None,
            seed: None,
            top_logprobs: 0,
            prompt_logprobs: false,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == Some(1)
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A drawn token and its log-probability under the model's raw distribution (before penalties,
/// temperature and truncation — what OpenAI's `logprobs` reports).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
}

/// Samples one token per step for one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams, default_seed: u64) -> Self {
        let rng = Rng::new(params.seed.unwrap_or(default_seed));
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Draws the next token from `logits`, penalising the tokens in `context`.
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> Sampled {
        let logprob_of = log_softmax_at(logits);
        let mut l = logits.to_vec();
        if let Some(p) = self
            .params
            .repetition_penalty
            .filter(|&p| p > 0.0 && p != 1.0)
        {
            apply_repetition_penalty(&mut l, context, p);
        }
        let token = if self.params.is_greedy() {
            argmax(&l)
        } else {
            let t = self.params.temperature;
            l.iter_mut().for_each(|x| *x /= t);
            let probs = truncated_probs(&l, self.params.top_k, self.params.top_p);
            draw(&probs, self.rng.next_f64())
        };
        Sampled {
            token,
            logprob: logprob_of(token),
        }
    }
}

/// Index of the largest value; the lowest index wins ties; NaN never wins.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// `log(sum(exp(logits)))`, computed stably (in f64).
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits
        .iter()
        .map(|&x| ((x - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
}

/// The log-softmax of `logits`, evaluated at one token.
pub fn log_softmax_at(logits: &[f32]) -> impl Fn(u32) -> f32 + '_ {
    let lse = log_sum_exp(logits);
    move |t| logits[t as usize] - lse
}

/// The `n` most likely tokens of the raw distribution `logits` with their log-probabilities,
/// most likely first (ties to the lower id, as greedy). NaN logits are never chosen.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<Sampled> {
    if n == 0 || logits.is_empty() {
        return Vec::new();
    }
    let n = n.min(logits.len());
    // One pass keeping the best `n` sorted: `n` is small (OpenAI allows 20), the vocabulary
    // large, so this beats sorting the whole row.
    let better = |a: (f32, u32), b: (f32, u32)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(n + 1);
    for (i, &x) in logits.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        let cand = (x, i as u32);
        if best.len() == n && !better(cand, best[n - 1]) {
            continue;
        }
        let at = best.partition_point(|&b| better(b, cand));
        best.insert(at, cand);
        best.truncate(n);
    }
    let lse = log_sum_exp(logits);
    best.into_iter()
        .map(|(x, token)| Sampled {
            token,
            logprob: x - lse,
        })
        .collect()
}

/// `transformers`' `RepetitionPenaltyLogitsProcessor`: each distinct context token once.
pub fn apply_repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    let mut seen = vec![false; logits.len()];
    for &t in context {
        let t = t as usize;
        if t < logits.len() && !seen[t] {
            seen[t] = true;
            let x = &mut logits[t];
            *x = if *x > 0.0 { *x / penalty } else { *x * penalty };
        }
    }
}

/// Softmax of `logits` restricted to the top-k / top-p set; tokens outside it get 0.
pub fn truncated_probs(logits: &[f32], top_k: Option<usize>, top_p: Option<f32>) -> Vec<f32> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Descending by logit, ascending id on ties, so truncation is deterministic.
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let mut keep = match top_k {
        Some(k) if k > 0 => k.min(order.len()),
        _ => order.len(),
    };
    let max = logits[order[0]];
    let mut probs = vec![0f32; logits.len()];
    let exps: Vec<f64> = order[..keep]
        .iter()
        .map(|&i| ((logits[i] - max) as f64).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    if let Some(p) = top_p.filter(|&p| p < 1.0) {
        let mut cum = 0.0;
        for (n, e) in exps.iter().enumerate() {
            cum += e / sum;
            // Keep the token that crosses `p`; always keep at least one.
            if cum >= p as f64 {
                keep = n + 1;
                break;
            }
        }
    }
    let kept_sum: f64 = exps[..keep].iter().sum();
    for (&i, e) in order[..keep].iter().zip(&exps) {
        probs[i] = (e / kept_sum) as f32;
    }
    probs
}

/// Inverse-CDF draw with `u ∈ [0, 1)`; falls back to the last non-zero entry on rounding.
fn draw(probs: &[f32], u: f64) -> u32 {
    let mut cum = 0.0f64;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cum += p as f64;
            last = i;
            if u < cum {
                return i as u32;
            }
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_and_ties_go_low() {
        let mut s = Sampler::new(SamplingParams::greedy(), 0);
        let logits = [0.1, 3.0, -1.0, 3.0];
        let out = s.sample(&logits, &[]);
        assert_eq!(out.token, 1);
        let expected = 3.0 - logits.iter().map(|x: &f32| x.exp()).sum::<f32>().ln();
        assert!((out.logprob - expected).abs() < 1e-6);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn top_logprobs_are_sorted_normalised_and_start_with_greedy() {
        let logits: Vec<f32> = (0..300).map(|i| ((i * 37) % 101) as f32 * 0.05).collect();
        let top = top_logprobs(&logits, 20);
        assert_eq!(top.len(), 20);
        assert!(
            top.windows(2).all(|w| w[0].logprob >= w[1].logprob),
            "{top:?}"
        );
        let greedy = Sampler::new(SamplingParams::greedy(), 0).sample(&logits, &[]);
        assert_eq!(top[0], greedy);
        let all = top_logprobs(&logits, logits.len());
        let sum: f64 = all.iter().map(|s| (s.logprob as f64).exp()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        let sum20: f64 = top.iter().map(|s| (s.logprob as f64).exp()).sum();
        assert!(sum20 <= 1.0 + 1e-6);
        // Ties go to the lower id; NaN is skipped; `n` past the vocabulary is clamped.
        let t = top_logprobs(&[1.0, f32::NAN, 2.0, 2.0], 9);
        assert_eq!(t.iter().map(|s| s.token).collect::<Vec<_>>(), [2, 3, 0]);
        assert!(top_logprobs(&logits, 0).is_empty());
    }

    #[test]
    fn top_k_keeps_k_largest() {
        let p = truncated_probs(&[1.0, 4.0, 3.0, 2.0], Some(2), None);
        assert_eq!(p[0], 0.0);
        assert_eq!(p[3], 0.0);
        assert!((p[1] + p[2] - 1.0).abs() < 1e-6);
        assert!(p[1] > p[2]);
    }

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_p() {
        // Probabilities 0.5, 0.3, 0.2 (as logits ln p).
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let p = truncated_probs(&logits, None, Some(0.75));
        assert!(p[0] > 0.0 && p[1] > 0.0 && p[2] == 0.0, "{p:?}");
        assert!((p[0] - 0.625).abs() < 1e-5);
        let p = truncated_probs(&logits, None, Some(0.4));
        assert_eq!(p, vec![1.0, 0.0, 0.0]);
        let p = truncated_probs(&logits, Some(2), Some(0.99));
        assert_eq!(p[2], 0.0);
    }

    #[test]
    fn seeded_sampling_is_deterministic_and_seed_dependent() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(42),
            ..SamplingParams::default()
        };
        let run = |params: &SamplingParams| {
            let mut s = Sampler::new(params.clone(), 0);
            (0..64)
                .map(|_| s.sample(&logits, &[]).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(&params), run(&params));
        let other = SamplingParams {
            seed: Some(43),
            ..params.clone()
        };
        assert_ne!(run(&params), run(&other));
        // With top-k 3 only the three best tokens (ids 6, 13, 20 have the max logit 1.8, etc.)
        // can appear.
        let topk = SamplingParams {
            top_k: Some(3),
            ..params
        };
        assert!(run(&topk).iter().all(|t| [6, 13, 20].contains(t)));
    }

    #[test]
    fn sampling_frequencies_follow_probabilities() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                seed: Some(7),
                ..SamplingParams::default()
            },
            0,
        );
        let ones = (0..4000)
            .filter(|_| s.sample(&logits, &[]).token == 1)
            .count();
        assert!((2850..3150).contains(&ones), "{ones}");
    }

    #[test]
    fn repetition_penalty_matches_transformers() {
        let mut l = [2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0, 99], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
        // Greedy flips once the penalised token drops below the next one.
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: Some(4.0),
                ..SamplingParams::greedy()
            },
            0,
        );
        assert_eq!(s.sample(&[2.0, 1.0], &[0]).token, 1);
    }
}
