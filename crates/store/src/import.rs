//! Streaming import: one pass over the bytes, spread over threads.
//!
//! ```text
//!            ┌─► sha256 thread ──────────────────────────────────────────┐
//! reader ────┤                                                           │
//! (caller)   └─► chunker ─► chunk ids + dedup ─► packer ─► sealer        │
//!                 (gear)     (BLAKE3, index)    (write,   (fsync,        │
//!                                  │             footer)  rename)        │
//!                                  └──── manifest ──────────────┴────────┴─► one redb commit
//! ```
//!
//! Each byte is hashed twice, no more: SHA-256 (the LFS oid) and BLAKE3 once, as part of its
//! chunk. The manifest's BLAKE3 field and the block id are derived from chunk ids (ADR 0001,
//! "Hashing"). The caller's thread reads 1 MiB buffers and hands the same `Arc` to two bounded
//! channels, so the bytes are read once and hashed in parallel: SHA-256 (the slowest stage,
//! even with SHA-NI) runs alone on its thread, while chunking, chunk ids, block writes and
//! fsync run on others, all connected by bounded channels.
//!
//! [`import_verified`] is the seeder's path: chunks that arrive already checked against a
//! manifest's ids go into blocks with the manifest's boundaries (no chunker, no chunk BLAKE3);
//! SHA-256 is still computed over every byte and must equal the manifest's. On 2 cores the stages share the CPU; the split
//! keeps any one of them from being the bottleneck. Memory is bounded by the channel depths (a few MiB), plus the format prefix
//! (at most [`MAX_HEADER`](crate::chunker::format::MAX_HEADER), only for recognised headers).
//!
//! Nothing is visible until the final commit: block files are durable (fsync, rename, fsync
//! of the directory) before the redb transaction that references them commits. A crash before
//! that leaves only orphan files, which [`Store::open`](crate::Store::open) deletes. An import
//! that fails (a reader error, a full disk, content other than [`Expected`]) deletes its
//! temporary files and the blocks it placed, unless another import in flight placed the same
//! block or the index lists it (see `Inner::placed`): a failed upload leaves nothing.
//!
//! Free space is checked before an import of known size and before each new block
//! ([`StoreConfig::reserved_bytes`](crate::StoreConfig::reserved_bytes)), so a large upload
//! to a nearly full disk fails fast, and `ENOSPC` anywhere is [`StoreError::StorageFull`].

use crate::block::{BlockEntry, BlockWriter, SealedBlock, block_path};
use crate::chunker::Chunker;
use crate::chunker::format::{Probe, probe};
use crate::error::StoreError;
use crate::index::{BLOCKS, BlockRecord, CHUNKS, ChunkLoc, FILES, MANIFESTS};
use crate::{Expected, FileInfo, Inner, VerifiedChunk};
use hub_protocol::manifest::{ChunkRef, Hash, MAX_CHUNK_LEN, Manifest, Sha256};
use redb::{ReadableDatabase, ReadableTable};
use sha2::Digest;
use std::collections::{BTreeSet, HashSet};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

const BUF: usize = 1 << 20;
const DEPTH: usize = 4;

type Buf = Arc<Vec<u8>>;

/// A block made durable by this import, to be recorded in the index.
#[derive(Debug)]
pub(crate) struct NewBlock {
    pub(crate) id: Hash,
    size: u64,
    entries: Vec<BlockEntry>,
}

/// Appends to `buf` until it holds `want` bytes or the reader ends. Returns whether it ended.
fn fill(r: &mut dyn Read, buf: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    while buf.len() < want {
        let old = buf.len();
        buf.resize(want, 0);
        match r.read(&mut buf[old..]) {
            Ok(0) => {
                buf.truncate(old);
                return Ok(true);
            }
            Ok(n) => buf.truncate(old + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(old),
            Err(e) => {
                buf.truncate(old);
                return Err(e);
            }
        }
    }
    Ok(false)
}

pub(crate) fn import(
    inner: &Inner,
    reader: &mut dyn Read,
    size_hint: Option<u64>,
    expected: Option<Expected>,
) -> Result<FileInfo, StoreError> {
    let _shared = inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
    inner.check_headroom(size_hint.unwrap_or(0))?;

    // Format detection: read as much prefix as the header needs (bounded by MAX_HEADER).
    let mut prefix = Vec::new();
    let mut eof = fill(reader, &mut prefix, BUF).map_err(StoreError::Source)?;
    let cuts = if !inner.config.format_aware_chunking {
        Vec::new()
    } else {
        loop {
            match probe(&prefix, eof, size_hint) {
                Probe::Cuts(c) => break c,
                Probe::NeedMore(n) if !eof && n > prefix.len() => {
                    eof = fill(reader, &mut prefix, n).map_err(StoreError::Source)?;
                }
                _ => break Vec::new(),
            }
        }
    };
    let tensor_aware = !cuts.is_empty();

    let mut placed = Vec::new();
    let result = import_placed(inner, reader, prefix, eof, cuts, expected, &mut placed);
    inner.release_placed(&placed, result.is_err());
    let mut info = result?;
    info.tensor_aware = tensor_aware;
    Ok(info)
}

/// The import proper; every block it renamed into `blocks/` is pushed to `placed`, for the
/// caller to release (and, on failure, delete).
fn import_placed(
    inner: &Inner,
    reader: &mut dyn Read,
    prefix: Vec<u8>,
    mut eof: bool,
    cuts: Vec<u64>,
    expected: Option<Expected>,
    placed: &mut Vec<Hash>,
) -> Result<FileInfo, StoreError> {
    let (size, sha, written, blocks) = thread::scope(|s| {
        let (sha_tx, sha_rx) = sync_channel::<Buf>(DEPTH);
        let (ck_tx, ck_rx) = sync_channel::<Buf>(DEPTH);
        let (wr_tx, wr_rx) = sync_channel::<(Buf, Vec<usize>)>(DEPTH);
        let (seal_tx, seal_rx) = sync_channel::<SealedBlock>(1);

        let sha_h = s.spawn(move || {
            let mut h = sha2::Sha256::new();
            for b in sha_rx {
                h.update(&b[..]);
            }
            Sha256(h.finalize().into())
        });
        let ck_h = s.spawn(move || {
            let mut chunker = Chunker::new(cuts);
            for b in ck_rx {
                let mut ends = Vec::new();
                let mut off = 0;
                while let Some(n) = chunker.next_cut(&b[off..]) {
                    off += n;
                    ends.push(off);
                }
                if wr_tx.send((b, ends)).is_err() {
                    break;
                }
            }
        });
        let (pack_tx, pack_rx) = sync_channel::<(Hash, Piece)>(4 * DEPTH);
        let wr_h = s.spawn(move || write_chunks(inner, wr_rx, pack_tx));
        let pack_h = s.spawn(move || pack_blocks(inner, pack_rx, seal_tx));
        let seal_h = s.spawn(move || seal_blocks(inner, seal_rx));

        let mut size = 0u64;
        let mut read_err = None;
        let mut buf = prefix;
        loop {
            if !buf.is_empty() {
                size += buf.len() as u64;
                let b = Arc::new(buf);
                if sha_tx.send(b.clone()).is_err() || ck_tx.send(b).is_err() {
                    break; // a worker failed; its error is reported below
                }
            }
            if eof {
                break;
            }
            buf = Vec::with_capacity(BUF);
            match fill(reader, &mut buf, BUF) {
                Ok(e) => eof = e,
                Err(e) => {
                    read_err = Some(e);
                    break;
                }
            }
        }
        drop((sha_tx, ck_tx));
        // The sealer first: whatever else failed, the blocks it placed must be known.
        let (blocks, sealed) = seal_h.join().map_err(|_| StoreError::WorkerPanic)?;
        placed.extend(blocks.iter().map(|b| b.id));
        let blocks = sealed.map(|()| blocks);
        let sha = sha_h.join().map_err(|_| StoreError::WorkerPanic)?;
        ck_h.join().map_err(|_| StoreError::WorkerPanic)?;
        let chunks = wr_h.join().map_err(|_| StoreError::WorkerPanic)?;
        let new_bytes = pack_h.join().map_err(|_| StoreError::WorkerPanic)?;
        if let Some(e) = read_err {
            return Err(StoreError::Source(e));
        }
        match (chunks, new_bytes, blocks) {
            (Ok(c), Ok(n), Ok(b)) => Ok((size, sha, (c, n), b)),
            // A stage that fails hangs up its channels, so the stages feeding it fail with
            // `StageStopped`; report the real cause.
            (c, n, b) => {
                let errs: Vec<StoreError> =
                    [c.err(), n.err(), b.err()].into_iter().flatten().collect();
                let cause = errs
                    .iter()
                    .position(|e| !matches!(e, StoreError::StageStopped))
                    .unwrap_or(0);
                Err(errs
                    .into_iter()
                    .nth(cause)
                    .unwrap_or(StoreError::StageStopped))
            }
        }
    })?;

    let (chunks, new_bytes) = written;
    if let Some(expected) = expected
        && (expected.sha256 != sha || expected.size != size)
    {
        return Err(StoreError::Mismatch {
            sha256: sha,
            size,
            expected: expected.sha256,
            expected_size: expected.size,
        });
    }
    let manifest = Manifest {
        size,
        sha256: sha,
        blake3: Manifest::chunk_list_hash(&chunks),
        chunks,
    };
    commit(inner, &blocks, &manifest, new_bytes)
}

/// Records the new blocks, their chunks and the file's manifest in one redb transaction:
/// the moment an import becomes visible.
pub(crate) fn commit(
    inner: &Inner,
    blocks: &[NewBlock],
    manifest: &Manifest,
    new_bytes: u64,
) -> Result<FileInfo, StoreError> {
    let encoded = manifest.encode();
    let manifest_id = Hash::of(&encoded);
    let sha = manifest.sha256;

    let txn = inner.db.begin_write().map_err(StoreError::db)?;
    {
        let mut blocks_t = txn.open_table(BLOCKS).map_err(StoreError::db)?;
        let mut chunks_t = txn.open_table(CHUNKS).map_err(StoreError::db)?;
        for b in blocks {
            let rec = BlockRecord {
                size: b.size,
                chunks: b.entries.len() as u32,
            };
            blocks_t
                .insert(&b.id.0, &rec.encode()[..])
                .map_err(StoreError::db)?;
            for e in &b.entries {
                // First writer wins: a concurrent import may have stored the same chunk.
                if chunks_t.get(&e.id.0).map_err(StoreError::db)?.is_none() {
                    let loc = ChunkLoc {
                        block: b.id,
                        offset: e.offset,
                        len: e.len,
                    };
                    chunks_t
                        .insert(&e.id.0, &loc.encode()[..])
                        .map_err(StoreError::db)?;
                }
            }
        }
        let mut manifests_t = txn.open_table(MANIFESTS).map_err(StoreError::db)?;
        manifests_t
            .insert(&manifest_id.0, &encoded[..])
            .map_err(StoreError::db)?;
        let mut files_t = txn.open_table(FILES).map_err(StoreError::db)?;
        files_t
            .insert(&sha.0, &manifest_id.0)
            .map_err(StoreError::db)?;
    }
    txn.commit().map_err(StoreError::db)?;
    tracing::debug!(%sha, size = manifest.size, new_bytes, blocks = blocks.len(), "imported");

    Ok(FileInfo {
        sha256: sha,
        blake3: manifest.blake3,
        size: manifest.size,
        manifest_id,
        chunks: manifest.chunks.len(),
        new_bytes,
        tensor_aware: false,
    })
}

/// Imports `manifest`'s file from `chunks`, in the manifest's order, keeping its boundaries
/// (see [`Store::import_verified`](crate::Store::import_verified)).
pub(crate) fn import_verified(
    inner: &Inner,
    manifest: &Manifest,
    chunks: &mut dyn Iterator<Item = io::Result<VerifiedChunk>>,
) -> Result<FileInfo, StoreError> {
    let _shared = inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
    inner.check_headroom(manifest.size)?;
    let mut placed = Vec::new();
    let result = import_verified_placed(inner, manifest, true, chunks, &mut placed);
    inner.release_placed(&placed, result.is_err());
    result
}

/// Imports a file from chunks whose boundaries and ids the caller computed as it verified
/// them (see [`Store::import_chunks`](crate::Store::import_chunks)): as [`import_verified`],
/// but the SHA-256 is the one computed here, not checked against an announced one.
pub(crate) fn import_chunks(
    inner: &Inner,
    refs: Vec<ChunkRef>,
    chunks: &mut dyn Iterator<Item = io::Result<VerifiedChunk>>,
) -> Result<FileInfo, StoreError> {
    let manifest = Manifest {
        size: refs.iter().map(|c| u64::from(c.len)).sum(),
        sha256: Sha256([0; 32]),
        blake3: Manifest::chunk_list_hash(&refs),
        chunks: refs,
    };
    if let Some((index, c)) = manifest
        .chunks
        .iter()
        .enumerate()
        .find(|(_, c)| c.len == 0 || c.len > MAX_CHUNK_LEN)
    {
        // Reported against the largest length a chunk may have.
        return Err(StoreError::ChunkLen {
            index,
            len: c.len as usize,
            expected: MAX_CHUNK_LEN,
        });
    }
    let _shared = inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
    inner.check_headroom(manifest.size)?;
    let mut placed = Vec::new();
    let result = import_verified_placed(inner, &manifest, false, chunks, &mut placed);
    inner.release_placed(&placed, result.is_err());
    result
}

fn import_verified_placed(
    inner: &Inner,
    manifest: &Manifest,
    check_sha256: bool,
    chunks: &mut dyn Iterator<Item = io::Result<VerifiedChunk>>,
    placed: &mut Vec<Hash>,
) -> Result<FileInfo, StoreError> {
    let (sha, new_bytes, blocks) = thread::scope(|s| {
        let (sha_tx, sha_rx) = sync_channel::<Buf>(4 * DEPTH);
        let (pack_tx, pack_rx) = sync_channel::<(Hash, Piece)>(4 * DEPTH);
        let (seal_tx, seal_rx) = sync_channel::<SealedBlock>(1);
        let sha_h = s.spawn(move || {
            let mut h = sha2::Sha256::new();
            for b in sha_rx {
                h.update(&b[..]);
            }
            Sha256(h.finalize().into())
        });
        let pack_h = s.spawn(move || pack_blocks(inner, pack_rx, seal_tx));
        let seal_h = s.spawn(move || seal_blocks(inner, seal_rx));

        // Feeds both stages; stops at the first error (its own, or a stage that hung up).
        let mut feed = || -> Result<(), StoreError> {
            let read = inner.db.begin_read().map_err(StoreError::db)?;
            let committed = read.open_table(CHUNKS).map_err(StoreError::db)?;
            let mut seen = HashSet::new();
            for (index, c) in manifest.chunks.iter().enumerate() {
                let chunk = chunks.next().unwrap_or_else(|| {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "chunks ended before the manifest",
                    ))
                });
                let bytes = match chunk.map_err(StoreError::Source)? {
                    VerifiedChunk::Bytes(b) => b,
                    VerifiedChunk::Stored => read_stored(inner, &c.id)?,
                };
                if bytes.len() != c.len as usize {
                    return Err(StoreError::ChunkLen {
                        index,
                        len: bytes.len(),
                        expected: c.len,
                    });
                }
                let b = Arc::new(bytes);
                sha_tx
                    .send(b.clone())
                    .map_err(|_| StoreError::StageStopped)?;
                if seen.insert(c.id) && committed.get(&c.id.0).map_err(StoreError::db)?.is_none() {
                    let len = b.len();
                    pack_tx
                        .send((c.id, Piece::Shared(b, 0, len)))
                        .map_err(|_| StoreError::StageStopped)?;
                }
            }
            Ok(())
        };
        let fed = feed();
        drop((sha_tx, pack_tx));
        let (blocks, sealed) = seal_h.join().map_err(|_| StoreError::WorkerPanic)?;
        placed.extend(blocks.iter().map(|b| b.id));
        let sha = sha_h.join().map_err(|_| StoreError::WorkerPanic)?;
        let new_bytes = pack_h.join().map_err(|_| StoreError::WorkerPanic)?;
        // A stage that fails makes the feeder's sends fail: report the real cause.
        match (fed, new_bytes, sealed) {
            (Ok(()), Ok(n), Ok(())) => Ok((sha, n, blocks)),
            (f, n, b) => {
                let errs: Vec<StoreError> =
                    [f.err(), n.err(), b.err()].into_iter().flatten().collect();
                let cause = errs
                    .iter()
                    .position(|e| !matches!(e, StoreError::StageStopped))
                    .unwrap_or(0);
                Err(errs
                    .into_iter()
                    .nth(cause)
                    .unwrap_or(StoreError::StageStopped))
            }
        }
    })?;
    if !check_sha256 {
        let manifest = Manifest {
            sha256: sha,
            ..manifest.clone()
        };
        return commit(inner, &blocks, &manifest, new_bytes);
    }
    if sha != manifest.sha256 {
        return Err(StoreError::Mismatch {
            sha256: sha,
            size: manifest.size,
            expected: manifest.sha256,
            expected_size: manifest.size,
        });
    }
    commit(inner, &blocks, manifest, new_bytes)
}

/// A stored chunk, read back and checked against its id.
fn read_stored(inner: &Inner, id: &Hash) -> Result<Vec<u8>, StoreError> {
    let txn = inner.db.begin_read().map_err(StoreError::db)?;
    let chunks = txn.open_table(CHUNKS).map_err(StoreError::db)?;
    let gone = || StoreError::Corrupt {
        what: "stored chunk is gone",
        id: *id,
    };
    let loc = chunks
        .get(&id.0)
        .map_err(StoreError::db)?
        .and_then(|g| ChunkLoc::decode(g.value()))
        .ok_or_else(gone)?;
    let path = block_path(&inner.root, &loc.block);
    let file = std::fs::File::open(&path).map_err(StoreError::io("open", &path))?;
    let mut buf = vec![0u8; loc.len as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, loc.offset)
        .map_err(StoreError::io("read", &path))?;
    if Hash::of(&buf) != *id {
        return Err(StoreError::Corrupt {
            what: "corrupt chunk",
            id: *id,
        });
    }
    Ok(buf)
}

/// Bytes of one chunk: a range of a shared read buffer, or its own copy when the chunk
/// spans two buffers.
pub(crate) enum Piece {
    Shared(Buf, usize, usize),
    Owned(Vec<u8>),
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Shared(b, start, end) => &b[*start..*end],
            Piece::Owned(v) => v,
        }
    }
}

/// The chunk-id thread: hashes each chunk and passes on those not stored yet. Returns the
/// file's chunk list.
fn write_chunks(
    inner: &Inner,
    rx: Receiver<(Buf, Vec<usize>)>,
    pack_tx: SyncSender<(Hash, Piece)>,
) -> Result<Vec<ChunkRef>, StoreError> {
    let read = inner.db.begin_read().map_err(StoreError::db)?;
    let committed = read.open_table(CHUNKS).map_err(StoreError::db)?;
    let mut seen = HashSet::new();
    let mut refs = Vec::new();
    let mut chunk = |piece: Piece| -> Result<(), StoreError> {
        let id = Hash::of(piece.bytes());
        refs.push(ChunkRef {
            id,
            len: piece.bytes().len() as u32,
        });
        if seen.contains(&id) || committed.get(&id.0).map_err(StoreError::db)?.is_some() {
            return Ok(());
        }
        seen.insert(id);
        // The packer only hangs up after failing; its error is reported by the join.
        pack_tx
            .send((id, piece))
            .map_err(|_| StoreError::StageStopped)
    };
    let mut carry: Vec<u8> = Vec::new();
    for (buf, ends) in rx {
        let mut start = 0;
        for end in ends {
            if carry.is_empty() {
                chunk(Piece::Shared(buf.clone(), start, end))?;
            } else {
                carry.extend_from_slice(&buf[start..end]);
                chunk(Piece::Owned(std::mem::take(&mut carry)))?;
            }
            start = end;
        }
        carry.extend_from_slice(&buf[start..]);
    }
    if !carry.is_empty() {
        chunk(Piece::Owned(carry))?;
    }
    Ok(refs)
}

/// The packer thread: appends new chunks to block files (write + block hash), and hands each
/// full block to the sealer. Returns the bytes of new chunks written. On failure it deletes
/// the temporary file of the block it was writing.
pub(crate) fn pack_blocks(
    inner: &Inner,
    rx: Receiver<(Hash, Piece)>,
    seal_tx: SyncSender<SealedBlock>,
) -> Result<u64, StoreError> {
    let mut tmp = None;
    let result = pack_blocks_into(inner, rx, seal_tx, &mut tmp);
    if result.is_err()
        && let Some(path) = tmp
    {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// [`pack_blocks`]; `tmp` names the temporary file not yet handed to the sealer.
fn pack_blocks_into(
    inner: &Inner,
    rx: Receiver<(Hash, Piece)>,
    seal_tx: SyncSender<SealedBlock>,
    tmp: &mut Option<PathBuf>,
) -> Result<u64, StoreError> {
    let mut block: Option<BlockWriter> = None;
    let mut new_bytes = 0;
    for (id, piece) in rx {
        let data = piece.bytes();
        if let Some(full) = block.take_if(|b| !b.fits(data.len())) {
            // The sealer only hangs up after failing; its error is reported by the join.
            seal_tx
                .send(full.seal()?)
                .map_err(|_| StoreError::StageStopped)?;
            *tmp = None;
        }
        let b = match &mut block {
            Some(b) => b,
            None => {
                inner.check_headroom(0)?;
                let path = inner.tmp_path();
                let writer = BlockWriter::create(path.clone())?;
                *tmp = Some(path);
                block.insert(writer)
            }
        };
        b.push(id, data)?;
        new_bytes += data.len() as u64;
    }
    if let Some(b) = block {
        seal_tx
            .send(b.seal()?)
            .map_err(|_| StoreError::StageStopped)?;
        *tmp = None;
    }
    Ok(new_bytes)
}

/// The sealer thread: makes each block durable under its final name. Runs beside the writer
/// so that fsync overlaps hashing of the next block. Returns the blocks it placed in
/// `blocks/` (each registered in `Inner::placed`), also when it failed.
pub(crate) fn seal_blocks(
    inner: &Inner,
    rx: Receiver<SealedBlock>,
) -> (Vec<NewBlock>, Result<(), StoreError>) {
    let mut out = Vec::new();
    let mut dirs = BTreeSet::<PathBuf>::new();
    let mut result = Ok(());
    for b in rx {
        if result.is_err() {
            let _ = std::fs::remove_file(&b.tmp_path);
            continue;
        }
        result = (|| {
            b.file
                .sync_all()
                .map_err(StoreError::io("sync block", &b.tmp_path))?;
            let dest = block_path(&inner.root, &b.id);
            let dir = dest.parent().unwrap_or(&inner.root).to_path_buf();
            if !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(StoreError::io("create", &dir))?;
                dirs.insert(inner.root.join("blocks"));
            }
            inner.place(b.id);
            if let Err(e) = std::fs::rename(&b.tmp_path, &dest) {
                inner.release_placed(&[b.id], false);
                return Err(StoreError::io("rename block", &dest)(e));
            }
            dirs.insert(dir);
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&b.tmp_path);
            continue;
        }
        out.push(NewBlock {
            id: b.id,
            size: b.size,
            entries: b.entries,
        });
    }
    if result.is_ok() {
        for dir in dirs {
            if let Err(e) = crate::sync_dir(&dir) {
                result = Err(e);
                break;
            }
        }
    }
    (out, result)
}

impl Inner {
    /// Fails with [`StoreError::StorageFull`] unless the disk has `need` bytes free beyond
    /// the reserved headroom.
    pub(crate) fn check_headroom(&self, need: u64) -> Result<(), StoreError> {
        let reserved = self.config.reserved_bytes;
        if reserved == 0 && need == 0 {
            return Ok(());
        }
        let stat = rustix::fs::statvfs(&self.root)
            .map_err(|e| StoreError::io("check free space of", &self.root)(e.into()))?;
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        if available < reserved.saturating_add(need) {
            tracing::warn!(
                available,
                reserved,
                need,
                store = %self.root.display(),
                "refusing a write: the disk is (nearly) full"
            );
            return Err(StoreError::StorageFull {
                op: "keep the reserved free space on",
                path: self.root.clone(),
                source: None,
            });
        }
        Ok(())
    }

    /// Records that an import is about to rename block `id` into `blocks/`.
    fn place(&self, id: Hash) {
        *self
            .placed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default() += 1;
    }

    /// Ends an import's claim on the blocks it placed. With `delete` (the import failed), a
    /// block no other import in flight placed and the index does not list is deleted; the
    /// lock is held meanwhile, so no import can place the same block between the check and
    /// the deletion. Errors here are logged: the import's own error is what the caller sees,
    /// and a block left behind is an orphan that `gc`, `fsck` and the next open remove.
    pub(crate) fn release_placed(&self, ids: &[Hash], delete: bool) {
        if ids.is_empty() {
            return;
        }
        let mut placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        let mut unclaimed = Vec::new();
        for id in ids {
            if let Some(n) = placed.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    placed.remove(id);
                    unclaimed.push(*id);
                }
            }
        }
        if !delete || unclaimed.is_empty() {
            return;
        }
        let listed = |id: &Hash| -> Result<bool, StoreError> {
            let txn = self.db.begin_read().map_err(StoreError::db)?;
            let blocks = txn.open_table(BLOCKS).map_err(StoreError::db)?;
            Ok(blocks.get(&id.0).map_err(StoreError::db)?.is_some())
        };
        for id in unclaimed {
            match listed(&id) {
                Ok(true) => {}
                Ok(false) => {
                    let path = block_path(&self.root, &id);
                    if let Err(error) = std::fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), %error, "could not delete the block of a failed import");
                    }
                }
                Err(error) => {
                    tracing::warn!(block = %id, %error, "could not check the block of a failed import");
                }
            }
        }
    }

    pub(crate) fn tmp_path(&self) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}.blk", std::process::id()))
    }
}
