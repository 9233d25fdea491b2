//! Paged KV cache: fixed-size blocks, a free list, and per-sequence block tables.
//!
//! The cache is split in two on purpose, as in vLLM V1:
//!
//! - [`BlockAllocator`] is pure bookkeeping (no tensors): a free list of block ids and one
//!   [`BlockTable`] per sequence. The scheduler owns it, so admission and preemption decisions
//!   are testable without a model, and freeing a cancelled sequence's blocks is an O(blocks)
//!   list operation that happens at once.
//! - [`KvStore`] holds the tensors: per layer one K and one V tensor of shape
//!   `(num_blocks * block_size, num_kv_heads, head_dim)`, i.e. a flat array of *slots*. Token
//!   `p` of a sequence lives in slot `table[p / block_size] * block_size + p % block_size`.
//!
//! A sequence therefore wastes at most `block_size - 1` slots (its last, partly filled block)
//! instead of reserving `max_position_embeddings` up front, and sequences of any length share
//! one pool — the property a ragged continuous batch needs.
//!
//! Cost of the correctness-first attention path: each step *gathers* a sequence's K/V from its
//! blocks into a contiguous tensor (`index_select` over slot ids), i.e. it copies
//! `context_len × num_kv_heads × head_dim × 2` floats per layer per sequence. That is the same
//! order as reading the cache once, which attention does anyway, so it costs at most ~2× the
//! memory traffic of a fused paged-attention kernel; replacing it with a kernel that reads
//! blocks in place is a later optimisation that does not change this module's API.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

/// Caller-chosen id of a sequence in the cache (the scheduler uses request ids).
pub type SeqId = u64;

/// The blocks of one sequence, in position order, and how many tokens they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    pub blocks: Vec<u32>,
    /// Token slots reserved (not necessarily computed yet).
    pub reserved: usize,
}

/// Not enough free blocks for a reservation; nothing was allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("kv cache full: need {needed} blocks, {free} free")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub free: usize,
}

/// Free list plus block tables; no tensors (see the module docs).
#[derive(Debug)]
pub struct BlockAllocator {
    block_size: usize,
    num_blocks: usize,
    /// Free block ids; popped from the end, so recently freed (cache-warm) blocks are reused
    /// first.
    free: Vec<u32>,
    tables: HashMap<SeqId, BlockTable>,
}

impl BlockAllocator {
    /// # Panics
    /// If `block_size` is zero or `num_blocks` does not fit a `u32`.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        let top = u32::try_from(num_blocks).expect("num_blocks fits u32");
        Self {
            block_size,
            num_blocks,
            free: (0..top).rev().collect(),
            tables: HashMap::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// How many more blocks `seq` needs to hold `total_tokens` tokens.
    pub fn additional_blocks(&self, seq: SeqId, total_tokens: usize) -> usize {
        let have = self.tables.get(&seq).map_or(0, |t| t.blocks.len());
        self.blocks_for(total_tokens).saturating_sub(have)
    }

    /// Grows `seq`'s table so it holds `total_tokens` tokens (never shrinks it). All or
    /// nothing: on [`OutOfBlocks`] the table is unchanged.
    pub fn reserve(&mut self, seq: SeqId, total_tokens: usize) -> Result<(), OutOfBlocks> {
        let needed = self.additional_blocks(seq, total_tokens);
        if needed > self.free.len() {
            return Err(OutOfBlocks {
                needed,
                free: self.free.len(),
            });
        }
        let table = self.tables.entry(seq).or_default();
        let at = self.free.len() - needed;
        table.blocks.extend(self.free.drain(at..).rev());
        table.reserved = table.reserved.max(total_tokens);
        Ok(())
    }

    /// Returns all of `seq`'s blocks to the free list; returns how many were freed.
    pub fn release(&mut self, seq: SeqId) -> usize {
        match self.tables.remove(&seq) {
            Some(table) => {
                let n = table.blocks.len();
                self.free.extend(table.blocks.into_iter().rev());
                n
            }
            None => 0,
        }
    }

    pub fn table(&self, seq: SeqId) -> Option<&BlockTable> {
        self.tables.get(&seq)
    }
}

/// Slot of token position `pos` for a sequence with block table `blocks`.
pub fn slot_of(blocks: &[u32], block_size: usize, pos: usize) -> Option<usize> {
    blocks
        .get(pos / block_size)
        .map(|&b| b as usize * block_size + pos % block_size)
}

/// The K/V tensors of every layer, indexed by slot (see the module docs).
#[derive(Debug)]
pub struct KvStore {
    pub(crate) layers: Vec<(Tensor, Tensor)>,
    pub(crate) block_size: usize,
    pub(crate) num_blocks: usize,
}

impl KvStore {
    /// Allocates zeroed f32 K/V storage for `num_blocks` blocks on `device`.
    pub fn new(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let shape = (num_blocks * block_size, num_kv_heads, head_dim);
        let layers = (0..num_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, DType::F32, device)?,
                    Tensor::zeros(shape, DType::F32, device)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            layers,
            block_size,
            num_blocks,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Bytes held by the K/V tensors.
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * 4)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_grows_by_blocks_and_release_returns_them() {
        let mut a = BlockAllocator::new(4, 16);
        a.reserve(1, 1).unwrap();
        assert_eq!(a.table(1).unwrap().blocks.len(), 1);
        a.reserve(1, 16).unwrap();
        assert_eq!(a.num_free_blocks(), 3, "16 tokens still fit one block");
        a.reserve(1, 17).unwrap();
        assert_eq!(a.num_free_blocks(), 2);
        a.reserve(2, 32).unwrap();
        assert_eq!(a.num_free_blocks(), 0);
        let err = a.reserve(3, 1).unwrap_err();
        assert_eq!(err, OutOfBlocks { needed: 1, free: 0 });
        assert!(a.table(3).is_none());
        assert_eq!(a.release(1), 2);
        assert_eq!(a.num_free_blocks(), 2);
        assert_eq!(a.release(1), 0, "double release is a no-op");
    }

    #[test]
    fn failed_reserve_leaves_table_unchanged() {
        let mut a = BlockAllocator::new(2, 4);
        a.reserve(7, 4).unwrap();
        assert!(a.reserve(7, 20).is_err());
        assert_eq!(a.table(7).unwrap().blocks.len(), 1);
        assert_eq!(a.num_free_blocks(), 1);
    }

    #[test]
    fn blocks_are_distinct_and_slots_follow_tables() {
        let mut a = BlockAllocator::new(8, 4);
        a.reserve(1, 9).unwrap();
        a.reserve(2, 5).unwrap();
        let t1 = a.table(1).unwrap().blocks.clone();
        let t2 = a.table(2).unwrap().blocks.clone();
        let mut all: Vec<_> = t1.iter().chain(&t2).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 5);
        assert_eq!(slot_of(&t1, 4, 5), Some(t1[1] as usize * 4 + 1));
        assert_eq!(slot_of(&t1, 4, 12), None);
    }
}
