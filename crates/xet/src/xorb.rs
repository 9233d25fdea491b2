//! Xorbs (Xet protocol specification, "Xorb format"): a sequence of chunks, each an 8-byte
//! header (version 0, compressed length: 3 bytes LE, compression scheme, uncompressed length:
//! 3 bytes LE) and its bytes (none, LZ4 frame, or byte-grouped-by-4 then LZ4), then an
//! optional footer starting `XETBLOB`. The footer is the client's own index; the node
//! recomputes everything from the chunks and ignores it.

use crate::hash::{XetHash, chunk_hash, xorb_hash};
use crate::{XetError, lz4};
use hub_store::{ChunkRef, Hash};

/// Largest chunk (uncompressed), as Xet's chunker makes them.
pub const MAX_CHUNK_BYTES: usize = 128 * 1024;
/// Largest xorb, uncompressed.
pub const MAX_XORB_BYTES: usize = 64 * 1024 * 1024;
/// Most chunks in one xorb.
pub const MAX_XORB_CHUNKS: usize = 8 * 1024;
/// Largest serialized xorb a node accepts (chunks, headers and footer).
pub const MAX_XORB_UPLOAD: usize = MAX_XORB_BYTES + MAX_XORB_BYTES / 4;
/// A chunk header's length.
pub const CHUNK_HEADER_LEN: usize = 8;

const FOOTER_IDENT: &[u8; 7] = b"XETBLOB";

/// A parsed xorb, its bytes decoded (tests and fuzzing; the node uses [`verify_xorb`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xorb {
    pub hash: XetHash,
    /// Each chunk's hash and uncompressed length, in order.
    pub chunks: Vec<(XetHash, u32)>,
    /// The chunks' uncompressed bytes, concatenated.
    pub data: Vec<u8>,
}

fn bad(what: String) -> XetError {
    XetError::Malformed(format!("xorb: {what}"))
}

/// Parses, decompresses and hashes a serialized xorb; it must hash to `expected`.
pub fn parse_xorb(bytes: &[u8], expected: &XetHash) -> Result<Xorb, XetError> {
    let mut data = Vec::new();
    let mut chunks = Vec::new();
    for chunk in Chunks::new(bytes)? {
        let chunk = chunk?;
        chunks.push((chunk_hash(&chunk), chunk.len() as u32));
        data.extend_from_slice(&chunk);
    }
    check_xorb_hash(&chunks, expected)?;
    Ok(Xorb {
        hash: *expected,
        chunks,
        data,
    })
}

/// A serialized xorb that [`verify_xorb`] checked, with what the check computed: each
/// chunk's Xet hash and length, and each chunk's store id (its BLAKE3), so that storing it
/// ([`crate::XetIndex::put_verified_xorb`]) decodes the chunks once more but hashes nothing
/// but the object's SHA-256. It owns the bytes it checked, so the ids always describe them.
#[derive(Debug)]
pub struct VerifiedXorb {
    hash: XetHash,
    chunks: Vec<(XetHash, u32)>,
    ids: Vec<Hash>,
    bytes: Vec<u8>,
}

impl VerifiedXorb {
    pub fn hash(&self) -> &XetHash {
        &self.hash
    }

    /// Each chunk's Xet hash and uncompressed length, in order.
    pub fn chunks(&self) -> &[(XetHash, u32)] {
        &self.chunks
    }

    /// Each chunk's store id and length: the manifest of the xorb's store object.
    pub fn chunk_refs(&self) -> Vec<ChunkRef> {
        self.ids
            .iter()
            .zip(&self.chunks)
            .map(|(id, (_, len))| ChunkRef { id: *id, len: *len })
            .collect()
    }

    /// The chunks' uncompressed bytes, decoded again from the serialized xorb (no hashing).
    pub fn decoded(&self) -> impl Iterator<Item = Result<Vec<u8>, XetError>> + '_ {
        Chunks {
            bytes: &self.bytes,
            at: 0,
            count: 0,
            total: 0,
            failed: false,
        }
    }

    /// The serialized xorb's length.
    pub fn serialized_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Checks a serialized xorb, decoding each chunk once: header rules, size limits, every chunk
/// hashed (its Xet hash, and its store id on the same decoded bytes), the xorb hash
/// `expected`.
pub fn verify_xorb(bytes: Vec<u8>, expected: &XetHash) -> Result<VerifiedXorb, XetError> {
    let mut chunks = Vec::new();
    let mut ids = Vec::new();
    for chunk in Chunks::new(&bytes)? {
        let chunk = chunk?;
        chunks.push((chunk_hash(&chunk), chunk.len() as u32));
        ids.push(Hash::of(&chunk));
    }
    check_xorb_hash(&chunks, expected)?;
    Ok(VerifiedXorb {
        hash: *expected,
        chunks,
        ids,
        bytes,
    })
}

/// The xorb hash of `chunks` must be `expected`.
fn check_xorb_hash(chunks: &[(XetHash, u32)], expected: &XetHash) -> Result<(), XetError> {
    if chunks.is_empty() {
        return Err(bad("no chunks".into()));
    }
    let sized: Vec<(XetHash, u64)> = chunks.iter().map(|(h, l)| (*h, u64::from(*l))).collect();
    let hash = xorb_hash(&sized);
    if hash != *expected {
        return Err(XetError::HashMismatch {
            what: "xorb",
            claimed: expected.hex(),
            actual: hash.hex(),
        });
    }
    Ok(())
}

/// A serialized xorb's chunks, decoded one at a time (header rules and size limits checked,
/// nothing hashed); stops after the first error.
#[derive(Debug)]
struct Chunks<'a> {
    bytes: &'a [u8],
    at: usize,
    count: usize,
    total: usize,
    failed: bool,
}

impl<'a> Chunks<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, XetError> {
        if bytes.len() > MAX_XORB_UPLOAD {
            return Err(XetError::TooLarge("xorb"));
        }
        Ok(Self {
            bytes,
            at: 0,
            count: 0,
            total: 0,
            failed: false,
        })
    }

    /// Decodes the next chunk; `None` at the end (footer or end of bytes).
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, XetError> {
        let at = self.at;
        let rest = &self.bytes[at..];
        if rest.is_empty() || rest.starts_with(FOOTER_IDENT) {
            return Ok(None);
        }
        let Some(header) = rest.get(..CHUNK_HEADER_LEN) else {
            return Err(bad(format!("truncated chunk header at byte {at}")));
        };
        if header[0] != 0 {
            return Err(bad(format!(
                "chunk header version {} at byte {at}",
                header[0]
            )));
        }
        let compressed = u32::from_le_bytes([header[1], header[2], header[3], 0]) as usize;
        let scheme = header[4];
        let uncompressed = u32::from_le_bytes([header[5], header[6], header[7], 0]) as usize;
        if uncompressed > MAX_CHUNK_BYTES || compressed > 2 * MAX_CHUNK_BYTES {
            return Err(bad(format!(
                "chunk at byte {at} is over the chunk size limit"
            )));
        }
        if uncompressed == 0 {
            return Err(bad(format!("chunk at byte {at} is empty")));
        }
        let start = at + CHUNK_HEADER_LEN;
        let Some(body) = self.bytes.get(start..start + compressed) else {
            return Err(bad(format!("chunk at byte {at} is truncated")));
        };
        let plain = match scheme {
            0 => body.to_vec(),
            1 => lz4::decompress_frame(body, uncompressed)?,
            2 => regroup4(&lz4::decompress_frame(body, uncompressed)?),
            other => return Err(bad(format!("unknown compression scheme {other}"))),
        };
        if plain.len() != uncompressed {
            return Err(bad(format!(
                "chunk at byte {at} decompresses to {} bytes, its header says {uncompressed}",
                plain.len()
            )));
        }
        if self.count == MAX_XORB_CHUNKS || self.total + plain.len() > MAX_XORB_BYTES {
            return Err(XetError::TooLarge("xorb"));
        }
        self.count += 1;
        self.total += plain.len();
        self.at = start + compressed;
        Ok(Some(plain))
    }
}

impl Iterator for Chunks<'_> {
    type Item = Result<Vec<u8>, XetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_chunk().transpose();
        self.failed = matches!(next, Some(Err(_)));
        next
    }
}

/// Undoes byte grouping: the input is four groups (bytes 0, 1, 2, 3 of every 4).
fn regroup4(grouped: &[u8]) -> Vec<u8> {
    let n = grouped.len();
    let split = n / 4;
    let rem = n % 4;
    let sizes = [
        split + usize::from(rem > 0),
        split + usize::from(rem > 1),
        split + usize::from(rem > 2),
        split,
    ];
    let mut starts = [0usize; 4];
    for g in 1..4 {
        starts[g] = starts[g - 1] + sizes[g - 1];
    }
    (0..n).map(|i| grouped[starts[i % 4] + i / 4]).collect()
}

/// Serializes chunks uncompressed (scheme 0): what this node serves from a xorb's range.
pub fn write_uncompressed_chunk(out: &mut Vec<u8>, chunk: &[u8]) {
    let len = (chunk.len() as u32).to_le_bytes();
    out.push(0);
    out.extend_from_slice(&len[..3]);
    out.push(0);
    out.extend_from_slice(&len[..3]);
    out.extend_from_slice(chunk);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorb_of(chunks: &[&[u8]]) -> (Vec<u8>, XetHash) {
        let mut bytes = Vec::new();
        let mut hashes = Vec::new();
        for c in chunks {
            write_uncompressed_chunk(&mut bytes, c);
            hashes.push((chunk_hash(c), c.len() as u64));
        }
        bytes.extend_from_slice(b"XETBLOB\x01 footer the node ignores");
        (bytes, xorb_hash(&hashes))
    }

    #[test]
    fn a_good_xorb_parses_and_a_wrong_hash_or_truncation_is_refused() {
        let (bytes, hash) = xorb_of(&[b"first chunk", b"second chunk", b"third"]);
        let x = parse_xorb(&bytes, &hash).unwrap();
        assert_eq!(x.chunks.len(), 3);
        assert_eq!(x.data, b"first chunksecond chunkthird");
        let other = chunk_hash(b"other");
        assert!(matches!(
            parse_xorb(&bytes, &other),
            Err(XetError::HashMismatch { .. })
        ));
        assert!(parse_xorb(&bytes[..20], &hash).is_err());
        assert!(parse_xorb(&bytes[..5], &hash).is_err());
        assert!(parse_xorb(b"", &hash).is_err());
    }

    #[test]
    fn regrouping_inverts_grouping() {
        let data: Vec<u8> = (0..23u8).collect();
        let mut grouped = Vec::new();
        for g in 0..4 {
            grouped.extend(data.iter().skip(g).step_by(4));
        }
        assert_eq!(regroup4(&grouped), data);
    }
}
