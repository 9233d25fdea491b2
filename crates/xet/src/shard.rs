//! Shards (Xet protocol specification, "Shard format"): a 48-byte header (a 32-byte tag,
//! version, footer size), the file-info section — per file a 48-byte header (file hash,
//! flags, entry count), its segments (xorb hash, flags, unpacked bytes, chunk index range),
//! optional verification entries and an optional metadata extension carrying the SHA-256 —
//! closed by a bookend entry; then the xorb-info section, lookup tables and the footer. The
//! node reads the file-info section only: the xorbs it names must have been uploaded here,
//! and their chunk lists come from the node's own verification of them.

use crate::XetError;
use crate::hash::XetHash;

const HEADER_TAG: [u8; 32] = [
    b'H', b'F', b'R', b'e', b'p', b'o', b'M', b'e', b't', b'a', b'D', b'a', b't', b'a', 0, 85, 105,
    103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169,
];
const HEADER_LEN: usize = 48;
const ENTRY_LEN: usize = 48;
const FLAG_VERIFICATION: u32 = 1 << 31;
const FLAG_METADATA_EXT: u32 = 1 << 30;
/// Largest shard a node accepts.
pub const MAX_SHARD_BYTES: usize = 64 * 1024 * 1024;

/// One segment of a file: chunks `[start, end)` of a xorb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub xorb: XetHash,
    pub unpacked_bytes: u32,
    pub start: u32,
    pub end: u32,
}

/// One file a shard describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardFile {
    pub file_hash: XetHash,
    pub segments: Vec<Segment>,
    /// The SHA-256 the client computed, when the shard carries it.
    pub sha256: Option<[u8; 32]>,
}

fn bad(what: String) -> XetError {
    XetError::Malformed(format!("shard: {what}"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn hash_at(b: &[u8], at: usize) -> XetHash {
    let mut h = [0u8; 32];
    h.copy_from_slice(&b[at..at + 32]);
    XetHash(h)
}

/// Xet stores a SHA-256 as a hash whose text form is the digest's hex: each 8-byte group of
/// the digest, byte-reversed. This undoes (and, applied again, redoes) that.
pub fn sha256_from_xet(raw: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, r) in out.chunks_exact_mut(8).zip(raw.chunks_exact(8)) {
        o.copy_from_slice(r);
        o.reverse();
    }
    out
}

/// Reads the files a shard describes.
pub fn parse_shard(bytes: &[u8]) -> Result<Vec<ShardFile>, XetError> {
    if bytes.len() > MAX_SHARD_BYTES {
        return Err(XetError::TooLarge("shard"));
    }
    if bytes.len() < HEADER_LEN || bytes[..32] != HEADER_TAG {
        return Err(bad("not a shard (header tag)".into()));
    }
    let mut at = HEADER_LEN;
    let entry = |at: usize| -> Result<&[u8], XetError> {
        bytes
            .get(at..at + ENTRY_LEN)
            .ok_or_else(|| bad(format!("truncated at byte {at}")))
    };
    let mut files = Vec::new();
    loop {
        let e = entry(at)?;
        at += ENTRY_LEN;
        if e[..32].iter().all(|b| *b == 0xFF) {
            break;
        }
        let file_hash = hash_at(e, 0);
        let flags = u32_at(e, 32);
        let n = u32_at(e, 36) as usize;
        let per_file = n
            .checked_mul(if flags & FLAG_VERIFICATION != 0 { 2 } else { 1 })
            .and_then(|k| k.checked_add(usize::from(flags & FLAG_METADATA_EXT != 0)))
            .and_then(|k| k.checked_mul(ENTRY_LEN))
            .ok_or_else(|| bad("entry count overflows".into()))?;
        if per_file > bytes.len() - at {
            return Err(bad(format!("file {} is truncated", file_hash.hex())));
        }
        let mut segments = Vec::with_capacity(n);
        for _ in 0..n {
            let s = entry(at)?;
            at += ENTRY_LEN;
            let seg = Segment {
                xorb: hash_at(s, 0),
                unpacked_bytes: u32_at(s, 36),
                start: u32_at(s, 40),
                end: u32_at(s, 44),
            };
            if seg.start >= seg.end {
                return Err(bad(format!(
                    "empty chunk range in file {}",
                    file_hash.hex()
                )));
            }
            segments.push(seg);
        }
        if flags & FLAG_VERIFICATION != 0 {
            at += n * ENTRY_LEN;
        }
        let sha256 = if flags & FLAG_METADATA_EXT != 0 {
            let m = entry(at)?;
            at += ENTRY_LEN;
            Some(sha256_from_xet(&m[..32]))
        } else {
            None
        };
        files.push(ShardFile {
            file_hash,
            segments,
            sha256,
        });
    }
    Ok(files)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A shard's header and file-info section as Xet clients write them.
    pub(crate) fn shard_of(files: &[ShardFile]) -> Vec<u8> {
        let mut b = HEADER_TAG.to_vec();
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&200u64.to_le_bytes());
        for f in files {
            b.extend_from_slice(&f.file_hash.0);
            let flags = if f.sha256.is_some() {
                FLAG_METADATA_EXT
            } else {
                0
            };
            b.extend_from_slice(&flags.to_le_bytes());
            b.extend_from_slice(&(f.segments.len() as u32).to_le_bytes());
            b.extend_from_slice(&[0u8; 8]);
            for s in &f.segments {
                b.extend_from_slice(&s.xorb.0);
                b.extend_from_slice(&0u32.to_le_bytes());
                b.extend_from_slice(&s.unpacked_bytes.to_le_bytes());
                b.extend_from_slice(&s.start.to_le_bytes());
                b.extend_from_slice(&s.end.to_le_bytes());
            }
            if let Some(sha) = f.sha256 {
                b.extend_from_slice(&sha256_from_xet(&sha));
                b.extend_from_slice(&[0u8; 16]);
            }
        }
        b.extend_from_slice(&[0xFF; 32]);
        b.extend_from_slice(&[0u8; 16]);
        b
    }

    #[test]
    fn files_round_trip_and_truncation_is_refused() {
        let f = ShardFile {
            file_hash: XetHash([7; 32]),
            segments: vec![Segment {
                xorb: XetHash([9; 32]),
                unpacked_bytes: 10,
                start: 0,
                end: 2,
            }],
            sha256: Some([3; 32]),
        };
        let b = shard_of(std::slice::from_ref(&f));
        assert_eq!(parse_shard(&b).unwrap(), vec![f]);
        assert!(parse_shard(&b[..b.len() - 60]).is_err());
        assert!(parse_shard(b"HFRepo").is_err());
    }
}
