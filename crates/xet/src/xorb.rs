//! Xorbs (Xet protocol specification, "Xorb format"): a sequence of chunks, each an 8-byte
//! header (version 0, compressed length: 3 bytes LE, compression scheme, uncompressed length:
//! 3 bytes LE) and its bytes (none, LZ4 frame, or byte-grouped-by-4 then LZ4), then an
//! optional footer starting `XETBLOB`. The footer is the client's own index; the node
//! recomputes everything from the chunks and ignores it.

use crate::hash::{XetHash, chunk_hash, xorb_hash};
use crate::{XetError, lz4};

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

/// A verified xorb.
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
    let mut reader = XorbReader::new(bytes, *expected)?;
    let mut data = Vec::new();
    let read = std::io::Read::read_to_end(&mut reader, &mut data);
    if let Some(e) = reader.take_error() {
        return Err(e);
    }
    read.map_err(|e| bad(e.to_string()))?;
    Ok(Xorb {
        hash: *expected,
        chunks: reader.chunks,
        data,
    })
}

/// Checks a serialized xorb without keeping its bytes: every chunk decoded and hashed, the
/// xorb hash `expected` (the check [`crate::XetIndex::put_xorb`] also makes as it imports).
pub fn verify_xorb(bytes: &[u8], expected: &XetHash) -> Result<(), XetError> {
    let mut reader = XorbReader::new(bytes, *expected)?;
    let read = std::io::copy(&mut reader, &mut std::io::sink());
    if let Some(e) = reader.take_error() {
        return Err(e);
    }
    read.map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// A serialized xorb read as its uncompressed bytes, one chunk at a time, verified as it goes
/// (header rules, size limits, every chunk hashed); after the last chunk the xorb hash must be
/// `expected`, else that read fails. An import fed by this reader therefore keeps nothing of
/// a bad xorb, and memory stays at one chunk besides the serialized bytes.
#[derive(Debug)]
pub struct XorbReader<'a> {
    bytes: &'a [u8],
    at: usize,
    expected: XetHash,
    chunks: Vec<(XetHash, u32)>,
    total: usize,
    plain: Vec<u8>,
    plain_at: usize,
    done: bool,
    error: Option<XetError>,
}

impl<'a> XorbReader<'a> {
    pub fn new(bytes: &'a [u8], expected: XetHash) -> Result<Self, XetError> {
        if bytes.len() > MAX_XORB_UPLOAD {
            return Err(XetError::TooLarge("xorb"));
        }
        Ok(Self {
            bytes,
            at: 0,
            expected,
            chunks: Vec::new(),
            total: 0,
            plain: Vec::new(),
            plain_at: 0,
            done: false,
            error: None,
        })
    }

    /// Why a read failed, when the xorb is at fault.
    pub fn take_error(&mut self) -> Option<XetError> {
        self.error.take()
    }

    /// Each chunk's hash and uncompressed length, once the whole xorb was read and verified.
    pub fn into_chunks(self) -> Option<Vec<(XetHash, u32)>> {
        (self.done && self.error.is_none()).then_some(self.chunks)
    }

    /// Decodes the next chunk into `plain`; `false` at the end (footer or end of bytes).
    fn next_chunk(&mut self) -> Result<bool, XetError> {
        let at = self.at;
        let rest = &self.bytes[at..];
        if rest.is_empty() || rest.starts_with(FOOTER_IDENT) {
            return Ok(false);
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
        if self.chunks.len() == MAX_XORB_CHUNKS || self.total + plain.len() > MAX_XORB_BYTES {
            return Err(XetError::TooLarge("xorb"));
        }
        self.chunks.push((chunk_hash(&plain), uncompressed as u32));
        self.total += plain.len();
        self.plain = plain;
        self.plain_at = 0;
        self.at = start + compressed;
        Ok(true)
    }

    /// Checks the xorb hash once every chunk was read.
    fn finish(&self) -> Result<(), XetError> {
        if self.chunks.is_empty() {
            return Err(bad("no chunks".into()));
        }
        let sized: Vec<(XetHash, u64)> = self
            .chunks
            .iter()
            .map(|(h, l)| (*h, u64::from(*l)))
            .collect();
        let hash = xorb_hash(&sized);
        if hash != self.expected {
            return Err(XetError::HashMismatch {
                what: "xorb",
                claimed: self.expected.hex(),
                actual: hash.hex(),
            });
        }
        Ok(())
    }
}

impl std::io::Read for XorbReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.error.is_some() {
                return Err(std::io::Error::other("xorb refused"));
            }
            if self.plain_at < self.plain.len() {
                let n = out.len().min(self.plain.len() - self.plain_at);
                out[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
                self.plain_at += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            match self.next_chunk() {
                Ok(true) => {}
                Ok(false) => match self.finish() {
                    Ok(()) => self.done = true,
                    Err(e) => self.error = Some(e),
                },
                Err(e) => self.error = Some(e),
            }
        }
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
