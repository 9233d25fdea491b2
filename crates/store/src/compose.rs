//! Files made of byte ranges of stored files ([`Store::compose`]; a Xet upload's file from the
//! objects of its xorbs, ADR 0010). The new file's manifest references the chunks the ranges
//! already cover; only the pieces of chunks that a range's ends cut are stored anew (at most
//! two per range, each under [`MAX_CHUNK`](crate::chunker::MAX_CHUNK)). The bytes are still
//! read once, for the file's SHA-256 (hashed on its own thread), which is checked against
//! what the caller expects before anything is written: a wrong claim keeps nothing. The
//! manifest's `blake3` is its chunk-list hash, as for every import.

use crate::error::StoreError;
use crate::import::{NewBlock, Piece, commit, pack_blocks, seal_blocks};
use crate::index::CHUNKS;
use crate::{Expected, FileInfo, Store};
use hub_protocol::manifest::{ChunkRef, Hash, Manifest, Sha256};
use redb::ReadableDatabase;
use sha2::Digest;
use std::collections::HashSet;
use std::io;
use std::sync::mpsc::sync_channel;
use std::thread;

/// Bytes `[offset, offset + len)` of the stored file `sha256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub sha256: Sha256,
    pub offset: u64,
    pub len: u64,
}

/// Bytes read (and hashed) at a time.
const READ: usize = 1 << 20;

/// One chunk of the new file: a stored chunk, or the piece of one that a slice's end cut.
enum Part {
    Stored(ChunkRef),
    Cut(Vec<u8>),
}

pub(crate) fn compose(
    store: &Store,
    slices: &[Slice],
    expected: Option<Expected>,
) -> Result<FileInfo, StoreError> {
    let inner = &store.inner;
    let _shared = inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
    inner.check_headroom(0)?;
    let mut parts = Vec::new();
    for s in slices {
        plan(store, s, &mut parts)?;
    }
    let (size, sha256) = hash_slices(store, slices)?;
    if let Some(e) = expected
        && (e.sha256 != sha256 || e.size != size)
    {
        return Err(StoreError::Mismatch {
            sha256,
            size,
            expected: e.sha256,
            expected_size: e.size,
        });
    }
    // Cut pieces the store does not hold yet go into new blocks.
    let mut chunks = Vec::with_capacity(parts.len());
    let mut fresh = Vec::new();
    {
        let read = inner.db.begin_read().map_err(StoreError::db)?;
        let committed = read.open_table(CHUNKS).map_err(StoreError::db)?;
        let mut seen = HashSet::new();
        for p in parts {
            match p {
                Part::Stored(c) => chunks.push(c),
                Part::Cut(bytes) => {
                    let id = Hash::of(&bytes);
                    chunks.push(ChunkRef {
                        id,
                        len: bytes.len() as u32,
                    });
                    if seen.insert(id) && committed.get(&id.0).map_err(StoreError::db)?.is_none() {
                        fresh.push((id, bytes));
                    }
                }
            }
        }
    }
    let new_bytes = fresh.iter().map(|(_, b)| b.len() as u64).sum();
    let manifest = Manifest {
        size,
        sha256,
        blake3: Manifest::chunk_list_hash(&chunks),
        chunks,
    };
    let mut placed = Vec::new();
    let result = write_and_commit(store, fresh, &manifest, new_bytes, &mut placed);
    inner.release_placed(&placed, result.is_err());
    result
}

/// The parts of the new file that slice `s` makes.
fn plan(store: &Store, s: &Slice, parts: &mut Vec<Part>) -> Result<(), StoreError> {
    if s.len == 0 {
        return Ok(());
    }
    let (_, m) = store.manifest(&s.sha256)?;
    let end = s
        .offset
        .checked_add(s.len)
        .filter(|e| *e <= m.size)
        .ok_or_else(|| {
            StoreError::Source(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a slice ends past the end of {}", s.sha256),
            ))
        })?;
    let mut reader = None;
    let mut pos = 0u64;
    for c in &m.chunks {
        let (start, stop) = (pos, pos + u64::from(c.len));
        pos = stop;
        if stop <= s.offset {
            continue;
        }
        if start >= end {
            break;
        }
        let (a, b) = (start.max(s.offset), stop.min(end));
        if (a, b) == (start, stop) {
            parts.push(Part::Stored(*c));
            continue;
        }
        if reader.is_none() {
            let mut r = store.open_file(&s.sha256)?;
            // The composed file's SHA-256 covers these bytes.
            r.set_verify(false);
            reader = Some(r);
        }
        if let Some(r) = reader.as_mut() {
            let bytes = r
                .read_range(a, (b - a) as usize)
                .map_err(StoreError::Source)?;
            if bytes.len() as u64 != b - a {
                return Err(StoreError::Source(io::Error::other("stored file is short")));
            }
            parts.push(Part::Cut(bytes));
        }
    }
    Ok(())
}

/// Size and SHA-256 of the slices' bytes, read in order once; the hash runs on its own
/// thread, beside the reads.
fn hash_slices(store: &Store, slices: &[Slice]) -> Result<(u64, Sha256), StoreError> {
    thread::scope(|s| {
        let (sha_tx, sha_rx) = sync_channel::<Vec<u8>>(4);
        let sha_h = s.spawn(move || {
            let mut h = sha2::Sha256::new();
            for b in sha_rx {
                h.update(&b[..]);
            }
            Sha256(h.finalize().into())
        });
        let read = (|| {
            let mut size = 0u64;
            for sl in slices.iter().filter(|sl| sl.len > 0) {
                let mut r = store.open_file(&sl.sha256)?;
                r.set_verify(false);
                let mut done = 0u64;
                while done < sl.len {
                    let n = (sl.len - done).min(READ as u64) as usize;
                    let b = r
                        .read_range(sl.offset + done, n)
                        .map_err(StoreError::Source)?;
                    if b.len() != n {
                        return Err(StoreError::Source(io::Error::other("stored file is short")));
                    }
                    done += n as u64;
                    if sha_tx.send(b).is_err() {
                        return Err(StoreError::StageStopped);
                    }
                }
                size += sl.len;
            }
            Ok(size)
        })();
        drop(sha_tx);
        let sha = sha_h.join().map_err(|_| StoreError::WorkerPanic)?;
        Ok((read?, sha))
    })
}

/// Writes the new chunks into blocks (the import's packer and sealer), then records them and
/// the manifest. Blocks renamed into place are pushed to `placed`.
fn write_and_commit(
    store: &Store,
    fresh: Vec<(Hash, Vec<u8>)>,
    manifest: &Manifest,
    new_bytes: u64,
    placed: &mut Vec<Hash>,
) -> Result<FileInfo, StoreError> {
    let inner = &*store.inner;
    let mut blocks: Vec<NewBlock> = Vec::new();
    if !fresh.is_empty() {
        let (sealed, packed) = thread::scope(|s| {
            let (pack_tx, pack_rx) = sync_channel::<(Hash, Piece)>(16);
            let (seal_tx, seal_rx) = sync_channel(1);
            let pack_h = s.spawn(move || pack_blocks(inner, pack_rx, seal_tx));
            let seal_h = s.spawn(move || seal_blocks(inner, seal_rx));
            for (id, bytes) in fresh {
                if pack_tx.send((id, Piece::Owned(bytes))).is_err() {
                    break; // the packer failed; its error is reported below
                }
            }
            drop(pack_tx);
            let (new, sealed) = seal_h.join().map_err(|_| StoreError::WorkerPanic)?;
            blocks = new;
            let packed = pack_h.join().map_err(|_| StoreError::WorkerPanic)?;
            Ok::<_, StoreError>((sealed, packed))
        })?;
        placed.extend(blocks.iter().map(|b| b.id));
        // A stage that fails hangs up its channel: report the real cause.
        match (packed, sealed) {
            (Err(StoreError::StageStopped) | Ok(_), Err(e)) | (Err(e), _) => return Err(e),
            (Ok(_), Ok(())) => {}
        }
    }
    commit(inner, &blocks, manifest, new_bytes)
}
