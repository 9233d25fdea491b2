//! Global deduplication (Xet protocol specification, "Deduplication", global dedup; CAS API
//! `GET /v1/chunks/{prefix}/{chunk hash}`): which stored files a chunk hash may dedup against,
//! and the answer a client imports — a shard whose xorb-info section lists those files' xorbs
//! with their chunk hashes **keyed** (BLAKE3 keyed with a per-answer key carried in the
//! footer), so the answer reveals only whether the caller's own chunks are there.
//!
//! Indexed at shard upload ([`crate::XetIndex::put_shard`]): the *eligible* chunks of each new
//! file — its first chunk, and every chunk whose hash is `0 mod 1024` (the client queries
//! only those, at most once per 4 MB) — each map to the files that contain them. Who may
//! learn what is the caller's business ([`crate::XetIndex::add_owner`] records which
//! repository a file was uploaded for; the gateway keeps only files the caller may read), and
//! the answer reveals exactly the chunks of the files it is given: the other chunks of their
//! xorbs (another file's) are listed with a zero hash and no length, so their positions stay
//! right and nothing about them matches.

use crate::hash::XetHash;
use crate::{FileRecord, XetError, XetIndex, XorbRecord};
use redb::{MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable};
use std::collections::BTreeMap;

/// chunk hash → the files (Xet file hashes) holding it, for eligible chunks.
pub(crate) const DEDUP: MultimapTableDefinition<&[u8; 32], &[u8; 32]> =
    MultimapTableDefinition::new("dedup_chunks");
/// file hash → the repositories it was uploaded for (labels given by the caller).
pub(crate) const OWNERS: MultimapTableDefinition<&[u8; 32], &str> =
    MultimapTableDefinition::new("file_owners");

/// The client's global dedup modulus: a chunk whose hash is `0 mod 1024` may be queried.
pub const ELIGIBLE_MODULUS: u64 = 1024;
/// Files recorded per chunk hash (a chunk shared by very many files, such as a run of zeros,
/// stops growing its list here).
pub const MAX_FILES_PER_CHUNK: u64 = 64;
/// Files looked at per query.
pub const MAX_CANDIDATES: usize = 64;
/// Xorbs one answer describes (each ≤ 8192 chunks × 48 bytes).
pub const MAX_ANSWER_XORBS: usize = 32;

const HEADER_TAG: [u8; 32] = [
    b'H', b'F', b'R', b'e', b'p', b'o', b'M', b'e', b't', b'a', b'D', b'a', b't', b'a', 0, 85, 105,
    103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169,
];
const ENTRY_LEN: usize = 48;
const FOOTER_LEN: usize = 200;

/// Whether a chunk hash is one the client asks the server about (besides a file's first).
pub fn eligible(h: &XetHash) -> bool {
    h.modulo(ELIGIBLE_MODULUS) == 0
}

/// A chunk hash keyed as an answer's footer says: BLAKE3 keyed with `key`.
pub fn keyed(key: &[u8; 32], h: &XetHash) -> XetHash {
    XetHash(*blake3::keyed_hash(key, &h.0).as_bytes())
}

fn truncated(h: &XetHash) -> u64 {
    u64::from_le_bytes(h.0[..8].try_into().expect("8 bytes"))
}

/// The chunks a file's record covers in each xorb, as sets of chunk indices.
fn revealed_by(files: &[FileRecord]) -> BTreeMap<XetHash, Vec<(u32, u32)>> {
    let mut out: BTreeMap<XetHash, Vec<(u32, u32)>> = BTreeMap::new();
    for f in files {
        for t in &f.terms {
            out.entry(t.xorb).or_default().push((t.start, t.end));
        }
    }
    out
}

/// Serializes a global-dedup answer: header, an empty file-info section, the xorb-info
/// section (each xorb's chunks, keyed, or zero where not `revealed`), the xorb and chunk
/// lookup tables, and the footer with `key`, `now` and the expiry.
fn write_answer(
    xorbs: &[(XetHash, XorbRecord, Vec<bool>)],
    key: &[u8; 32],
    now: u64,
    expiry: u64,
) -> Vec<u8> {
    let u32le = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
    let u64le = |v: &mut Vec<u8>, x: u64| v.extend_from_slice(&x.to_le_bytes());
    let mut b = HEADER_TAG.to_vec();
    u64le(&mut b, 2);
    u64le(&mut b, FOOTER_LEN as u64);
    let file_info_offset = b.len() as u64;
    b.extend_from_slice(&[0xFF; 32]);
    b.extend_from_slice(&[0u8; 16]);
    let xorb_info_offset = b.len() as u64;
    let mut xorb_lookup = Vec::with_capacity(xorbs.len());
    let mut chunk_lookup = Vec::new();
    let mut index = 0u32;
    for (hash, record, revealed) in xorbs {
        xorb_lookup.push((truncated(hash), index));
        let n = record.chunks.len() as u32;
        let shown: u64 = record
            .chunks
            .iter()
            .zip(revealed)
            .filter(|(_, r)| **r)
            .map(|((_, l), _)| u64::from(*l))
            .sum();
        b.extend_from_slice(&hash.0);
        u32le(&mut b, 0);
        u32le(&mut b, n);
        u32le(&mut b, u32::try_from(shown).unwrap_or(u32::MAX));
        u32le(&mut b, 0);
        for (i, ((chunk, len), show)) in record.chunks.iter().zip(revealed).enumerate() {
            if *show {
                let k = keyed(key, chunk);
                chunk_lookup.push((truncated(&k), index, i as u32));
                b.extend_from_slice(&k.0);
                u32le(&mut b, record.served_offset(i) as u32);
                u32le(&mut b, *len);
            } else {
                b.extend_from_slice(&[0u8; 40]);
            }
            u32le(&mut b, 0);
            u32le(&mut b, 0);
        }
        index += 1 + n;
    }
    b.extend_from_slice(&[0xFF; 32]);
    b.extend_from_slice(&[0u8; 16]);
    xorb_lookup.sort_unstable();
    chunk_lookup.sort_unstable();
    let file_lookup_offset = b.len() as u64;
    let xorb_lookup_offset = b.len() as u64;
    for (k, i) in &xorb_lookup {
        u64le(&mut b, *k);
        u32le(&mut b, *i);
    }
    let chunk_lookup_offset = b.len() as u64;
    for (k, x, i) in &chunk_lookup {
        u64le(&mut b, *k);
        u32le(&mut b, *x);
        u32le(&mut b, *i);
    }
    let footer_offset = b.len() as u64;
    for v in [
        1, // footer version
        file_info_offset,
        xorb_info_offset,
        file_lookup_offset,
        0,
        xorb_lookup_offset,
        xorb_lookup.len() as u64,
        chunk_lookup_offset,
        chunk_lookup.len() as u64,
    ] {
        u64le(&mut b, v);
    }
    b.extend_from_slice(key);
    u64le(&mut b, now);
    u64le(&mut b, expiry);
    b.extend_from_slice(&[0u8; 48]);
    for v in [0, 0, 0, footer_offset] {
        u64le(&mut b, v);
    }
    debug_assert_eq!(b.len() as u64, footer_offset + FOOTER_LEN as u64);
    b
}

/// What a global-dedup answer says, read back (tests, diagnostics): the key, and per xorb its
/// hash and its keyed chunk hashes (`None` where hidden).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub key: [u8; 32],
    pub expiry: u64,
    pub xorbs: Vec<(XetHash, Vec<Option<XetHash>>)>,
}

/// Reads a global-dedup answer written by this module.
pub fn parse_answer(b: &[u8]) -> Result<Answer, XetError> {
    let bad = |w: &str| XetError::Malformed(format!("dedup answer: {w}"));
    if b.len() < 48 + FOOTER_LEN || b[..32] != HEADER_TAG {
        return Err(bad("header"));
    }
    let footer = &b[b.len() - FOOTER_LEN..];
    let word = |at: usize| u64::from_le_bytes(footer[at..at + 8].try_into().expect("8 bytes"));
    let mut key = [0u8; 32];
    key.copy_from_slice(&footer[72..104]);
    let expiry = word(112);
    let mut at = usize::try_from(word(16)).map_err(|_| bad("offset"))?;
    let mut xorbs = Vec::new();
    loop {
        let e = b
            .get(at..at.saturating_add(ENTRY_LEN))
            .ok_or_else(|| bad("truncated"))?;
        at += ENTRY_LEN;
        if e[..32].iter().all(|x| *x == 0xFF) {
            break;
        }
        let mut h = [0u8; 32];
        h.copy_from_slice(&e[..32]);
        let n = u32::from_le_bytes(e[36..40].try_into().expect("4 bytes")) as usize;
        let mut chunks = Vec::with_capacity(n.min(8192));
        for _ in 0..n {
            let c = b
                .get(at..at.saturating_add(ENTRY_LEN))
                .ok_or_else(|| bad("truncated"))?;
            at += ENTRY_LEN;
            let mut k = [0u8; 32];
            k.copy_from_slice(&c[..32]);
            chunks.push((k != [0u8; 32]).then_some(XetHash(k)));
        }
        xorbs.push((XetHash(h), chunks));
    }
    Ok(Answer { key, expiry, xorbs })
}

impl XetIndex {
    /// Records that `files` were uploaded for `owner` (a repository, as the caller names it).
    pub fn add_owner(&self, files: &[XetHash], owner: &str) -> Result<(), XetError> {
        let txn = self.db.begin_write().map_err(XetError::db)?;
        {
            let mut t = txn.open_multimap_table(OWNERS).map_err(XetError::db)?;
            for f in files {
                t.insert(&f.0, owner).map_err(XetError::db)?;
            }
        }
        txn.commit().map_err(XetError::db)?;
        Ok(())
    }

    /// Forgets, for global dedup, owners that no longer hold their file (`stale`: the file
    /// and owner pairs the caller found gone: a deleted repository, a released object), and
    /// the entry `chunk` → file of each such file left with no owner, in one transaction: the
    /// chunk's list (at most [`MAX_FILES_PER_CHUNK`]) frees its place for new files. An owner
    /// recorded meanwhile keeps the file listed; a file uploaded again through a shard is
    /// indexed again ([`crate::XetIndex::put_shard`]). Returns how many entries of `chunk`
    /// went.
    pub fn forget_stale(
        &self,
        chunk: &XetHash,
        stale: &[(XetHash, String)],
    ) -> Result<usize, XetError> {
        if stale.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write().map_err(XetError::db)?;
        let mut removed = 0;
        {
            let mut owners = txn.open_multimap_table(OWNERS).map_err(XetError::db)?;
            let mut dedup = txn.open_multimap_table(DEDUP).map_err(XetError::db)?;
            for (file, owner) in stale {
                owners
                    .remove(&file.0, owner.as_str())
                    .map_err(XetError::db)?;
            }
            let files: std::collections::BTreeSet<XetHash> =
                stale.iter().map(|(f, _)| *f).collect();
            for file in files {
                if owners.get(&file.0).map_err(XetError::db)?.is_empty()
                    && dedup.remove(&chunk.0, &file.0).map_err(XetError::db)?
                {
                    removed += 1;
                }
            }
        }
        txn.commit().map_err(XetError::db)?;
        Ok(removed)
    }

    /// The stored files that hold `chunk` (if it was indexed: an eligible chunk or a file's
    /// first), each with the owners recorded for it; at most [`MAX_CANDIDATES`].
    pub fn dedup_candidates(
        &self,
        chunk: &XetHash,
    ) -> Result<Vec<(FileRecord, Vec<String>)>, XetError> {
        let files: Vec<XetHash> = {
            let txn = self.db.begin_read().map_err(XetError::db)?;
            let t = txn.open_multimap_table(DEDUP).map_err(XetError::db)?;
            let mut out = Vec::new();
            for v in t.get(&chunk.0).map_err(XetError::db)?.take(MAX_CANDIDATES) {
                out.push(XetHash(*v.map_err(XetError::db)?.value()));
            }
            out
        };
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let Some(record) = self.file(&f)? else {
                continue;
            };
            let txn = self.db.begin_read().map_err(XetError::db)?;
            let t = txn.open_multimap_table(OWNERS).map_err(XetError::db)?;
            let mut owners = Vec::new();
            for o in t.get(&f.0).map_err(XetError::db)? {
                owners.push(o.map_err(XetError::db)?.value().to_owned());
            }
            out.push((record, owners));
        }
        Ok(out)
    }

    /// The global-dedup answer that reveals exactly the chunks of `files` (at most
    /// [`MAX_ANSWER_XORBS`] xorbs), keyed with `key`, valid until `expiry`; `None` when
    /// `files` is empty.
    pub fn dedup_answer(
        &self,
        files: &[FileRecord],
        key: &[u8; 32],
        now: u64,
        expiry: u64,
    ) -> Result<Option<Vec<u8>>, XetError> {
        let mut xorbs = Vec::new();
        for (hash, ranges) in revealed_by(files).into_iter().take(MAX_ANSWER_XORBS) {
            let Some(record) = self.xorb(&hash)? else {
                continue;
            };
            let mut revealed = vec![false; record.chunks.len()];
            for (start, end) in ranges {
                let end = (end as usize).min(revealed.len());
                for r in revealed.iter_mut().take(end).skip(start as usize) {
                    *r = true;
                }
            }
            xorbs.push((hash, record, revealed));
        }
        if xorbs.is_empty() {
            return Ok(None);
        }
        Ok(Some(write_answer(&xorbs, key, now, expiry)))
    }
}

/// Adds the eligible chunks of a new file (`chunks`: its chunk hashes in order) to the
/// dedup table, inside the shard's write transaction.
pub(crate) fn index_file(
    table: &mut redb::MultimapTable<&[u8; 32], &[u8; 32]>,
    file: &XetHash,
    chunks: impl Iterator<Item = XetHash>,
) -> Result<(), XetError> {
    for (i, c) in chunks.enumerate() {
        if i != 0 && !eligible(&c) {
            continue;
        }
        if table.get(&c.0).map_err(XetError::db)?.len() >= MAX_FILES_PER_CHUNK {
            continue;
        }
        table.insert(&c.0, &file.0).map_err(XetError::db)?;
    }
    Ok(())
}
