//! `fsck`, `gc` and `stats`: whole-store passes.
//!
//! Both `fsck` and `gc` take the store's maintenance lock exclusively, so no import runs
//! meanwhile: an import may deduplicate against any committed chunk, and neither pass may
//! remove one from under it.
//!
//! Order of effects, chosen so a crash at any point leaves a consistent store:
//! - `fsck` moves a corrupt block file to `quarantine/` *before* committing the index change;
//!   a crash in between leaves an index entry whose file is gone, which the next `fsck`
//!   reports and quarantines again.
//! - `gc` commits the index change *before* deleting block files; a crash in between leaves
//!   unreferenced files, which `Store::open` deletes as orphans.

use crate::block::{BlockDefect, block_path, verify_block};
use crate::error::StoreError;
use crate::index::{BLOCKS, BlockRecord, CHUNKS, ChunkLoc, FILES, MANIFESTS, ROOTS};
use crate::{Inner, Store};
use hub_protocol::manifest::{Hash, Manifest, Sha256};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Progress of a long pass, for a CLI progress line.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Progress {
    /// What is being checked: `"blocks"` or `"files"`.
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
    pub bytes: u64,
}

/// A block that failed verification and was moved to `quarantine/`.
#[derive(Debug, Clone, Serialize)]
pub struct CorruptBlock {
    pub id: Hash,
    pub reason: String,
}

/// What `fsck` found and did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct FsckReport {
    pub blocks_checked: u64,
    pub bytes_checked: u64,
    pub chunks_checked: u64,
    pub files_checked: u64,
    /// Blocks whose bytes did not verify; quarantined and dropped from the index.
    pub corrupt_blocks: Vec<CorruptBlock>,
    /// Index rows pointing at chunks that are not where they claim to be; dropped.
    pub bad_chunk_entries: u64,
    /// Files that can no longer be fully read; dropped from the index, to be fetched again.
    pub damaged_files: Vec<Sha256>,
    /// Unreferenced block files (left by an interrupted import) that were deleted.
    pub orphans_removed: u64,
}

impl FsckReport {
    /// No corruption found (orphans are the normal trace of an interrupted import).
    pub fn is_clean(&self) -> bool {
        self.corrupt_blocks.is_empty()
            && self.bad_chunk_entries == 0
            && self.damaged_files.is_empty()
    }
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct GcReport {
    pub files_kept: u64,
    pub files_removed: u64,
    pub blocks_removed: u64,
    pub bytes_freed: u64,
}

/// Size and dedup figures of a store.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct Stats {
    pub files: u64,
    /// Sum of file sizes.
    pub logical_bytes: u64,
    /// Sum of block file sizes on disk.
    pub stored_bytes: u64,
    pub blocks: u64,
    pub chunks: u64,
    /// `logical_bytes / stored_bytes` (1.0 for an empty store).
    pub dedup_ratio: f64,
}

impl Store {
    /// Re-verifies every block (size, footer, each chunk id, block id), every chunk index row
    /// and every file's manifest. Corrupt blocks are moved to `quarantine/` and dropped from
    /// the index with the files that needed them, so the store stays consistent and the node
    /// can fetch those files again. `progress` is called after each block and file.
    pub fn fsck(&self, mut progress: impl FnMut(Progress)) -> Result<FsckReport, StoreError> {
        let inner = &*self.inner;
        let _exclusive = inner.gc_lock.write().unwrap_or_else(|e| e.into_inner());
        // Nothing read before the check is vouched for after it.
        inner.recent.clear();
        let mut report = FsckReport {
            orphans_removed: inner.remove_orphans()?,
            ..FsckReport::default()
        };

        let txn = inner.db.begin_read().map_err(StoreError::db)?;
        let blocks: Vec<(Hash, Option<BlockRecord>)> = {
            let t = txn.open_table(BLOCKS).map_err(StoreError::db)?;
            let mut v = Vec::new();
            for row in t.iter().map_err(StoreError::db)? {
                let (k, val) = row.map_err(StoreError::db)?;
                v.push((Hash(*k.value()), BlockRecord::decode(val.value())));
            }
            v
        };
        let total = blocks.len() as u64;
        let mut good = HashSet::<(Hash, Hash, u64, u32)>::new();
        let mut corrupt = Vec::new();
        for (i, (id, rec)) in blocks.iter().enumerate() {
            let result = match rec {
                Some(rec) => verify_block(&block_path(&inner.root, id), id, rec.size),
                None => Err(BlockDefect::Footer),
            };
            match result {
                Ok(entries) => {
                    report.bytes_checked += rec.map_or(0, |r| r.size);
                    for e in entries {
                        good.insert((e.id, *id, e.offset, e.len));
                    }
                }
                Err(defect) => {
                    tracing::warn!(block = %id, %defect, "corrupt block");
                    corrupt.push(*id);
                    report.corrupt_blocks.push(CorruptBlock {
                        id: *id,
                        reason: defect.to_string(),
                    });
                }
            }
            report.blocks_checked += 1;
            progress(Progress {
                phase: "blocks",
                done: i as u64 + 1,
                total,
                bytes: report.bytes_checked,
            });
        }

        let mut valid_chunks = HashMap::<Hash, u32>::new();
        let mut bad_chunks = Vec::new();
        {
            let t = txn.open_table(CHUNKS).map_err(StoreError::db)?;
            for row in t.iter().map_err(StoreError::db)? {
                let (k, v) = row.map_err(StoreError::db)?;
                let id = Hash(*k.value());
                report.chunks_checked += 1;
                match ChunkLoc::decode(v.value()) {
                    Some(l) if good.contains(&(id, l.block, l.offset, l.len)) => {
                        valid_chunks.insert(id, l.len);
                    }
                    _ => bad_chunks.push(id),
                }
            }
        }
        drop(good);
        // Chunks of corrupt blocks are counted as bad rows too; report only the others.
        report.bad_chunk_entries = bad_chunks.len() as u64;

        let mut damaged = Vec::new();
        {
            let files = txn.open_table(FILES).map_err(StoreError::db)?;
            let manifests = txn.open_table(MANIFESTS).map_err(StoreError::db)?;
            let total = files.len().map_err(StoreError::db)?;
            for (i, row) in files.iter().map_err(StoreError::db)?.enumerate() {
                let (k, v) = row.map_err(StoreError::db)?;
                let (sha, mid) = (Sha256(*k.value()), Hash(*v.value()));
                let ok = match manifests.get(&mid.0).map_err(StoreError::db)? {
                    Some(bytes) if Hash::of(bytes.value()) == mid => {
                        match Manifest::decode(bytes.value()) {
                            Ok(m) => {
                                m.sha256 == sha
                                    && m.chunks
                                        .iter()
                                        .all(|c| valid_chunks.get(&c.id) == Some(&c.len))
                            }
                            Err(_) => false,
                        }
                    }
                    _ => false,
                };
                if !ok {
                    tracing::warn!(%sha, "damaged file");
                    damaged.push((sha, mid));
                    report.damaged_files.push(sha);
                }
                report.files_checked += 1;
                progress(Progress {
                    phase: "files",
                    done: i as u64 + 1,
                    total,
                    bytes: report.bytes_checked,
                });
            }
        }
        if corrupt.is_empty() {
            // Rows of corrupt blocks are expected to be bad; any other bad row is its own
            // finding. With no corrupt block, all bad rows are findings.
        } else {
            let corrupt_set: HashSet<Hash> = corrupt.iter().copied().collect();
            let t = txn.open_table(CHUNKS).map_err(StoreError::db)?;
            let mut own = 0;
            for id in &bad_chunks {
                let in_corrupt = t
                    .get(&id.0)
                    .map_err(StoreError::db)?
                    .and_then(|g| ChunkLoc::decode(g.value()))
                    .is_some_and(|l| corrupt_set.contains(&l.block));
                if !in_corrupt {
                    own += 1;
                }
            }
            report.bad_chunk_entries = own;
        }
        drop(txn);

        if corrupt.is_empty() && bad_chunks.is_empty() && damaged.is_empty() {
            return Ok(report);
        }
        let qdir = inner.root.join("quarantine");
        for id in &corrupt {
            let from = block_path(&inner.root, id);
            if from.exists() {
                std::fs::rename(&from, qdir.join(id.to_string()))
                    .map_err(StoreError::io("quarantine block", &from))?;
            }
        }
        crate::sync_dir(&qdir)?;
        let txn = inner.db.begin_write().map_err(StoreError::db)?;
        {
            let mut t = txn.open_table(BLOCKS).map_err(StoreError::db)?;
            for id in &corrupt {
                t.remove(&id.0).map_err(StoreError::db)?;
            }
            let mut t = txn.open_table(CHUNKS).map_err(StoreError::db)?;
            for id in &bad_chunks {
                t.remove(&id.0).map_err(StoreError::db)?;
            }
            let mut files = txn.open_table(FILES).map_err(StoreError::db)?;
            let mut manifests = txn.open_table(MANIFESTS).map_err(StoreError::db)?;
            for (sha, mid) in &damaged {
                files.remove(&sha.0).map_err(StoreError::db)?;
                manifests.remove(&mid.0).map_err(StoreError::db)?;
            }
        }
        txn.commit().map_err(StoreError::db)?;
        Ok(report)
    }

    /// Keeps every file whose SHA-256 is in `roots` or in the persistent roots
    /// ([`Store::add_root`]) and everything they reference; removes all other files, and
    /// deletes every block no kept file references. A block holding any chunk of a kept file is
    /// never deleted.
    pub fn gc(&self, roots: &[Sha256]) -> Result<GcReport, StoreError> {
        let inner = &*self.inner;
        let _exclusive = inner.gc_lock.write().unwrap_or_else(|e| e.into_inner());
        let mut report = GcReport::default();
        let mut removed_blocks = Vec::new();
        let txn = inner.db.begin_write().map_err(StoreError::db)?;
        {
            let mut keep: HashSet<Sha256> = roots.iter().copied().collect();
            for row in txn
                .open_table(ROOTS)
                .map_err(StoreError::db)?
                .iter()
                .map_err(StoreError::db)?
            {
                keep.insert(Sha256(*row.map_err(StoreError::db)?.0.value()));
            }
            let mut files = txn.open_table(FILES).map_err(StoreError::db)?;
            let mut manifests = txn.open_table(MANIFESTS).map_err(StoreError::db)?;
            let mut live_manifests = HashSet::new();
            let mut live_chunks = HashSet::new();
            let mut dead_files = Vec::new();
            for row in files.iter().map_err(StoreError::db)? {
                let (k, v) = row.map_err(StoreError::db)?;
                let (sha, mid) = (Sha256(*k.value()), Hash(*v.value()));
                if !keep.contains(&sha) {
                    dead_files.push(sha);
                    continue;
                }
                report.files_kept += 1;
                let bytes = manifests.get(&mid.0).map_err(StoreError::db)?;
                let m = bytes.and_then(|b| Manifest::decode(b.value()).ok()).ok_or(
                    StoreError::Corrupt {
                        what: "manifest of a kept file (run fsck)",
                        id: mid,
                    },
                )?;
                live_manifests.insert(mid);
                live_chunks.extend(m.chunks.iter().map(|c| c.id));
            }
            for sha in &dead_files {
                files.remove(&sha.0).map_err(StoreError::db)?;
            }
            report.files_removed = dead_files.len() as u64;
            manifests
                .retain(|k, _| live_manifests.contains(&Hash(*k)))
                .map_err(StoreError::db)?;

            let mut chunks = txn.open_table(CHUNKS).map_err(StoreError::db)?;
            let mut live_blocks = HashSet::new();
            for id in &live_chunks {
                let loc = chunks
                    .get(&id.0)
                    .map_err(StoreError::db)?
                    .and_then(|g| ChunkLoc::decode(g.value()))
                    .ok_or(StoreError::Corrupt {
                        what: "chunk of a kept file (run fsck)",
                        id: *id,
                    })?;
                live_blocks.insert(loc.block);
            }
            let mut blocks = txn.open_table(BLOCKS).map_err(StoreError::db)?;
            blocks
                .retain(|k, v| {
                    let id = Hash(*k);
                    let live = live_blocks.contains(&id);
                    if !live {
                        report.bytes_freed += BlockRecord::decode(v).map_or(0, |r| r.size);
                        removed_blocks.push(id);
                    }
                    live
                })
                .map_err(StoreError::db)?;
            chunks
                .retain(|_, v| ChunkLoc::decode(v).is_some_and(|l| live_blocks.contains(&l.block)))
                .map_err(StoreError::db)?;
        }
        txn.commit().map_err(StoreError::db)?;
        report.blocks_removed = removed_blocks.len() as u64;
        for id in &removed_blocks {
            let path = block_path(&inner.root, id);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(StoreError::Io {
                    op: "delete block",
                    path,
                    source: e,
                });
            }
        }
        Ok(report)
    }

    /// Counts files, bytes and blocks (reads the index only).
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let inner = &*self.inner;
        let txn = inner.db.begin_read().map_err(StoreError::db)?;
        let mut s = Stats::default();
        let files = txn.open_table(FILES).map_err(StoreError::db)?;
        let manifests = txn.open_table(MANIFESTS).map_err(StoreError::db)?;
        for row in files.iter().map_err(StoreError::db)? {
            let (_, mid) = row.map_err(StoreError::db)?;
            s.files += 1;
            if let Some(b) = manifests.get(mid.value()).map_err(StoreError::db)?
                && let Ok(m) = Manifest::decode(b.value())
            {
                s.logical_bytes += m.size;
            }
        }
        let blocks = txn.open_table(BLOCKS).map_err(StoreError::db)?;
        for row in blocks.iter().map_err(StoreError::db)? {
            let (_, v) = row.map_err(StoreError::db)?;
            s.blocks += 1;
            s.stored_bytes += BlockRecord::decode(v.value()).map_or(0, |r| r.size);
        }
        s.chunks = txn
            .open_table(CHUNKS)
            .map_err(StoreError::db)?
            .len()
            .map_err(StoreError::db)?;
        s.dedup_ratio = if s.stored_bytes == 0 {
            1.0
        } else {
            s.logical_bytes as f64 / s.stored_bytes as f64
        };
        Ok(s)
    }
}

impl Inner {
    /// Deletes temporary files and block files the index does not list. Only safe while no
    /// import runs (at open, or under the exclusive maintenance lock).
    pub(crate) fn remove_orphans(&self) -> Result<u64, StoreError> {
        let mut removed = 0;
        let tmp = self.root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(StoreError::io("list", &tmp))? {
            let path = entry.map_err(StoreError::io("list", &tmp))?.path();
            std::fs::remove_file(&path).map_err(StoreError::io("delete temporary file", &path))?;
        }
        let txn = self.db.begin_read().map_err(StoreError::db)?;
        let blocks = txn.open_table(BLOCKS).map_err(StoreError::db)?;
        let dir = self.root.join("blocks");
        for sub in std::fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
            let sub = sub.map_err(StoreError::io("list", &dir))?.path();
            if !sub.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&sub).map_err(StoreError::io("list", &sub))? {
                let path = entry.map_err(StoreError::io("list", &sub))?.path();
                let listed = match path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::parse::<Hash>)
                {
                    Some(Ok(id)) => blocks.get(&id.0).map_err(StoreError::db)?.is_some(),
                    _ => false,
                };
                if !listed {
                    tracing::info!(path = %path.display(), "removing orphan block file");
                    std::fs::remove_file(&path).map_err(StoreError::io("delete orphan", &path))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
