//! hubmesh's Xet CAS rules, without HTTP (ADR 0010): Xet hashes ([`hash`]), xorbs ([`xorb`]),
//! shards ([`shard`]), LZ4 ([`lz4`]) and [`XetIndex`], the node's record of what Xet clients
//! uploaded.
//!
//! The store stays the one place bytes live: a verified xorb's *uncompressed* chunks are
//! imported into `hub-store` as one object, with the xorb's own chunk boundaries and the
//! store ids computed while verifying it (deduplicated with everything else by those ids),
//! and the index keeps, per xorb, that object's SHA-256 and the xorb's Xet
//! chunk list — a second index over the same bytes. A verified shard turns each file it
//! describes into an ordinary store object (composed from the xorbs' chunks with
//! [`Store::compose`], checked against its Xet file hash and its SHA-256), so LFS, resolve and
//! p2p replication serve it as any other.
//!
//! Place in the graph: `protocol ← store ← xet ← gateway`. On disk: `DATA/store/xet.redb`.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use hub_xet::{XetIndex, hash};
//! let dir = tempfile::tempdir()?;
//! let store = hub_store::Store::open(dir.path().join("store"))?;
//! let index = XetIndex::open(dir.path().join("xet.redb"), store)?;
//! // A one-chunk xorb, uncompressed: header (version, length, scheme 0, length), then bytes.
//! let mut xorb = Vec::new();
//! hub_xet::xorb::write_uncompressed_chunk(&mut xorb, b"some weights");
//! let name = hash::xorb_hash(&[(hash::chunk_hash(b"some weights"), 12)]);
//! assert!(index.put_xorb(&xorb, &name)?);
//! assert_eq!(index.xorb(&name)?.unwrap().chunks.len(), 1);
//! # Ok(()) }
//! ```

pub mod dedup;
pub mod hash;
pub mod lz4;
pub mod shard;
pub mod token;
pub mod xorb;

pub use hash::XetHash;

use hub_store::{Expected, Sha256, Slice, Store, StoreError, VerifiedChunk};
use redb::{Database, ReadableDatabase, TableDefinition};
use shard::ShardFile;
use std::path::Path;

/// Why a Xet upload or lookup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XetError {
    #[error("malformed {0}")]
    Malformed(String),
    #[error("{0} is over its size limit")]
    TooLarge(&'static str),
    #[error("{what} hash mismatch: claimed {claimed}, computed {actual}")]
    HashMismatch {
        what: &'static str,
        claimed: String,
        actual: String,
    },
    #[error("{0}")]
    Rejected(String),
    #[error("store")]
    Store(#[from] StoreError),
    #[error("xet index")]
    Db(#[source] redb::Error),
}

impl XetError {
    fn db(e: impl Into<redb::Error>) -> Self {
        Self::Db(e.into())
    }

    /// Whether the client sent something wrong (as opposed to a failure of this node).
    pub fn is_client_error(&self) -> bool {
        match self {
            Self::Malformed(_) | Self::TooLarge(_) | Self::HashMismatch { .. } => true,
            Self::Rejected(_) => true,
            Self::Store(StoreError::Mismatch { .. }) => true,
            Self::Store(_) | Self::Db(_) => false,
        }
    }
}

/// xorb hash → store SHA-256 (32 bytes) then per chunk: hash (32) and length (u32 LE).
const XORBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("xorbs");
/// file hash → store SHA-256 (32), size (u64 LE), then per segment: xorb (32), start, end (u32 LE).
const FILES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("files");
/// store SHA-256 → file hash.
const BY_SHA256: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("by_sha256");

/// A stored xorb's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XorbRecord {
    pub sha256: Sha256,
    pub chunks: Vec<(XetHash, u32)>,
}

impl XorbRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.sha256.0.to_vec();
        for (h, l) in &self.chunks {
            v.extend_from_slice(&h.0);
            v.extend_from_slice(&l.to_le_bytes());
        }
        v
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 32 || !(b.len() - 32).is_multiple_of(36) {
            return None;
        }
        let sha256 = Sha256(b[..32].try_into().ok()?);
        let chunks = b[32..]
            .chunks_exact(36)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(&c[..32]);
                (XetHash(h), u32::from_le_bytes([c[32], c[33], c[34], c[35]]))
            })
            .collect();
        Some(Self { sha256, chunks })
    }

    /// Offset of chunk `i`'s bytes in the uncompressed store object.
    fn data_offset(&self, i: usize) -> u64 {
        self.chunks[..i].iter().map(|(_, l)| u64::from(*l)).sum()
    }

    /// Offset of chunk `i` in the xorb as this node serves it (uncompressed chunks, each with
    /// its 8-byte header).
    pub fn served_offset(&self, i: usize) -> u64 {
        self.data_offset(i) + (i * xorb::CHUNK_HEADER_LEN) as u64
    }
}

/// One term of a file: chunks `[start, end)` of a xorb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub xorb: XetHash,
    pub start: u32,
    pub end: u32,
}

/// A stored file's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub file_hash: XetHash,
    pub sha256: Sha256,
    pub size: u64,
    pub terms: Vec<Term>,
}

impl FileRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.sha256.0.to_vec();
        v.extend_from_slice(&self.size.to_le_bytes());
        for t in &self.terms {
            v.extend_from_slice(&t.xorb.0);
            v.extend_from_slice(&t.start.to_le_bytes());
            v.extend_from_slice(&t.end.to_le_bytes());
        }
        v
    }

    fn decode(file_hash: XetHash, b: &[u8]) -> Option<Self> {
        if b.len() < 40 || !(b.len() - 40).is_multiple_of(40) {
            return None;
        }
        let sha256 = Sha256(b[..32].try_into().ok()?);
        let size = u64::from_le_bytes(b[32..40].try_into().ok()?);
        let terms = b[40..]
            .chunks_exact(40)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(&c[..32]);
                Term {
                    xorb: XetHash(h),
                    start: u32::from_le_bytes([c[32], c[33], c[34], c[35]]),
                    end: u32::from_le_bytes([c[36], c[37], c[38], c[39]]),
                }
            })
            .collect();
        Some(Self {
            file_hash,
            sha256,
            size,
            terms,
        })
    }
}

/// One term of a reconstruction: which chunks of which xorb, and where they are in the xorb
/// this node serves (`bytes`: inclusive, as HTTP ranges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconTerm {
    pub xorb: XetHash,
    pub start: u32,
    pub end: u32,
    pub unpacked_length: u64,
    pub bytes: (u64, u64),
}

/// What a client needs to rebuild a file, or a range of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconstruction {
    pub offset_into_first_range: u64,
    pub terms: Vec<ReconTerm>,
}

/// The node's Xet index over its store.
#[derive(Debug)]
pub struct XetIndex {
    db: Database,
    store: Store,
}

impl XetIndex {
    /// Opens (or creates) the index at `path`, over `store`.
    pub fn open(path: impl AsRef<Path>, store: Store) -> Result<Self, XetError> {
        let db = Database::create(path.as_ref()).map_err(XetError::db)?;
        let txn = db.begin_write().map_err(XetError::db)?;
        txn.open_table(XORBS).map_err(XetError::db)?;
        txn.open_table(FILES).map_err(XetError::db)?;
        txn.open_table(BY_SHA256).map_err(XetError::db)?;
        txn.open_multimap_table(dedup::DEDUP)
            .map_err(XetError::db)?;
        txn.open_multimap_table(dedup::OWNERS)
            .map_err(XetError::db)?;
        txn.commit().map_err(XetError::db)?;
        Ok(Self { db, store })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The record of a stored xorb.
    pub fn xorb(&self, hash: &XetHash) -> Result<Option<XorbRecord>, XetError> {
        let txn = self.db.begin_read().map_err(XetError::db)?;
        let t = txn.open_table(XORBS).map_err(XetError::db)?;
        let v = t.get(&hash.0).map_err(XetError::db)?;
        Ok(v.and_then(|v| XorbRecord::decode(v.value())))
    }

    /// The record of a stored file.
    pub fn file(&self, hash: &XetHash) -> Result<Option<FileRecord>, XetError> {
        let txn = self.db.begin_read().map_err(XetError::db)?;
        let t = txn.open_table(FILES).map_err(XetError::db)?;
        let v = t.get(&hash.0).map_err(XetError::db)?;
        Ok(v.and_then(|v| FileRecord::decode(*hash, v.value())))
    }

    /// The Xet file hash of a store object that arrived through Xet.
    pub fn xet_hash_of(&self, sha256: &Sha256) -> Result<Option<XetHash>, XetError> {
        let txn = self.db.begin_read().map_err(XetError::db)?;
        let t = txn.open_table(BY_SHA256).map_err(XetError::db)?;
        let v = t.get(&sha256.0).map_err(XetError::db)?;
        Ok(v.map(|v| XetHash(*v.value())))
    }

    /// Verifies and stores a serialized xorb that should hash to `hash`. `Ok(false)`: it was
    /// stored already (nothing read).
    pub fn put_xorb(&self, bytes: &[u8], hash: &XetHash) -> Result<bool, XetError> {
        if self.xorb(hash)?.is_some() {
            return Ok(false);
        }
        self.put_verified_xorb(&xorb::verify_xorb(bytes.to_vec(), hash)?)
    }

    /// Stores a xorb [`xorb::verify_xorb`] checked: its uncompressed chunks become one store
    /// object with the xorb's own chunk boundaries and the ids the check computed
    /// ([`Store::import_chunks`]), so the chunks are decoded once more but not hashed again
    /// (only the object's SHA-256 is computed). `Ok(false)`: it was stored already.
    pub fn put_verified_xorb(&self, x: &xorb::VerifiedXorb) -> Result<bool, XetError> {
        if self.xorb(x.hash())?.is_some() {
            return Ok(false);
        }
        let info = self.store.import_chunks(
            x.chunk_refs(),
            x.decoded()
                .map(|c| c.map(VerifiedChunk::Bytes).map_err(std::io::Error::other)),
        )?;
        self.store.add_root(&info.sha256)?;
        let record = XorbRecord {
            sha256: info.sha256,
            chunks: x.chunks().to_vec(),
        };
        let txn = self.db.begin_write().map_err(XetError::db)?;
        txn.open_table(XORBS)
            .map_err(XetError::db)?
            .insert(&x.hash().0, record.encode().as_slice())
            .map_err(XetError::db)?;
        txn.commit().map_err(XetError::db)?;
        Ok(true)
    }

    /// Checks one file of a shard against the stored xorbs: every xorb known, every chunk
    /// range inside its xorb, the unpacked sizes right, and the chunks hash to the file hash.
    fn check_file(&self, f: &ShardFile) -> Result<(Vec<(XorbRecord, Term)>, u64), XetError> {
        let mut parts = Vec::with_capacity(f.segments.len());
        let mut chunks = Vec::new();
        let mut size = 0u64;
        for s in &f.segments {
            let Some(x) = self.xorb(&s.xorb)? else {
                return Err(XetError::Rejected(format!(
                    "file {} names xorb {}, which was never uploaded",
                    f.file_hash, s.xorb
                )));
            };
            if s.end as usize > x.chunks.len() {
                return Err(XetError::Rejected(format!(
                    "file {} names chunks {}..{} of xorb {}, which has {}",
                    f.file_hash,
                    s.start,
                    s.end,
                    s.xorb,
                    x.chunks.len()
                )));
            }
            let seg = &x.chunks[s.start as usize..s.end as usize];
            let seg_size: u64 = seg.iter().map(|(_, l)| u64::from(*l)).sum();
            if seg_size != u64::from(s.unpacked_bytes) {
                return Err(XetError::Rejected(format!(
                    "file {}: a segment claims {} bytes, its chunks hold {seg_size}",
                    f.file_hash, s.unpacked_bytes
                )));
            }
            chunks.extend(seg.iter().map(|(h, l)| (*h, u64::from(*l))));
            size += seg_size;
            parts.push((
                x,
                Term {
                    xorb: s.xorb,
                    start: s.start,
                    end: s.end,
                },
            ));
        }
        let actual = hash::file_hash(&chunks);
        if actual != f.file_hash {
            return Err(XetError::HashMismatch {
                what: "file",
                claimed: f.file_hash.hex(),
                actual: actual.hex(),
            });
        }
        Ok((parts, size))
    }

    /// Verifies a shard and stores every file it describes, all or nothing: nothing is
    /// recorded unless every file checks out (files already stored are skipped). Returns the
    /// files' records.
    pub fn put_shard(&self, bytes: &[u8]) -> Result<Vec<FileRecord>, XetError> {
        let files = shard::parse_shard(bytes)?;
        let mut checked = Vec::with_capacity(files.len());
        for f in &files {
            if let (Some(r), Some(sha)) = (self.file(&f.file_hash)?, f.sha256)
                && r.sha256.0 != sha
            {
                return Err(XetError::Rejected(format!(
                    "file {} is stored with sha256 {}, the shard claims another",
                    f.file_hash, r.sha256
                )));
            }
            checked.push(self.check_file(f)?);
        }
        let mut records = Vec::with_capacity(files.len());
        // Per file, its chunk hashes (for the global-dedup index: files stored already too,
        // whose entries may have been forgotten when their owners let them go).
        let mut new_files: Vec<(XetHash, Vec<XetHash>)> = Vec::new();
        for (f, (parts, size)) in files.iter().zip(checked) {
            new_files.push((
                f.file_hash,
                parts
                    .iter()
                    .flat_map(|(x, t)| {
                        x.chunks[t.start as usize..t.end as usize]
                            .iter()
                            .map(|(h, _)| *h)
                    })
                    .collect(),
            ));
            if let Some(r) = self.file(&f.file_hash)? {
                records.push(r);
                continue;
            }
            // The file references the chunks its xorbs' objects already hold: its bytes are
            // read once, for the SHA-256 check, and not chunked or stored again.
            let slices: Vec<Slice> = parts
                .iter()
                .map(|(x, t)| {
                    let offset = x.data_offset(t.start as usize);
                    Slice {
                        sha256: x.sha256,
                        offset,
                        len: x.data_offset(t.end as usize) - offset,
                    }
                })
                .collect();
            let expected = f.sha256.map(|sha| Expected {
                sha256: Sha256(sha),
                size,
            });
            let info = self.store.compose(&slices, expected)?;
            records.push(FileRecord {
                file_hash: f.file_hash,
                sha256: info.sha256,
                size: info.size,
                terms: parts.into_iter().map(|(_, t)| t).collect(),
            });
        }
        let txn = self.db.begin_write().map_err(XetError::db)?;
        {
            let mut ft = txn.open_table(FILES).map_err(XetError::db)?;
            let mut bt = txn.open_table(BY_SHA256).map_err(XetError::db)?;
            for r in &records {
                ft.insert(&r.file_hash.0, r.encode().as_slice())
                    .map_err(XetError::db)?;
                bt.insert(&r.sha256.0, &r.file_hash.0)
                    .map_err(XetError::db)?;
            }
            let mut dt = txn
                .open_multimap_table(dedup::DEDUP)
                .map_err(XetError::db)?;
            for (file, chunks) in new_files {
                dedup::index_file(&mut dt, &file, chunks.into_iter())?;
            }
        }
        txn.commit().map_err(XetError::db)?;
        Ok(records)
    }

    /// The terms that rebuild bytes `[start, end)` of a file (the whole file for `None`);
    /// `None` when the file is unknown or the range starts past its end.
    pub fn reconstruction(
        &self,
        file_hash: &XetHash,
        range: Option<(u64, u64)>,
    ) -> Result<Option<(FileRecord, Reconstruction)>, XetError> {
        let Some(file) = self.file(file_hash)? else {
            return Ok(None);
        };
        let (start, end) = range.unwrap_or((0, file.size));
        let end = end.min(file.size);
        if start >= end && !(start == 0 && file.size == 0) {
            return Ok(None);
        }
        let mut terms = Vec::new();
        let mut pos = 0u64;
        let mut offset_into_first_range = 0;
        for t in &file.terms {
            let Some(x) = self.xorb(&t.xorb)? else {
                return Err(XetError::Rejected(format!("xorb {} is missing", t.xorb)));
            };
            // Walk the term's chunks, keeping those that overlap [start, end).
            let mut first = None;
            let mut last = t.start;
            let mut unpacked = 0u64;
            for i in t.start..t.end {
                let len = u64::from(x.chunks[i as usize].1);
                if pos + len > start && pos < end {
                    if first.is_none() {
                        first = Some(i);
                        if terms.is_empty() {
                            offset_into_first_range = start - pos;
                        }
                    }
                    last = i + 1;
                    unpacked += len;
                }
                pos += len;
            }
            if let Some(first) = first {
                terms.push(ReconTerm {
                    xorb: t.xorb,
                    start: first,
                    end: last,
                    unpacked_length: unpacked,
                    bytes: (
                        x.served_offset(first as usize),
                        x.served_offset(last as usize) - 1,
                    ),
                });
            }
            if pos >= end {
                break;
            }
        }
        Ok(Some((
            file,
            Reconstruction {
                offset_into_first_range,
                terms,
            },
        )))
    }

    /// Bytes `[first, last]` of a xorb as this node serves it (chunks uncompressed, each with
    /// its header), as a plan to read them piece by piece ([`XorbRange::pieces`]). The range
    /// must start and end on chunk boundaries and hold at most `limit` bytes; `None` when the
    /// xorb is unknown.
    pub fn xorb_range(
        &self,
        hash: &XetHash,
        first: u64,
        last: u64,
        limit: u64,
    ) -> Result<Option<XorbRange>, XetError> {
        let Some(x) = self.xorb(hash)? else {
            return Ok(None);
        };
        if last < first || last - first + 1 > limit {
            return Err(XetError::Rejected("xorb range too large".into()));
        }
        let n = x.chunks.len();
        let offsets: Vec<u64> = (0..=n).map(|i| x.served_offset(i)).collect();
        let Some(a) = offsets.iter().position(|o| *o == first) else {
            return Err(XetError::Rejected("range does not start on a chunk".into()));
        };
        let Some(b) = offsets.iter().position(|o| *o == last + 1) else {
            return Err(XetError::Rejected("range does not end on a chunk".into()));
        };
        if b <= a {
            return Err(XetError::Rejected("empty range".into()));
        }
        Ok(Some(XorbRange {
            sha256: x.sha256,
            data_start: x.data_offset(a),
            lens: x.chunks[a..b].iter().map(|(_, l)| *l).collect(),
        }))
    }

    /// [`XetIndex::xorb_range`], read into memory.
    pub fn read_xorb_range(
        &self,
        hash: &XetHash,
        first: u64,
        last: u64,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, XetError> {
        let Some(range) = self.xorb_range(hash, first, last, limit)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for piece in range.pieces(&self.store)? {
            out.extend_from_slice(&piece.map_err(|e| XetError::Store(StoreError::Source(e)))?);
        }
        Ok(Some(out))
    }
}

/// Chunks of a xorb to serve: where their bytes start in the xorb's store object, and their
/// lengths.
#[derive(Debug, Clone)]
pub struct XorbRange {
    sha256: Sha256,
    data_start: u64,
    lens: Vec<u32>,
}

impl XorbRange {
    /// Bytes the range serves (headers included).
    pub fn len(&self) -> u64 {
        self.lens
            .iter()
            .map(|l| u64::from(*l) + xorb::CHUNK_HEADER_LEN as u64)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// The range one chunk (header and bytes) at a time, read from the store as it goes, so
    /// memory stays at one chunk whatever the range.
    pub fn pieces(
        self,
        store: &Store,
    ) -> Result<impl Iterator<Item = std::io::Result<Vec<u8>>> + use<>, XetError> {
        let mut reader = store.open_file(&self.sha256)?;
        let mut offset = self.data_start;
        Ok(self.lens.into_iter().map(move |len| {
            let data = reader.read_range(offset, len as usize)?;
            if data.len() != len as usize {
                return Err(std::io::Error::other("xorb object is short"));
            }
            offset += u64::from(len);
            let mut out = Vec::with_capacity(data.len() + xorb::CHUNK_HEADER_LEN);
            xorb::write_uncompressed_chunk(&mut out, &data);
            Ok(out)
        }))
    }
}

#[cfg(test)]
mod tests;
