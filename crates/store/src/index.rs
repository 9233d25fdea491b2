//! The redb index: what the block files mean.
//!
//! Tables (keys are raw 32-byte digests, values fixed-width little-endian records):
//! - `chunks`: chunk id → [`ChunkLoc`] (block id, offset, length);
//! - `blocks`: block id → [`BlockRecord`] (file size, chunk count). A block is live exactly when
//!   it is listed here; files under `blocks/` that are not listed are orphans of an import that
//!   never committed, deleted on open;
//! - `manifests`: manifest id → canonical manifest encoding;
//! - `files`: sha256 → manifest id (what `has` answers);
//! - `roots`: sha256 → () — files the store keeps through `gc` on its own.
//!
//! An import commits all of its rows in one write transaction, after its block files are
//! durable on disk; redb commits are durable once `commit` returns.

use hub_protocol::manifest::Hash;
use redb::TableDefinition;

pub const CHUNKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("chunks");
pub const BLOCKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blocks");
pub const MANIFESTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("manifests");
pub const FILES: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("files");
pub const ROOTS: TableDefinition<&[u8; 32], ()> = TableDefinition::new("roots");

/// Where a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLoc {
    pub block: Hash,
    pub offset: u64,
    pub len: u32,
}

impl ChunkLoc {
    pub fn encode(&self) -> [u8; 44] {
        let mut out = [0u8; 44];
        out[..32].copy_from_slice(&self.block.0);
        out[32..40].copy_from_slice(&self.offset.to_le_bytes());
        out[40..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; 44] = b.try_into().ok()?;
        let mut block = [0u8; 32];
        block.copy_from_slice(&b[..32]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[32..40]);
        Some(Self {
            block: Hash(block),
            offset: u64::from_le_bytes(off),
            len: u32::from_le_bytes([b[40], b[41], b[42], b[43]]),
        })
    }
}

/// What the index records about a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRecord {
    pub size: u64,
    pub chunks: u32,
}

impl BlockRecord {
    pub fn encode(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.size.to_le_bytes());
        out[8..].copy_from_slice(&self.chunks.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; 12] = b.try_into().ok()?;
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[..8]);
        Some(Self {
            size: u64::from_le_bytes(size),
            chunks: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let loc = ChunkLoc {
            block: Hash([3; 32]),
            offset: 1 << 40,
            len: 77,
        };
        assert_eq!(ChunkLoc::decode(&loc.encode()), Some(loc));
        assert_eq!(ChunkLoc::decode(&[0; 43]), None);
        let rec = BlockRecord { size: 9, chunks: 2 };
        assert_eq!(BlockRecord::decode(&rec.encode()), Some(rec));
        assert_eq!(BlockRecord::decode(&[]), None);
    }
}
