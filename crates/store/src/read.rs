//! Reading stored files: `Read + Seek` over the chunks, for HTTP Range and partial fetches.
//!
//! Opening a file resolves every chunk to its block location once (about 50 bytes per 64 KiB
//! chunk, 8 MB for a 10 GiB file), so seeking is a binary search and a read is a `pread` on the
//! block file. Each chunk is checked against its BLAKE3 id before any of its bytes are returned
//! (unless verification is turned off with [`FileReader::set_verify`], or the chunk was verified
//! from the same block a moment ago: [`crate::recent`]): a corrupt block is an `InvalidData`
//! error, not wrong bytes (ADR 0001, "Serving", says what the recent-verification window
//! trades). Whole chunks that fit the caller's buffer are read straight into it; partial chunks
//! go through one chunk-sized buffer; [`FileReader::read_owned`] reads runs of whole chunks into
//! new buffers without zero-filling them.

use crate::Inner;
use crate::block::block_path;
use crate::error::StoreError;
use crate::index::{CHUNKS, ChunkLoc, FILES, MANIFESTS};
use hub_protocol::manifest::{Hash, Manifest, Sha256};
use redb::ReadableDatabase;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A stored file opened for reading. Blocking I/O: use it from a blocking thread.
#[derive(Debug)]
pub struct FileReader {
    inner: Arc<Inner>,
    size: u64,
    sha256: Sha256,
    /// Start offset of each chunk in the file.
    starts: Vec<u64>,
    /// Chunk id and location, parallel to `starts`.
    chunks: Vec<(Hash, ChunkLoc)>,
    pos: u64,
    verify: bool,
    open_block: Option<(Hash, File)>,
    /// Index of the chunk held in `buf`, if any.
    cached: Option<usize>,
    buf: Vec<u8>,
}

/// Looks up a manifest by its id (`None` when the store has none by that id).
pub(crate) fn load_manifest_by_id(
    inner: &Inner,
    id: &Hash,
) -> Result<Option<Manifest>, StoreError> {
    let txn = inner.db.begin_read().map_err(StoreError::db)?;
    let manifests = txn.open_table(MANIFESTS).map_err(StoreError::db)?;
    let Some(bytes) = manifests.get(&id.0).map_err(StoreError::db)? else {
        return Ok(None);
    };
    Manifest::decode(bytes.value())
        .map(Some)
        .map_err(|_| StoreError::Corrupt {
            what: "undecodable manifest",
            id: *id,
        })
}

/// Looks up a file's manifest by SHA-256.
pub(crate) fn load_manifest(
    inner: &Inner,
    sha256: &Sha256,
) -> Result<(Hash, Manifest), StoreError> {
    let txn = inner.db.begin_read().map_err(StoreError::db)?;
    let files = txn.open_table(FILES).map_err(StoreError::db)?;
    let Some(mid) = files
        .get(&sha256.0)
        .map_err(StoreError::db)?
        .map(|g| Hash(*g.value()))
    else {
        return Err(StoreError::NotFound { sha256: *sha256 });
    };
    let manifests = txn.open_table(MANIFESTS).map_err(StoreError::db)?;
    let bytes = manifests
        .get(&mid.0)
        .map_err(StoreError::db)?
        .ok_or(StoreError::Corrupt {
            what: "missing manifest",
            id: mid,
        })?;
    let manifest = Manifest::decode(bytes.value()).map_err(|_| StoreError::Corrupt {
        what: "undecodable manifest",
        id: mid,
    })?;
    Ok((mid, manifest))
}

impl FileReader {
    pub(crate) fn open(inner: Arc<Inner>, sha256: &Sha256) -> Result<Self, StoreError> {
        let (_, manifest) = load_manifest(&inner, sha256)?;
        let txn = inner.db.begin_read().map_err(StoreError::db)?;
        let table = txn.open_table(CHUNKS).map_err(StoreError::db)?;
        let mut starts = Vec::with_capacity(manifest.chunks.len());
        let mut chunks = Vec::with_capacity(manifest.chunks.len());
        let mut pos = 0u64;
        for c in &manifest.chunks {
            let loc = table
                .get(&c.id.0)
                .map_err(StoreError::db)?
                .and_then(|g| ChunkLoc::decode(g.value()))
                .filter(|l| l.len == c.len)
                .ok_or(StoreError::Corrupt {
                    what: "missing chunk",
                    id: c.id,
                })?;
            starts.push(pos);
            chunks.push((c.id, loc));
            pos += u64::from(c.len);
        }
        Ok(Self {
            inner,
            size: manifest.size,
            sha256: *sha256,
            starts,
            chunks,
            pos: 0,
            verify: true,
            open_block: None,
            cached: None,
            buf: Vec::new(),
        })
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The file's SHA-256.
    pub fn sha256(&self) -> Sha256 {
        self.sha256
    }

    /// Turns per-chunk BLAKE3 verification on (the default) or off (for data already verified
    /// by `fsck`, or when measuring raw read speed).
    pub fn set_verify(&mut self, verify: bool) {
        self.verify = verify;
    }

    /// Reads `len` bytes at `offset` (clamped to the end of the file) into a new buffer.
    pub fn read_range(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let len = len.min(self.size.saturating_sub(offset) as usize);
        let mut out = vec![0u8; len];
        self.seek(SeekFrom::Start(offset))?;
        self.read_exact(&mut out)?;
        Ok(out)
    }

    /// The open block file of chunk `i` (kept open across reads of the same block).
    fn block_of(&mut self, i: usize) -> io::Result<&File> {
        let block = self.chunks[i].1.block;
        if self.open_block.as_ref().is_none_or(|(b, _)| *b != block) {
            let path = block_path(&self.inner.root, &block);
            let f = File::open(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("open block {block}: {e}")))?;
            self.open_block = Some((block, f));
        }
        Ok(&self.open_block.as_ref().expect("just opened").1)
    }

    /// Reads chunks `i..j` (contiguous in one block) into `dst`, exactly their total length,
    /// and verifies each.
    fn load(&mut self, i: usize, j: usize, dst: &mut [u8]) -> io::Result<()> {
        let offset = self.chunks[i].1.offset;
        self.block_of(i)?.read_exact_at(dst, offset)?;
        self.check(i, j, dst)
    }

    /// Checks chunks `i..j`, whose bytes are `data`, against their ids: skipped when
    /// verification is off, and for a chunk verified from the same block a moment ago
    /// ([`crate::recent`]).
    fn check(&self, i: usize, j: usize, data: &[u8]) -> io::Result<()> {
        if !self.verify {
            return Ok(());
        }
        let recent = &self.inner.recent;
        let mut at = 0;
        for (id, l) in &self.chunks[i..j] {
            let chunk = &data[at..at + l.len as usize];
            at += chunk.len();
            if recent.fresh(id, &l.block) {
                continue;
            }
            if Hash::of(chunk) != *id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("chunk {id} in block {} is corrupt", l.block),
                ));
            }
            recent.verified(id, &l.block);
        }
        Ok(())
    }

    /// The whole chunks from `i` on that lie back to back in `i`'s block and fit in `max`
    /// bytes: the end of the run and its length (0 when chunk `i` alone exceeds `max`).
    fn run(&self, i: usize, max: usize) -> (usize, usize) {
        let first = self.chunks[i].1;
        let (mut j, mut total) = (i, 0usize);
        while let Some((_, l)) = self.chunks.get(j) {
            if l.block != first.block
                || l.offset != first.offset + total as u64
                || total + l.len as usize > max
            {
                break;
            }
            total += l.len as usize;
            j += 1;
        }
        (j, total)
    }

    /// Reads the next bytes of the file, at most `max` (and at least one byte unless at the
    /// end), into a new buffer, verified as [`Read::read`] does. From a chunk boundary it
    /// reads a run of whole chunks of one block with one `read` syscall per run and no
    /// zero-filling of the buffer: the serving path's read (`hub-gateway`'s downloads).
    pub fn read_owned(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let left = self.size.saturating_sub(self.pos);
        if left == 0 || max == 0 {
            return Ok(Vec::new());
        }
        let i = self.starts.partition_point(|&s| s <= self.pos) - 1;
        let (j, total) = if self.pos == self.starts[i] && self.cached != Some(i) {
            self.run(i, max)
        } else {
            (i, 0)
        };
        if total == 0 {
            // Inside a chunk (after a seek), or a chunk larger than `max`: the copying path.
            let mut out = vec![0u8; max.min(usize::try_from(left).unwrap_or(usize::MAX))];
            let n = self.read(&mut out)?;
            out.truncate(n);
            return Ok(out);
        }
        let offset = self.chunks[i].1.offset;
        let mut file = self.block_of(i)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut out = Vec::with_capacity(total);
        // `Take<&File>::read_to_end` reads into the spare capacity without zeroing it first.
        file.take(total as u64).read_to_end(&mut out)?;
        if out.len() != total {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "block {} is shorter than its index says",
                    self.chunks[i].1.block
                ),
            ));
        }
        self.check(i, j, &out)?;
        self.pos += total as u64;
        Ok(out)
    }
}

impl FileReader {
    /// Copies bytes of the chunk at the current position into `out` (non-empty).
    fn step(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let i = self.starts.partition_point(|&s| s <= self.pos) - 1;
        let within = (self.pos - self.starts[i]) as usize;
        let len = self.chunks[i].1.len as usize;
        if within == 0 && out.len() >= len && self.cached != Some(i) {
            // Whole chunks that fit go straight into `out`, as many adjacent ones of the same
            // block as fit, in one read.
            let (j, total) = self.run(i, out.len());
            self.load(i, j, &mut out[..total])?;
            self.pos += total as u64;
            return Ok(total);
        }
        if self.cached != Some(i) {
            let mut buf = std::mem::take(&mut self.buf);
            buf.resize(len, 0);
            let loaded = self.load(i, i + 1, &mut buf);
            self.buf = buf;
            self.cached = loaded.is_ok().then_some(i);
            loaded?;
        }
        let n = out.len().min(len - within);
        out[..n].copy_from_slice(&self.buf[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Read for FileReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut written = 0;
        while written < out.len() && self.pos < self.size {
            match self.step(&mut out[written..]) {
                Ok(n) => written += n,
                // Report the bytes already copied; the error comes back on the next call.
                Err(_) if written > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }
}

impl Seek for FileReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        self.pos = target;
        Ok(target)
    }
}
