//! What the single-node forward pass ([`crate::model::Llama::forward`]) and a shard's
//! ([`crate::shard::stage`]) share: the layout of one step's packed ragged batch over the paged
//! KV cache, and one layer's attention over it. Each caller brings its own head counts (a shard
//! holds a slice of the heads) and its own projections.

use candle_core::{Device, Tensor};

use super::BatchItem;
use crate::config::LlamaConfig;
use crate::kv_cache::{KvStore, slot_of};

/// An item's block table does not cover its positions (callers check batches first, so this
/// means a caller bug rather than bad input; still an error, never a panic).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepLayoutError {
    #[error("block table too short")]
    BlockTable,
    #[error("tensor op")]
    Tensor(#[from] candle_core::Error),
}

/// Checks a step's batch against the model and the KV store before anything is computed:
/// `layers` is how many layers the caller holds (the whole model, or a shard's stage), `what`
/// names the caller in the message. The text of the first fault found.
pub(crate) fn check_batch(
    batch: &[BatchItem<'_>],
    cfg: &LlamaConfig,
    kv: &KvStore,
    layers: usize,
    what: &str,
) -> Result<(), String> {
    if kv.layers.len() != layers {
        return Err(format!(
            "kv store has {} layers, {what} {layers}",
            kv.layers.len()
        ));
    }
    for (i, item) in batch.iter().enumerate() {
        let end = item.start_pos + item.tokens.len();
        if item.tokens.is_empty() {
            return Err(format!("item {i}: no tokens"));
        }
        if let Some(t) = item.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(format!("item {i}: token {t} outside vocabulary"));
        }
        if end > cfg.max_position_embeddings {
            return Err(format!(
                "item {i}: position {end} beyond max_position_embeddings"
            ));
        }
        if item.block_table.len() * kv.block_size < end {
            return Err(format!("item {i}: block table too short for {end} tokens"));
        }
        if let Some(b) = item
            .block_table
            .iter()
            .find(|&&b| b as usize >= kv.num_blocks)
        {
            return Err(format!("item {i}: block {b} outside the store"));
        }
    }
    Ok(())
}

/// One step's batch, packed: token ids, per-token RoPE rows, and per item the cache slots its
/// new tokens go to (runs of consecutive slots), the slots of its whole context and its causal
/// mask (GQA: the `groups` query heads of a K/V head stacked as rows).
pub(crate) struct StepLayout {
    /// The items' tokens, concatenated.
    pub ids: Vec<u32>,
    /// Where each item's tokens start in `ids`.
    pub offsets: Vec<usize>,
    lens: Vec<usize>,
    cos: Tensor,
    sin: Tensor,
    /// Per item: (token offset, first slot, length).
    write_runs: Vec<Vec<(usize, usize, usize)>>,
    /// Per item: position of its first new token.
    starts: Vec<usize>,
    /// Per item: the cache slot of every position of its context.
    slots: Vec<Vec<u32>>,
    /// Off the CPU only (candle's ops): per item its slots as a tensor and its causal mask.
    candle: Option<(Vec<Tensor>, Vec<Option<Tensor>>)>,
    groups: usize,
}

impl StepLayout {
    /// `cos`/`sin`: the model's RoPE tables; `groups`: query heads per K/V head.
    pub(crate) fn new(
        batch: &[BatchItem<'_>],
        block_size: usize,
        groups: usize,
        cos: &Tensor,
        sin: &Tensor,
        dev: &Device,
    ) -> Result<Self, StepLayoutError> {
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut offsets = Vec::with_capacity(batch.len());
        let mut lens = Vec::with_capacity(batch.len());
        let mut write_runs = Vec::with_capacity(batch.len());
        let mut starts = Vec::with_capacity(batch.len());
        let mut all_slots = Vec::with_capacity(batch.len());
        let mut context_slots = Vec::new();
        let mut masks = Vec::new();
        for item in batch {
            let n = item.tokens.len();
            let end = item.start_pos + n;
            offsets.push(ids.len());
            lens.push(n);
            ids.extend_from_slice(item.tokens);
            positions.extend((item.start_pos..end).map(|p| p as u32));

            let slots: Vec<u32> = (0..end)
                .map(|p| slot_of(item.block_table, block_size, p).map(|s| s as u32))
                .collect::<Option<_>>()
                .ok_or(StepLayoutError::BlockTable)?;
            let mut runs: Vec<(usize, usize, usize)> = Vec::new();
            for (i, &slot) in slots[item.start_pos..].iter().enumerate() {
                match runs.last_mut() {
                    Some((_, s, len)) if *s + *len == slot as usize => *len += 1,
                    _ => runs.push((i, slot as usize, 1)),
                }
            }
            write_runs.push(runs);
            starts.push(item.start_pos);
            if dev.is_cpu() {
                all_slots.push(slots);
                continue;
            }
            context_slots.push(Tensor::from_vec(slots, end, dev)?);
            masks.push(if n > 1 {
                // Row r is query token r % n (the g query heads of a K/V head are stacked).
                let mut m = vec![0f32; groups * n * end];
                for r in 0..groups * n {
                    let pos = item.start_pos + r % n;
                    m[r * end + pos + 1..(r + 1) * end].fill(f32::NEG_INFINITY);
                }
                Some(Tensor::from_vec(m, (groups * n, end), dev)?)
            } else {
                None
            });
        }
        let total = ids.len();
        let positions = Tensor::from_vec(positions, total, dev)?;
        Ok(Self {
            ids,
            offsets,
            lens,
            cos: cos.index_select(&positions, 0)?,
            sin: sin.index_select(&positions, 0)?,
            write_runs,
            starts,
            slots: all_slots,
            candle: (!dev.is_cpu()).then_some((context_slots, masks)),
            groups,
        })
    }

    /// Tokens in the step.
    pub(crate) fn total(&self) -> usize {
        self.ids.len()
    }

    /// One layer's attention: `q` `(1, total, nh, hd)`, `k` `(1, total, nkv, hd)` (both before
    /// their optional per-head norms and RoPE), `v` `(total, nkv, hd)`. Writes the new K/V into
    /// the layer's cache and attends each item over its context; `(total, nh * hd)`, before the
    /// output projection.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        (q_norm, k_norm, eps): (Option<&Tensor>, Option<&Tensor>, f32),
        (k_cache, v_cache): (&Tensor, &Tensor),
        (nh, nkv, hd): (usize, usize, usize),
    ) -> candle_core::Result<Tensor> {
        let q = match q_norm {
            Some(w) => candle_nn::ops::rms_norm(&q, w, eps)?,
            None => q,
        };
        let k = match k_norm {
            Some(w) => candle_nn::ops::rms_norm(&k, w, eps)?,
            None => k,
        };
        let q = candle_nn::rotary_emb::rope_thd(&q, &self.cos, &self.sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope_thd(&k, &self.cos, &self.sin)?.squeeze(0)?;
        for (s, &off) in self.offsets.iter().enumerate() {
            for &(t, slot, len) in &self.write_runs[s] {
                k_cache.slice_set(&k.narrow(0, off + t, len)?.contiguous()?, 0, slot)?;
                v_cache.slice_set(&v.narrow(0, off + t, len)?.contiguous()?, 0, slot)?;
            }
        }
        let Some((context_slots, masks)) = &self.candle else {
            return self.attend_cpu(&q, (k_cache, v_cache), (nh, nkv, hd));
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let groups = self.groups;
        let mut outs = Vec::with_capacity(self.lens.len());
        for (s, (&off, &n)) in self.offsets.iter().zip(&self.lens).enumerate() {
            let ctx = context_slots[s].dims1()?;
            // (ctx, kv, d) -> (kv, ctx, d)
            let ks = k_cache
                .index_select(&context_slots[s], 0)?
                .transpose(0, 1)?
                .contiguous()?;
            let vs = v_cache
                .index_select(&context_slots[s], 0)?
                .transpose(0, 1)?
                .contiguous()?;
            // (n, h, d) -> (h, n, d) -> (kv, g*n, d)
            let qs = q
                .narrow(0, off, n)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((nkv, groups * n, hd))?;
            let mut att = (qs.matmul(&ks.t()?)? * scale)?;
            if let Some(mask) = &masks[s] {
                att = att.broadcast_add(mask)?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            debug_assert_eq!(att.dims(), &[nkv, groups * n, ctx]);
            let o = att
                .matmul(&vs)?
                .reshape((nh, n, hd))?
                .transpose(0, 1)?
                .reshape((n, nh * hd))?;
            outs.push(o);
        }
        Tensor::cat(&outs, 0)
    }

    /// [`StepLayout::attend`] on the CPU: every sequence and head in one
    /// [`hub_quant::attention::paged_attention`] call over the cache's memory (no per-sequence
    /// gathers, masks or small matmuls), on the caller's rayon pool.
    fn attend_cpu(
        &self,
        q: &Tensor,
        (k_cache, v_cache): (&Tensor, &Tensor),
        (nh, nkv, hd): (usize, usize, usize),
    ) -> candle_core::Result<Tensor> {
        use hub_quant::attention::{AttnSeq, AttnShape, paged_attention};
        let total = self.total();
        let q = q.contiguous()?;
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k_cache.storage_and_layout();
        let (vs, vl) = v_cache.storage_and_layout();
        let (
            candle_core::Storage::Cpu(qs),
            candle_core::Storage::Cpu(ks),
            candle_core::Storage::Cpu(vs),
        ) = (&*qs, &*ks, &*vs)
        else {
            candle_core::bail!("CPU attention on tensors off the CPU");
        };
        fn f32s<'a>(
            s: &'a candle_core::CpuStorage,
            l: &candle_core::Layout,
        ) -> candle_core::Result<&'a [f32]> {
            let (a, b) = l
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("attention: non-contiguous".into()))?;
            s.as_slice::<f32>().map(|x| &x[a..b])
        }
        let (q, k, v) = (f32s(qs, ql)?, f32s(ks, kl)?, f32s(vs, vl)?);
        let seqs: Vec<AttnSeq<'_>> = (0..self.lens.len())
            .map(|s| AttnSeq {
                token_offset: self.offsets[s],
                len: self.lens[s],
                start: self.starts[s],
                slots: &self.slots[s],
            })
            .collect();
        let shape = AttnShape {
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        if q.len() != total * nh * hd || k.len() != v.len() || !k.len().is_multiple_of(nkv * hd) {
            candle_core::bail!("attention: q or cache of the wrong size");
        }
        let mut out = vec![0f32; total * nh * hd];
        paged_attention(q, k, v, &seqs, shape, &mut out);
        Tensor::from_vec(out, (total, nh * hd), k_cache.device())
    }
}
