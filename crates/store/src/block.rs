//! Block files: immutable packs of chunks, one file per block.
//!
//! Layout (see `docs/adr/0001-block-layout.md` for why):
//!
//! ```text
//! chunk bytes, concatenated        (offset 0 .. data_len)
//! n × ([32] chunk id | u32 len)    chunk table, in data order
//! u32 n | u64 data_len | "HMBLOCK1"
//! ```
//!
//! The block id is the BLAKE3 of the footer (chunk table and trailer): the table names every
//! chunk by its BLAKE3 id and length, so the footer binds every byte of the block, and writing
//! a block hashes 36 bytes per chunk instead of its data a second time (ADR 0001, "Hashing").
//! Blocks written before that rule have the BLAKE3 of the whole file as their id; [`verify_block`]
//! accepts either. Chunks start at offset 0, so a chunk's offset in the index is its offset in
//! the file. The trailer is written last, which suits streaming writes.
//!
//! A block is written to `tmp/`, fsynced, then renamed to `blocks/<2 hex>/<64 hex>`; only a
//! redb commit afterwards makes it part of the store.

use crate::error::StoreError;
use hub_protocol::manifest::{Hash, MAX_CHUNK_LEN};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Upper bound on a block's chunk data.
pub const MAX_BLOCK_DATA: u64 = 64 * 1024 * 1024;
/// Upper bound on the chunks in one block (as Xet's xorbs).
pub const MAX_BLOCK_CHUNKS: usize = 8192;

const MAGIC: &[u8; 8] = b"HMBLOCK1";
const WRITE_BUF: usize = 1 << 20;
const TRAILER_LEN: u64 = 4 + 8 + 8;
const ENTRY_LEN: u64 = 36;

/// A chunk's place in a block, as the footer table lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEntry {
    pub id: Hash,
    pub offset: u64,
    pub len: u32,
}

/// Where a block lives: `root/blocks/ab/abcd…`.
pub fn block_path(root: &Path, id: &Hash) -> PathBuf {
    let hex = id.to_string();
    root.join("blocks").join(&hex[..2]).join(hex)
}

/// A block being written to a temporary file.
#[derive(Debug)]
pub(crate) struct BlockWriter {
    pub tmp_path: PathBuf,
    /// Chunks are ~64 KiB; writing them 1 MiB at a time halves the write syscalls and lets
    /// the page cache use large folios, which makes reads of the block faster later.
    file: BufWriter<File>,
    pub entries: Vec<BlockEntry>,
    pub data_len: u64,
}

/// A block whose bytes are complete (not yet fsynced or renamed).
#[derive(Debug)]
pub(crate) struct SealedBlock {
    pub id: Hash,
    pub tmp_path: PathBuf,
    pub file: File,
    pub size: u64,
    pub entries: Vec<BlockEntry>,
}

impl BlockWriter {
    pub fn create(tmp_path: PathBuf) -> Result<Self, StoreError> {
        let file =
            File::create_new(&tmp_path).map_err(StoreError::io("create block", &tmp_path))?;
        Ok(Self {
            tmp_path,
            file: BufWriter::with_capacity(WRITE_BUF, file),
            entries: Vec::new(),
            data_len: 0,
        })
    }

    /// Whether `len` more bytes of chunk data still fit.
    pub fn fits(&self, len: usize) -> bool {
        self.entries.len() < MAX_BLOCK_CHUNKS && self.data_len + len as u64 <= MAX_BLOCK_DATA
    }

    /// Appends one chunk and returns its offset. The caller vouches that `id` is the chunk's
    /// BLAKE3 (computed, or checked on arrival): the writer does not hash the data.
    pub fn push(&mut self, id: Hash, chunk: &[u8]) -> Result<u64, StoreError> {
        self.file
            .write_all(chunk)
            .map_err(StoreError::io("write block", &self.tmp_path))?;
        let offset = self.data_len;
        self.entries.push(BlockEntry {
            id,
            offset,
            len: chunk.len() as u32,
        });
        self.data_len += chunk.len() as u64;
        Ok(offset)
    }

    /// Writes the footer and returns the block with its id (the BLAKE3 of the footer).
    pub fn seal(mut self) -> Result<SealedBlock, StoreError> {
        let footer = footer(&self.entries, self.data_len);
        self.file
            .write_all(&footer)
            .map_err(StoreError::io("write block", &self.tmp_path))?;
        let file = self
            .file
            .into_inner()
            .map_err(|e| StoreError::io("write block", &self.tmp_path)(e.into_error()))?;
        Ok(SealedBlock {
            id: Hash::of(&footer),
            size: self.data_len + footer.len() as u64,
            tmp_path: self.tmp_path,
            file,
            entries: self.entries,
        })
    }
}

/// The footer of a block holding `entries` (in data order) and `data_len` bytes of chunks.
fn footer(entries: &[BlockEntry], data_len: u64) -> Vec<u8> {
    let mut footer = Vec::with_capacity(entries.len() * ENTRY_LEN as usize + TRAILER_LEN as usize);
    for e in entries {
        footer.extend_from_slice(&e.id.0);
        footer.extend_from_slice(&e.len.to_le_bytes());
    }
    footer.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    footer.extend_from_slice(&data_len.to_le_bytes());
    footer.extend_from_slice(MAGIC);
    footer
}

/// Why a block file failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockDefect {
    #[error("block file is missing or unreadable: {0}")]
    Unreadable(String),
    #[error("block file is {actual} bytes, the index says {expected}")]
    Size { expected: u64, actual: u64 },
    #[error("block footer is malformed")]
    Footer,
    #[error("chunk at offset {offset} does not match its id")]
    Chunk { offset: u64 },
    #[error("block footer does not hash to the block id")]
    Hash,
}

/// Reads and checks the footer of an open block file of `size` bytes. Never trusts the
/// footer's counts beyond what the file size allows.
pub fn read_footer(file: &mut File, size: u64) -> Result<Vec<BlockEntry>, BlockDefect> {
    if size < TRAILER_LEN {
        return Err(BlockDefect::Footer);
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.seek(SeekFrom::Start(size - TRAILER_LEN))
        .and_then(|_| file.read_exact(&mut trailer))
        .map_err(|e| BlockDefect::Unreadable(e.to_string()))?;
    if &trailer[12..] != MAGIC {
        return Err(BlockDefect::Footer);
    }
    let n = u64::from(u32::from_le_bytes([
        trailer[0], trailer[1], trailer[2], trailer[3],
    ]));
    let mut dl = [0u8; 8];
    dl.copy_from_slice(&trailer[4..12]);
    let data_len = u64::from_le_bytes(dl);
    if n > MAX_BLOCK_CHUNKS as u64
        || data_len > MAX_BLOCK_DATA
        || data_len + n * ENTRY_LEN + TRAILER_LEN != size
    {
        return Err(BlockDefect::Footer);
    }
    let mut table = vec![0u8; (n * ENTRY_LEN) as usize];
    file.seek(SeekFrom::Start(data_len))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|e| BlockDefect::Unreadable(e.to_string()))?;
    let mut entries = Vec::with_capacity(n as usize);
    let mut offset = 0u64;
    for e in table.chunks_exact(ENTRY_LEN as usize) {
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[..32]);
        let len = u32::from_le_bytes([e[32], e[33], e[34], e[35]]);
        if len == 0 || len > MAX_CHUNK_LEN {
            return Err(BlockDefect::Footer);
        }
        entries.push(BlockEntry {
            id: Hash(id),
            offset,
            len,
        });
        offset += u64::from(len);
    }
    if offset != data_len {
        return Err(BlockDefect::Footer);
    }
    Ok(entries)
}

/// Re-verifies a whole block file: size, footer, every chunk id and the block id (the BLAKE3
/// of the footer, or of the whole file for blocks written before that rule). Reads the file
/// once, in chunk-sized pieces; returns the chunk table.
pub fn verify_block(
    path: &Path,
    id: &Hash,
    expected_size: u64,
) -> Result<Vec<BlockEntry>, BlockDefect> {
    let mut file = File::open(path).map_err(|e| BlockDefect::Unreadable(e.to_string()))?;
    let actual = file
        .metadata()
        .map_err(|e| BlockDefect::Unreadable(e.to_string()))?
        .len();
    if actual != expected_size {
        return Err(BlockDefect::Size {
            expected: expected_size,
            actual,
        });
    }
    let entries = read_footer(&mut file, actual)?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| BlockDefect::Unreadable(e.to_string()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; MAX_CHUNK_LEN as usize];
    for e in &entries {
        let chunk = &mut buf[..e.len as usize];
        file.read_exact(chunk)
            .map_err(|err| BlockDefect::Unreadable(err.to_string()))?;
        if Hash::of(chunk) != e.id {
            return Err(BlockDefect::Chunk { offset: e.offset });
        }
        hasher.update(chunk);
    }
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)
        .map_err(|e| BlockDefect::Unreadable(e.to_string()))?;
    hasher.update(&rest);
    // `read_footer` checked that the rest is exactly the footer.
    if Hash::of(&rest) != *id && Hash(*hasher.finalize().as_bytes()) != *id {
        return Err(BlockDefect::Hash);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_seal_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::create(dir.path().join("t")).unwrap();
        for chunk in [&b"hello"[..], b"world!"] {
            w.push(Hash::of(chunk), chunk).unwrap();
        }
        let sealed = w.seal().unwrap();
        drop(sealed.file);
        let bytes = std::fs::read(&sealed.tmp_path).unwrap();
        assert_eq!(
            Hash::of(&bytes[11..]),
            sealed.id,
            "the id is the footer's BLAKE3"
        );
        assert_eq!(bytes.len() as u64, sealed.size);
        assert_eq!(&bytes[..11], b"helloworld!");
        let entries = verify_block(&sealed.tmp_path, &sealed.id, sealed.size).unwrap();
        assert_eq!(entries, sealed.entries);
        assert_eq!(entries[1].offset, 5);
        // A block written under the old rule (id = BLAKE3 of the whole file) still verifies.
        assert_eq!(
            verify_block(&sealed.tmp_path, &Hash::of(&bytes), sealed.size).unwrap(),
            entries
        );

        // Any flipped byte is caught, never a panic.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            std::fs::write(dir.path().join("bad"), &bad).unwrap();
            assert!(verify_block(&dir.path().join("bad"), &sealed.id, sealed.size).is_err());
        }
        assert!(matches!(
            verify_block(&dir.path().join("missing"), &sealed.id, 1),
            Err(BlockDefect::Unreadable(_))
        ));
    }
}
